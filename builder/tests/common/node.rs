// SPDX-License-Identifier: Apache-2.0
//! Fixtures of the node tests: the Debian base's own containerd and ctr
//! (1.6.20) running on the build host, the kubeadm/kubelet/kubectl
//! stand-ins, and the preload archives a Kubernetes 1.34.11 node needs.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
use super::oci;

pub const K8S_VERSION: &str = "1.34.11";

/// What `kubeadm config images list` prints for 1.34.11.
pub const KUBEADM_IMAGES: [&str; 7] = [
    "registry.k8s.io/kube-apiserver:v1.34.11",
    "registry.k8s.io/kube-controller-manager:v1.34.11",
    "registry.k8s.io/kube-scheduler:v1.34.11",
    "registry.k8s.io/kube-proxy:v1.34.11",
    "registry.k8s.io/coredns/coredns:v1.12.1",
    "registry.k8s.io/pause:3.10.1",
    "registry.k8s.io/etcd:3.6.5-0",
];
/// The one image of the test's CNI manifest.
pub const CNI_IMAGE: &str = "docker.io/flannel/flannel:v0.28.4";

/// The three preload archives: gzip OCI, zstd OCI and a plain `docker
/// save`, carrying kubeadm's images and the CNI image between them.
pub fn archives() -> Vec<(&'static str, Vec<u8>, Vec<&'static str>)> {
    let a = KUBEADM_IMAGES;
    let gz_refs = vec![a[0], a[1], a[2]];
    let zst_refs = vec![a[3], a[4], a[5]];
    let docker_refs = vec![a[6], CNI_IMAGE];
    vec![
        (
            "tar.gz",
            oci::gzip(&oci::oci_layout(&gz_refs, "linux/amd64")),
            gz_refs,
        ),
        (
            "tar.zst",
            oci::zstd(&oci::oci_layout(&zst_refs, "linux/amd64")),
            zst_refs,
        ),
        (
            "tar",
            oci::docker_save(&docker_refs, "linux/amd64"),
            docker_refs,
        ),
    ]
}

/// A CNI manifest with one DaemonSet running CNI_IMAGE.
pub fn cni_manifest() -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-flannel\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kube-flannel-cfg\n  namespace: kube-flannel\n\
         data:\n  net-conf.json: |\n    {{\n      \"Network\": \"10.244.0.0/16\",\n      \"Backend\": {{ \"Type\": \"vxlan\" }}\n    }}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: kube-flannel-ds\n  namespace: kube-flannel\n\
         spec:\n  selector:\n    matchLabels:\n      app: flannel\n  template:\n    metadata:\n      labels:\n        app: flannel\n\
         \x20   spec:\n      containers:\n      - name: kube-flannel\n        image: {CNI_IMAGE}\n        command: [\"/opt/bin/flanneld\"]\n"
    )
}

/// Writes archives into `root` as the build lays them out and returns
/// the images.json value.
pub fn lay_out_archives(root: &Path, archives: &[(&str, Vec<u8>, Vec<&str>)]) -> serde_json::Value {
    let dir = root.join("var/lib/airlock/images");
    fs::create_dir_all(&dir).unwrap();
    let mut list = Vec::new();
    for (ext, bytes, refs) in archives {
        let sha = sha256(bytes);
        let file = format!("/var/lib/airlock/images/{sha}.{ext}");
        fs::write(root.join(file.trim_start_matches('/')), bytes).unwrap();
        list.push(serde_json::json!({ "file": file, "sha256": sha, "platform": "linux/amd64", "references": refs }));
    }
    let v = serde_json::json!({ "archives": list });
    fs::create_dir_all(root.join("usr/lib/airlock")).unwrap();
    fs::write(
        root.join("usr/lib/airlock/images.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    v
}

/// The stand-in binary (built on demand from the workspace).
pub fn standin() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "airlock-standins",
            "--manifest-path",
        ])
        .arg(repo().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the stand-ins: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = Path::new(env!("CARGO_BIN_EXE_airlock"))
        .parent()
        .unwrap()
        .join("airlock-standin");
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// The Debian base's containerd, running on the host with its own state.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    /// Holds ctr, containerd and the shim.
    pub bin: PathBuf,
    pub socket: PathBuf,
}

impl Containerd {
    /// Starts one, or None (skip) without root or the Debian base.
    pub fn start() -> Option<Containerd> {
        if !is_root() {
            return None;
        }
        let base = debian_base()?;
        let name = base
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".tar.zst", "");
        let bin_root = repo()
            .join("out/fixtures")
            .join(format!("containerd-from-{name}"));
        let bin = bin_root.join("usr/bin");
        if !bin.join("ctr").is_file() {
            let tmp = repo()
                .join("out/fixtures")
                .join(format!(".containerd-{}", std::process::id()));
            fs::create_dir_all(&tmp).unwrap();
            let out = Command::new("tar")
                .args(["--zstd", "-xf"])
                .arg(&base)
                .arg("-C")
                .arg(&tmp)
                .args([
                    "./usr/bin/ctr",
                    "./usr/bin/containerd",
                    "./usr/bin/containerd-shim-runc-v2",
                ])
                .output()
                .unwrap();
            run_ok(out);
            let _ = fs::rename(&tmp, &bin_root);
            let _ = fs::remove_dir_all(&tmp);
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
                d.display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new(bin.join("containerd"))
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let c = Containerd {
            child,
            dir,
            bin,
            socket,
        };
        let start = Instant::now();
        while c.ctr(&["version"]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(c)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The environment that points ctr (and so airlock and the stand-ins)
    /// at this containerd.
    pub fn env(&self, c: &mut Command) {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path).env("CONTAINERD_ADDRESS", &self.socket);
    }

    /// Runs `ctr -n k8s.io ARGS`; stdout, or stderr as the error.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.bin.join("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `ctr -n k8s.io images ls`: reference → labels column.
    pub fn images(&self) -> std::collections::BTreeMap<String, String> {
        self.ctr(&["images", "ls"])
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.last()?.to_string()))
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unpacked layers may be overlay-mounted by nothing, but snapshots
        // can hold read-only files; removal is best effort.
    }
}
