// SPDX-License-Identifier: Apache-2.0
//! A base root filesystem from an OCI image: the platform's manifest is
//! picked from the archive's index, every layer is checked against its
//! digest, then the layers are extracted in order with whiteouts honoured.

use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use super::layout::Archive;
use super::manifest::{select, ConfigPlatform, Doc, Manifest, Platform};
use crate::inputs::Resolved;
use crate::tree::extract::{self, ExtractOpts, ExtractStats};
use crate::tree::Root;

/// Layer media types that are tar streams (compression found by magic).
const LAYER_TYPES: [&str; 8] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// What was flattened.
#[derive(Debug, Default)]
pub struct Flattened {
    pub layers: usize,
    pub stats: ExtractStats,
    /// The manifest digest of the platform's image.
    pub manifest: String,
}

/// Picks the image for `platform` in an OCI archive and returns its
/// manifest digest and manifest, every document verified on the way.
/// With a `pin` (`sha256:…`), the archive must hold that image; either
/// way the image's config must say it runs on `platform`.
pub fn image_manifest(
    ar: &Archive,
    platform: &Platform,
    pin: Option<&str>,
) -> Result<(String, Manifest)> {
    let shown = ar.path().display().to_string();
    let entries = &ar.index.manifests;
    let top = match (pin, entries.len()) {
        (Some(pin), _) => entries.iter().find(|d| d.digest == pin).with_context(|| {
            let held: Vec<&str> = entries.iter().map(|d| d.digest.as_str()).collect();
            format!(
                "{shown} holds {}, not the pinned image {pin}: the cache was changed or holds \
                 another image under this name; delete it and run `airlock fetch` again",
                if held.is_empty() {
                    "no image".to_string()
                } else {
                    held.join(", ")
                }
            )
        })?,
        (None, 0) => bail!("{shown}: index.json lists no image"),
        (None, 1) => &entries[0],
        (None, _) => entries
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.serves(platform)))
            .with_context(|| {
                format!(
                    "{shown}: index.json lists {} images and none is for {platform}",
                    entries.len()
                )
            })?,
    };
    let bytes = ar.read_verified(&top.digest, Some(top.size))?;
    let (digest, manifest) = match Doc::parse(
        &bytes,
        Some(&top.media_type),
        &format!("{} in {shown}", top.digest),
    )? {
        Doc::Image(m) => (top.digest.clone(), m),
        Doc::Index(index) => {
            let d = select(&index, platform, &format!("the image in {shown}"))?;
            if !ar.has(&d.digest) {
                bail!("{shown}: the {platform} image {} is listed but its manifest is not in the archive", d.digest);
            }
            let bytes = ar.read_verified(&d.digest, Some(d.size))?;
            match Doc::parse(
                &bytes,
                Some(&d.media_type),
                &format!("{} in {shown}", d.digest),
            )? {
                Doc::Image(m) => (d.digest.clone(), m),
                Doc::Index(_) => bail!("{shown}: nested image indexes are not supported"),
            }
        }
    };
    // An index entry's platform is only a label: the config says what the
    // binaries run on (a single-image archive has no label at all).
    let config = ar
        .read_verified(&manifest.config.digest, Some(manifest.config.size))
        .with_context(|| format!("reading the config of {digest} in {shown}"))?;
    let cfg: ConfigPlatform = serde_json::from_slice(&config)
        .with_context(|| format!("parsing the config of {digest} in {shown}"))?;
    let has = cfg.platform();
    if cfg.os.is_empty() || cfg.architecture.is_empty() {
        bail!("{shown}: the image {digest} does not say which platform it is for (its config has no os/architecture), so it cannot be used as a {platform} base");
    }
    if !has.serves(platform) {
        bail!(
            "{shown}: the image {digest} is a {has} image, not {platform}: use an image (or index) \
             that has a {platform} image, or set [base] platform to the nodes' platform"
        );
    }
    Ok((digest, manifest))
}

/// Flattens the image for `platform` in the OCI archive `base` (a verified
/// input: its bytes are hashed against its pin while the archive is read)
/// into `root`. `what` names the base in errors.
pub fn flatten_archive(
    root: &Root,
    base: &Resolved,
    platform: &Platform,
    epoch: i64,
    what: &str,
    bar: &ProgressBar,
) -> Result<Flattened> {
    let (raw, check) = base.open_checked()?;
    let ar = Archive::open_stream(&base.path, raw).with_context(|| format!("reading {what}"))?;
    check.finish()?;
    let (digest, manifest) = image_manifest(&ar, platform, base.pin.as_deref())
        .with_context(|| format!("reading {what}"))?;
    // Check the config and every layer before anything reaches the tree.
    ar.verify(&manifest.config.digest, Some(manifest.config.size))
        .with_context(|| format!("checking {what}"))?;
    let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
    bar.set_length(total);
    for l in &manifest.layers {
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            bail!(
                "{what}: layer {} has media type {:?}, which is not a tar layer airlock can apply",
                l.digest,
                l.media_type
            );
        }
        ar.verify(&l.digest, Some(l.size))
            .with_context(|| format!("checking {what}"))?;
    }
    let mut out = Flattened {
        manifest: digest,
        ..Default::default()
    };
    let opts = ExtractOpts {
        dest: "/".into(),
        strip_components: 0,
        members: Vec::new(),
        epoch,
        keep_owner: true,
    };
    for (i, l) in manifest.layers.iter().enumerate() {
        let label = format!(
            "layer {} of {} ({}) of {what}",
            i + 1,
            manifest.layers.len(),
            l.digest
        );
        let reader = bar.wrap_read(ar.owned_reader(&l.digest)?);
        let reader = extract::open_decompressed_reader(reader, Path::new(&label))?;
        let s = extract::extract_layer(root, reader, &opts, &label)?;
        out.stats.entries += s.entries;
        out.stats.bytes += s.bytes;
        out.layers += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::Cache;
    use crate::registry::layout::write_archive;
    use crate::registry::manifest::{Descriptor, OCI_INDEX, OCI_MANIFEST};
    use sha2::{Digest, Sha256};

    /// A root at `T/root` beside a canary `T/canary/keep`.
    fn setup() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("canary")).unwrap();
        std::fs::write(t.path().join("canary/keep"), b"keep").unwrap();
        let root = Root::create(&t.path().join("root")).unwrap();
        (t, root)
    }

    fn assert_canary_untouched(t: &tempfile::TempDir) {
        let names = |p: &std::path::Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(t.path()), ["canary", "root"]);
        assert_eq!(names(&t.path().join("canary")), ["keep"]);
    }

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Raw(&'a [u8]),
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                E::File(p, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, *d).unwrap();
                }
                E::Raw(p) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(1);
                    h.as_old_mut().name[..p.len()].copy_from_slice(p);
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).unwrap();
                }
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    /// The archive at `path` as a verified input (pinned to its own bytes).
    fn input(path: &std::path::Path, pin: Option<&str>) -> Resolved {
        let bytes = std::fs::read(path).unwrap();
        Resolved {
            what: "base".into(),
            source: path.display().to_string(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            path: path.to_path_buf(),
            metadata_hit: false,
            pin: pin.map(str::to_string),
        }
    }

    fn put(cache: &Cache, data: &[u8]) -> Descriptor {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::create_dir_all(cache.root().join("sha256")).unwrap();
        std::fs::write(cache.blob(&hex), data).unwrap();
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{hex}"),
            size: data.len() as u64,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        }
    }

    /// An archive of a two-platform index whose amd64 image has `layers`
    /// (the arm64 image's blobs are left out).
    fn archive(cache: &Cache, layers: &[Vec<u8>]) -> std::path::PathBuf {
        let mut cfg = put(cache, br#"{"architecture":"amd64","os":"linux"}"#);
        cfg.media_type = "application/vnd.oci.image.config.v1+json".into();
        let ls: Vec<Descriptor> = layers.iter().map(|l| put(cache, l)).collect();
        let m = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": ls });
        let mut md = put(cache, &serde_json::to_vec(&m).unwrap());
        md.media_type = OCI_MANIFEST.into();
        let arm = format!("sha256:{}", "c".repeat(64));
        let idx = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": arm, "size": 10, "platform": { "os": "linux", "architecture": "arm64" } },
            { "mediaType": OCI_MANIFEST, "digest": md.digest, "size": md.size, "platform": { "os": "linux", "architecture": "amd64" } },
        ]});
        let mut top = put(cache, &serde_json::to_vec(&idx).unwrap());
        top.media_type = OCI_INDEX.into();
        let mut blobs = vec![md.digest.clone(), cfg.digest.clone()];
        blobs.extend(ls.iter().map(|l| l.digest.clone()));
        let (sha, _) = write_archive(cache, &top, "example.org/base:1", &blobs).unwrap();
        cache.blob(&sha)
    }

    /// An archive whose one image (no index, no platform label) is for
    /// `arch`.
    fn single(cache: &Cache, arch: &str, layers: &[Vec<u8>]) -> std::path::PathBuf {
        let cfg_json = format!(r#"{{"architecture":"{arch}","os":"linux"}}"#);
        let mut cfg = put(cache, cfg_json.as_bytes());
        cfg.media_type = "application/vnd.oci.image.config.v1+json".into();
        let ls: Vec<Descriptor> = layers.iter().map(|l| put(cache, l)).collect();
        let m = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": ls });
        let mut md = put(cache, &serde_json::to_vec(&m).unwrap());
        md.media_type = OCI_MANIFEST.into();
        let mut blobs = vec![cfg.digest.clone()];
        blobs.extend(ls.iter().map(|l| l.digest.clone()));
        let (sha, _) = write_archive(cache, &md, "example.org/single:1", &blobs).unwrap();
        cache.blob(&sha)
    }

    #[test]
    fn an_image_for_another_platform_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let path = single(&cache, "arm64", &[layer(&[E::File("payload", b"1")])]);
        let (_t, root) = setup();
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let err = flatten_archive(
            &root,
            &input(&path, None),
            &amd64,
            0,
            "base",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("is a linux/arm64 image, not linux/amd64"),
            "{msg}"
        );
        assert!(!root.exists("payload"));
        // The same archive serves an arm64 build.
        flatten_archive(
            &root,
            &input(&path, None),
            &Platform::parse("linux/arm64").unwrap(),
            0,
            "base",
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert!(root.exists("payload"));
    }

    #[test]
    fn the_archive_must_be_the_pinned_one() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let l = layer(&[E::File("payload", b"1")]);
        let path = single(&cache, "amd64", std::slice::from_ref(&l));
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let held = Archive::open(&path).unwrap().index.manifests[0]
            .digest
            .clone();
        let (_t, root) = setup();
        // Another image than the one pinned (a record pointing elsewhere).
        let other = format!("sha256:{}", "e".repeat(64));
        let err = flatten_archive(
            &root,
            &input(&path, Some(&other)),
            &amd64,
            0,
            "base x",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("reading base x")
                && msg.contains(&format!("holds {held}, not the pinned image {other}")),
            "{msg}"
        );
        assert!(!root.exists("payload"));
        // The pinned image, but the archive's bytes changed since they were
        // verified (here: index.json rewritten, every blob still intact).
        let pinned = input(&path, Some(&held));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(b"example.org".len())
            .position(|w| w == b"example.org")
            .unwrap();
        bytes[at..at + 7].copy_from_slice(b"EXAMPLE");
        std::fs::write(&path, &bytes).unwrap();
        let err = flatten_archive(&root, &pinned, &amd64, 0, "base x", &ProgressBar::hidden())
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("the cached copy of base") && msg.contains("the cache was changed"),
            "{msg}"
        );
        assert!(!root.exists("payload"));
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let l1 = layer(&[
            E::Dir("etc"),
            E::File("etc/keep", b"1"),
            E::File("etc/gone", b"1"),
            E::Dir("var/cache"),
            E::File("var/cache/old", b"1"),
            E::File("var/cache/sub/older", b"1"),
            E::Dir("home"),
            E::File("home/user/file", b"1"),
        ]);
        let l2 = layer(&[
            E::File("etc/.wh.gone", b""),
            E::File("var/cache/new", b"2"),
            E::File("var/cache/.wh..wh..opq", b""),
            E::File("etc/keep", b"2"),
            E::File(".wh.home", b""),
        ]);
        let l3 = layer(&[E::File("etc/gone", b"3")]);
        let path = archive(&cache, &[l1, l2, l3]);
        let (t, root) = setup();
        let f = flatten_archive(
            &root,
            &input(&path, None),
            &Platform::parse("linux/amd64").unwrap(),
            1_700_000_000,
            "base",
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(f.layers, 3);
        assert_eq!(
            root.read("etc/keep").unwrap().unwrap(),
            b"2",
            "a later layer wins"
        );
        assert_eq!(
            root.read("etc/gone").unwrap().unwrap(),
            b"3",
            "deleted, then added again"
        );
        assert_eq!(
            root.list_dir("var/cache").unwrap(),
            ["new"],
            "opaque: lower content gone, this layer's kept"
        );
        assert!(!root.exists("home"));
        let mut stack = vec![root.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                assert!(
                    !e.file_name().to_string_lossy().starts_with(".wh."),
                    "{} left",
                    e.path().display()
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        assert_canary_untouched(&t);
        let err = flatten_archive(
            &root,
            &input(&path, None),
            &Platform::parse("linux/s390x").unwrap(),
            0,
            "base",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("no image for linux/s390x"),
            "{err:#}"
        );
        let err = flatten_archive(
            &root,
            &input(&path, None),
            &Platform::parse("linux/arm64").unwrap(),
            0,
            "base",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("its manifest is not in the archive"),
            "{err:#}"
        );
    }

    #[test]
    fn a_layer_escaping_the_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let evil = layer(&[E::File("ok", b"1"), E::Raw(b"../../canary/evil")]);
        let path = archive(&cache, &[evil]);
        let (t, root) = setup();
        let err = flatten_archive(
            &root,
            &input(&path, None),
            &Platform::parse("linux/amd64").unwrap(),
            0,
            "base x",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("layer 1 of 1")
                && msg.contains("../../canary/evil")
                && msg.contains("'..'"),
            "{msg}"
        );
        assert_canary_untouched(&t);
    }

    #[test]
    fn a_corrupt_layer_is_refused_before_anything_is_extracted() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let l = layer(&[E::File("payload", b"1")]);
        let hex = hex::encode(Sha256::digest(&l));
        let path = archive(&cache, std::slice::from_ref(&l));
        // Flip a byte of the layer inside the archive.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(l.len()).position(|w| w == &l[..]).unwrap();
        bytes[at + l.len() / 2] ^= 0xff;
        let bad = d.path().join("bad.tar");
        std::fs::write(&bad, &bytes).unwrap();
        let (_t, root) = setup();
        let err = flatten_archive(
            &root,
            &input(&bad, None),
            &Platform::parse("linux/amd64").unwrap(),
            0,
            "base",
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("blob sha256:{hex} hashes to")),
            "{err:#}"
        );
        assert!(!root.exists("payload"));
    }
}
