// SPDX-License-Identifier: Apache-2.0
//! OCI image index and manifest documents (and their Docker v2
//! equivalents), with platform matching.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a registry is asked to return for a manifest.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Foreign layers (Windows base layers) live elsewhere: refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, e.g. `linux/amd64`, `linux/arm64/v8`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            bail!("platform {s:?} must be os/arch or os/arch/variant, e.g. \"linux/amd64\" or \"linux/arm64/v8\"");
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            os_version: None,
        })
    }

    /// Whether an image's platform serves this wanted one: os and
    /// architecture equal; a wanted variant must match (arm64 images
    /// without one are v8).
    pub fn serves(&self, wanted: &Platform) -> bool {
        if self.os != wanted.os || self.architecture != wanted.architecture {
            return false;
        }
        match (&wanted.variant, &self.variant) {
            (None, _) => true,
            (Some(w), Some(v)) => w == v,
            (Some(w), None) => self.architecture == "arm64" && w == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The part of an image config that says what it runs on.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigPlatform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl ConfigPlatform {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            os_version: None,
        }
    }
}

/// A manifest document: a multi-platform index or one image.
#[derive(Clone, Debug)]
pub enum Doc {
    Index(Index),
    Image(Manifest),
}

impl Doc {
    /// Parses manifest bytes; `content_type` is the registry's header, if any.
    pub fn parse(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Doc> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            schema_version: Option<u32>,
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
            #[serde(default)]
            layers: Option<serde_json::Value>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).with_context(|| format!("parsing {what}: not JSON"))?;
        if probe.schema_version == Some(1) {
            bail!("{what} is a Docker schema 1 manifest, which is not supported: push the image again with a current client");
        }
        let mt = probe.media_type.as_deref().or(content_type).unwrap_or("");
        let is_index =
            mt.starts_with(OCI_INDEX) || mt.starts_with(DOCKER_LIST) || probe.manifests.is_some();
        let is_image = mt.starts_with(OCI_MANIFEST)
            || mt.starts_with(DOCKER_MANIFEST)
            || probe.layers.is_some();
        if is_index {
            let i: Index = serde_json::from_slice(bytes)
                .with_context(|| format!("parsing {what} as an image index"))?;
            Ok(Doc::Index(i))
        } else if is_image {
            let m: Manifest = serde_json::from_slice(bytes)
                .with_context(|| format!("parsing {what} as an image manifest"))?;
            for l in &m.layers {
                if !l.urls.is_empty() {
                    bail!(
                        "{what}: layer {} is a foreign layer served from {}: not supported",
                        l.digest,
                        l.urls.join(", ")
                    );
                }
            }
            Ok(Doc::Image(m))
        } else {
            bail!("{what} has media type {mt:?}, which is neither an image index nor an image manifest")
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Doc::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
            Doc::Image(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
        }
    }
}

/// Picks the index entry for `wanted`; the error lists what is offered.
pub fn select<'a>(index: &'a Index, wanted: &Platform, what: &str) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.serves(wanted)))
        .collect();
    // Prefer an exact variant match (arm64 v8 over arm64 without one).
    let exact = candidates
        .iter()
        .find(|d| d.platform.as_ref().map(|p| &p.variant) == Some(&wanted.variant));
    if let Some(d) = exact.or(candidates.first()) {
        return Ok(d);
    }
    let offered: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.architecture != "unknown")
        .map(|p| p.to_string())
        .collect();
    bail!(
        "{what} has no image for {wanted}; it offers {}",
        if offered.is_empty() {
            "no platforms".to_string()
        } else {
            offered.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn desc(p: &str) -> Descriptor {
        let pl = Platform::parse(p).unwrap();
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(p.as_bytes()))),
            size: 1,
            platform: Some(pl),
            annotations: Default::default(),
            urls: vec![],
        }
    }

    #[test]
    fn selects_platforms() {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                desc("linux/amd64"),
                desc("linux/arm64/v8"),
                desc("linux/arm/v7"),
            ],
            annotations: Default::default(),
        };
        let pick = |p: &str| {
            select(&index, &Platform::parse(p).unwrap(), "img")
                .map(|d| d.platform.clone().unwrap().to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick("linux/arm64").unwrap(), "linux/arm64/v8");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "linux/arm64/v8");
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("offers linux/amd64, linux/arm64/v8, linux/arm/v7"),
            "{err}"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
    }

    #[test]
    fn parses_kinds() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(matches!(Doc::parse(idx, None, "x").unwrap(), Doc::Index(_)));
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"c","digest":"sha256:0","size":1},"layers":[]}"#;
        assert!(matches!(
            Doc::parse(m, Some(DOCKER_MANIFEST), "x").unwrap(),
            Doc::Image(_)
        ));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(Doc::parse(v1, None, "x")
            .unwrap_err()
            .to_string()
            .contains("schema 1"));
    }
}
