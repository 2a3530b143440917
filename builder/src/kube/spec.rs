// SPDX-License-Identifier: Apache-2.0
//! The recipe's Kubernetes sections: `[kubernetes]`, `[containerd]`,
//! `[cni]`, `[[image]]`, `[cluster]` and `[host]`, with their validation and
//! the pinned inputs they add. A recipe without `[kubernetes]` builds a plain
//! image and may use none of them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::net::{self, Cidr};
use super::version::{self, Version};
use crate::recipe::{InputRef, Loaded};

/// A downloaded file pinned by digest: `{ source = "https://…", sha256 = "…" }`.
/// Without `sha256` the digest must come from the lock file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    /// A URL (already in the cache) or a path relative to the recipe.
    pub source: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// The exact release, e.g. "1.34.11" (labels and bare minors are refused).
    pub version: Spanned<String>,
    pub kubeadm: Pinned,
    pub kubelet: Pinned,
    pub kubectl: Pinned,
    /// Where the three binaries go (and what the kubelet unit runs).
    #[serde(default = "default_bin_dir")]
    pub bin_dir: Spanned<String>,
    /// The node's platform: images are checked and imported for it.
    #[serde(default = "default_platform")]
    pub platform: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Containerd {
    /// The containerd release (decides the config format); required also
    /// with `packaged`, where it must be the base's version.
    pub version: Spanned<String>,
    /// Use the base's packaged containerd and runc instead of release files.
    #[serde(default)]
    pub packaged: bool,
    /// containerd-<v>-linux-<arch>.tar.gz: `bin/*` goes to /usr/local/bin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Pinned>,
    /// The runc binary: /usr/local/sbin/runc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runc: Option<Pinned>,
    /// crictl-<v>-linux-<arch>.tar.gz: crictl goes to kubernetes.bin_dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crictl: Option<Pinned>,
    /// cni-plugins-linux-<arch>-<v>.tgz: unpacked into the first cni_bin_dirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_plugins: Option<Pinned>,
    /// The pod sandbox image; default: the pause image kubeadm lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_image: Option<Spanned<String>>,
    /// Where containerd looks for CNI plugins (several need containerd 2.1).
    #[serde(default = "default_cni_bin_dirs")]
    pub cni_bin_dirs: Spanned<Vec<String>>,
    #[serde(default = "default_cni_conf_dir")]
    pub cni_conf_dir: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cni {
    /// The manifest applied after `kubeadm init` (flannel's kube-flannel.yml).
    pub manifest: Pinned,
    /// The pod network the manifest configures; must equal cluster.pod_subnet
    /// (default: cluster.pod_subnet, checked against the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_network: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// An OCI image layout tarball or a `docker save` archive, optionally
    /// gzip or zstd compressed.
    #[serde(default = "no_source")]
    pub source: Spanned<String>,
    /// Instead of `source`: an image in a registry, e.g.
    /// "registry.k8s.io/pause:3.10" (optionally `@sha256:…`), pinned to its
    /// digest by the reference or `airlock lock` and pulled for `platform`
    /// into an OCI archive by `airlock fetch`. Loading copies it into
    /// `source` (see `registry::adopt_image_refs`).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Spanned<String>>,
    /// The references the archive must carry (read from the archive itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    /// Default: kubernetes.platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default = "default_cluster_name")]
    pub name: Spanned<String>,
    #[serde(default = "default_pod_subnet")]
    pub pod_subnet: Spanned<String>,
    #[serde(default = "default_service_subnet")]
    pub service_subnet: Spanned<String>,
    /// `host:port` of the API server; the default for every node's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<Spanned<String>>,
    /// How long the bootstrap token lives after `kubeadm init` (kubeadm's
    /// own default of 24h is too short for media carried across a gap).
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Spanned<String>,
    #[serde(default = "default_image_repository")]
    pub image_repository: Spanned<String>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            name: default_cluster_name(),
            pod_subnet: default_pod_subnet(),
            service_subnet: default_service_subnet(),
            control_plane_endpoint: None,
            token_ttl: default_token_ttl(),
            image_repository: default_image_repository(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// "enforcing", "permissive" or "disabled" (default: permissive when
    /// the base has SELinux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<Spanned<String>>,
    /// "disable" (default, when the base has firewalld) or "open" the
    /// Kubernetes and flannel ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewalld: Option<Spanned<String>>,
    /// "off" (default: swap off, Fedora's swap on zram too) or "keep" the
    /// base's swap: kubelet then runs with `failSwapOn: false` and pods get
    /// none of it (`swapBehavior: NoSwap`, Kubernetes 1.30 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Spanned<String>>,
    /// e.g. "UTC" or "Europe/Oslo" (default: the base's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<Spanned<String>>,
    /// NTP servers inside the gap (chrony or systemd-timesyncd); the base's
    /// internet pools are dropped when set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
}

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn no_source() -> Spanned<String> {
    sp(String::new())
}
fn default_bin_dir() -> Spanned<String> {
    sp("/usr/local/bin".into())
}
fn default_platform() -> Spanned<String> {
    sp("linux/amd64".into())
}
fn default_cni_bin_dirs() -> Spanned<Vec<String>> {
    sp(vec!["/opt/cni/bin".into()])
}
fn default_cni_conf_dir() -> Spanned<String> {
    sp("/etc/cni/net.d".into())
}
fn default_cluster_name() -> Spanned<String> {
    sp("kubernetes".into())
}
fn default_pod_subnet() -> Spanned<String> {
    sp("10.244.0.0/16".into())
}
fn default_service_subnet() -> Spanned<String> {
    sp("10.96.0.0/12".into())
}
/// One year: long enough for worker media made months after the control plane.
pub const DEFAULT_TOKEN_TTL: &str = "8760h";
fn default_token_ttl() -> Spanned<String> {
    sp(DEFAULT_TOKEN_TTL.into())
}
fn default_image_repository() -> Spanned<String> {
    sp("registry.k8s.io".into())
}

/// The node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The first control plane: `kubeadm init`.
    Init,
    /// A worker: `kubeadm join`.
    Join,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Join => "join",
        }
    }
}

/// The node's role from the recipe (default init).
pub fn role(l: &Loaded) -> Result<Role> {
    match &l.recipe.node.role {
        None => Ok(Role::Init),
        Some(r) => match r.get_ref().as_str() {
            "init" => Ok(Role::Init),
            "join" => Ok(Role::Join),
            other => bail!(
                "{}: node.role {other:?} is not \"init\" (first control plane) or \"join\" (worker)",
                l.at(r)
            ),
        },
    }
}

/// Checks the Kubernetes sections (called from recipe validation).
pub fn validate(l: &Loaded) -> Result<()> {
    let r = &l.recipe;
    let Some(k) = &r.kubernetes else {
        let node = &r.node;
        let stray: Vec<(&str, Option<String>)> = vec![
            (
                "[containerd]",
                r.containerd.as_ref().map(|c| l.at(&c.version)),
            ),
            ("[cni]", r.cni.as_ref().map(|c| l.at(&c.manifest.source))),
            ("[[image]]", r.images.first().map(|i| l.at(&i.source))),
            ("[cluster]", r.cluster.as_ref().map(|c| l.at(&c.name))),
            (
                "[host]",
                r.host.as_ref().map(|_| l.path.display().to_string()),
            ),
            ("node.role", node.role.as_ref().map(|x| l.at(x))),
            ("node.name", node.name.as_ref().map(|x| l.at(x))),
            (
                "node.advertise_address",
                node.advertise_address.as_ref().map(|x| l.at(x)),
            ),
            (
                "node.advertise_interface",
                node.advertise_interface.as_ref().map(|x| l.at(x)),
            ),
            (
                "node.control_plane_endpoint",
                node.control_plane_endpoint.as_ref().map(|x| l.at(x)),
            ),
        ];
        if let Some((what, Some(at))) = stray.into_iter().find(|(_, at)| at.is_some()) {
            bail!("{at}: {what} is for Kubernetes nodes: add a [kubernetes] section with the exact version and the kubeadm, kubelet and kubectl binaries");
        }
        return Ok(());
    };
    let kv = Version::parse_exact("kubernetes.version", k.version.get_ref())
        .with_context(|| l.at(&k.version))?;
    kv.kubeadm_api().with_context(|| l.at(&k.version))?;
    for (name, p) in [
        ("kubeadm", &k.kubeadm),
        ("kubelet", &k.kubelet),
        ("kubectl", &k.kubectl),
    ] {
        check_pinned(l, &format!("kubernetes.{name}"), p)?;
    }
    check_abs(l, "kubernetes.bin_dir", &k.bin_dir)?;
    check_platform(l, "kubernetes.platform", &k.platform)?;

    let Some(c) = &r.containerd else {
        bail!(
            "{}: a Kubernetes node needs a container runtime: add [containerd] with `packaged = true` \
             and the base's `version`, or the release tarball, runc, crictl and CNI plugins",
            l.path.display()
        );
    };
    let cv = Version::parse_exact("containerd.version", c.version.get_ref())
        .with_context(|| l.at(&c.version))?;
    version::containerd_config_version(&cv).with_context(|| l.at(&c.version))?;
    if c.packaged {
        for (name, p) in [("release", &c.release), ("runc", &c.runc)] {
            if let Some(p) = p {
                bail!("{}: containerd.{name} is set but containerd.packaged = true uses the base's: keep one", l.at(&p.source));
            }
        }
    } else {
        for (name, p) in [("release", &c.release), ("runc", &c.runc)] {
            if p.is_none() {
                bail!(
                    "{}: [containerd] needs `{name} = {{ source = \"…\", sha256 = \"…\" }}`, or `packaged = true` to use the base's containerd",
                    l.at(&c.version)
                );
            }
        }
    }
    for (name, p) in [
        ("release", &c.release),
        ("runc", &c.runc),
        ("crictl", &c.crictl),
        ("cni_plugins", &c.cni_plugins),
    ] {
        if let Some(p) = p {
            check_pinned(l, &format!("containerd.{name}"), p)?;
        }
    }
    let dirs = c.cni_bin_dirs.get_ref();
    if dirs.is_empty() {
        bail!(
            "{}: containerd.cni_bin_dirs is empty: name where the CNI plugins are",
            l.at(&c.cni_bin_dirs)
        );
    }
    if dirs.len() > 1 && (cv.major, cv.minor) < (2, 1) {
        bail!(
            "{}: containerd {cv} takes one CNI bin dir (bin_dirs came in 2.1): keep one in containerd.cni_bin_dirs",
            l.at(&c.cni_bin_dirs)
        );
    }
    for d in dirs {
        if !d.starts_with('/') || d.split('/').any(|c| c == "..") {
            bail!(
                "{}: containerd.cni_bin_dirs entry {d:?} must be an absolute path without '..'",
                l.at(&c.cni_bin_dirs)
            );
        }
    }
    check_abs(l, "containerd.cni_conf_dir", &c.cni_conf_dir)?;
    if let Some(s) = &c.sandbox_image {
        super::images::normalize_ref(s.get_ref())
            .with_context(|| format!("{}: containerd.sandbox_image", l.at(s)))?;
    }

    let cluster = r.cluster.clone().unwrap_or_default();
    let name = cluster.name.get_ref();
    if !is_dns_label(name) {
        bail!(
            "{}: cluster.name {name:?} must be lowercase letters, digits and '-' (it names out/<cluster>/secrets)",
            l.at(&cluster.name)
        );
    }
    let pods = net::parse_subnets(cluster.pod_subnet.get_ref())
        .with_context(|| format!("{}: cluster.pod_subnet", l.at(&cluster.pod_subnet)))?;
    let svcs = net::parse_subnets(cluster.service_subnet.get_ref())
        .with_context(|| format!("{}: cluster.service_subnet", l.at(&cluster.service_subnet)))?;
    for p in &pods {
        if let Some(s) = svcs.iter().find(|s| s.overlaps(p)) {
            bail!(
                "{}: cluster.pod_subnet {p} overlaps cluster.service_subnet {s}: pick disjoint ranges",
                l.at(&cluster.pod_subnet)
            );
        }
    }
    if let Some(e) = &cluster.control_plane_endpoint {
        net::check_endpoint(e.get_ref())
            .with_context(|| format!("{}: cluster.control_plane_endpoint", l.at(e)))?;
    }
    version::parse_duration(cluster.token_ttl.get_ref())
        .with_context(|| format!("{}: cluster.token_ttl", l.at(&cluster.token_ttl)))?;
    let repo = cluster.image_repository.get_ref();
    if repo.is_empty()
        || repo.contains("://")
        || repo.ends_with('/')
        || repo.contains(char::is_whitespace)
    {
        bail!(
            "{}: cluster.image_repository {repo:?} must be a registry path like \"registry.k8s.io\" (no scheme, no trailing '/')",
            l.at(&cluster.image_repository)
        );
    }

    let node = &r.node;
    let role = role(l)?;
    if let Some(n) = &node.name {
        if !is_dns_subdomain(n.get_ref()) {
            bail!(
                "{}: node.name {:?} must be a lowercase DNS name (letters, digits, '-' and '.')",
                l.at(n),
                n.get_ref()
            );
        }
    } else if !is_dns_subdomain(node.hostname.get_ref()) {
        bail!(
            "{}: node.hostname {:?} is not a valid Kubernetes node name (lowercase): set node.name",
            l.at(&node.hostname),
            node.hostname.get_ref()
        );
    }
    if let Some(a) = &node.advertise_address {
        a.get_ref().parse::<std::net::IpAddr>().map_err(|_| {
            anyhow::anyhow!(
                "{}: node.advertise_address {:?} is not an IP address",
                l.at(a),
                a.get_ref()
            )
        })?;
    }
    if let Some(i) = &node.advertise_interface {
        let v = i.get_ref();
        if v.is_empty() || v.len() > 15 || v.contains(['/', ' ', ':']) {
            bail!(
                "{}: node.advertise_interface {v:?} is not a network interface name like \"eth0\"",
                l.at(i)
            );
        }
    }
    if let Some(e) = &node.control_plane_endpoint {
        net::check_endpoint(e.get_ref())
            .with_context(|| format!("{}: node.control_plane_endpoint", l.at(e)))?;
    }
    if node.control_plane_endpoint.is_none() && cluster.control_plane_endpoint.is_none() {
        let need = match role {
            Role::Join => "a worker needs the control plane's address to join",
            Role::Init => {
                "the control plane needs the address its workers join (its controlPlaneEndpoint)"
            }
        };
        if role == Role::Join || node.advertise_address.is_none() {
            bail!(
                "{}: {need}: set cluster.control_plane_endpoint (or node.control_plane_endpoint), e.g. \"10.0.0.10:6443\"",
                node.role.as_ref().map(|x| l.at(x)).unwrap_or_else(|| l.path.display().to_string())
            );
        }
    }

    let Some(cni) = &r.cni else {
        bail!(
            "{}: a Kubernetes node needs its pod network: add [cni] with the manifest, e.g. \
             `manifest = {{ source = \"https://github.com/flannel-io/flannel/releases/download/v0.28.9/kube-flannel.yml\", sha256 = \"…\" }}`",
            l.path.display()
        );
    };
    {
        check_pinned(l, "cni.manifest", &cni.manifest)?;
        if let Some(p) = &cni.pod_network {
            let net = Cidr::parse(p.get_ref())
                .with_context(|| format!("{}: cni.pod_network", l.at(p)))?;
            if !pods.iter().any(|c| c.same_network(&net)) {
                bail!(
                    "{}: cni.pod_network {net} differs from cluster.pod_subnet {}: pods would get addresses the CNI does not route; make them equal",
                    l.at(p),
                    cluster.pod_subnet.get_ref()
                );
            }
        }
    }
    for (i, img) in r.images.iter().enumerate() {
        check_pinned(
            l,
            &format!("image[{i}]"),
            &Pinned {
                source: img.source.clone(),
                sha256: img.sha256.clone(),
            },
        )?;
        if let Some(p) = &img.platform {
            check_platform(l, &format!("image[{i}].platform"), p)?;
        }
        for rf in &img.refs {
            super::images::normalize_ref(rf)
                .with_context(|| format!("{}: image[{i}].refs", l.at(&img.source)))?;
        }
    }
    if let Some(h) = &r.host {
        check_choice(
            l,
            "host.selinux",
            &h.selinux,
            &["enforcing", "permissive", "disabled"],
        )?;
        check_choice(l, "host.firewalld", &h.firewalld, &["disable", "open"])?;
        check_choice(l, "host.swap", &h.swap, &["off", "keep"])?;
        if let Some(s) = h.swap.as_ref().filter(|s| s.get_ref() == "keep") {
            if kv.minor_key() < (1, 30) {
                bail!(
                    "{}: host.swap = \"keep\" needs Kubernetes 1.30 or later (kubelet's swapBehavior NoSwap, which keeps \
                     pods out of swap, came in 1.30); this recipe has {kv}: use \"off\"",
                    l.at(s)
                );
            }
        }
        if let Some(tz) = &h.timezone {
            let v = tz.get_ref();
            if v.is_empty() || v.starts_with('/') || v.split('/').any(|c| c == ".." || c.is_empty())
            {
                bail!(
                    "{}: host.timezone {v:?} is not a zone name like \"UTC\" or \"Europe/Oslo\"",
                    l.at(tz)
                );
            }
        }
        for s in &h.ntp {
            if s.is_empty() || s.contains(char::is_whitespace) || s.contains('/') {
                bail!(
                    "{}: host.ntp entry {s:?} is not a host name or address",
                    l.path.display()
                );
            }
        }
    }
    Ok(())
}

fn check_choice(
    l: &Loaded,
    key: &str,
    v: &Option<Spanned<String>>,
    allowed: &[&str],
) -> Result<()> {
    if let Some(v) = v {
        if !allowed.contains(&v.get_ref().as_str()) {
            bail!(
                "{}: {key} {:?} is not one of {}",
                l.at(v),
                v.get_ref(),
                allowed.join(", ")
            );
        }
    }
    Ok(())
}

fn check_pinned(l: &Loaded, key: &str, p: &Pinned) -> Result<()> {
    if p.source.get_ref().is_empty() {
        bail!("{}: {key}.source is empty", l.at(&p.source));
    }
    if let Some(s) = &p.sha256 {
        let v = s.get_ref();
        if v.len() != 64
            || !v
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            bail!(
                "{}: {key}.sha256 {v:?} is not a sha256 (64 lowercase hex digits); take it from the .sha256 file published next to the download",
                l.at(s)
            );
        }
    }
    Ok(())
}

fn check_abs(l: &Loaded, key: &str, s: &Spanned<String>) -> Result<()> {
    let v = s.get_ref();
    if !v.starts_with('/') || v.split('/').any(|c| c == "..") {
        bail!(
            "{}: {key} {v:?} must be an absolute path inside the image without '..'",
            l.at(s)
        );
    }
    Ok(())
}

fn check_platform(l: &Loaded, key: &str, s: &Spanned<String>) -> Result<()> {
    super::images::Platform::parse(s.get_ref()).with_context(|| format!("{}: {key}", l.at(s)))?;
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The inputs the Kubernetes sections add, after the recipe's own, so the
/// cache verifies them, the lock file can pin them and the manifest lists
/// them. `dest` is where each lands (`/var/lib/airlock/images/…` for image
/// archives is decided later, from the digest).
pub fn inputs(l: &Loaded) -> Vec<InputRef> {
    let r = &l.recipe;
    let mut out = Vec::new();
    let Some(k) = &r.kubernetes else { return out };
    let mut add = |what: String, p: &Pinned, dest: String| {
        let s = p.source.get_ref();
        let resolved = if crate::recipe::is_url(s) {
            crate::inputs::Source::Url(s.clone())
        } else {
            crate::inputs::Source::Path(l.resolve(Path::new(s)))
        };
        out.push(InputRef {
            what,
            source: s.clone(),
            resolved,
            sha256: p.sha256.as_ref().map(|s| s.get_ref().clone()),
            at: p
                .sha256
                .as_ref()
                .map(|s| l.at(s))
                .unwrap_or_else(|| l.at(&p.source)),
            dest,
        });
    };
    let bin = k.bin_dir.get_ref().trim_end_matches('/');
    add(
        "kubernetes.kubeadm".into(),
        &k.kubeadm,
        format!("{bin}/kubeadm"),
    );
    add(
        "kubernetes.kubelet".into(),
        &k.kubelet,
        format!("{bin}/kubelet"),
    );
    add(
        "kubernetes.kubectl".into(),
        &k.kubectl,
        format!("{bin}/kubectl"),
    );
    if let Some(c) = &r.containerd {
        if let Some(p) = &c.release {
            add("containerd.release".into(), p, "/usr/local".into());
        }
        if let Some(p) = &c.runc {
            add("containerd.runc".into(), p, "/usr/local/sbin/runc".into());
        }
        if let Some(p) = &c.crictl {
            add("containerd.crictl".into(), p, format!("{bin}/crictl"));
        }
        if let Some(p) = &c.cni_plugins {
            let d = c
                .cni_bin_dirs
                .get_ref()
                .first()
                .cloned()
                .unwrap_or_default();
            add("containerd.cni_plugins".into(), p, d);
        }
    }
    if let Some(cni) = &r.cni {
        add(
            "cni.manifest".into(),
            &cni.manifest,
            format!(
                "{}/{}",
                super::CNI_DIR,
                super::cni::file_name(cni.manifest.source.get_ref())
            ),
        );
    }
    let mut pulled = Vec::new();
    for (i, img) in r.images.iter().enumerate() {
        if let Some(rf) = &img.reference {
            let platform = img.platform.as_ref().unwrap_or(&k.platform).get_ref();
            pulled.push(crate::registry::image_input(
                l,
                i,
                rf,
                platform,
                super::IMAGES_DIR,
            ));
            continue;
        }
        let p = Pinned {
            source: img.source.clone(),
            sha256: img.sha256.clone(),
        };
        add(format!("image[{i}]"), &p, super::IMAGES_DIR.into());
    }
    out.extend(pulled);
    out
}
