// SPDX-License-Identifier: Apache-2.0
//! STAND-INS for kubeadm, kubelet and kubectl, for airlock's boot tests.
//!
//! The real binaries cannot be downloaded on the machines that run the
//! tests, so the test recipe installs this one program as kubeadm, kubelet
//! and kubectl. It acts on the name it is called by, and it does not pretend
//! to be a cluster: it records its arguments as one JSON line in
//! `/var/lib/airlock-standin/<tool>.log` and checks the contract airlock's
//! first boot must meet (the --config file exists and parses as YAML, names
//! the pinned Kubernetes version or a discovery token, and the images the
//! step needs are in containerd's k8s.io namespace). A failed check makes it
//! exit non-zero, as the real tool would fail on a node.
//!
//! Environment (tests on the build host): AIRLOCK_STANDIN_DIR replaces
//! /var/lib/airlock-standin, AIRLOCK_STANDIN_ROOT is where files the real
//! tool writes go (default /), and `ctr` honours CONTAINERD_ADDRESS.

mod common;
mod kubeadm;
mod kubectl;
mod kubelet;

/// The Kubernetes release these stand-ins play.
pub const VERSION: &str = "v1.34.11";

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let argv0 = args.remove(0);
    let mut name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `airlock-standin kubeadm init …` works too.
    if !["kubeadm", "kubelet", "kubectl"].contains(&name.as_str()) && !args.is_empty() {
        name = args.remove(0);
    }
    let code = match name.as_str() {
        "kubeadm" => kubeadm::main(&args),
        "kubelet" => kubelet::main(&args),
        "kubectl" => kubectl::main(&args),
        other => {
            eprintln!(
                "airlock stand-in: called as {other:?}; install me as kubeadm, kubelet or kubectl"
            );
            2
        }
    };
    std::process::exit(code);
}
