// SPDX-License-Identifier: Apache-2.0
//! The kubeadm configuration, and the images it needs.
//!
//! [`render`] is the one function that turns cluster.toml + node.toml into
//! kubeadm's configuration: the build calls it to check the configuration
//! (and to ask kubeadm for its image list), and `airlock node kubeadm` calls
//! it again at first boot with the node's final settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;

use super::images::normalize_ref;
use super::settings::{ClusterSettings, NodeSettings};
use super::spec::Role;
use super::version::Version;
use crate::cmd::CommandRunExt;
use crate::render::Renderer;

/// containerd's CRI socket, as kubeadm and crictl name it.
pub const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";
/// Where the node writes the rendered configuration.
pub const NODE_CONFIG: &str = "/etc/kubernetes/airlock/kubeadm.yaml";

/// `host:port`, adding kubeadm's default port 6443 when there is none.
pub fn endpoint_with_port(e: &str) -> String {
    let e = e.trim();
    let has_port = if let Some(rest) = e.strip_prefix('[') {
        rest.contains("]:")
    } else {
        e.matches(':').count() == 1
    };
    if has_port {
        e.to_string()
    } else if e.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{e}]:6443")
    } else {
        format!("{e}:6443")
    }
}

fn context(cluster: &ClusterSettings, node: &NodeSettings) -> Result<serde_json::Value> {
    cluster.validate().context("checking cluster.toml")?;
    node.validate().context("checking node.toml")?;
    let v = Version::parse_exact("kubernetes_version", &cluster.kubernetes_version)?;
    let n = &node.node;
    if n.role == Role::Init && cluster.bootstrap_token.is_none() {
        bail!("an init node needs bootstrap_token in cluster.toml (the token worker images join with)");
    }
    // kubelet flags from kubeadm-flags.env override its configuration file.
    let mut kubelet_args: Vec<(&str, String)> = Vec::new();
    if let Some(a) = n.advertise_address {
        kubelet_args.push(("node-ip", a.to_string()));
    }
    if cluster.keep_swap && n.role == Role::Join {
        // A worker's KubeletConfiguration is the cluster's (the control
        // plane's); this node's swap must not stop its kubelet.
        kubelet_args.push(("fail-swap-on", "false".into()));
    }
    Ok(json!({
        "kubelet_args": kubelet_args
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v }))
            .collect::<Vec<_>>(),
        "api": cluster.kubeadm_api,
        "v1beta4": cluster.kubeadm_api.ends_with("/v1beta4"),
        "kubernetes_version": v.with_v(),
        "cluster": cluster,
        // Every key present (null when unset): templates run with strict undefined.
        "node": {
            "name": n.node_name(),
            "hostname": n.hostname,
            "role": n.role,
            "advertise_address": n.advertise_address.map(|a| a.to_string()),
            "advertise_interface": n.advertise_interface,
        },
        "join": node.join,
        "control_plane_endpoint": endpoint_with_port(&n.control_plane_endpoint),
        "cri_socket": CRI_SOCKET,
    }))
}

/// Renders the kubeadm configuration for a node: InitConfiguration +
/// ClusterConfiguration + KubeletConfiguration for role init,
/// JoinConfiguration for role join. A node with only `advertise_interface`
/// must have resolved it into `advertise_address` before calling this when
/// it wants the address pinned; without one kubeadm picks the address of
/// the default route.
pub fn render(
    renderer: &Renderer,
    cluster: &ClusterSettings,
    node: &NodeSettings,
) -> Result<String> {
    let ctx = context(cluster, node)?;
    renderer
        .render("kube/kubeadm.yaml.j2", &ctx)
        .context("rendering the kubeadm configuration")
}

/// Just the ClusterConfiguration, which is what `kubeadm config images
/// list` needs (a join configuration carries no version).
pub fn render_cluster_only(
    renderer: &Renderer,
    cluster: &ClusterSettings,
    node: &NodeSettings,
) -> Result<String> {
    let ctx = context(cluster, node)?;
    renderer
        .render("kube/kubeadm-cluster.yaml.j2", &ctx)
        .context("rendering the kubeadm ClusterConfiguration")
}

/// The images kubeadm pulls, and where the list came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    pub images: Vec<String>,
    /// kubeadm's pause (sandbox) image.
    pub pause: String,
    /// For the build log: "kubeadm 1.34.11 run on the build host", or the table.
    pub source: String,
}

impl ImageList {
    fn new(images: Vec<String>, source: String) -> Result<ImageList> {
        let Some(pause) = images.iter().find(|i| component(i) == "pause").cloned() else {
            bail!("{source} lists no pause image: {}", images.join(", "));
        };
        Ok(ImageList {
            images,
            pause,
            source,
        })
    }

    /// What a node of `role` runs: workers never run the control-plane
    /// static pods (API server, controller manager, scheduler, etcd).
    pub fn for_role(&self, role: Role) -> Vec<String> {
        self.images
            .iter()
            .filter(|i| role == Role::Init || !CONTROL_PLANE_ONLY.contains(&component(i).as_str()))
            .cloned()
            .collect()
    }
}

const CONTROL_PLANE_ONLY: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
];

/// The last path component of a reference, without tag or digest.
fn component(r: &str) -> String {
    let name = r.split('@').next().unwrap_or(r);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split(':').next().unwrap_or(last).to_string()
}

/// Whether the build host's kernel can run `path`: an ELF for this machine.
pub fn host_can_run(path: &Path) -> bool {
    let mut head = [0u8; 20];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if std::io::Read::read_exact(&mut f, &mut head).is_err() || &head[..4] != b"\x7fELF" {
        return false;
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let host = match std::env::consts::ARCH {
        "x86_64" => 62,
        "aarch64" => 183,
        _ => return false,
    };
    head[5] == 1 && machine == host
}

/// Asks the baked kubeadm for its image list when the build host can run
/// it (without a network: `unshare --net` where available), else uses the
/// table shipped in airlock. `notes` says which one was used.
pub fn images(
    kubeadm: &Path,
    config: &str,
    cluster: &ClusterSettings,
    notes: &mut Vec<String>,
) -> Result<ImageList> {
    if host_can_run(kubeadm) {
        match run_kubeadm_version(kubeadm) {
            Ok(v) => {
                check_version(&v, &cluster.kubernetes_version)?;
                return images_from_kubeadm(kubeadm, config, &v);
            }
            Err(e) => notes.push(format!(
                "the baked kubeadm does not run on this build host ({e:#}); using airlock's image table"
            )),
        }
    } else {
        notes.push("the baked kubeadm is not a program this build host can run; using airlock's image table".into());
    }
    from_table(cluster)
}

/// The baked kubeadm must be the release the recipe names: another one
/// would set up another version than the configuration and images say.
fn check_version(reported: &str, wanted: &str) -> Result<()> {
    let want = Version::parse_exact("kubernetes.version", wanted)?;
    let ok = Version::parse_exact("kubeadm version", reported.trim()).is_ok_and(|v| v == want);
    if !ok {
        bail!(
            "kubernetes.kubeadm is kubeadm {:?} (`kubeadm version -o short`) but kubernetes.version is {want}: \
             pin the kubeadm (and kubelet, kubectl) of release {want}, or set the version to kubeadm's",
            reported.trim()
        );
    }
    Ok(())
}

fn sandboxed(kubeadm: &Path) -> Command {
    // kubeadm must never reach out for a version or an image list: give it
    // no network at all when the host allows a new network namespace.
    let unshare = crate::cmd::which("unshare");
    let netns = unshare.is_some() && rustix::process::geteuid().is_root();
    let mut c = if netns {
        let mut c = Command::new(unshare.expect("checked"));
        c.arg("--net").arg("--").arg(kubeadm);
        c
    } else {
        Command::new(kubeadm)
    };
    c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

fn run_kubeadm_version(kubeadm: &Path) -> Result<String> {
    let out = sandboxed(kubeadm)
        .args(["version", "-o", "short"])
        .run_get_string()?;
    Ok(out.trim().to_string())
}

fn images_from_kubeadm(kubeadm: &Path, config: &str, version: &str) -> Result<ImageList> {
    let dir = tempfile::tempdir()
        .context("creating a temporary directory for the kubeadm configuration")?;
    let file = dir.path().join("kubeadm.yaml");
    std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
    let out = sandboxed(kubeadm)
        .args(["config", "images", "list", "-o", "json", "--config"])
        .arg(&file)
        .run_get_string()
        .context("asking the baked kubeadm which images the configuration needs")?;
    #[derive(Deserialize)]
    struct Out {
        images: Vec<String>,
    }
    let images = match serde_json::from_str::<Out>(&out) {
        Ok(o) => o.images,
        // Older kubeadm without `-o json`: one image per line.
        Err(_) => out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    };
    ImageList::new(images, format!("kubeadm {version} (run on the build host)"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    kubernetes: BTreeMap<String, TableEntry>,
}

#[derive(Deserialize)]
struct TableEntry {
    images: Vec<String>,
    #[serde(default)]
    verify: bool,
}

const TABLE: &str = include_str!("../../data/k8s-images.toml");
const DEFAULT_REPOSITORY: &str = "registry.k8s.io";

/// The image list from airlock's table: the exact release, or the newest
/// patch of the same minor with the kube-* tags set to the release.
pub fn from_table(cluster: &ClusterSettings) -> Result<ImageList> {
    let table: Table = toml::from_str(TABLE).context("reading airlock's image table")?;
    let want = Version::parse_exact("kubernetes_version", &cluster.kubernetes_version)?;
    let mut same_minor: Vec<(Version, &TableEntry)> = table
        .kubernetes
        .iter()
        .filter_map(|(k, e)| Version::parse_exact("table", k).ok().map(|v| (v, e)))
        .filter(|(v, _)| v.minor_key() == want.minor_key())
        .collect();
    same_minor.sort_by_key(|(v, _)| (v.patch, v.pre.clone()));
    let Some((base, entry)) = same_minor
        .iter()
        .find(|(v, _)| *v == want)
        .or(same_minor.last())
    else {
        let known: Vec<&String> = table.kubernetes.keys().collect();
        bail!(
            "the baked kubeadm cannot run on this build host and airlock's image table has no Kubernetes {}.{} \
             (it knows {}): build on an {} host so kubeadm can list its images, or use a release the table knows",
            want.major,
            want.minor,
            known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            std::env::consts::ARCH
        );
    };
    let mut images = Vec::new();
    for i in &entry.images {
        let mut img = i.clone();
        if component(i).starts_with("kube-") {
            img = format!(
                "{}:{}",
                i.rsplit_once(':').map_or(i.as_str(), |(n, _)| n),
                want.with_v()
            );
        }
        if cluster.image_repository != DEFAULT_REPOSITORY {
            // kubeadm puts CoreDNS under coredns/ only in the default repository.
            let path = img.strip_prefix("registry.k8s.io/").unwrap_or(&img);
            let path = path.strip_prefix("coredns/").unwrap_or(path);
            img = format!("{}/{path}", cluster.image_repository);
        }
        images.push(img);
    }
    let mut source = if *base == want {
        format!("airlock's image table for Kubernetes {want}")
    } else {
        format!(
            "airlock's image table (add-on tags of {base}, the newest {}.{} it knows)",
            want.major, want.minor
        )
    };
    if entry.verify {
        source.push_str("; the table marks these tags as inferred: check them with `kubeadm config images list`");
    }
    ImageList::new(images, source)
}

/// Why an image is needed, for the error that names a missing one.
#[derive(Debug, Clone)]
pub struct Needed {
    pub reference: String,
    pub why: String,
}

/// Every needed image must be carried by a preloaded archive; each missing
/// one is named.
pub fn check_coverage(needed: &[Needed], present: &BTreeMap<String, String>) -> Result<()> {
    let mut missing = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for n in needed {
        let r = normalize_ref(&n.reference)
            .with_context(|| format!("image {:?} ({})", n.reference, n.why))?;
        // Exact references: pause:3.10.1 neither provides nor hides pause:3.10.
        if !present.contains_key(&r) && named.insert(r.clone()) {
            missing.push(format!("{r} ({})", n.why));
        }
    }
    if !missing.is_empty() {
        let have: Vec<&str> = present.keys().map(String::as_str).collect();
        bail!(
            "{} image(s) the node needs are in no [[image]] archive, so the node would try to pull them:\n  {}\n\
             the archives carry: {}\nadd archives holding them (e.g. `ctr images export` on a connected machine)",
            missing.len(),
            missing.join("\n  "),
            if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
