// SPDX-License-Identifier: Apache-2.0
//! Container images from OCI distribution registries (Docker Hub,
//! registry.k8s.io, ghcr.io, quay.io, private ones): tags resolved to
//! digests per platform for the lock, images pulled by digest for `fetch`
//! into the cache as OCI image layout archives, and base images flattened.
//!
//! In the cache, every manifest and blob is stored under its digest like
//! any other input, the archive built from them too, and
//! `<cache>/oci/<key>.json` records which archive holds which pinned image
//! (by name, digest and platforms), so `build` finds it offline.

pub mod auth;
pub mod client;
pub mod flatten;
pub mod layout;
pub mod manifest;
pub mod reference;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::fetch::http::Http;
use crate::fetch::Fetched;
use crate::inputs::Cache;
use crate::recipe::Loaded;
use client::{Client, Endpoint};
use manifest::{select, ConfigPlatform, Descriptor, Doc, Platform};
use reference::{hex_of, Reference};

/// The platform images are pulled for when the recipe names none.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

/// `[[mirror]]`: where to pull a registry's images from first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The registry it mirrors, as in image references ("docker.io",
    /// "registry.k8s.io").
    pub registry: Spanned<String>,
    /// Its API base URL ("https://mirror.example.com", or a path prefix
    /// such as "https://harbor.example.com/v2-proxy"); tried in recipe
    /// order before the registry itself.
    pub endpoint: Spanned<String>,
}

/// Checks the recipe's mirrors.
pub fn validate_mirrors(l: &Loaded, mirrors: &[Mirror]) -> Result<()> {
    for m in mirrors {
        let e = m.endpoint.get_ref();
        if !(e.starts_with("https://") || e.starts_with("http://")) || e.ends_with('/') {
            bail!(
                "{}: mirror.endpoint {e:?} must be an http(s) URL without a trailing '/'",
                l.at(&m.endpoint)
            );
        }
        let r = m.registry.get_ref();
        if r.is_empty() || r.contains(['/', ' ']) {
            bail!(
                "{}: mirror.registry {r:?} must be a registry host like \"docker.io\"",
                l.at(&m.registry)
            );
        }
    }
    Ok(())
}

/// An image input as the recipe names it: a reference and the platforms
/// to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// As written in the recipe (a tag, a digest or both).
    pub reference: String,
    /// `os/arch[/variant]`, sorted.
    pub platforms: Vec<String>,
}

impl ImageSource {
    pub fn new(reference: &str, platforms: &[&str]) -> ImageSource {
        let mut platforms: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        platforms.sort();
        platforms.dedup();
        ImageSource {
            reference: reference.to_string(),
            platforms,
        }
    }

    fn parsed(&self) -> Result<(Reference, Vec<Platform>)> {
        let r = Reference::parse(&self.reference)?;
        let p = self
            .platforms
            .iter()
            .map(|p| Platform::parse(p))
            .collect::<Result<Vec<_>>>()?;
        Ok((r, p))
    }
}

/// The endpoints to try for a reference: the recipe's mirrors for its
/// registry, in order, then the registry itself.
pub fn endpoints(mirrors: &[Mirror], r: &Reference) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = mirrors
        .iter()
        .filter(|m| {
            m.registry.get_ref() == &r.registry
                || (r.registry == "docker.io" && m.registry.get_ref() == "index.docker.io")
        })
        .map(|m| Endpoint {
            base: m.endpoint.get_ref().clone(),
            registry: host_of(m.endpoint.get_ref()),
        })
        .collect();
    out.push(Endpoint {
        base: r.default_endpoint(),
        registry: r.registry.clone(),
    });
    out
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// `[[image]] ref = "…"` entries: checks them and lets the reference stand
/// in for `source` (messages and positions then name it), before the
/// recipe is validated.
pub fn adopt_image_refs(l: &mut Loaded) -> Result<()> {
    let mut adopted = Vec::new();
    for (i, img) in l.recipe.images.iter().enumerate() {
        let Some(r) = &img.reference else { continue };
        if !img.source.get_ref().is_empty() {
            bail!("{}: image[{i}] has both source and ref: keep one", l.at(r));
        }
        Reference::parse(r.get_ref()).with_context(|| format!("{}: image[{i}].ref", l.at(r)))?;
        if let Some(s) = &img.sha256 {
            bail!(
                "{}: image[{i}].sha256 is for archive files: pin a ref with @sha256:… (or let `airlock lock` pin it)",
                l.at(s)
            );
        }
        adopted.push((i, r.clone()));
    }
    for (i, r) in adopted {
        l.recipe.images[i].source = r;
    }
    Ok(())
}

/// The input of an `[[image]] ref = "…"` entry for `platform`.
pub fn image_input(
    l: &Loaded,
    i: usize,
    reference: &Spanned<String>,
    platform: &str,
    dest: &str,
) -> crate::recipe::InputRef {
    let text = reference.get_ref();
    crate::recipe::InputRef {
        what: format!("image[{i}]"),
        source: text.clone(),
        resolved: crate::inputs::Source::Image(ImageSource::new(text, &[platform])),
        sha256: Reference::parse(text)
            .ok()
            .and_then(|r| r.digest)
            .map(|d| hex_of(&d).to_string()),
        at: l.at(reference),
        dest: dest.to_string(),
    }
}

/// What `lock` records for an image.
#[derive(Debug, Clone, Serialize)]
pub struct Locked {
    /// The digest of what the tag names (an index, or one manifest).
    pub digest: String,
    /// Platform → the digest of its image manifest.
    pub platforms: BTreeMap<String, String>,
}

/// Resolves an image's tag (or checks its digest) and finds the manifest
/// digest of every wanted platform.
pub fn resolve(
    http: &Http,
    mirrors: &[Mirror],
    cache: &Cache,
    src: &ImageSource,
    what: &str,
) -> Result<Locked> {
    let (r, platforms) = src.parsed()?;
    let client = Client::new(http)?;
    let mut errors = Vec::new();
    let eps = endpoints(mirrors, &r);
    for (i, ep) in eps.iter().enumerate() {
        match resolve_at(&client, ep, cache, &r, &platforms, what) {
            Ok(l) => return Ok(l),
            Err(e) => {
                if i + 1 < eps.len() {
                    tracing::warn!("{what}: {}: {e:#}; trying the next endpoint", ep.base);
                }
                errors.push(format!("{}: {e:#}", ep.base));
            }
        }
    }
    bail!("resolving {what} ({r}):\n    {}", errors.join("\n    "))
}

fn resolve_at(
    client: &Client,
    ep: &Endpoint,
    cache: &Cache,
    r: &Reference,
    platforms: &[Platform],
    what: &str,
) -> Result<Locked> {
    let top = client.manifest(ep, &r.repository, r.object(), what)?;
    let mut out = Locked {
        digest: top.digest.clone(),
        platforms: BTreeMap::new(),
    };
    match Doc::parse(
        &top.bytes,
        top.content_type.as_deref(),
        &format!("{what} ({r})"),
    )? {
        Doc::Index(index) => {
            for p in platforms {
                let d = select(&index, p, &format!("{what} ({r})"))?;
                out.platforms.insert(p.to_string(), d.digest.clone());
            }
        }
        Doc::Image(m) => {
            let bar = ProgressBar::hidden();
            client.blob(
                ep,
                &r.repository,
                &m.config,
                cache,
                &bar,
                &format!("the config of {what}"),
            )?;
            let cfg = read_config(cache, &m.config.digest)?;
            for p in platforms {
                if !cfg.platform().serves(p) {
                    bail!("{what} ({r}) is a single {} image, not {p}", cfg.platform());
                }
                out.platforms.insert(p.to_string(), top.digest.clone());
            }
        }
    }
    Ok(out)
}

fn read_config(cache: &Cache, digest: &str) -> Result<ConfigPlatform> {
    let path = cache.blob(hex_of(digest));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing image config {digest}"))
}

/// One image to pull for `fetch`.
#[derive(Debug, Clone)]
pub struct PullJob {
    pub what: String,
    pub at: String,
    pub source: ImageSource,
    /// With the pinned digest.
    pub reference: Reference,
    pub endpoints: Vec<Endpoint>,
    /// Other references the recipe gives the same pinned image (and
    /// platforms): pulled once, with an archive naming each.
    pub aliases: Vec<ImageSource>,
}

/// The pull job for an image input pinned to `sha256` (hex).
pub fn pull_job(
    loaded: &Loaded,
    what: &str,
    at: &str,
    src: &ImageSource,
    sha256: &str,
) -> Result<PullJob> {
    let (r, _) = src.parsed().with_context(|| format!("{at}: {what}"))?;
    let pinned = format!("sha256:{sha256}");
    if let Some(d) = &r.digest {
        if d != &pinned {
            bail!("{at}: {what} names digest {d} but is pinned to {pinned}: keep one");
        }
    }
    Ok(PullJob {
        what: what.to_string(),
        at: at.to_string(),
        source: src.clone(),
        endpoints: endpoints(&loaded.recipe.mirrors, &r),
        reference: r.with_digest(&pinned),
        aliases: Vec::new(),
    })
}

/// What `<cache>/oci/<key>.json` says.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ArchiveRecord {
    pub name: String,
    pub digest: String,
    pub platforms: Vec<String>,
    /// sha256 of the archive in the cache.
    pub archive: String,
    pub size: u64,
}

fn record_path(cache: &Cache, src: &ImageSource, sha256: &str) -> Result<PathBuf> {
    let (r, _) = src.parsed()?;
    let key = format!("{}\n{sha256}\n{}", r.name(), src.platforms.join(","));
    let key = hex::encode(Sha256::digest(key.as_bytes()));
    Ok(cache
        .root()
        .join("oci")
        .join(format!("{}.json", &key[..40])))
}

/// The archive in the cache for an image pinned to `sha256` (hex), if
/// `fetch` made one: (record file, record).
pub fn cached_archive(
    cache: &Cache,
    src: &ImageSource,
    sha256: &str,
) -> Result<Option<(PathBuf, ArchiveRecord)>> {
    let path = record_path(cache, src, sha256)?;
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let rec: ArchiveRecord =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    if rec.digest != format!("sha256:{sha256}") || rec.platforms != src.platforms {
        bail!(
            "{} does not describe the image it is named for: remove it and fetch again",
            path.display()
        );
    }
    let archive = cache.blob(&rec.archive);
    match std::fs::metadata(&archive) {
        Ok(m) if m.len() == rec.size => {}
        _ => return Ok(None),
    }
    // The record is only a pointer: the archive itself must name the pinned
    // image (its bytes are hashed against `rec.archive` when used).
    let held = layout::Archive::open(&archive)
        .with_context(|| format!("reading the archive {} names", path.display()))?;
    if !held.index.manifests.iter().any(|d| d.digest == rec.digest) {
        let names: Vec<&str> = held
            .index
            .manifests
            .iter()
            .map(|d| d.digest.as_str())
            .collect();
        bail!(
            "{}: the cached archive {} holds {}, not the pinned {} of {}: the cache was changed; \
             delete both files and run `airlock fetch` again",
            path.display(),
            archive.display(),
            if names.is_empty() {
                "no image".to_string()
            } else {
                names.join(", ")
            },
            rec.digest,
            src.reference
        );
    }
    Ok(Some((path, rec)))
}

/// Pulls one pinned image into the cache as an OCI archive.
pub fn pull(http: &Http, cache: &Cache, job: &PullJob, bar: &ProgressBar) -> Result<Fetched> {
    let sha = hex_of(job.reference.digest.as_deref().expect("pinned")).to_string();
    let done = |status: &str, bytes: u64| Fetched {
        what: job.what.clone(),
        source: job.source.reference.clone(),
        sha256: sha.clone(),
        status: status.into(),
        bytes,
    };
    let mut cached = true;
    for src in std::iter::once(&job.source).chain(&job.aliases) {
        cached &= cached_archive(cache, src, &sha)?.is_some();
    }
    if cached {
        return Ok(done("cached", 0));
    }
    let client = Client::new(http)?;
    let mut errors = Vec::new();
    for (i, ep) in job.endpoints.iter().enumerate() {
        match pull_from(&client, ep, cache, job, bar) {
            Ok(bytes) => return Ok(done("pulled", bytes)),
            Err(e) => {
                if i + 1 < job.endpoints.len() {
                    tracing::warn!("{}: {}: {e:#}; trying the next endpoint", job.what, ep.base);
                }
                errors.push(format!("{}: {e:#}", ep.base));
            }
        }
    }
    bail!(
        "{}: pulling {} ({}):\n    {}",
        job.at,
        job.what,
        job.reference,
        errors.join("\n    ")
    )
}

fn pull_from(
    client: &Client,
    ep: &Endpoint,
    cache: &Cache,
    job: &PullJob,
    bar: &ProgressBar,
) -> Result<u64> {
    let r = &job.reference;
    let digest = r.digest.clone().expect("pinned");
    let what = format!("{} ({r})", job.what);
    let (_, platforms) = job.source.parsed()?;
    let top = client.manifest(ep, &r.repository, &digest, &what)?;
    store_small(cache, &top.bytes, &digest)?;
    let doc = Doc::parse(&top.bytes, top.content_type.as_deref(), &what)?;
    let top_desc = Descriptor {
        media_type: doc.media_type().to_string(),
        digest: digest.clone(),
        size: top.bytes.len() as u64,
        platform: None,
        annotations: Default::default(),
        urls: Vec::new(),
    };
    let mut blobs = Vec::new();
    let mut images = Vec::new();
    let single = matches!(doc, Doc::Image(_));
    match doc {
        Doc::Index(index) => {
            for p in &platforms {
                let d = select(&index, p, &what)?;
                let m = client.manifest(ep, &r.repository, &d.digest, &what)?;
                store_small(cache, &m.bytes, &d.digest)?;
                match Doc::parse(&m.bytes, Some(&d.media_type), &format!("{what} for {p}"))? {
                    Doc::Image(img) => images.push(img),
                    Doc::Index(_) => bail!("{what}: nested image indexes are not supported"),
                }
                blobs.push(d.digest.clone());
            }
        }
        Doc::Image(img) => images.push(img),
    }
    let all: Vec<&Descriptor> = images
        .iter()
        .flat_map(|m| std::iter::once(&m.config).chain(&m.layers))
        .collect();
    let missing: u64 = all
        .iter()
        .filter(|d| !cache.blob(hex_of(&d.digest)).is_file())
        .map(|d| d.size)
        .sum();
    bar.set_length(missing);
    bar.set_position(0);
    let mut bytes = 0;
    for m in &images {
        bytes += client.blob(
            ep,
            &r.repository,
            &m.config,
            cache,
            bar,
            &format!("the config of {what}"),
        )?;
        if single {
            let cfg = read_config(cache, &m.config.digest)?;
            if let Some(p) = platforms.iter().find(|p| !cfg.platform().serves(p)) {
                bail!("{what} is a single {} image, not {p}", cfg.platform());
            }
        }
        for (i, l) in m.layers.iter().enumerate() {
            bytes += client.blob(
                ep,
                &r.repository,
                l,
                cache,
                bar,
                &format!("layer {} ({}) of {what}", i + 1, l.digest),
            )?;
        }
        blobs.push(m.config.digest.clone());
        blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
    }
    for src in std::iter::once(&job.source).chain(&job.aliases) {
        let name = Reference::parse(&src.reference)?.name();
        let (archive, size) = layout::write_archive(cache, &top_desc, &name, &blobs)?;
        let rec = ArchiveRecord {
            name,
            digest: digest.clone(),
            platforms: src.platforms.clone(),
            archive,
            size,
        };
        let path = record_path(cache, src, hex_of(&rec.digest))?;
        crate::inputs::write_atomic(&path, &serde_json::to_vec_pretty(&rec)?)?;
    }
    Ok(bytes)
}

/// Stores a small verified document under its digest.
fn store_small(cache: &Cache, bytes: &[u8], digest: &str) -> Result<()> {
    let hex = hex_of(digest);
    debug_assert_eq!(hex::encode(Sha256::digest(bytes)), hex);
    let path = cache.blob(hex);
    if !path.is_file() {
        crate::inputs::write_atomic(&path, bytes)?;
    }
    Ok(())
}
