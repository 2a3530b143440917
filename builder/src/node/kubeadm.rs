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

use anyhow::{bail, Context, Result};

use super::retry::{retry, Backoff};
use super::settings;
use super::{hostname, paths, route, say, write_atomic, write_with_mode, NodeRoot};
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
    // Normally done by airlock-hostname.service already; kubeadm must see
    // the same name the configuration registers.
    hostname::apply(root, &node.node.hostname)?;
    say(format!(
        "node {} (host name {}), role {}, Kubernetes {}, cluster {}",
        node.node.node_name(),
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
        plan.node.node.node_name(),
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

/// What a `kubeadm init` that stopped half-way leaves; its preflight
/// refuses to run again while any of it is there.
const INIT_LEFTOVERS: &[&str] = &[
    "/etc/kubernetes/manifests/kube-apiserver.yaml",
    "/etc/kubernetes/manifests/kube-controller-manager.yaml",
    "/etc/kubernetes/manifests/kube-scheduler.yaml",
    "/etc/kubernetes/manifests/etcd.yaml",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/super-admin.conf",
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/etcd/member",
];

/// What a `kubeadm join` that stopped half-way leaves.
const JOIN_LEFTOVERS: &[&str] = &[
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/bootstrap-kubelet.conf",
    "/etc/kubernetes/pki/ca.crt",
];

fn leftovers(root: &NodeRoot, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .filter(|p| root.path(p).symlink_metadata().is_ok())
        .map(|p| p.to_string())
        .collect()
}

/// The cluster CA baked into an init image; `kubeadm init` uses it when it
/// is there, and worker images carry its hash.
const CA_FILES: [(&str, u32); 2] = [("ca.crt", 0o644), ("ca.key", 0o600)];
const PKI: &str = "/etc/kubernetes/pki";

/// Keeps a copy of the baked CA in a root-only folder before anything can
/// delete it (`kubeadm reset` empties /etc/kubernetes/pki), and puts it
/// back in /etc/kubernetes/pki when it is missing or differs. The copy is
/// made once, from the image as built, and is the reference afterwards.
fn keep_ca(root: &NodeRoot) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let backup = root.path(paths::PKI_BACKUP);
    let have_backup = CA_FILES.iter().all(|(f, _)| backup.join(f).is_file());
    if !have_backup {
        let missing: Vec<String> = CA_FILES
            .iter()
            .map(|(f, _)| format!("{PKI}/{f}"))
            .filter(|p| !root.path(p).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the cluster CA this image was built with is missing ({}): kubeadm init would make a new \
                 one that worker images do not trust; write the image again (or restore ca.crt and ca.key \
                 from out/<cluster>/secrets on the build machine)",
                missing.join(", ")
            );
        }
        std::fs::create_dir_all(&backup)
            .with_context(|| format!("creating {}", backup.display()))?;
        std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} root-only", backup.display()))?;
        for (f, _) in CA_FILES {
            let data = std::fs::read(root.path(&format!("{PKI}/{f}")))
                .with_context(|| format!("reading {PKI}/{f}"))?;
            write_with_mode(&backup.join(f), &data, 0o600)?;
        }
        say(format!(
            "kept a copy of the cluster CA in {} (kubeadm reset deletes {PKI})",
            paths::PKI_BACKUP
        ));
    }
    let pki = root.path(PKI);
    for (f, mode) in CA_FILES {
        let want = std::fs::read(backup.join(f))
            .with_context(|| format!("reading {}/{f}", paths::PKI_BACKUP))?;
        let at = pki.join(f);
        if std::fs::read(&at).ok().as_deref() != Some(&want[..]) {
            std::fs::create_dir_all(&pki).with_context(|| format!("creating {PKI}"))?;
            std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {PKI} root-only"))?;
            write_with_mode(&at, &want, mode)?;
            say(format!("restored {PKI}/{f} from {}", paths::PKI_BACKUP));
        }
    }
    Ok(())
}

fn init(root: &NodeRoot, plan: &Plan, args: &KubeadmArgs) -> Result<()> {
    let initialized = root.path(paths::KUBEADM_INITIALIZED);
    if initialized.exists() {
        say(format!(
            "kubeadm init succeeded on an earlier boot ({} exists)",
            paths::KUBEADM_INITIALIZED
        ));
    } else {
        keep_ca(root)?;
        let left = leftovers(root, INIT_LEFTOVERS);
        if !left.is_empty() {
            say(format!(
                "an earlier kubeadm init stopped half-way (left {}): resetting before trying again, \
                 keeping the cluster CA",
                left.join(", ")
            ));
            tool(plan, "kubeadm", &["reset", "--force"])
                .context("cleaning up after a failed kubeadm init")?;
            keep_ca(root)?;
        }
        tool(
            plan,
            "kubeadm",
            &["init", "--config", path_str(&plan.config)],
        )
        .context(
            "running kubeadm init (its own messages are above; the next boot resets what it left \
             and tries again, keeping the cluster CA)",
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
        // A failed join can leave kubelet's files and the CA behind (this
        // boot or an earlier one), and kubeadm's preflight then refuses to
        // run again.
        let left = leftovers(root, JOIN_LEFTOVERS);
        if !left.is_empty() {
            say(format!(
                "an earlier kubeadm join stopped half-way (left {}): resetting first",
                left.join(", ")
            ));
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
