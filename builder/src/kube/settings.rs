// SPDX-License-Identifier: Apache-2.0
//! The build↔node contract (docs/first-boot.md): cluster-wide settings
//! baked into `/usr/lib/airlock/cluster.toml`, and per-node settings in
//! `/airlock/node.toml` on the ESP. The build writes both; the node reads
//! them back and renders its kubeadm configuration from them with
//! [`super::kubeadm::render`], so both sides share these types.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::net;
use super::spec::Role;
use super::version::{self, Version};

/// Where the build puts cluster.toml, and the node reads it.
pub const CLUSTER_TOML: &str = "/usr/lib/airlock/cluster.toml";
/// Where node.toml is on the ESP, and (mounted) on the node.
pub const NODE_TOML_ESP: &str = "airlock/node.toml";
pub const NODE_TOML: &str = "/boot/efi/airlock/node.toml";

/// `/usr/lib/airlock/cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Exact release without the `v`, e.g. "1.34.11".
    pub kubernetes_version: String,
    /// "kubeadm.k8s.io/v1beta4" (1.31 and later) or "kubeadm.k8s.io/v1beta3".
    pub kubeadm_api: String,
    pub cluster_name: String,
    pub pod_subnet: String,
    pub service_subnet: String,
    pub image_repository: String,
    /// Go duration, e.g. "8760h0m0s".
    pub token_ttl: String,
    /// Where kubeadm, kubelet and kubectl are.
    pub bin_dir: String,
    /// The CNI manifest to apply after `kubeadm init`.
    pub cni_manifest: String,
    /// The sandbox image: kubeadm's pause image, preloaded.
    pub pause_image: String,
    /// The node's platform, e.g. "linux/amd64".
    pub platform: String,
    /// The node keeps its swap ([host] swap = "keep"): kubelet must not
    /// refuse it, and pods get none (1.30 and later).
    #[serde(default)]
    pub keep_swap: bool,
    /// Init images only: the bootstrap token the InitConfiguration creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
}

/// `/airlock/node.toml` on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    pub node: NodeSection,
    /// Join images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Kubernetes node name, when it must differ from the host name
    /// (default: the host name, so editing `hostname` renames the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Applied at first boot (/etc/hostname and the running system).
    pub hostname: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<IpAddr>,
    /// Used on the node when no address is given: the node looks up the
    /// interface's address and sets `advertise_address` before rendering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_interface: Option<String>,
    /// `host:port` of the API server: what workers join, and the init
    /// node's `controlPlaneEndpoint`.
    pub control_plane_endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSection {
    pub token: String,
    /// "sha256:<hex of the CA's SubjectPublicKeyInfo>".
    pub ca_cert_hash: String,
}

/// Whether `s` is a kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn is_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

impl ClusterSettings {
    pub fn from_toml(text: &str, what: &str) -> Result<ClusterSettings> {
        let c: ClusterSettings = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{what}: {}", e.message().trim_end()))?;
        c.validate().with_context(|| what.to_string())?;
        Ok(c)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(format!(
            "# Written by airlock: cluster-wide settings of this node image (docs/first-boot.md).\n{}",
            toml::to_string(self)?
        ))
    }

    /// The checks the node relies on before rendering (the file may have
    /// been edited).
    pub fn validate(&self) -> Result<()> {
        let v = Version::parse_exact("kubernetes_version", &self.kubernetes_version)?;
        let api = v.kubeadm_api()?;
        if self.keep_swap && v.minor_key() < (1, 30) {
            bail!("keep_swap = true needs Kubernetes 1.30 or later (swapBehavior NoSwap); this is {v}");
        }
        if self.kubeadm_api != api {
            bail!(
                "kubeadm_api {:?} does not fit Kubernetes {v}, which takes {api:?}",
                self.kubeadm_api
            );
        }
        if self.cluster_name.is_empty() || self.cluster_name.contains(char::is_whitespace) {
            bail!(
                "cluster_name {:?} is empty or has spaces",
                self.cluster_name
            );
        }
        net::parse_subnets(&self.pod_subnet).context("pod_subnet")?;
        net::parse_subnets(&self.service_subnet).context("service_subnet")?;
        version::parse_duration(&self.token_ttl).context("token_ttl")?;
        super::images::normalize_ref(&self.pause_image).context("pause_image")?;
        super::images::Platform::parse(&self.platform)?;
        if !self.cni_manifest.starts_with('/') {
            bail!(
                "cni_manifest {:?} is not an absolute path",
                self.cni_manifest
            );
        }
        if !self.bin_dir.starts_with('/') {
            bail!("bin_dir {:?} is not an absolute path", self.bin_dir);
        }
        if let Some(t) = &self.bootstrap_token {
            if !is_token(t) {
                bail!("bootstrap_token is not a kubeadm token ([a-z0-9]{{6}}.[a-z0-9]{{16}})");
            }
        }
        Ok(())
    }
}

impl NodeSection {
    /// The Kubernetes node name: `name`, else the host name in lowercase
    /// (what kubelet itself would register).
    pub fn node_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.hostname.to_ascii_lowercase())
    }
}

impl NodeSettings {
    pub fn from_toml(text: &str, what: &str) -> Result<NodeSettings> {
        let n: NodeSettings = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{what}: {}", e.message().trim_end()))?;
        n.validate().with_context(|| what.to_string())?;
        Ok(n)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(format!(
            "# Per-node settings of an airlock image (docs/first-boot.md). Edit them\n\
             # here before the first boot to reuse one image for another node.\n{}",
            toml::to_string(self)?
        ))
    }

    pub fn validate(&self) -> Result<()> {
        let n = &self.node;
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        };
        if let Some(name) = &n.name {
            if !dns(name) {
                bail!("node.name {name:?} is not a lowercase DNS name");
            }
        }
        // One label: it is also the kernel's host name (at most 64 bytes).
        if !dns(&n.hostname.to_ascii_lowercase()) || n.hostname.contains('.') {
            bail!(
                "node.hostname {:?} is not a host name (letters, digits and '-', at most 63)",
                n.hostname
            );
        }
        if let Some(i) = &n.advertise_interface {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ', ':', '"']) {
                bail!("node.advertise_interface {i:?} is not an interface name");
            }
        }
        net::check_endpoint(&n.control_plane_endpoint).context("node.control_plane_endpoint")?;
        match (n.role, &self.join) {
            (Role::Join, None) => bail!(
                "node.role is \"join\" but there is no [join] section with token and ca_cert_hash"
            ),
            (Role::Join, Some(j)) => {
                if !is_token(&j.token) {
                    bail!("join.token is not a kubeadm token ([a-z0-9]{{6}}.[a-z0-9]{{16}})");
                }
                let hex = j.ca_cert_hash.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "join.ca_cert_hash {:?} is not \"sha256:<64 hex digits>\"",
                        j.ca_cert_hash
                    );
                }
            }
            // An init node ignores [join]: an operator may keep it while
            // turning a worker stick into a control plane.
            (Role::Init, _) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(is_token("abcdef.0123456789abcdef"));
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
        ] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn contract_example_parses() {
        // The examples in docs/first-boot.md, verbatim.
        let doc = include_str!("../../../docs/first-boot.md");
        let block = |after: &str| {
            let start = doc.find(after).unwrap();
            let rest = &doc[start..];
            let open = rest.find("```toml\n").unwrap() + 8;
            let close = rest[open..].find("```").unwrap();
            rest[open..open + close].to_string()
        };
        let node = NodeSettings::from_toml(&block("### `node.toml`"), "node.toml").unwrap();
        assert_eq!(node.node.role, Role::Init);
        let mut join = node.clone();
        join.node.role = Role::Join;
        join.validate().unwrap_err();
        let cluster =
            ClusterSettings::from_toml(&block("### `cluster.toml`"), "cluster.toml").unwrap();
        assert_eq!(cluster.kubernetes_version, "1.34.11");
        assert_eq!(
            ClusterSettings::from_toml(&cluster.to_toml().unwrap(), "x").unwrap(),
            cluster
        );
    }
}
