// SPDX-License-Identifier: Apache-2.0
//! `airlock node …` on the build host, against the Debian base's own
//! containerd 1.6.20 (the one the node image runs) started with private
//! state: the real `ctr images import`, with gzip, zstd and plain archives,
//! corrupt ones, re-imports, and the kubeadm step with the stand-ins.
//! Needs root and the cached Debian base; skipped (noted) without them,
//! fatal in CI.

mod common;
#[path = "common/node.rs"]
mod fixture;
#[path = "common/oci.rs"]
mod oci;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use fixture::*;

/// Runs `airlock node ARGS --root ROOT` against `c`; (success, stdout+stderr).
fn node(c: &Containerd, root: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = airlock();
    cmd.arg("node").args(args).arg("--root").arg(root);
    c.env(&mut cmd);
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn record(root: &Path) -> String {
    fs::read_to_string(root.join("var/lib/airlock/images.imported")).unwrap_or_default()
}

#[test]
fn images_are_imported_once_checked_pinned_and_healed() {
    let Some(c) = Containerd::start() else { return };
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mut archives = archives();
    let list = lay_out_archives(r, &archives);

    // First boot: all three imported, every reference listed and pinned.
    let (ok, out) = node(&c, r, &["images"]);
    assert!(ok, "{out}\n--- containerd ---\n{}", c.log());
    for (kind, a) in ["gzip", "zstd", "uncompressed"]
        .iter()
        .zip(list["archives"].as_array().unwrap())
    {
        let file = a["file"].as_str().unwrap();
        assert!(
            out.contains(&format!("airlock: importing {file} ({kind}, ")),
            "{kind}: {out}"
        );
    }
    let mut wanted: Vec<&str> = KUBEADM_IMAGES.to_vec();
    wanted.push(CNI_IMAGE);
    for w in &wanted {
        assert!(
            out.contains(&format!("airlock: ctr: unpacking {w} (sha256:")),
            "containerd did not import {w}: {out}"
        );
        assert!(
            out.contains(&format!("airlock:   {w}\n")),
            "the ls result lacks {w}: {out}"
        );
    }
    assert!(
        out.contains("airlock: ctr -n k8s.io images ls -q lists 8 references:"),
        "{out}"
    );
    assert!(
        out.contains("images ready: 3 archives imported this boot, all 8 references"),
        "{out}"
    );
    let images = c.images();
    for w in &wanted {
        assert_eq!(
            images.get(*w).map(String::as_str),
            Some("io.cri-containerd.pinned=pinned"),
            "{w}: {images:?}"
        );
    }
    let rec = record(r);
    for a in list["archives"].as_array().unwrap() {
        let line = format!(
            "{}  {}\n",
            a["sha256"].as_str().unwrap(),
            a["file"].as_str().unwrap()
        );
        assert!(rec.contains(&line), "record lacks {line}: {rec}");
    }

    // Second boot: nothing imported.
    let (ok, out) = node(&c, r, &["images"]);
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("airlock: already imported: ").count(),
        3,
        "{out}"
    );
    assert!(
        !out.contains("airlock: importing") && !out.contains("unpacking"),
        "imported again: {out}"
    );
    assert!(
        out.contains("images ready: 0 archives imported this boot"),
        "{out}"
    );

    // A changed archive (a new build) is imported again; only it.
    archives[2] = (
        "tar",
        oci::docker_save(
            &[
                "registry.k8s.io/etcd:3.6.5-0",
                CNI_IMAGE,
                "registry.k8s.io/etcd:extra",
            ],
            "linux/amd64",
        ),
        vec![
            "registry.k8s.io/etcd:3.6.5-0",
            CNI_IMAGE,
            "registry.k8s.io/etcd:extra",
        ],
    );
    fs::remove_dir_all(r.join("var/lib/airlock/images")).unwrap();
    let list = lay_out_archives(r, &archives);
    let (ok, out) = node(&c, r, &["images"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("airlock: importing ").count(), 1, "{out}");
    assert!(
        out.contains("unpacking registry.k8s.io/etcd:extra"),
        "{out}"
    );
    let rec = record(r);
    assert_eq!(
        rec.lines().count(),
        3,
        "the record keeps the current archives only: {rec}"
    );
    assert!(
        rec.contains(list["archives"][2]["sha256"].as_str().unwrap()),
        "{rec}"
    );

    // An image deleted behind airlock's back is imported again.
    c.ctr(&["images", "rm", "registry.k8s.io/pause:3.10.1"])
        .unwrap();
    let (ok, out) = node(&c, r, &["images"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("containerd no longer lists registry.k8s.io/pause:3.10.1: importing"),
        "{out}"
    );
    assert_eq!(out.matches("airlock: importing ").count(), 1, "{out}");
    assert!(c.images().contains_key("registry.k8s.io/pause:3.10.1"));
}

#[test]
fn corrupt_or_mislabelled_archives_fail_and_are_not_recorded() {
    let Some(c) = Containerd::start() else { return };
    /// Spoils a laid-out node root and its image list.
    type Spoil = Box<dyn Fn(&Path, &mut serde_json::Value)>;
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "a flipped byte",
            Box::new(|r, list| {
                let f = r.join(list["archives"][1]["file"].as_str().unwrap().trim_start_matches('/'));
                let mut b = fs::read(&f).unwrap();
                let n = b.len() / 2;
                b[n] ^= 0xff;
                fs::write(f, b).unwrap();
            }),
            "is corrupt: its sha256 is",
        ),
        (
            "a truncated gzip stream, pinned as such",
            Box::new(|r, list| {
                let a = &mut list["archives"][0];
                let f = r.join(a["file"].as_str().unwrap().trim_start_matches('/'));
                let b = fs::read(&f).unwrap();
                let cut = &b[..b.len() * 2 / 3];
                fs::write(&f, cut).unwrap();
                a["sha256"] = sha256(cut).into();
            }),
            "importing image archive",
        ),
        (
            "references the archive does not carry",
            Box::new(|_, list| {
                list["archives"][2]["references"][0] = "registry.k8s.io/etcd:9.9.9-0".into();
            }),
            "was imported, but containerd does not list registry.k8s.io/etcd:9.9.9-0 (new names it brought: \
             docker.io/flannel/flannel:v0.28.4, registry.k8s.io/etcd:3.6.5-0)",
        ),
    ];
    for (name, spoil, want) in cases {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut list = lay_out_archives(r, &archives());
        spoil(r, &mut list);
        fs::write(
            r.join("usr/lib/airlock/images.json"),
            serde_json::to_string(&list).unwrap(),
        )
        .unwrap();
        let (ok, out) = node(&c, r, &["images"]);
        assert!(!ok, "{name}: succeeded: {out}");
        assert!(
            out.contains("airlock: FAILED importing images: "),
            "{name}: {out}"
        );
        assert!(out.contains(want), "{name}: wanted {want:?} in: {out}");
        let rec = record(r);
        let bad = list["archives"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|a| out.contains(a["file"].as_str().unwrap()))
            .unwrap();
        assert!(
            !rec.contains(bad["sha256"].as_str().unwrap()),
            "{name}: recorded: {rec}"
        );
    }
}

#[test]
fn node_help_is_consistent() {
    let out = airlock().args(["node", "--help"]).output().unwrap();
    let text = run_ok(out);
    for sub in ["images", "route", "kubeadm"] {
        assert!(text.contains(sub), "{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["node", "kubeadm", "--help"])
        .output()
        .unwrap();
    assert!(run_ok(out).contains("--join-attempts"));
}

const CLUSTER_TOML: &str = r#"kubernetes_version = "1.34.11"
kubeadm_api = "kubeadm.k8s.io/v1beta4"
cluster_name = "test"
pod_subnet = "10.244.0.0/16"
service_subnet = "10.96.0.0/12"
image_repository = "registry.k8s.io"
token_ttl = "8760h0m0s"
bin_dir = "/usr/local/bin"
cni_manifest = "/usr/lib/airlock/cni/kube-flannel.yml"
pause_image = "registry.k8s.io/pause:3.10.1"
platform = "linux/amd64"
bootstrap_token = "abcdef.0123456789abcdef"
"#;

const INIT_NODE: &str = r#"[node]
name = "cp-1"
hostname = "cp-1"
role = "init"
advertise_address = "10.0.0.10"
control_plane_endpoint = "10.0.0.10:6443"
"#;

const JOIN_NODE: &str = r#"[node]
name = "w-1"
hostname = "w-1"
role = "join"
advertise_address = "10.0.0.11"
control_plane_endpoint = "10.0.0.10:6443"

[join]
token = "abcdef.0123456789abcdef"
ca_cert_hash = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
"#;

/// A node root with the images imported, the stand-ins as kubeadm,
/// kubelet and kubectl, cluster.toml, node.toml and the CNI manifest.
fn kube_root(c: &Containerd, node_toml: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    lay_out_archives(r, &archives());
    let (ok, out) = node(c, r, &["images"]);
    assert!(ok, "{out}");
    let standin = standin();
    fs::create_dir_all(r.join("usr/local/bin")).unwrap();
    for tool in ["kubeadm", "kubelet", "kubectl"] {
        std::os::unix::fs::symlink(&standin, r.join("usr/local/bin").join(tool)).unwrap();
    }
    fs::write(r.join("usr/lib/airlock/cluster.toml"), CLUSTER_TOML).unwrap();
    fs::create_dir_all(r.join("usr/lib/airlock/cni")).unwrap();
    fs::write(
        r.join("usr/lib/airlock/cni/kube-flannel.yml"),
        cni_manifest(),
    )
    .unwrap();
    fs::create_dir_all(r.join("boot/efi/airlock")).unwrap();
    fs::write(r.join("boot/efi/airlock/node.toml"), node_toml).unwrap();
    if node_toml.contains("role = \"init\"") {
        // An init image carries the cluster CA (the build's secrets).
        let pki = r.join("etc/kubernetes/pki");
        fs::create_dir_all(&pki).unwrap();
        fs::write(pki.join("ca.crt"), BAKED_CA.0).unwrap();
        fs::write(pki.join("ca.key"), BAKED_CA.1).unwrap();
        fs::set_permissions(pki.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    root
}

/// The CA an init image was built with (content is not parsed on the node).
const BAKED_CA: (&str, &str) = (
    "-----BEGIN CERTIFICATE-----\nbaked cluster CA of test\n-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\nbaked CA key of test\n-----END PRIVATE KEY-----\n",
);

/// `airlock node kubeadm --root R EXTRA` with the stand-ins writing under R.
fn kubeadm(c: &Containerd, r: &Path, extra: &[&str]) -> (bool, String) {
    let mut cmd = airlock();
    cmd.args(["node", "kubeadm", "--root"]).arg(r).args(extra);
    cmd.env("AIRLOCK_STANDIN_DIR", r.join("var/lib/airlock-standin"))
        .env("AIRLOCK_STANDIN_ROOT", r);
    c.env(&mut cmd);
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The stand-in's records of one tool, parsed.
fn calls(r: &Path, tool: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(r.join(format!("var/lib/airlock-standin/{tool}.log")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check<'a>(call: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    call["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {call}"))
}

#[test]
fn kubeadm_init_renders_runs_applies_the_cni_once() {
    let Some(c) = Containerd::start() else { return };
    let root = kube_root(&c, INIT_NODE);
    let r = root.path();
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(ok, "{out}");
    let config = r.join("etc/kubernetes/airlock/kubeadm.yaml");
    assert!(
        out.contains(&format!(
            "airlock: running {}/usr/local/bin/kubeadm init --config {}",
            r.display(),
            config.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("airlock: kubeadm: [airlock stand-in for kubeadm] check images-preloaded: ok"),
        "{out}"
    );
    assert!(
        out.contains("airlock: kubectl: [airlock stand-in for kubectl] check images-preloaded: ok"),
        "{out}"
    );
    assert!(
        out.contains("airlock: kubeadm init done: cp-1 is part of cluster test"),
        "{out}"
    );
    let text = fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("kind: InitConfiguration")
            && text.contains("advertiseAddress: \"10.0.0.10\""),
        "{text}"
    );

    let init = calls(r, "kubeadm");
    assert_eq!(init.len(), 1, "{init:?}");
    assert_eq!(
        init[0]["args"],
        serde_json::json!(["init", "--config", config.to_str().unwrap()])
    );
    assert_eq!(init[0]["ok"], true, "{}", init[0]);
    for name in [
        "config-parses",
        "kubernetes-version",
        "image-pull-policy",
        "bootstrap-token",
        "cgroup-driver",
        "images-preloaded",
    ] {
        assert_eq!(check(&init[0], name)["ok"], true, "{name}: {}", init[0]);
    }
    let apply = calls(r, "kubectl");
    assert_eq!(apply.len(), 1);
    assert_eq!(apply[0]["ok"], true, "{}", apply[0]);
    assert!(check(&apply[0], "images-preloaded")["detail"]
        .as_str()
        .unwrap()
        .contains(CNI_IMAGE));
    assert!(r.join("var/lib/airlock/kubeadm.done").is_file());

    // Once done, never again.
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(
        ok && out.contains("kubeadm.done exists: this node was set up before; nothing to do"),
        "{out}"
    );
    assert_eq!(calls(r, "kubeadm").len(), 1);
}

#[test]
fn kubeadm_failures_stop_short_and_resume_where_they_stopped() {
    let Some(c) = Containerd::start() else { return };
    let root = kube_root(&c, INIT_NODE);
    let r = root.path();

    // An image kubeadm needs is gone: the stand-in fails like kubeadm's preflight.
    c.ctr(&["images", "rm", "registry.k8s.io/etcd:3.6.5-0"])
        .unwrap();
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("not in containerd's k8s.io namespace: registry.k8s.io/etcd:3.6.5-0"),
        "{out}"
    );
    assert!(
        out.contains("airlock: FAILED bootstrapping Kubernetes: running kubeadm init"),
        "{out}"
    );
    assert!(
        !r.join("var/lib/airlock/kubeadm.initialized").exists()
            && !r.join("var/lib/airlock/kubeadm.done").exists()
    );

    // Init passes but the CNI manifest runs an image that is not preloaded.
    let (ok, out) = node(&c, r, &["images"]);
    assert!(ok, "{out}");
    let manifest = r.join("usr/lib/airlock/cni/kube-flannel.yml");
    fs::write(
        &manifest,
        cni_manifest().replace(CNI_IMAGE, "docker.io/flannel/flannel:v9"),
    )
    .unwrap();
    let (ok, out) = kubeadm(&c, r, &["--apply-attempts", "2"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("applying the CNI manifest: attempt 1 of 2 failed"),
        "{out}"
    );
    assert!(
        out.contains("applying the CNI manifest: giving up after 2 attempts"),
        "{out}"
    );
    assert!(r.join("var/lib/airlock/kubeadm.initialized").exists());
    assert!(!r.join("var/lib/airlock/kubeadm.done").exists());

    // The next boot does not run init again, only the CNI.
    fs::write(&manifest, cni_manifest()).unwrap();
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("kubeadm init succeeded on an earlier boot"),
        "{out}"
    );
    let inits: Vec<_> = calls(r, "kubeadm")
        .into_iter()
        .filter(|c| c["args"][0] == "init")
        .collect();
    assert_eq!(
        inits.len(),
        2,
        "one failed init, one successful, none after: {inits:?}"
    );
    assert!(r.join("var/lib/airlock/kubeadm.done").exists());
}

#[test]
fn kubeadm_join_retries_with_backoff_until_the_control_plane_answers() {
    let Some(c) = Containerd::start() else { return };
    let root = kube_root(&c, JOIN_NODE);
    let r = root.path();
    let state = r.join("var/lib/airlock-standin");
    fs::create_dir_all(&state).unwrap();
    let fast = ["--join-backoff", "0", "--join-backoff-max", "1"];

    // The control plane never answers within the bound: the unit fails.
    fs::write(state.join("join-failures"), "3\n").unwrap();
    let (ok, out) = kubeadm(&c, r, &[&fast[..], &["--join-attempts", "2"]].concat());
    assert!(!ok, "{out}");
    assert!(out.contains("kubeadm join: attempt 1 of 2 failed"), "{out}");
    assert!(
        out.contains("kubeadm join: giving up after 2 attempts"),
        "{out}"
    );
    assert!(out.contains("connection refused"), "{out}");
    assert!(!r.join("var/lib/airlock/kubeadm.done").exists());

    // A half-done earlier join left the CA discovery fetched (kubeadm's
    // preflight refuses to join over it): reset first, then join.
    fs::create_dir_all(r.join("etc/kubernetes/pki")).unwrap();
    fs::write(r.join("etc/kubernetes/pki/ca.crt"), "leftover").unwrap();
    let (ok, out) = kubeadm(&c, r, &[&fast[..], &["--join-attempts", "3"]].concat());
    assert!(ok, "{out}");
    assert!(
        out.contains("an earlier kubeadm join stopped half-way (left /etc/kubernetes/pki/ca.crt)"),
        "{out}"
    );
    assert!(out.contains("kubeadm reset --force"), "{out}");
    assert!(
        out.contains("airlock: kubeadm join done: w-1 is part of cluster test"),
        "{out}"
    );
    let joins: Vec<_> = calls(r, "kubeadm")
        .into_iter()
        .filter(|c| c["args"][0] == "join")
        .collect();
    assert_eq!(
        joins.len(),
        4,
        "2 failed, then 1 failed and 1 good: {joins:?}"
    );
    let last = joins.last().unwrap();
    assert_eq!(last["ok"], true, "{last}");
    for name in [
        "discovery-token",
        "api-server-endpoint",
        "ca-cert-hash",
        "image-pull-policy",
    ] {
        assert_eq!(check(last, name)["ok"], true, "{name}: {last}");
    }
    assert!(
        calls(r, "kubectl").is_empty(),
        "a worker applies no CNI manifest"
    );
}

#[test]
fn a_half_done_init_is_reset_on_the_next_boot_keeping_the_baked_ca() {
    let Some(c) = Containerd::start() else { return };
    let root = kube_root(&c, INIT_NODE);
    let r = root.path();
    let state = r.join("var/lib/airlock-standin");
    fs::create_dir_all(&state).unwrap();
    let pki = r.join("etc/kubernetes/pki");

    // First boot: kubeadm init writes its manifests, etcd data and
    // kubeconfigs, then the control plane does not come up.
    fs::write(state.join("init-failures"), "1\n").unwrap();
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("the control plane did not come up"), "{out}");
    assert!(
        out.contains("the next boot resets what it left and tries again"),
        "{out}"
    );
    for left in [
        "etc/kubernetes/manifests/kube-apiserver.yaml",
        "etc/kubernetes/admin.conf",
        "var/lib/etcd/member",
    ] {
        assert!(r.join(left).exists(), "the failed init left no {left}");
    }
    let backup = r.join("var/lib/airlock/pki-backup");
    assert_eq!(
        fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::read_to_string(backup.join("ca.key")).unwrap(),
        BAKED_CA.1
    );

    // Next boot: reset (which empties the pki folder), CA back, init again.
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("an earlier kubeadm init stopped half-way (left /etc/kubernetes/manifests/kube-apiserver.yaml"),
        "{out}"
    );
    assert!(
        out.contains("restored /etc/kubernetes/pki/ca.key from /var/lib/airlock/pki-backup"),
        "{out}"
    );
    assert!(out.contains("airlock: kubeadm init done: cp-1"), "{out}");
    let steps: Vec<(String, bool)> = calls(r, "kubeadm")
        .iter()
        .map(|c| (c["args"][0].as_str().unwrap().to_string(), c["ok"] == true))
        .collect();
    assert_eq!(
        steps,
        [
            ("init".to_string(), false),
            ("reset".to_string(), true),
            ("init".to_string(), true)
        ]
    );
    let last = calls(r, "kubeadm").pop().unwrap();
    assert_eq!(check(&last, "preflight")["ok"], true, "{last}");
    assert!(
        check(&last, "cluster-ca")["detail"]
            .as_str()
            .unwrap()
            .starts_with("using the existing CA"),
        "{last}"
    );
    assert_eq!(fs::read_to_string(pki.join("ca.crt")).unwrap(), BAKED_CA.0);
    assert_eq!(fs::read_to_string(pki.join("ca.key")).unwrap(), BAKED_CA.1);
    assert_eq!(
        fs::metadata(pki.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(r.join("var/lib/airlock/kubeadm.done").exists());
}

#[test]
fn an_init_image_without_its_baked_ca_is_refused() {
    let Some(c) = Containerd::start() else { return };
    let root = kube_root(&c, INIT_NODE);
    let r = root.path();
    fs::remove_file(r.join("etc/kubernetes/pki/ca.key")).unwrap();
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "the cluster CA this image was built with is missing (/etc/kubernetes/pki/ca.key)"
        ),
        "{out}"
    );
    assert!(calls(r, "kubeadm").is_empty(), "kubeadm ran: {out}");
}

#[test]
fn an_edited_hostname_is_applied_and_names_the_node() {
    let Some(c) = Containerd::start() else { return };
    // The operator turned the cp-1 stick into cp-7 by editing node.toml on
    // the ESP: hostname changed, no separate name.
    let edited = INIT_NODE.replace(
        "name = \"cp-1\"\nhostname = \"cp-1\"",
        "hostname = \"cp-7\"",
    );
    let root = kube_root(&c, &edited);
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("etc/hostname"), "cp-1\n").unwrap();
    fs::write(
        r.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\tcp-1\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .unwrap();

    // airlock-hostname.service, before kubelet and kubeadm.
    let (ok, out) = node(&c, r, &["hostname"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("airlock: host name cp-7 (node.toml; the image was built as cp-1)"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(r.join("etc/hostname")).unwrap(),
        "cp-7\n"
    );
    assert_eq!(
        fs::read_to_string(r.join("etc/hosts")).unwrap(),
        "127.0.0.1\tlocalhost\n127.0.1.1\tcp-7\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    assert_eq!(
        fs::metadata(r.join("etc/hostname"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );

    // kubeadm registers the node under that name.
    let (ok, out) = kubeadm(&c, r, &[]);
    assert!(ok, "{out}");
    assert!(!out.contains("airlock: host name"), "applied twice: {out}");
    assert!(out.contains("airlock: node cp-7 (host name cp-7)"), "{out}");
    let text = fs::read_to_string(r.join("etc/kubernetes/airlock/kubeadm.yaml")).unwrap();
    let init: serde_json::Value = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|d: &serde_json::Value| d["kind"] == "InitConfiguration")
        .unwrap();
    assert_eq!(init["nodeRegistration"]["name"], "cp-7", "{text}");
    assert!(
        out.contains("kubeadm init done: cp-7 is part of cluster test"),
        "{out}"
    );
}
