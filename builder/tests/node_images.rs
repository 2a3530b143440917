// SPDX-License-Identifier: Apache-2.0
//! A Kubernetes node recipe whose `[[image]]`s are registry references:
//! pushed by the test into Debian's docker-registry on 127.0.0.1, reached
//! through `[[mirror]]`s for registry.k8s.io and ghcr.io, resolved by
//! `lock`, pulled by `fetch`, and preloaded by a `build` that runs after
//! the registry is gone.

mod common;
mod servers;

use std::fs;
use std::path::Path;

use airlock::kube::images::ImagesJson;
use common::*;
use servers::oci::{index, Image};
use servers::registry::DockerRegistry;

/// What kubeadm 1.34.11 and flannel need, as the recipe names them.
const REFS: [&str; 9] = [
    "registry.k8s.io/kube-apiserver:v1.34.11",
    "registry.k8s.io/kube-controller-manager:v1.34.11",
    "registry.k8s.io/kube-scheduler:v1.34.11",
    "registry.k8s.io/etcd:3.6.5-0",
    "registry.k8s.io/kube-proxy:v1.34.11",
    "registry.k8s.io/coredns/coredns:v1.12.1",
    "registry.k8s.io/pause:3.10.1",
    "ghcr.io/flannel-io/flannel:v0.28.9",
    "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
];

const FLANNEL: &str = r#"---
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  net-conf.json: |
    { "Network": "10.244.0.0/16", "Backend": { "Type": "vxlan" } }
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
spec:
  template:
    spec:
      initContainers:
      - name: install-cni-plugin
        image: ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3
      containers:
      - name: kube-flannel
        image: ghcr.io/flannel-io/flannel:v0.28.9
"#;

fn gz(path: &Path, entries: &[Entry]) {
    let tmp = path.with_extension("plain");
    tarball(&tmp, entries);
    fs::write(path, servers::oci::gzip(&fs::read(&tmp).unwrap())).unwrap();
    fs::remove_file(tmp).unwrap();
}

/// The node's local inputs (base, stand-in binaries, release tarballs).
fn local_inputs(d: &Path) -> String {
    let mut base = base_entries();
    base.extend([
        Entry::File("usr/sbin/iptables", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File("usr/sbin/modprobe", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File("usr/sbin/conntrack", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File("usr/bin/mount", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File(
            "usr/lib/modules/6.1.0-28-amd64/modules.builtin",
            b"kernel/fs/overlayfs/overlay.ko\n",
            0o644,
            0,
            0,
        ),
        Entry::File(
            "usr/lib/modules/6.1.0-28-amd64/kernel/net/bridge/br_netfilter.ko",
            b"\x7fELF module",
            0o644,
            0,
            0,
        ),
    ]);
    tarball(&d.join("node-base.tar"), &base);
    for b in ["kubeadm", "kubelet", "kubectl"] {
        fs::write(d.join(b), format!("#!/bin/sh\necho {b} stand-in\n")).unwrap();
    }
    gz(
        &d.join("containerd.tar.gz"),
        &[
            Entry::Dir("bin", 0o755),
            Entry::File("bin/containerd", b"containerd", 0o755, 0, 0),
            Entry::File("bin/ctr", b"ctr", 0o755, 0, 0),
        ],
    );
    fs::write(d.join("runc.amd64"), b"runc").unwrap();
    gz(
        &d.join("crictl.tar.gz"),
        &[Entry::File("crictl", b"crictl", 0o755, 0, 0)],
    );
    gz(
        &d.join("cni-plugins.tgz"),
        &[
            Entry::Dir("./", 0o755),
            Entry::File("./bridge", b"bridge", 0o755, 0, 0),
            Entry::File("./loopback", b"lo", 0o755, 0, 0),
        ],
    );
    fs::write(d.join("kube-flannel.yml"), FLANNEL).unwrap();
    let pin = |f: &str| {
        format!(
            "{{ source = \"{f}\", sha256 = \"{}\" }}",
            sha256_file(&d.join(f))
        )
    };
    format!(
        r#"name = "cp"
epoch = 1700000000

[base]
path = "node-base.tar"
sha256 = "{base}"

[kubernetes]
version = "1.34.11"
kubeadm = {kubeadm}
kubelet = {kubelet}
kubectl = {kubectl}

[containerd]
version = "2.1.9"
release = {containerd}
runc = {runc}
crictl = {crictl}
cni_plugins = {cni}

[cni]
manifest = {manifest}

[cluster]
name = "pulled"
control_plane_endpoint = "10.0.0.10:6443"

[host]
ntp = []

[disk]
size = "512MiB"
esp_size = "40MiB"

[node]
hostname = "cp-1"
advertise_address = "10.0.0.10"
"#,
        base = sha256_file(&d.join("node-base.tar")),
        kubeadm = pin("kubeadm"),
        kubelet = pin("kubelet"),
        kubectl = pin("kubectl"),
        containerd = pin("containerd.tar.gz"),
        runc = pin("runc.amd64"),
        crictl = pin("crictl.tar.gz"),
        cni = pin("cni-plugins.tgz"),
        manifest = pin("kube-flannel.yml"),
    )
}

#[test]
fn node_images_by_reference_are_locked_pulled_and_preloaded_offline() {
    if !(is_root() && have("mke2fs")) {
        return;
    }
    let Some(reg) = DockerRegistry::start() else {
        return;
    };
    // Each image in the local registry under the same repository path; the
    // pause image for two platforms.
    let mut pushed = Vec::new();
    for r in REFS {
        let (name, tag) = r.split_once(':').unwrap();
        let repo = name.split_once('/').unwrap().1;
        let amd = Image::hello(r, "linux/amd64");
        if repo == "pause" {
            let arm = Image::hello(r, "linux/arm64");
            reg.push_index(repo, tag, &[&amd, &arm], &index(&[&amd, &arm]));
        } else {
            reg.push_image(repo, Some(tag), &amd);
        }
        pushed.push((r, amd));
    }
    let d = tempfile::tempdir().unwrap();
    let mut text = local_inputs(d.path());
    for r in REFS {
        text.push_str(&format!("\n[[image]]\nref = \"{r}\"\n"));
    }
    for registry in ["registry.k8s.io", "ghcr.io"] {
        text.push_str(&format!(
            "\n[[mirror]]\nregistry = \"{registry}\"\nendpoint = \"http://{}\"\n",
            reg.host
        ));
    }
    let recipe = d.path().join("node.toml");
    fs::write(&recipe, &text).unwrap();
    let cache = d.path().join("cache");
    let run = |verb: &str| {
        airlock()
            .arg(verb)
            .arg(&recipe)
            .arg("--cache")
            .arg(&cache)
            .env("HOME", d.path())
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .output()
            .unwrap()
    };
    run_ok(run("lock"));
    let lock: toml::Table =
        toml::from_str(&fs::read_to_string(d.path().join("node.toml.lock")).unwrap()).unwrap();
    let locked: Vec<&toml::Value> = lock["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["what"].as_str().unwrap().starts_with("image["))
        .collect();
    assert_eq!(locked.len(), REFS.len());
    for (i, (r, amd)) in pushed.iter().enumerate() {
        let e = locked
            .iter()
            .find(|e| e["what"].as_str() == Some(&format!("image[{i}]")))
            .unwrap();
        assert_eq!(e["source"].as_str(), Some(*r));
        assert_eq!(
            e["platforms"]["linux/amd64"].as_str(),
            Some(amd.manifest.digest.as_str()),
            "{r}"
        );
    }
    run_ok(run("fetch"));
    drop(reg); // the build must not need it
    let out = airlock()
        .arg("build")
        .arg(&recipe)
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(d.path().join("out"))
        .arg("--format")
        .arg("raw")
        .output()
        .unwrap();
    run_ok(out);
    let m = manifest(&d.path().join("out"));
    let (root_off, _) = partition(&m, "root");
    let ext = ext4_view::Ext4::load(Box::new(PartReader {
        file: fs::File::open(d.path().join("out/cp.raw")).unwrap(),
        offset: root_off,
    }))
    .unwrap();
    let list: ImagesJson =
        serde_json::from_str(&ext.read_to_string("/usr/lib/airlock/images.json").unwrap()).unwrap();
    assert_eq!(list.archives.len(), REFS.len());
    for (r, a) in REFS.iter().zip(&list.archives) {
        assert_eq!(
            a.references,
            [r.to_string()],
            "the archive is named as the recipe says, not as the mirror"
        );
        assert_eq!(a.platform, "linux/amd64");
        let bytes = ext.read(a.file.as_str()).unwrap();
        assert_eq!(
            sha256(&bytes),
            a.sha256,
            "{}: the preloaded file is what images.json says",
            a.file
        );
    }
}
