// SPDX-License-Identifier: Apache-2.0
//! `airlock node …`: what a node image does at boot, run by the units the
//! build puts in the image (docs/first-boot.md is the contract).
//!
//! - `hostname`: apply the host name from node.toml (the operator may
//!   have edited it on the ESP) before kubelet and kubeadm.
//! - `images`: import the preload archives into containerd's `k8s.io`
//!   namespace, check every reference, pin them, and record what was done.
//! - `route`: give the node a default route through a dummy interface when
//!   it has none, so kubeadm and kubelet can choose the node address.
//! - `kubeadm`: render the kubeadm configuration from cluster.toml and
//!   node.toml, run `kubeadm init` (and apply the CNI manifest) or
//!   `kubeadm join` (retried with backoff), and write the done marker.
//!
//! Everything is printed on stdout with an `airlock:` prefix, which the
//! units send to the journal and the console.

pub mod hostname;
pub mod images;
pub mod kubeadm;
pub mod record;
pub mod retry;
pub mod route;
pub mod settings;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::node::{NodeArgs, NodeCmd};

/// Files of the contract, as absolute paths inside the node's root.
pub mod paths {
    pub use crate::kube::kubeadm::NODE_CONFIG as KUBEADM_YAML;
    pub use crate::kube::settings::{CLUSTER_TOML, NODE_TOML};
    pub use crate::kube::IMAGES_JSON;
    pub const IMAGES_IMPORTED: &str = "/var/lib/airlock/images.imported";
    pub const KUBEADM_INITIALIZED: &str = "/var/lib/airlock/kubeadm.initialized";
    pub const KUBEADM_DONE: &str = "/var/lib/airlock/kubeadm.done";
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    /// A root-only copy of an init image's cluster CA, made before the
    /// first `kubeadm init` (a reset after a failed one deletes the pki).
    pub const PKI_BACKUP: &str = "/var/lib/airlock/pki-backup";
    /// A recipe's template overrides, if the build copied them.
    pub const TEMPLATES: &str = "/usr/lib/airlock/templates";
}

/// The node's root: `/` on a node; a folder in tests or when repairing a
/// mounted disk.
#[derive(Debug, Clone)]
pub struct NodeRoot(PathBuf);

impl NodeRoot {
    pub fn new(root: impl Into<PathBuf>) -> NodeRoot {
        NodeRoot(root.into())
    }

    /// Whether this is the running system (the network may be changed).
    pub fn is_live(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// Where an absolute node path is found from here.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
    }
}

/// Prints one `airlock:` line on stdout (the unit's journal and console).
pub fn say(msg: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    for line in msg.as_ref().lines() {
        let _ = writeln!(out, "airlock: {line}");
    }
    let _ = out.flush();
}

/// Writes `data` to `path` through a temporary file in the same folder,
/// so a crash never leaves a half-written file under the final name; the
/// file is root's alone (0600).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_with_mode(path, data, 0o600)
}

/// [`write_atomic`] with another `mode`, set from the first byte (a key is never
/// readable by others, not even for a moment; /etc/hostname is by all).
pub(crate) fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("a file path has a parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // The umask may have narrowed the mode at creation.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming the temporary file to {}", path.display()))?;
    Ok(())
}

/// Runs one `airlock node` subcommand. Failures are printed with the
/// `airlock:` prefix, so the console shows them, and exit with status 1.
pub fn run(args: NodeArgs) -> Result<()> {
    let root = NodeRoot::new(args.root);
    let (what, result) = match args.cmd {
        NodeCmd::Hostname(_) => ("setting the host name", hostname::run(&root)),
        NodeCmd::Images(a) => ("importing images", images::run(&root, &a)),
        NodeCmd::Route(_) => ("adding a default route", route::run(&root).map(|_| ())),
        NodeCmd::Kubeadm(a) => ("bootstrapping Kubernetes", kubeadm::run(&root, &a)),
    };
    if let Err(e) = result {
        say(format!("FAILED {what}: {e:#}"));
        say("the unit fails now and runs again at the next boot; its log: journalctl -b -u 'airlock-*'");
        std::process::exit(1);
    }
    Ok(())
}
