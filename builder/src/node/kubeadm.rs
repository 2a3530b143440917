// SPDX-License-Identifier: Apache-2.0
//! `airlock node kubeadm`: turns the machine into the first control plane
//! (`kubeadm init`, then the CNI manifest) or a worker (`kubeadm join`,
//! retried with backoff until the control plane answers), once.
//!
//! Progress survives a failed boot: `kubeadm.initialized` is written as
//! soon as `kubeadm init` succeeded, so a later boot only applies the CNI
//! manifest; `kubeadm.done` ends it (the unit has
//! `ConditionPathExists=!/var/lib/airlock/kubeadm.done`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::retry::{retry, Backoff};
use super::settings;
use super::{paths, route, say, write_atomic, NodeRoot};
use crate::cli::node::KubeadmArgs;
use crate::cmd::CommandRunExt;
use crate::kube::settings::{ClusterSettings, NodeSettings};
use crate::kube::spec::Role;
use crate::render::Renderer;

/// The steps' inputs, read and resolved once.
struct Plan {
    cluster: ClusterSettings,
    node: NodeSettings,
    /// Where kubeadm, kubelet and kubectl are, from here.
    bin: PathBuf,
    /// The rendered configuration's path, from here.
    config: PathBuf,
}

pub fn run(root: &NodeRoot, args: &KubeadmArgs) -> Result<()> {
    let done = root.path(paths::KUBEADM_DONE);
    if done.exists() {
        say(format!(
            "{} exists: this node was set up before; nothing to do",
            paths::KUBEADM_DONE
        ));
        return Ok(());
    }
    let cluster = settings::load_cluster(&root.path(paths::CLUSTER_TOML))?;
    let mut node = settings::load_node(&root.path(paths::NODE_TOML))?;
    say(format!(
        "node {} ({}), role {}, Kubernetes {}, cluster {}",
        node.node.name,
        node.node.hostname,
        node.node.role.as_str(),
        cluster.kubernetes_version,
        cluster.cluster_name
    ));
    // The address goes into the configuration: kubeadm needs a literal
    // address, and advertise_interface is only known here.
    if let Some(a) = route::ensure(root, &node.node)? {
        if node.node.advertise_address != Some(a) {
            say(format!("node address: {a}"));
        }
        node.node.advertise_address = Some(a);
    }
    let plan = Plan {
        bin: root.path(&cluster.bin_dir),
        config: root.path(paths::KUBEADM_YAML),
        cluster,
        node,
    };
    let text = render(root, &plan.cluster, &plan.node)?;
    write_atomic(&plan.config, text.as_bytes()).context("writing the kubeadm configuration")?;
    say(format!(
        "wrote the kubeadm configuration {}",
        paths::KUBEADM_YAML
    ));

    match plan.node.node.role {
        Role::Init => init(root, &plan, args)?,
        Role::Join => join(root, &plan, args)?,
    }
    write_atomic(&done, b"").context("writing the done marker")?;
    say(format!(
        "kubeadm {} done: {} is part of cluster {} ({} written)",
        plan.node.node.role.as_str(),
        plan.node.node.name,
        plan.cluster.cluster_name,
        paths::KUBEADM_DONE
    ));
    Ok(())
}

/// The final kubeadm configuration, with the templates the build used:
/// airlock's own are embedded in this binary; a recipe's overrides are in
/// /usr/lib/airlock/templates when the build put them there.
fn render(root: &NodeRoot, cluster: &ClusterSettings, node: &NodeSettings) -> Result<String> {
    let overrides = root.path(paths::TEMPLATES);
    let renderer = Renderer::new(overrides.is_dir().then_some(overrides));
    crate::kube::kubeadm::render(&renderer, cluster, node)
}

/// Runs a Kubernetes tool, echoing its output with the `airlock:` prefix.
fn tool(plan: &Plan, name: &str, args: &[&str]) -> Result<()> {
    let path = plan.bin.join(name);
    let mut c = Command::new(&path);
    c.args(args);
    say(format!("running {}", crate::cmd::shell_line(&c)));
    c.run_streaming(None, &mut |l| say(format!("{name}: {l}")))
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn init(root: &NodeRoot, plan: &Plan, args: &KubeadmArgs) -> Result<()> {
    let initialized = root.path(paths::KUBEADM_INITIALIZED);
    if initialized.exists() {
        say(format!(
            "kubeadm init succeeded on an earlier boot ({} exists)",
            paths::KUBEADM_INITIALIZED
        ));
    } else {
        tool(
            plan,
            "kubeadm",
            &["init", "--config", path_str(&plan.config)],
        )
        .context(
            "running kubeadm init (its own messages are above; a half-done init must be \
             cleaned up by hand: keep /etc/kubernetes/pki/ca.*, `kubeadm reset`, then reboot)",
        )?;
        write_atomic(&initialized, b"").context("writing the init marker")?;
    }
    let manifest = root.path(&plan.cluster.cni_manifest);
    let kubeconfig = root.path(paths::ADMIN_CONF);
    let apply = |_| {
        tool(
            plan,
            "kubectl",
            &[
                "--kubeconfig",
                path_str(&kubeconfig),
                "apply",
                "-f",
                path_str(&manifest),
            ],
        )
    };
    // The API server can take a moment after init returns.
    let b = Backoff {
        attempts: args.apply_attempts,
        initial: Duration::from_secs(5),
        max: Duration::from_secs(30),
    };
    retry(&b, "applying the CNI manifest", apply, std::thread::sleep)
        .with_context(|| format!("applying the CNI manifest {}", plan.cluster.cni_manifest))?;
    Ok(())
}

fn join(root: &NodeRoot, plan: &Plan, args: &KubeadmArgs) -> Result<()> {
    let b = Backoff {
        attempts: args.join_attempts,
        initial: Duration::from_secs(args.join_backoff),
        max: Duration::from_secs(args.join_backoff_max),
    };
    say(format!(
        "joining through {} (up to {} attempts over about {} minutes)",
        plan.node.node.control_plane_endpoint,
        b.attempts,
        b.total_wait().as_secs().div_ceil(60)
    ));
    let attempt = |_| -> Result<()> {
        // A failed join can leave kubelet's files behind (this boot or an
        // earlier one), and kubeadm's preflight then refuses to run again.
        let leftovers = [
            "/etc/kubernetes/kubelet.conf",
            "/etc/kubernetes/bootstrap-kubelet.conf",
        ]
        .iter()
        .any(|p| root.path(p).exists());
        if leftovers {
            tool(plan, "kubeadm", &["reset", "--force"])
                .context("cleaning up after a failed join")?;
        }
        tool(
            plan,
            "kubeadm",
            &["join", "--config", path_str(&plan.config)],
        )
    };
    retry(&b, "kubeadm join", attempt, std::thread::sleep)
}
