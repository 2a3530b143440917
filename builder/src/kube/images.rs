// SPDX-License-Identifier: Apache-2.0
//! Container image archives to preload: OCI image layout tarballs and
//! `docker save` archives, plain or gzip/zstd compressed (found by magic
//! bytes). The references an archive carries are read from the archive
//! itself (`index.json` annotations, `manifest.json` RepoTags), for the
//! node's platform; an index that lists platforms whose blobs are missing is
//! accepted for the platform that is present.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Files bigger than this are layers, never JSON we need to read.
const MAX_JSON: u64 = 4 << 20;
/// All JSON kept from one archive, at most.
const MAX_KEPT: u64 = 64 << 20;

/// An OS/architecture[/variant] as in `linux/amd64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => bail!("platform {s:?} is not like \"linux/amd64\" or \"linux/arm/v7\""),
        }
    }

    fn from_json(v: &Value) -> Option<Platform> {
        let os = v.get("os")?.as_str()?.to_string();
        let arch = v.get("architecture")?.as_str()?.to_string();
        let variant = v
            .get("variant")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Some(Platform { os, arch, variant })
    }

    /// Whether an image for `self` runs on a node of platform `want`
    /// (`want` without a variant takes any; arm64 is arm64/v8).
    pub fn serves(&self, want: &Platform) -> bool {
        if self.os != want.os || self.arch != want.arch {
            return false;
        }
        let norm = |p: &Platform| match (p.arch.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        want.variant.is_none() || norm(self) == norm(want)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A reference in the fully qualified form containerd stores:
/// `flannel/flannel:v0.22.0` → `docker.io/flannel/flannel:v0.22.0`,
/// `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize_ref(s: &str) -> Result<String> {
    let t = s.trim();
    if t.is_empty() || t.contains(char::is_whitespace) || t.contains("://") {
        bail!("{s:?} is not an image reference like \"registry.k8s.io/pause:3.10\"");
    }
    let (name, digest) = match t.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (t, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    let mut comps: Vec<&str> = repo.split('/').collect();
    let domain = if comps.len() > 1
        && (comps[0].contains('.') || comps[0].contains(':') || comps[0] == "localhost")
    {
        comps.remove(0).to_string()
    } else {
        "docker.io".to_string()
    };
    if domain == "docker.io" && comps.len() == 1 {
        comps.insert(0, "library");
    }
    let comp_ok = |c: &&str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !comps.iter().all(comp_ok) {
        bail!("{s:?} is not an image reference: repository names are lowercase letters, digits and ._-");
    }
    if let Some(tag) = tag {
        if tag.is_empty()
            || tag.len() > 128
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            bail!("{s:?}: tag {tag:?} is not valid");
        }
    }
    let mut out = format!("{domain}/{}", comps.join("/"));
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        if !d.starts_with("sha256:") || d.len() != 71 {
            bail!("{s:?}: digest {d:?} is not sha256:<64 hex>");
        }
        out.push('@');
        out.push_str(d);
    }
    Ok(out)
}

/// How an archive is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(magic: &[u8]) -> Result<Compression> {
        Ok(if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) || magic.starts_with(b"BZh")
        {
            bail!("xz and bzip2 are not read at first boot: recompress the archive with zstd or gzip (or leave it plain)")
        } else {
            Compression::None
        })
    }

    /// File name extension in /var/lib/airlock/images.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
        }
    }

    /// A reader that undoes this compression.
    pub fn reader<'a, R: Read + 'a>(self, r: R) -> Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(r).context("starting zstd decompression")?,
            ),
        })
    }
}

/// The two archive formats `ctr images import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// OCI image layout (index.json, blobs/).
    Oci,
    /// `docker save` (manifest.json with RepoTags).
    DockerArchive,
}

/// What an archive holds for the node's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub compression: Compression,
    pub format: Format,
    /// Normalized references of the images usable on the platform, sorted.
    pub refs: Vec<String>,
    /// Platforms listed by an index whose blobs are not in the archive.
    pub missing_platforms: Vec<String>,
}

/// The archive's files: all names, and the content of small JSON ones.
struct Contents {
    names: BTreeSet<String>,
    json: BTreeMap<String, Vec<u8>>,
}

impl Contents {
    fn read(path: &Path) -> Result<(Compression, Contents)> {
        let shown = path.display();
        let mut f = BufReader::new(
            File::open(path).with_context(|| format!("opening image archive {shown}"))?,
        );
        let mut magic = [0u8; 6];
        let n = read_up_to(&mut f, &mut magic)
            .with_context(|| format!("reading image archive {shown}"))?;
        let comp =
            Compression::sniff(&magic[..n]).with_context(|| format!("image archive {shown}"))?;
        let stream = std::io::Cursor::new(magic[..n].to_vec()).chain(f);
        let mut archive = tar::Archive::new(comp.reader(stream)?);
        let mut c = Contents {
            names: BTreeSet::new(),
            json: BTreeMap::new(),
        };
        let mut kept = 0u64;
        let entries = archive
            .entries()
            .with_context(|| format!("reading image archive {shown} as tar"))?;
        for e in entries {
            let mut e = e.with_context(|| {
                format!("reading image archive {shown}: not a tar archive, or truncated")
            })?;
            if !matches!(
                e.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            ) {
                continue;
            }
            let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let name = raw.trim_start_matches("./").to_string();
            let size = e.header().size().unwrap_or(u64::MAX);
            if size <= MAX_JSON && kept + size <= MAX_KEPT {
                let mut head = [0u8; 1];
                let mut buf = Vec::with_capacity(size as usize);
                let n = e
                    .read(&mut head)
                    .with_context(|| format!("reading {name} in {shown}"))?;
                if n == 1 && (head[0] == b'{' || head[0] == b'[') {
                    buf.push(head[0]);
                    e.read_to_end(&mut buf)
                        .with_context(|| format!("reading {name} in {shown}"))?;
                    kept += size;
                    c.json.insert(name.clone(), buf);
                }
            }
            c.names.insert(name);
        }
        if c.names.is_empty() {
            bail!("image archive {shown} holds no files (an empty or non-tar file?)");
        }
        Ok((comp, c))
    }

    fn has_blob(&self, digest: &str) -> bool {
        self.names.contains(&blob_path(digest))
    }

    fn blob_json(&self, digest: &str) -> Option<Value> {
        self.json
            .get(&blob_path(digest))
            .and_then(|b| serde_json::from_slice(b).ok())
    }
}

fn blob_path(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("blobs/{alg}/{hex}"),
        None => format!("blobs/{digest}"),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Where one descriptor of index.json leads, per platform.
#[derive(Default)]
struct Found {
    /// Platforms whose manifest, config and layers are all present.
    present: Vec<Platform>,
    /// Platforms the index lists without their blobs.
    missing: Vec<Platform>,
}

/// Reads an archive and returns the references usable on `want`.
pub fn read_archive(path: &Path, want: &Platform) -> Result<ArchiveInfo> {
    let (compression, c) = Contents::read(path)?;
    let shown = path.display();
    let has_index = c.names.contains("index.json");
    let has_docker = c.names.contains("manifest.json");
    if !has_index && !has_docker {
        bail!(
            "image archive {shown} is neither an OCI image layout (no index.json) nor a `docker save` archive \
             (no manifest.json): export it with `ctr images export`, `skopeo copy … oci-archive:` or `docker save`"
        );
    }
    let mut refs = BTreeSet::new();
    let mut seen_platforms = BTreeSet::new();
    let mut missing_platforms = BTreeSet::new();
    let mut tag_only = Vec::new();
    if has_index {
        let index: Value = c
            .json
            .get("index.json")
            .and_then(|b| serde_json::from_slice(b).ok())
            .with_context(|| format!("image archive {shown}: index.json is not JSON"))?;
        let descs = index["manifests"].as_array().cloned().unwrap_or_default();
        for d in &descs {
            let found = walk(&c, d, 0).with_context(|| format!("image archive {shown}"))?;
            missing_platforms.extend(found.missing.iter().map(|p| p.to_string()));
            seen_platforms.extend(found.present.iter().map(|p| p.to_string()));
            if !found.present.iter().any(|p| p.serves(want)) {
                continue;
            }
            let ann = &d["annotations"];
            let full = ann["io.containerd.image.name"].as_str();
            if let Some(n) = full {
                refs.insert(
                    normalize_ref(n).with_context(|| {
                        format!("image archive {shown}: io.containerd.image.name")
                    })?,
                );
            }
            if let Some(n) = ann["org.opencontainers.image.ref.name"].as_str() {
                // A full reference, or (per the OCI spec) just a tag.
                if n.contains('/') || n.contains(':') || n.contains('@') {
                    refs.insert(normalize_ref(n).with_context(|| {
                        format!("image archive {shown}: org.opencontainers.image.ref.name")
                    })?);
                } else if full.is_none() {
                    tag_only.push(n.to_string());
                }
            }
        }
    }
    if has_docker {
        let list: Value = c
            .json
            .get("manifest.json")
            .and_then(|b| serde_json::from_slice(b).ok())
            .with_context(|| format!("image archive {shown}: manifest.json is not JSON"))?;
        for (i, m) in list
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let config = m["Config"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("./");
            let Some(cfg) = c
                .json
                .get(config)
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            else {
                bail!("image archive {shown}: manifest.json entry {i} names config {config:?}, which is missing");
            };
            for layer in m["Layers"].as_array().cloned().unwrap_or_default() {
                let l = layer.as_str().unwrap_or_default().trim_start_matches("./");
                if !c.names.contains(l) {
                    bail!("image archive {shown}: layer {l:?} of manifest.json entry {i} is missing (a truncated archive?)");
                }
            }
            let Some(p) = Platform::from_json(&cfg) else {
                bail!("image archive {shown}: config {config} has no os/architecture");
            };
            seen_platforms.insert(p.to_string());
            if !p.serves(want) {
                continue;
            }
            for t in m["RepoTags"].as_array().cloned().unwrap_or_default() {
                if let Some(t) = t.as_str() {
                    refs.insert(
                        normalize_ref(t)
                            .with_context(|| format!("image archive {shown}: RepoTags"))?,
                    );
                }
            }
        }
    }
    if refs.is_empty() {
        let found: Vec<String> = seen_platforms.into_iter().collect();
        if !found.is_empty()
            && !found
                .iter()
                .any(|p| Platform::parse(p).is_ok_and(|p| p.serves(want)))
        {
            bail!(
                "image archive {shown} has no image for the node's platform {want} (it holds {}): export the {want} image, or set the platform",
                found.join(", ")
            );
        }
        if !tag_only.is_empty() {
            bail!(
                "image archive {shown} names its image only by the tag {:?} (org.opencontainers.image.ref.name), which is no full \
                 reference; export it with its full name (`ctr images export` or `skopeo copy … oci-archive:FILE:registry/name:tag`)",
                tag_only.join(", ")
            );
        }
        bail!(
            "image archive {shown} carries no usable image reference for {want} (no io.containerd.image.name or \
             org.opencontainers.image.ref.name annotation, no RepoTags): containerd would import it unnamed"
        );
    }
    Ok(ArchiveInfo {
        compression,
        format: if has_index {
            Format::Oci
        } else {
            Format::DockerArchive
        },
        refs: refs.into_iter().collect(),
        missing_platforms: missing_platforms.into_iter().collect(),
    })
}

/// Follows one descriptor: an index (recursively) or a manifest.
fn walk(c: &Contents, d: &Value, depth: u32) -> Result<Found> {
    let mut found = Found::default();
    let digest = d["digest"].as_str().unwrap_or_default();
    let mt = d["mediaType"].as_str().unwrap_or_default();
    let listed = d.get("platform").and_then(Platform::from_json);
    if depth > 4 {
        bail!("indexes nested deeper than 4 levels at {digest}");
    }
    if !c.has_blob(digest) {
        match listed {
            Some(p) if depth > 0 => {
                found.missing.push(p);
                return Ok(found);
            }
            _ => bail!("index.json names {digest}, whose blob is missing (a truncated archive?)"),
        }
    }
    let Some(blob) = c.blob_json(digest) else {
        bail!("blob {digest} ({mt}) is not JSON");
    };
    let mt = if mt.is_empty() {
        blob["mediaType"].as_str().unwrap_or_default().to_string()
    } else {
        mt.to_string()
    };
    if INDEX_TYPES.contains(&mt.as_str()) || blob.get("manifests").is_some() {
        for child in blob["manifests"].as_array().cloned().unwrap_or_default() {
            let f = walk(c, &child, depth + 1)?;
            found.present.extend(f.present);
            found.missing.extend(f.missing);
        }
        return Ok(found);
    }
    if !MANIFEST_TYPES.contains(&mt.as_str()) && blob.get("layers").is_none() {
        return Ok(found); // attestations and other artifacts: not an image
    }
    let cfg_digest = blob["config"]["digest"].as_str().unwrap_or_default();
    if !c.has_blob(cfg_digest) {
        bail!("config {cfg_digest} of manifest {digest} is missing (a truncated archive?)");
    }
    for l in blob["layers"].as_array().cloned().unwrap_or_default() {
        let ld = l["digest"].as_str().unwrap_or_default();
        if !c.has_blob(ld) {
            bail!("layer {ld} of manifest {digest} is missing (a truncated archive?)");
        }
    }
    let platform = listed.or_else(|| {
        c.blob_json(cfg_digest)
            .as_ref()
            .and_then(Platform::from_json)
    });
    match platform {
        Some(p) if p.os == "unknown" => {}
        Some(p) => found.present.push(p),
        None => bail!("manifest {digest}: neither its descriptor nor its config names a platform"),
    }
    Ok(found)
}

/// `/usr/lib/airlock/images.json`: what `airlock node images` imports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesJson {
    pub archives: Vec<ArchiveEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveEntry {
    /// Absolute path in the image: /var/lib/airlock/images/<sha256>.<ext>.
    pub file: String,
    /// sha256 of the file as stored (compressed or not).
    pub sha256: String,
    /// `os/arch[/variant]` to import (`ctr images import --platform`).
    pub platform: String,
    /// Normalized references the archive carries for that platform.
    pub references: Vec<String>,
}

#[cfg(test)]
#[path = "../../tests/common/oci.rs"]
mod oci;

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    fn write(d: &tempfile::TempDir, name: &str, b: &[u8]) -> std::path::PathBuf {
        let p = d.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn references_are_normalized_like_containerd() {
        for (i, o) in [
            (
                "registry.k8s.io/pause:3.10.1",
                "registry.k8s.io/pause:3.10.1",
            ),
            ("busybox", "docker.io/library/busybox:latest"),
            (
                "flannel/flannel:v0.22.0",
                "docker.io/flannel/flannel:v0.22.0",
            ),
            (
                "docker.io/flannel/flannel:v0.22.0",
                "docker.io/flannel/flannel:v0.22.0",
            ),
            ("localhost:5000/x/y", "localhost:5000/x/y:latest"),
            (
                "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
                "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
            ),
        ] {
            assert_eq!(normalize_ref(i).unwrap(), o, "{i}");
        }
        for bad in ["", "Upper/Case", "https://x/y", "a b", "x:"] {
            assert!(normalize_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        let arm = Platform::parse("linux/arm64").unwrap();
        assert!(Platform::parse("linux/arm64/v8").unwrap().serves(&arm));
        assert!(arm.serves(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(!arm.serves(&amd64()));
        assert!(!Platform::parse("linux/arm/v6")
            .unwrap()
            .serves(&Platform::parse("linux/arm/v7").unwrap()));
        assert!(Platform::parse("linux").is_err() && Platform::parse("Linux/AMD64").is_err());
    }

    #[test]
    fn oci_gzip_zstd_and_plain() {
        let d = tempfile::tempdir().unwrap();
        let tar = oci::oci_layout(
            &[
                "registry.k8s.io/pause:3.10.1",
                "registry.k8s.io/kube-proxy:v1.34.11",
            ],
            "linux/amd64",
        );
        for (name, bytes, comp) in [
            ("a.tar", tar.clone(), Compression::None),
            ("a.tar.gz", oci::gzip(&tar), Compression::Gzip),
            // Compressed with zstd but named .tar: the magic bytes decide.
            ("b.tar", oci::zstd(&tar), Compression::Zstd),
        ] {
            let info = read_archive(&write(&d, name, &bytes), &amd64()).unwrap();
            assert_eq!(info.compression, comp, "{name}");
            assert_eq!(info.format, Format::Oci);
            assert_eq!(
                info.refs,
                [
                    "registry.k8s.io/kube-proxy:v1.34.11",
                    "registry.k8s.io/pause:3.10.1"
                ]
            );
        }
    }

    #[test]
    fn docker_save_repo_tags() {
        let d = tempfile::tempdir().unwrap();
        let b = oci::docker_save(&["flannel/flannel:v0.22.0"], "linux/amd64");
        let info = read_archive(&write(&d, "d.tar.gz", &oci::gzip(&b)), &amd64()).unwrap();
        assert_eq!(info.format, Format::DockerArchive);
        assert_eq!(info.refs, ["docker.io/flannel/flannel:v0.22.0"]);
        let e = read_archive(
            &write(&d, "d.tar", &b),
            &Platform::parse("linux/arm64").unwrap(),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("no image for the node's platform linux/arm64"),
            "{e:#}"
        );
    }

    #[test]
    fn multi_platform_index_with_missing_blobs() {
        let d = tempfile::tempdir().unwrap();
        let b = oci::oci_multi_platform(
            "ghcr.io/flannel-io/flannel:v0.28.9",
            "linux/amd64",
            &["linux/arm64", "linux/arm/v7"],
        );
        let p = write(&d, "m.tar.zst", &oci::zstd(&b));
        let info = read_archive(&p, &amd64()).unwrap();
        assert_eq!(info.refs, ["ghcr.io/flannel-io/flannel:v0.28.9"]);
        assert_eq!(info.missing_platforms, ["linux/arm/v7", "linux/arm64"]);
        // For a platform whose blobs are missing, the archive is useless.
        let e = read_archive(&p, &Platform::parse("linux/arm64").unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("holds linux/amd64"), "{e:#}");
    }

    #[test]
    fn unusable_archives_fail_clearly() {
        let d = tempfile::tempdir().unwrap();
        // No reference at all.
        let tar = oci::oci_layout(&["registry.k8s.io/pause:3.10"], "linux/amd64");
        let stripped = String::from_utf8_lossy(&tar)
            .replace("io.containerd.image.name", "io.containerd.image.nam_");
        let stripped = stripped.replace(
            "org.opencontainers.image.ref.name",
            "org.opencontainers.image.ref.nam_",
        );
        let e = read_archive(&write(&d, "n.tar", stripped.as_bytes()), &amd64()).unwrap_err();
        assert!(
            format!("{e:#}").contains("no usable image reference"),
            "{e:#}"
        );
        // Not an image archive.
        let plain = oci::tar(&[("hello".into(), b"x".to_vec())]);
        let e = read_archive(&write(&d, "p.tar", &plain), &amd64()).unwrap_err();
        assert!(
            format!("{e:#}").contains("neither an OCI image layout"),
            "{e:#}"
        );
        // Truncated: a layer blob missing.
        let files = {
            let mut a = tar::Archive::new(&tar[..]);
            let mut v = Vec::new();
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut b = Vec::new();
                e.read_to_end(&mut b).unwrap();
                v.push((name, b));
            }
            v
        };
        let layer_name = files
            .iter()
            .find(|(_, b)| b.first() != Some(&b'{'))
            .map(|(n, _)| n.clone())
            .unwrap();
        let cut: Vec<_> = files
            .into_iter()
            .filter(|(n, _)| *n != layer_name)
            .collect();
        let e = read_archive(&write(&d, "t.tar", &oci::tar(&cut)), &amd64()).unwrap_err();
        assert!(format!("{e:#}").contains("is missing"), "{e:#}");
        // xz is refused by magic.
        let e = read_archive(&write(&d, "x.tar.xz", b"\xfd7zXZ\0rest"), &amd64()).unwrap_err();
        assert!(format!("{e:#}").contains("recompress"), "{e:#}");
    }
}
