// SPDX-License-Identifier: Apache-2.0
//! OCI image layout tar archives: written from verified cache blobs (what
//! the node image preloads and `ctr images import` reads), and read back
//! with random access to their blobs (a base image to flatten, a bundle to
//! check).
//!
//! Archives airlock writes are plain tar with `oci-layout` and
//! `index.json` first and the blobs sorted by digest, every header fixed
//! (mode 0644, owner 0:0, mtime 0): the same blobs give the same bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::manifest::{Descriptor, OCI_INDEX};
use super::reference::hex_of;
use crate::inputs::Cache;

pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Annotation containerd imports the image under (full reference).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// OCI's reference annotation (the tag, as `ctr export` and Docker write it).
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The `index.json` of an archive holding `top` under the name `name`.
pub fn index_json(top: &Descriptor, name: &str) -> Vec<u8> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(CONTAINERD_NAME.into(), json!(name));
    if let Some((_, tag)) = name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/') && !name.contains('@'))
    {
        annotations.insert(OCI_REF_NAME.into(), json!(tag));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": top.media_type,
            "digest": top.digest,
            "size": top.size,
            "annotations": annotations,
        }],
    });
    serde_json::to_vec(&index).expect("serialisable")
}

/// Writes an archive of `top` (named `name`) and the `blobs` (digests)
/// from the cache into the cache. Returns its sha256 and size.
pub fn write_archive(
    cache: &Cache,
    top: &Descriptor,
    name: &str,
    blobs: &[String],
) -> Result<(String, u64)> {
    let dir = cache.root().join("sha256");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut out = HashingWriter {
        inner: io::BufWriter::new(tmp),
        hasher: Sha256::new(),
        len: 0,
    };
    {
        let mut b = tar::Builder::new(&mut out);
        let mut add = |path: &str, size: u64, data: &mut dyn Read, dir: bool| -> io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(size);
            b.append_data(&mut h, path, data)
        };
        let index = index_json(top, name);
        let ctx = || "writing an OCI archive".to_string();
        add(
            "oci-layout",
            OCI_LAYOUT.len() as u64,
            &mut &OCI_LAYOUT[..],
            false,
        )
        .with_context(ctx)?;
        add("index.json", index.len() as u64, &mut &index[..], false).with_context(ctx)?;
        add("blobs/", 0, &mut io::empty(), true).with_context(ctx)?;
        add("blobs/sha256/", 0, &mut io::empty(), true).with_context(ctx)?;
        let mut sorted: Vec<&str> = blobs.iter().map(|d| hex_of(d)).collect();
        sorted.push(hex_of(&top.digest));
        sorted.sort();
        sorted.dedup();
        for hex in sorted {
            let path = cache.blob(hex);
            let mut f = File::open(&path)
                .with_context(|| format!("opening cached blob {}", path.display()))?;
            let len = f
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            add(&format!("blobs/sha256/{hex}"), len, &mut f, false)
                .with_context(|| format!("copying {} into an OCI archive", path.display()))?;
        }
        b.finish().context("finishing an OCI archive")?;
    }
    out.inner.flush().context("writing an OCI archive")?;
    let sha = hex::encode(out.hasher.finalize());
    let len = out.len;
    let tmp = out
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing an OCI archive")?;
    tmp.as_file().sync_all().ok();
    let blob = cache.blob(&sha);
    if !blob.is_file() {
        tmp.persist(&blob)
            .with_context(|| format!("storing the OCI archive as {}", blob.display()))?;
    }
    Ok((sha, len))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An OCI layout archive opened for random access to its blobs.
pub struct Archive {
    file: File,
    /// Where the plain tar lives (the file itself, or a decompressed copy).
    shown: PathBuf,
    /// `blobs/sha256/<hex>` → (offset, size).
    blobs: BTreeMap<String, (u64, u64)>,
    pub index: super::manifest::Index,
}

impl Archive {
    /// Whether `path` (optionally compressed) is an OCI layout archive:
    /// its first entry is `oci-layout`, `index.json` or under `blobs/`.
    /// A root filesystem tarball starts otherwise.
    pub fn sniff(path: &Path) -> Result<bool> {
        let reader = crate::tree::extract::open_decompressed(path)?;
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive
            .entries()
            .with_context(|| format!("reading {}", path.display()))?;
        let Some(first) = entries.next() else {
            return Ok(false);
        };
        let first = first.with_context(|| format!("reading {}", path.display()))?;
        let name = String::from_utf8_lossy(&first.path_bytes()).into_owned();
        let name = name.trim_start_matches("./");
        Ok(name == "oci-layout"
            || name == "index.json"
            || name == "blobs"
            || name.starts_with("blobs/"))
    }

    /// Opens an archive; a compressed one is first decompressed into an
    /// unnamed temporary file.
    pub fn open(path: &Path) -> Result<Archive> {
        let file =
            File::open(path).with_context(|| format!("opening OCI archive {}", path.display()))?;
        Archive::open_from(path, file, None::<File>)
    }

    /// Opens an archive reading its bytes once, front to back, from `src`
    /// (for a caller that hashes them on the way: a plain archive is not
    /// skipped through by seeking). Blobs are read later from `path`, or
    /// from the decompressed copy.
    pub fn open_stream(path: &Path, src: impl Read + Send + 'static) -> Result<Archive> {
        let file =
            File::open(path).with_context(|| format!("opening OCI archive {}", path.display()))?;
        Archive::open_from(path, file, Some(src))
    }

    fn open_from(
        path: &Path,
        mut file: File,
        src: Option<impl Read + Send + 'static>,
    ) -> Result<Archive> {
        let shown = path.to_path_buf();
        let mut magic = [0u8; 6];
        let n = file
            .read(&mut magic)
            .with_context(|| format!("reading {}", path.display()))?;
        file.seek(SeekFrom::Start(0))?;
        let compressed = n >= 2
            && (magic.starts_with(&[0x1f, 0x8b])
                || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
                || magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]));
        let (blobs, index_bytes) = if compressed {
            let mut plain = tempfile::tempfile()
                .context("creating a temporary file to decompress an OCI archive")?;
            let mut reader = match src {
                Some(s) => crate::tree::extract::open_decompressed_reader(s, path)?,
                None => crate::tree::extract::open_decompressed(path)?,
            };
            io::copy(&mut reader, &mut plain)
                .with_context(|| format!("decompressing {}", path.display()))?;
            plain.seek(SeekFrom::Start(0))?;
            file = plain;
            let mut archive = tar::Archive::new(&mut file);
            let entries = archive
                .entries_with_seek()
                .with_context(|| format!("reading {}", path.display()))?;
            index_entries(entries, path)?
        } else if let Some(s) = src {
            let mut archive = tar::Archive::new(s);
            let entries = archive
                .entries()
                .with_context(|| format!("reading {}", path.display()))?;
            index_entries(entries, path)?
        } else {
            let mut archive = tar::Archive::new(&mut file);
            let entries = archive
                .entries_with_seek()
                .with_context(|| format!("reading {}", path.display()))?;
            index_entries(entries, path)?
        };
        let index_bytes = index_bytes.with_context(|| {
            format!(
                "{} has no index.json: not an OCI image layout archive",
                path.display()
            )
        })?;
        let index: super::manifest::Index = serde_json::from_slice(&index_bytes)
            .with_context(|| format!("parsing index.json in {}", path.display()))?;
        Ok(Archive {
            file,
            shown,
            blobs,
            index,
        })
    }

    pub fn has(&self, digest: &str) -> bool {
        self.blobs.contains_key(hex_of(digest))
    }

    /// A reader over the blob's bytes, unverified (see [`Archive::verify`]).
    pub fn reader(&self, digest: &str) -> Result<impl Read + '_> {
        let (offset, size) = *self
            .blobs
            .get(hex_of(digest))
            .with_context(|| format!("{} lacks blob {digest}", self.shown.display()))?;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(offset))?;
        Ok(f.take(size))
    }

    /// Like [`Archive::reader`], owning a handle of its own (which shares
    /// the file position: read one blob at a time).
    pub fn owned_reader(&self, digest: &str) -> Result<io::Take<File>> {
        let (offset, size) = *self
            .blobs
            .get(hex_of(digest))
            .with_context(|| format!("{} lacks blob {digest}", self.shown.display()))?;
        let mut f = self
            .file
            .try_clone()
            .with_context(|| format!("reading {}", self.shown.display()))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(f.take(size))
    }

    /// Hashes a blob and checks it against its digest (and `size`).
    pub fn verify(&self, digest: &str, size: Option<u64>) -> Result<()> {
        let (_, len) = *self
            .blobs
            .get(hex_of(digest))
            .with_context(|| format!("{} lacks blob {digest}", self.shown.display()))?;
        if let Some(s) = size {
            ensure!(
                s == len,
                "{}: blob {digest} is {len} bytes, its descriptor says {s}",
                self.shown.display()
            );
        }
        let mut h = Sha256::new();
        io::copy(&mut self.reader(digest)?, &mut h)
            .with_context(|| format!("reading blob {digest} in {}", self.shown.display()))?;
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != digest {
            bail!(
                "{}: blob {digest} hashes to {got}: the archive is corrupt or was tampered with",
                self.shown.display()
            );
        }
        Ok(())
    }

    /// A small blob (a manifest or config), verified.
    pub fn read_verified(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>> {
        self.verify(digest, size)?;
        let mut b = Vec::new();
        self.reader(digest)?.take(MAX_JSON).read_to_end(&mut b)?;
        Ok(b)
    }

    /// Every blob's digest, checked against its content.
    pub fn verify_all(&self) -> Result<usize> {
        for hex in self.blobs.keys() {
            self.verify(&format!("sha256:{hex}"), None)?;
        }
        Ok(self.blobs.len())
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }
}

/// What [`index_entries`] finds: `blobs/sha256/<hex>` → (offset, size),
/// and the bytes of `index.json`.
type Indexed = (BTreeMap<String, (u64, u64)>, Option<Vec<u8>>);

/// Walks an archive's entries, noting where each blob lies.
fn index_entries<'a, R: Read + 'a>(entries: tar::Entries<'a, R>, path: &Path) -> Result<Indexed> {
    let mut blobs = BTreeMap::new();
    let mut index_bytes = None;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("reading {}", path.display()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = name.trim_start_matches("./").to_string();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        if name == "index.json" {
            let mut b = Vec::new();
            (&mut entry)
                .take(4 << 20)
                .read_to_end(&mut b)
                .with_context(|| format!("reading index.json in {}", path.display()))?;
            index_bytes = Some(b);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            blobs.insert(hex.to_string(), (entry.raw_file_position(), entry.size()));
        }
    }
    Ok((blobs, index_bytes))
}

const MAX_JSON: u64 = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Cache, data: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::create_dir_all(cache.root().join("sha256")).unwrap();
        std::fs::write(cache.blob(&hex), data).unwrap();
        format!("sha256:{hex}")
    }

    #[test]
    fn written_archives_are_reproducible_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let layer = put(&cache, b"layer bytes");
        let manifest = put(&cache, br#"{"schemaVersion":2}"#);
        let top = Descriptor {
            media_type: super::super::manifest::OCI_MANIFEST.into(),
            digest: manifest.clone(),
            size: 19,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        let (a, size) = write_archive(
            &cache,
            &top,
            "registry.k8s.io/pause:3.10",
            std::slice::from_ref(&layer),
        )
        .unwrap();
        let (b, _) = write_archive(
            &cache,
            &top,
            "registry.k8s.io/pause:3.10",
            &[layer.clone(), layer.clone()],
        )
        .unwrap();
        assert_eq!(a, b, "same blobs, same archive");
        assert_eq!(std::fs::metadata(cache.blob(&a)).unwrap().len(), size);
        assert!(Archive::sniff(&cache.blob(&a)).unwrap());
        let ar = Archive::open(&cache.blob(&a)).unwrap();
        assert_eq!(ar.index.manifests[0].digest, manifest);
        assert_eq!(
            ar.index.manifests[0].annotations[CONTAINERD_NAME],
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(ar.index.manifests[0].annotations[OCI_REF_NAME], "3.10");
        assert_eq!(ar.read_verified(&layer, Some(11)).unwrap(), b"layer bytes");
        assert_eq!(ar.verify_all().unwrap(), 2);
        assert!(ar.verify(&layer, Some(12)).is_err());
    }

    #[test]
    fn digest_only_names_get_no_tag_annotation() {
        let top = Descriptor {
            media_type: OCI_INDEX.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        let name = format!("127.0.0.1:5000/x@sha256:{}", "a".repeat(64));
        let v: serde_json::Value = serde_json::from_slice(&index_json(&top, &name)).unwrap();
        assert!(v["manifests"][0]["annotations"].get(OCI_REF_NAME).is_none());
    }
}
