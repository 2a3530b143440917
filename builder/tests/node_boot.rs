// SPDX-License-Identifier: Apache-2.0
//! Boot test of a Kubernetes node image on the real Debian bookworm base
//! (its kernel, systemd, containerd 1.6.20, runc and CNI plugins), with the
//! clearly named stand-ins for kubeadm, kubelet and kubectl (the real ones
//! cannot be downloaded here) and small image archives built by the test
//! (gzip OCI, zstd OCI, plain `docker save`) carrying exactly the images
//! kubeadm 1.34.11 and the CNI manifest need.
//!
//! First boot under `airlock boot --net restricted`: containerd imports the
//! archives, `airlock node images` lists and pins every reference, `airlock
//! node kubeadm` adds the dummy default route, renders the configuration and
//! runs the kubeadm stand-in (init) and the kubectl stand-in (CNI). A test
//! probe unit prints what it sees and the end marker. The disk is then read
//! back with ext4-view. A second boot imports nothing and runs no kubeadm.
//! Skipped (noted) without root, QEMU or mmdebstrap; fatal in CI.

mod common;
#[path = "common/node.rs"]
mod fixture;
#[path = "common/oci.rs"]
mod oci;

use std::fs;
use std::path::Path;

use common::*;
use fixture::*;

const MARKER: &str = "AIRLOCK-NODE-PROBE-DONE";

fn boot_tools() -> bool {
    is_root()
        && have("mke2fs")
        && have("qemu-system-x86_64")
        && have("mmdebstrap")
        && have("qemu-img")
}

/// A unit of the test recipe only: after the airlock units, print what the
/// node looks like, flush the disk, print the marker, power off.
const PROBE_UNIT: &str = r#"# Test only: reports the node's state for tests/node_boot.rs.
[Unit]
Description=airlock node boot test probe
After=airlock-images.service airlock-kubeadm.service kubelet.service

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/usr/local/sbin/airlock-node-probe
SuccessAction=poweroff

[Install]
WantedBy=multi-user.target
"#;

const PROBE_SCRIPT: &str = r#"#!/bin/sh
# Test only: the node's state on the console, for tests/node_boot.rs.
say() { echo "airlock-probe: $*"; }
say "images-unit=$(systemctl is-active airlock-images.service) kubeadm-unit=$(systemctl is-active airlock-kubeadm.service) kubelet=$(systemctl is-active kubelet.service)"
ctr -n k8s.io images ls -q | while read -r r; do say "ctr-ls $r"; done
say "default-route=$(ip -4 route show default)"
say "failed-units=$(systemctl list-units --failed --no-legend --plain | cut -d' ' -f1 | tr '\n' ' ')"
sync
echo "{{ vars.marker }}"
"#;

/// Writes the node recipe and its inputs into `d`.
fn node_recipe(d: &Path, base: &Path) -> std::path::PathBuf {
    let standin = standin();
    fs::copy(&standin, d.join("airlock-standin")).unwrap();
    let standin_sha = sha256_file(&d.join("airlock-standin"));
    fs::write(d.join("kube-flannel.yml"), cni_manifest()).unwrap();
    fs::create_dir_all(d.join("templates")).unwrap();
    fs::write(
        d.join("templates/airlock-node-probe.service.j2"),
        PROBE_UNIT,
    )
    .unwrap();
    fs::write(d.join("templates/airlock-node-probe.j2"), PROBE_SCRIPT).unwrap();
    let mut images = String::new();
    for (i, (ext, bytes, refs)) in archives().into_iter().enumerate() {
        let name = format!("images-{i}.{ext}");
        fs::write(d.join(&name), &bytes).unwrap();
        let refs: Vec<String> = refs.iter().map(|r| format!("{r:?}")).collect();
        images += &format!(
            "\n[[image]]\nsource = \"{name}\"\nsha256 = \"{}\"\nrefs = [{}]\n",
            sha256(&bytes),
            refs.join(", ")
        );
    }
    let pin = |what: &str| {
        format!("{what} = {{ source = \"airlock-standin\", sha256 = \"{standin_sha}\" }}")
    };
    let text = format!(
        r#"name = "node"
template_dir = "templates"
epoch = 1700000000

[vars]
marker = "{MARKER}"

[base]
path = "{base}"
sha256 = "{base_sha}"

# STAND-INS: tests only; a real recipe pins the release binaries.
[kubernetes]
version = "{K8S_VERSION}"
{kubeadm}
{kubelet}
{kubectl}

[containerd]
version = "1.6.20"
packaged = true
cni_bin_dirs = ["/usr/lib/cni"]

[cni]
manifest = {{ source = "kube-flannel.yml", sha256 = "{cni_sha}" }}
{images}
[cluster]
name = "boot-test"

[node]
hostname = "cp-1"
role = "init"
advertise_address = "10.0.2.15"
control_plane_endpoint = "10.0.2.15:6443"

[[template]]
src = "airlock-node-probe.service.j2"
path = "/etc/systemd/system/airlock-node-probe.service"

[[template]]
src = "airlock-node-probe.j2"
path = "/usr/local/sbin/airlock-node-probe"
mode = "0755"

[systemd]
enable = ["airlock-node-probe.service"]

[disk]
size = "2GiB"
esp_size = "256MiB"

# The base configures no network, so systemd-networkd-wait-online would
# hold network-online.target for its 2-minute timeout on every boot.
[boot]
cmdline = ["systemd.show_status=auto", "systemd.mask=systemd-networkd-wait-online.service"]
"#,
        base = base.display(),
        base_sha = sha256_file(base),
        kubeadm = pin("kubeadm"),
        kubelet = pin("kubelet"),
        kubectl = pin("kubectl"),
        cni_sha = sha256(cni_manifest().as_bytes()),
    );
    let p = d.join("node.toml");
    fs::write(&p, text).unwrap();
    p
}

/// Boots with the restricted network until the probe's marker; the console.
fn boot(image: &Path, log: &Path) -> String {
    let out = airlock()
        .arg("boot")
        .arg(image)
        .args([
            "--net",
            "restricted",
            "--timeout",
            "900",
            "--until",
            MARKER,
            "--log",
        ])
        .arg(log)
        .output()
        .unwrap();
    let console = fs::read_to_string(log)
        .unwrap_or_default()
        .replace('\r', "");
    assert!(
        out.status.success(),
        "boot failed: {}\n--- console ---\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    console
}

/// The root filesystem of the image, read with ext4-view.
fn root_fs(raw: &Path, m: &serde_json::Value) -> ext4_view::Ext4 {
    let (offset, _) = partition(m, "root");
    ext4_view::Ext4::load(Box::new(PartReader {
        file: fs::File::open(raw).unwrap(),
        offset,
    }))
    .unwrap()
}

fn read(fs: &ext4_view::Ext4, path: &str) -> String {
    fs.read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path} from the image: {e}"))
}

fn calls(fs: &ext4_view::Ext4, tool: &str) -> Vec<serde_json::Value> {
    read(fs, &format!("/var/lib/airlock-standin/{tool}.log"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn probe(console: &str, key: &str) -> String {
    console
        .lines()
        .find_map(|l| l.split(&format!("airlock-probe: {key}=")).nth(1))
        .unwrap_or_else(|| panic!("the probe printed no {key}:\n{console}"))
        .trim()
        .to_string()
}

#[test]
fn node_image_imports_images_and_runs_kubeadm_once() {
    if !boot_tools() {
        return;
    }
    let Some(base) = debian_base() else { return };
    let mut dir = tempfile::tempdir_in(repo().join("out")).unwrap();
    // Keep the image and console logs for a look after a failure.
    dir.disable_cleanup(std::env::var_os("TEST_SKIP_CLEANUP").is_some());
    let d = dir.path();
    eprintln!("node boot test: working in {}", d.display());
    let recipe = node_recipe(d, &base);
    let out = d.join("out");
    let build = airlock()
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(repo().join("out/cache"))
        .output()
        .unwrap();
    let build_log = run_ok(build);
    let m = manifest(&out);
    let raw = out.join("node.raw");
    let images_json: serde_json::Value =
        serde_json::from_str(&read(&root_fs(&raw, &m), "/usr/lib/airlock/images.json")).unwrap();
    let listed: Vec<(String, String)> = images_json["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["file"].as_str().unwrap().to_string(),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 3, "{images_json}\n{build_log}");
    let mut wanted: Vec<&str> = KUBEADM_IMAGES.to_vec();
    wanted.push(CNI_IMAGE);

    // 1. First boot: import, check, pin, route, kubeadm init, CNI.
    let console = boot(&raw, &d.join("boot1.log"));
    for ((file, _), kind) in listed.iter().zip(["gzip", "zstd", "uncompressed"]) {
        assert!(
            console.contains(&format!("airlock: importing {file} ({kind}, ")),
            "{kind} archive not imported:\n{console}"
        );
    }
    for w in &wanted {
        assert!(
            console.contains(&format!("airlock: ctr: unpacking {w} (sha256:")),
            "containerd did not import {w}:\n{console}"
        );
        assert!(
            console.contains(&format!("airlock:   {w}\n")),
            "airlock node images did not list {w}:\n{console}"
        );
        assert!(
            console.contains(&format!("airlock-probe: ctr-ls {w}\n")),
            "ctr in the guest does not list {w}:\n{console}"
        );
    }
    assert!(
        console.contains("airlock: ctr -n k8s.io images ls -q lists 8 references"),
        "{console}"
    );
    assert!(console.contains("airlock: images ready: 3 archives imported this boot, all 8 references listed and pinned"), "{console}");
    assert!(console.contains("airlock: no default route: adding one through the dummy interface airlock0 (10.0.2.15)"), "{console}");
    assert!(
        probe(&console, "default-route").starts_with("default dev airlock0"),
        "{console}"
    );
    assert!(console.contains("airlock: running /usr/local/bin/kubeadm init --config /etc/kubernetes/airlock/kubeadm.yaml"), "{console}");
    assert!(
        console.contains("[airlock stand-in for kubeadm] check kubernetes-version: ok"),
        "{console}"
    );
    assert!(
        console.contains("airlock: kubeadm init done: cp-1 is part of cluster boot-test"),
        "{console}"
    );
    assert_eq!(
        probe(&console, "images-unit"),
        "active kubeadm-unit=active kubelet=active",
        "{console}"
    );
    let failed = probe(&console, "failed-units");
    assert!(
        !failed.contains("airlock"),
        "failed units: {failed}\n{console}"
    );

    // 2. The disk after power-off: the stand-ins' records and the import record.
    let root = root_fs(&raw, &m);
    let init = calls(&root, "kubeadm");
    assert_eq!(init.len(), 1, "{init:?}");
    assert_eq!(init[0]["standin"], true);
    assert_eq!(
        init[0]["args"],
        serde_json::json!(["init", "--config", "/etc/kubernetes/airlock/kubeadm.yaml"])
    );
    assert_eq!(init[0]["ok"], true, "{}", init[0]);
    let checks: Vec<&str> = init[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "config-file",
        "config-parses",
        "kubernetes-version",
        "image-pull-policy",
        "images-preloaded",
    ] {
        assert!(checks.contains(&name), "{name} not checked: {}", init[0]);
    }
    let apply = calls(&root, "kubectl");
    assert_eq!(apply.len(), 1, "{apply:?}");
    assert_eq!(apply[0]["args"][2], "apply", "{}", apply[0]);
    assert_eq!(apply[0]["ok"], true, "{}", apply[0]);
    let record = read(&root, "/var/lib/airlock/images.imported");
    for (file, sha) in &listed {
        assert!(
            record.contains(&format!("{sha}  {file}\n")),
            "{file} not recorded:\n{record}"
        );
    }
    let config = read(&root, "/etc/kubernetes/airlock/kubeadm.yaml");
    assert!(
        config.contains("kubernetesVersion: \"v1.34.11\"")
            && config.contains("advertiseAddress: \"10.0.2.15\""),
        "{config}"
    );
    assert!(root.exists("/var/lib/airlock/kubeadm.done").unwrap());
    drop(root);

    // 3. Second boot: nothing imported, kubeadm not run.
    let console = boot(&raw, &d.join("boot2.log"));
    assert!(
        !console.contains("airlock: importing"),
        "imported again:\n{console}"
    );
    assert!(!console.contains("unpacking"), "imported again:\n{console}");
    assert_eq!(
        console.matches("airlock: already imported: ").count(),
        3,
        "{console}"
    );
    assert!(
        console.contains("airlock: images ready: 0 archives imported this boot"),
        "{console}"
    );
    assert!(
        !console.contains("/usr/local/bin/kubeadm"),
        "kubeadm ran again:\n{console}"
    );
    for w in &wanted {
        assert!(
            console.contains(&format!("airlock-probe: ctr-ls {w}\n")),
            "{w} gone after a reboot:\n{console}"
        );
    }
    let root = root_fs(&raw, &m);
    assert_eq!(
        calls(&root, "kubeadm").len(),
        1,
        "kubeadm ran on the second boot"
    );
    assert_eq!(
        calls(&root, "kubectl").len(),
        1,
        "kubectl ran on the second boot"
    );
    assert_eq!(read(&root, "/var/lib/airlock/images.imported"), record);
}
