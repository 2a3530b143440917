// SPDX-License-Identifier: Apache-2.0
//! The kubeadm stand-in: `version`, `config images list`, `init`, `join`
//! and `reset`, each recorded; `init` and `join` check the --config file.
//!
//! `version` and `config images list` (`-o json` too) are answered from the
//! release this stand-in plays and are not recorded.
//!
//! The files it writes model the real tool's contract with a half-done
//! run: `init` writes the static-pod manifests, the etcd data folder and
//! the kubeconfig files, keeps an existing CA in /etc/kubernetes/pki (or
//! makes one), and its preflight refuses to start while any of those are
//! already there; `join` writes kubelet.conf and pki/ca.crt and refuses
//! likewise; `reset --force` removes them all, the contents of
//! /etc/kubernetes/pki included, as the real reset does.
//!
//! `init` and `join` can be told to fail: while `<state>/init-failures` or
//! `<state>/join-failures` holds a number above zero, each call decrements
//! it and fails, init after writing its partial state (as when the control
//! plane does not come up in time), join before (the control plane does not
//! answer), for tests of airlock's retries.

use std::path::Path;

use serde_norway::Value;

use crate::common::{
    check_images, doc, flag, get_str, is_token, say, state_dir, under_root, words, yaml_documents,
    Call,
};
use crate::VERSION;

/// kubeadm's flags that take a value (so their values are not words).
const WITH_VALUE: &[&str] = &[
    "--config",
    "--kubernetes-version",
    "--image-repository",
    "-o",
    "--output",
    "--cri-socket",
    "-v",
    "--v",
];

const ADDONS: &[(&str, &str)] = &[
    ("coredns", "v1.12.1"),
    ("pause", "3.10.1"),
    ("etcd", "3.6.5-0"),
];

/// What `kubeadm config images list` prints for `version` and `repo`.
pub fn images(version: &str, repo: &str) -> Vec<String> {
    let v = format!("v{}", version.trim_start_matches('v'));
    let mut out: Vec<String> = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ]
    .iter()
    .map(|c| format!("{repo}/{c}:{v}"))
    .collect();
    for (name, tag) in ADDONS {
        // kubeadm keeps coredns under coredns/ only in the default registry.
        let path = if *name == "coredns" && repo == "registry.k8s.io" {
            "coredns/coredns"
        } else {
            name
        };
        out.push(format!("{repo}/{path}:{tag}"));
    }
    out
}

pub fn main(args: &[String]) -> i32 {
    let w = words(args, WITH_VALUE);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let mut call = Call::new("kubeadm", args);
    match w.as_slice() {
        // Queries are answered, not recorded: the build runs them on the
        // build host, which must not collect stand-in records.
        ["version", ..] => {
            if flag(args, &["-o", "--output"]) == Some("short") {
                println!("{VERSION}");
            } else {
                println!("kubeadm version: &version.Info{{GitVersion:\"{VERSION}\", Platform:\"linux/amd64\"}} (airlock stand-in)");
            }
            0
        }
        ["config", "images", "list", ..] => {
            let (mut version, mut repo) = (VERSION.to_string(), "registry.k8s.io".to_string());
            if let Some(c) = flag(args, &["--config"]) {
                match yaml_documents(Path::new(c)) {
                    Ok(docs) => {
                        if let Some(cc) = doc(&docs, "ClusterConfiguration") {
                            version = get_str(cc, &["kubernetesVersion"])
                                .unwrap_or(&version)
                                .to_string();
                            repo = get_str(cc, &["imageRepository"])
                                .unwrap_or(&repo)
                                .to_string();
                        }
                    }
                    Err(e) => {
                        eprintln!("[airlock stand-in for kubeadm] {e}");
                        return 1;
                    }
                }
            }
            version = flag(args, &["--kubernetes-version"])
                .map(String::from)
                .unwrap_or(version);
            repo = flag(args, &["--image-repository"])
                .map(String::from)
                .unwrap_or(repo);
            let list = images(&version, &repo);
            if flag(args, &["-o", "--output"]) == Some("json") {
                let out = serde_json::json!({ "kind": "Images", "apiVersion": "output.kubeadm.k8s.io/v1alpha3", "images": list });
                println!("{out}");
            } else {
                list.iter().for_each(|i| println!("{i}"));
            }
            0
        }
        ["init", ..] => {
            init(&mut call, args);
            call.finish()
        }
        ["join", ..] => {
            join(&mut call, args);
            call.finish()
        }
        ["reset", ..] => {
            reset(&mut call, args);
            call.finish()
        }
        _ => {
            call.check(
                "known-command",
                false,
                format!("the stand-in does not implement `kubeadm {}`", w.join(" ")),
            );
            call.finish()
        }
    }
}

/// The --config file, parsed; each step recorded.
fn config(call: &mut Call, args: &[String]) -> Option<Vec<Value>> {
    let Some(path) = flag(args, &["--config"]) else {
        call.check("config-file", false, "no --config given");
        return None;
    };
    if !call.check("config-file", Path::new(path).is_file(), path) {
        return None;
    }
    match yaml_documents(Path::new(path)) {
        Ok(docs) => {
            let kinds: Vec<String> = docs
                .iter()
                .map(|d| {
                    format!(
                        "{}/{}",
                        get_str(d, &["apiVersion"]).unwrap_or("?"),
                        get_str(d, &["kind"]).unwrap_or("?")
                    )
                })
                .collect();
            let typed = docs
                .iter()
                .all(|d| get_str(d, &["apiVersion"]).is_some() && get_str(d, &["kind"]).is_some());
            call.check(
                "config-parses",
                typed,
                format!("{} YAML documents: {}", docs.len(), kinds.join(", ")),
            );
            typed.then_some(docs)
        }
        Err(e) => {
            call.check("config-parses", false, e);
            None
        }
    }
}

/// The kubeadm API a release reads: v1beta4 from 1.31, v1beta3 before.
fn api_for(version: &str) -> &'static str {
    let minor = version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor >= 31 {
        "kubeadm.k8s.io/v1beta4"
    } else {
        "kubeadm.k8s.io/v1beta3"
    }
}

fn check_kubeadm_api(call: &mut Call, d: &Value) {
    let api = get_str(d, &["apiVersion"]).unwrap_or("");
    // airlock picks the API by version; anything else is its mistake, even
    // a deprecated version kubeadm would still read.
    let want = api_for(VERSION);
    call.check(
        "kubeadm-api",
        api == want,
        format!("{api} (kubeadm {VERSION} is given {want} by airlock)"),
    );
}

fn check_pull_policy(call: &mut Call, d: &Value) {
    let p = get_str(d, &["nodeRegistration", "imagePullPolicy"]).unwrap_or("(unset)");
    call.check(
        "image-pull-policy",
        p == "Never",
        format!("nodeRegistration.imagePullPolicy: {p}"),
    );
}

fn init(call: &mut Call, args: &[String]) {
    let Some(docs) = config(call, args) else {
        return;
    };
    let Some(ic) = doc(&docs, "InitConfiguration") else {
        call.check("init-configuration", false, "no InitConfiguration document");
        return;
    };
    let Some(cc) = doc(&docs, "ClusterConfiguration") else {
        call.check(
            "cluster-configuration",
            false,
            "no ClusterConfiguration document",
        );
        return;
    };
    check_kubeadm_api(call, ic);
    let version = get_str(cc, &["kubernetesVersion"]).unwrap_or("(unset)");
    call.check(
        "kubernetes-version",
        version.trim_start_matches('v') == VERSION.trim_start_matches('v'),
        format!("kubernetesVersion {version}; this kubeadm is {VERSION} (a label or another version would need the internet)"),
    );
    check_pull_policy(call, ic);
    let tokens: Vec<&str> = ic
        .get("bootstrapTokens")
        .and_then(Value::as_sequence)
        .map(|s| s.iter().filter_map(|t| get_str(t, &["token"])).collect())
        .unwrap_or_default();
    call.check(
        "bootstrap-token",
        !tokens.is_empty() && tokens.iter().all(|t| is_token(t)),
        format!("{} bootstrap tokens in InitConfiguration", tokens.len()),
    );
    if let Some(a) = get_str(ic, &["localAPIEndpoint", "advertiseAddress"]) {
        call.check(
            "advertise-address",
            a.parse::<std::net::IpAddr>().is_ok(),
            a,
        );
    }
    if let Some(kc) = doc(&docs, "KubeletConfiguration") {
        let d = get_str(kc, &["cgroupDriver"]).unwrap_or("(unset)");
        call.check(
            "cgroup-driver",
            d == "systemd",
            format!("KubeletConfiguration.cgroupDriver: {d}"),
        );
    }
    let repo = get_str(cc, &["imageRepository"]).unwrap_or("registry.k8s.io");
    check_images(call, &images(version, repo));
    if !call.ok || !preflight(call, INIT_LEFTOVERS) {
        return;
    }
    // What the real init writes before it waits for the control plane: a
    // failure after this point leaves all of it behind.
    let ca = under_root("/etc/kubernetes/pki/ca.crt");
    let kept = ca.is_file() && under_root("/etc/kubernetes/pki/ca.key").is_file();
    let mut files: Vec<(String, String)> = Vec::new();
    if !kept {
        files.push((
            "/etc/kubernetes/pki/ca.crt".into(),
            "# a NEW cluster CA made by the airlock kubeadm STAND-IN\n".into(),
        ));
        files.push((
            "/etc/kubernetes/pki/ca.key".into(),
            "# the key of a NEW cluster CA (stand-in)\n".into(),
        ));
    }
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "etcd",
    ] {
        files.push((
            format!("/etc/kubernetes/manifests/{c}.yaml"),
            format!("# static pod written by the airlock kubeadm STAND-IN\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {c}\n"),
        ));
    }
    files.push((
        "/var/lib/etcd/member/snap/db".into(),
        "stand-in etcd data\n".into(),
    ));
    for f in ["/etc/kubernetes/admin.conf", "/etc/kubernetes/kubelet.conf"] {
        files.push((
            f.into(),
            "# Written by the airlock kubeadm STAND-IN: no cluster behind it.\n\
             apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"
                .into(),
        ));
    }
    write_files(call, &files);
    call.check(
        "cluster-ca",
        true,
        if kept {
            format!("using the existing CA {}", ca.display())
        } else {
            format!("no CA in {}: made a new one", ca.display())
        },
    );
    if !call.ok
        || simulated_failure(
            call,
            "init-failures",
            "control-plane-up",
            "timed out waiting for the condition: the control plane did not come up",
        )
    {
        return;
    }
    say(
        "kubeadm",
        "init: the configuration meets the contract (no control plane was started: stand-in)",
    );
}

/// Files a finished or half-done `init` leaves, which its preflight refuses.
const INIT_LEFTOVERS: &[&str] = &[
    "/etc/kubernetes/manifests/kube-apiserver.yaml",
    "/etc/kubernetes/manifests/kube-controller-manager.yaml",
    "/etc/kubernetes/manifests/kube-scheduler.yaml",
    "/etc/kubernetes/manifests/etcd.yaml",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/etcd/member",
];

/// Files a finished or half-done `join` leaves, which its preflight refuses.
const JOIN_LEFTOVERS: &[&str] = &[
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/bootstrap-kubelet.conf",
    "/etc/kubernetes/pki/ca.crt",
];

/// kubeadm's preflight: none of `paths` may exist.
fn preflight(call: &mut Call, paths: &[&str]) -> bool {
    let there: Vec<String> = paths
        .iter()
        .filter(|p| under_root(p).exists())
        .map(|p| {
            // kubeadm names a check after the path, '/' turned into '-'.
            if p.starts_with("/var/lib/etcd/") {
                "[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty".to_string()
            } else {
                format!(
                    "[ERROR FileAvailable-{}]: {p} already exists",
                    p.replace('/', "-")
                )
            }
        })
        .collect();
    call.check(
        "preflight",
        there.is_empty(),
        if there.is_empty() {
            "nothing left from an earlier run".to_string()
        } else {
            there.join(" ")
        },
    )
}

/// Writes files under the root, recording a failure as a check.
fn write_files(call: &mut Call, files: &[(String, String)]) {
    for (f, text) in files {
        let path = under_root(f);
        let ok = std::fs::create_dir_all(path.parent().expect("has a parent"))
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = ok {
            call.check("files-written", false, format!("{}: {e}", path.display()));
            return;
        }
    }
    call.check(
        "files-written",
        true,
        files
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
}

/// A failure the test asked for: while `<state>/<counter>` holds a number
/// above zero, decrements it and records the failed check `name`.
fn simulated_failure(call: &mut Call, counter: &str, name: &str, what: &str) -> bool {
    let counter = state_dir().join(counter);
    let left: u32 = std::fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if left == 0 {
        return false;
    }
    let _ = std::fs::write(&counter, format!("{}\n", left - 1));
    call.check(
        name,
        false,
        format!("simulated: {what} ({} more to fail)", left - 1),
    );
    true
}

/// `kubeadm reset --force`: what the real reset deletes.
fn reset(call: &mut Call, args: &[String]) {
    if !args.iter().any(|a| a == "--force" || a == "-f") {
        // The real reset asks on the terminal; a unit has none.
        call.check(
            "force",
            false,
            "reset without --force waits for a yes on stdin",
        );
        return;
    }
    let mut removed = Vec::new();
    for dir in [
        "/etc/kubernetes/manifests",
        "/etc/kubernetes/pki",
        "/var/lib/kubelet",
        "/var/lib/etcd",
    ] {
        let d = under_root(dir);
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if gone.is_ok() {
                    removed.push(p.display().to_string());
                }
            }
        }
    }
    for f in [
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/super-admin.conf",
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "/etc/kubernetes/controller-manager.conf",
        "/etc/kubernetes/scheduler.conf",
    ] {
        if std::fs::remove_file(under_root(f)).is_ok() {
            removed.push(f.to_string());
        }
    }
    call.check("reset", true, format!("removed {}", removed.join(" ")));
    say(
        "kubeadm",
        "reset: removed what init and join write (stand-in)",
    );
}

fn join(call: &mut Call, args: &[String]) {
    let Some(docs) = config(call, args) else {
        return;
    };
    let Some(jc) = doc(&docs, "JoinConfiguration") else {
        call.check("join-configuration", false, "no JoinConfiguration document");
        return;
    };
    check_kubeadm_api(call, jc);
    check_pull_policy(call, jc);
    let token = get_str(jc, &["discovery", "bootstrapToken", "token"]).unwrap_or("");
    call.check(
        "discovery-token",
        is_token(token),
        format!("discovery.bootstrapToken.token {token:?}"),
    );
    let endpoint = get_str(jc, &["discovery", "bootstrapToken", "apiServerEndpoint"]).unwrap_or("");
    call.check(
        "api-server-endpoint",
        endpoint.contains(':'),
        format!("discovery.bootstrapToken.apiServerEndpoint {endpoint:?}"),
    );
    let hashes: Vec<&str> = jc
        .get("discovery")
        .and_then(|d| d.get("bootstrapToken"))
        .and_then(|b| b.get("caCertHashes"))
        .and_then(Value::as_sequence)
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let hash_ok = |h: &&str| {
        h.strip_prefix("sha256:")
            .is_some_and(|x| x.len() == 64 && x.chars().all(|c| c.is_ascii_hexdigit()))
    };
    call.check(
        "ca-cert-hash",
        !hashes.is_empty() && hashes.iter().all(hash_ok),
        format!("caCertHashes {hashes:?}"),
    );
    if !call.ok || !preflight(call, JOIN_LEFTOVERS) {
        return;
    }
    if simulated_failure(
        call,
        "join-failures",
        "control-plane-answers",
        &format!("dial tcp {endpoint}: connect: connection refused"),
    ) {
        return;
    }
    // What the real join leaves: the cluster CA from discovery, and
    // kubelet's kubeconfig after the TLS bootstrap.
    write_files(
        call,
        &[
            (
                "/etc/kubernetes/pki/ca.crt".into(),
                "# the cluster CA as discovery fetched it (stand-in)\n".into(),
            ),
            (
                "/etc/kubernetes/kubelet.conf".into(),
                "# Written by the airlock kubeadm STAND-IN.\napiVersion: v1\nkind: Config\n".into(),
            ),
        ],
    );
    if call.ok {
        say(
            "kubeadm",
            "join: the configuration meets the contract (nothing was joined: stand-in)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_follows_the_release() {
        assert_eq!(api_for("v1.34.11"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api_for("1.31.0"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api_for("1.30.14"), "kubeadm.k8s.io/v1beta3");
    }

    #[test]
    fn image_list_matches_kubeadm_1_34() {
        assert_eq!(
            images("1.34.11", "registry.k8s.io"),
            [
                "registry.k8s.io/kube-apiserver:v1.34.11",
                "registry.k8s.io/kube-controller-manager:v1.34.11",
                "registry.k8s.io/kube-scheduler:v1.34.11",
                "registry.k8s.io/kube-proxy:v1.34.11",
                "registry.k8s.io/coredns/coredns:v1.12.1",
                "registry.k8s.io/pause:3.10.1",
                "registry.k8s.io/etcd:3.6.5-0",
            ]
        );
        assert!(images("v1.34.11", "mirror.local/k8s")
            .contains(&"mirror.local/k8s/coredns:v1.12.1".to_string()));
    }
}
