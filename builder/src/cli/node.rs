// SPDX-License-Identifier: Apache-2.0
//! `airlock node …`: the commands the first-boot units run on a node.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Run the first-boot steps on a node (the image's units call these).
///
/// These run on the booted node, from the airlock binary the build copied
/// to /usr/lib/airlock/airlock, and read what the build left there
/// (docs/first-boot.md). They print every step with an `airlock:` prefix
/// for the journal and the console, and can be rerun safely.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub cmd: NodeCmd,

    /// Read and write the node's files under DIR instead of / (tests, or a
    /// node's disk mounted elsewhere); the network is then left alone.
    #[arg(
        long,
        global = true,
        default_value = "/",
        value_name = "DIR",
        help_heading = "Advanced Options"
    )]
    pub root: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    Hostname(HostnameArgs),
    Images(ImagesArgs),
    Route(RouteArgs),
    Kubeadm(KubeadmArgs),
}

/// Apply the host name from node.toml.
///
/// Writes it to /etc/hostname and the 127.0.1.1 line of /etc/hosts, and
/// sets the running host name, so an operator who edited node.toml on the
/// ESP gets that name before kubelet and kubeadm start. The Kubernetes node
/// name follows it unless node.toml sets `name`.
#[derive(Debug, Args)]
pub struct HostnameArgs {}

/// Import the preloaded image archives into containerd.
///
/// Imports every archive in /usr/lib/airlock/images.json into containerd's
/// k8s.io namespace (decompressing gzip or zstd first: `ctr images import`
/// reads plain tar), checks that containerd lists every reference, pins
/// them against kubelet's image garbage collection and records the
/// archives' sha256 in /var/lib/airlock/images.imported. Recorded archives
/// are skipped on later boots; a changed one is imported again. Needs a
/// running containerd and `ctr` on PATH.
#[derive(Debug, Args)]
pub struct ImagesArgs {}

/// Add a default route through a dummy interface if the node has none.
///
/// kubeadm and kubelet choose the node address from the default route's
/// interface. When there is no default route, airlock adds the interface
/// airlock0 with the node address (node.toml) and a low-priority default
/// route through it; an existing default route is never touched.
#[derive(Debug, Args)]
pub struct RouteArgs {}

/// Run kubeadm init or join once, from cluster.toml and node.toml.
///
/// Renders /etc/kubernetes/airlock/kubeadm.yaml, then for role "init" runs
/// `kubeadm init` and applies the CNI manifest, for role "join" runs
/// `kubeadm join`, retrying with backoff until the control plane answers.
/// Writes /var/lib/airlock/kubeadm.done on success and does nothing once it
/// exists.
#[derive(Debug, Args)]
pub struct KubeadmArgs {
    /// How many times to try `kubeadm join` before failing (the unit runs
    /// again at the next boot).
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub join_attempts: u32,

    /// Seconds to wait after the first failed join; doubled each time.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub join_backoff: u64,

    /// The longest wait between joins, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub join_backoff_max: u64,

    /// How many times to try applying the CNI manifest after init.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "N",
        help_heading = "Advanced Options"
    )]
    pub apply_attempts: u32,
}
