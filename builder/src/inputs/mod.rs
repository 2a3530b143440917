// SPDX-License-Identifier: Apache-2.0
//! Inputs: every byte that goes into an image is sha256-verified before use
//! and kept in a content-addressed cache (`<cache>/sha256/<digest>`).
//!
//! `build` never touches the network: a `url` input must already be in the
//! cache. A local `path` input is copied into the cache once; later builds
//! recognise it by its metadata (device, inode, size, mtime, ctime) and use
//! the cached copy without reading the file again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where an input comes from, as the recipe says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
    /// A container image from a registry, pinned by manifest digest; the
    /// cache holds it as an OCI archive made by `airlock fetch`.
    Image(crate::registry::ImageSource),
}

/// An input the build wants, with the digest the recipe pins.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// What it is, for messages: "base", "file /usr/bin/kubeadm", ...
    pub what: String,
    /// `file:line:col` of its sha256 in the recipe.
    pub at: String,
    pub source: Source,
    pub sha256: String,
}

/// A verified input: a file in the cache whose content has that digest.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub what: String,
    pub source: String,
    pub sha256: String,
    pub size: u64,
    #[serde(skip)]
    pub path: PathBuf,
    /// Recognised by metadata alone: the input was not read this time.
    #[serde(skip)]
    pub metadata_hit: bool,
    /// For an image: the digest the recipe or its lock pins
    /// (`sha256:…`, an index or one manifest), which the archive's
    /// `index.json` must name.
    #[serde(skip)]
    pub pin: Option<String>,
}

pub struct Cache {
    root: PathBuf,
}

/// What we remember about a local file we have already verified.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Seen {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    sha256: String,
}

impl Seen {
    fn of(path: &Path, m: &fs::Metadata, sha256: String) -> Seen {
        Seen {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            sha256,
        }
    }
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the blob for a digest (it may not exist).
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    fn seen_path(&self, abs: &Path) -> PathBuf {
        let key = hex::encode(Sha256::digest(abs.as_os_str().as_encoded_bytes()));
        self.root.join("paths").join(format!("{key}.json"))
    }

    /// Verifies one input and returns its cached copy.
    pub fn resolve(&self, w: &Wanted, progress: &indicatif::ProgressBar) -> Result<Resolved> {
        let blob = self.blob(&w.sha256);
        let mut metadata_hit = false;
        let (source, path) = match &w.source {
            Source::Url(url) => {
                if !blob.is_file() {
                    bail!(
                        "{}: {} comes from {url}, which is not in the cache ({}).\n\
                         Builds never use the network: on a connected machine run\n  \
                         airlock fetch {} --cache {}\n\
                         (or copy the file to {}, or bring an `airlock bundle`), then build again",
                        w.at,
                        w.what,
                        self.root.display(),
                        recipe_of(&w.at),
                        self.root.display(),
                        blob.display()
                    );
                }
                (url.clone(), blob)
            }
            Source::Image(img) => match crate::registry::cached_archive(self, img, &w.sha256)
                .with_context(|| format!("{}: {}", w.at, w.what))?
            {
                // The archive's own digest identifies it from here on (the
                // node checks it before importing); the source keeps the pin.
                Some((_, rec)) => {
                    let bare = img.reference.split('@').next().unwrap_or(&img.reference);
                    let path = self.blob(&rec.archive);
                    let size = fs::metadata(&path)
                        .with_context(|| format!("reading cached {}", path.display()))?
                        .len();
                    return Ok(Resolved {
                        what: w.what.clone(),
                        source: format!("{bare}@sha256:{}", w.sha256),
                        sha256: rec.archive,
                        size,
                        path,
                        metadata_hit: true,
                        pin: Some(format!("sha256:{}", w.sha256)),
                    });
                }
                None => bail!(
                    "{}: {} ({} @sha256:{}) is not in the cache ({}).\n\
                     Builds never use the network: on a connected machine run\n  \
                     airlock fetch {} --cache {}\n\
                     (or bring an `airlock bundle`), then build again",
                    w.at,
                    w.what,
                    img.reference,
                    w.sha256,
                    self.root.display(),
                    recipe_of(&w.at),
                    self.root.display()
                ),
            },
            Source::Path(p) => {
                let (path, hit) = self.take_local(w, p, progress)?;
                metadata_hit = hit;
                (p.display().to_string(), path)
            }
        };
        let size = fs::metadata(&path)
            .with_context(|| format!("reading cached {}", path.display()))?
            .len();
        Ok(Resolved {
            what: w.what.clone(),
            source,
            sha256: w.sha256.clone(),
            size,
            path,
            metadata_hit,
            pin: None,
        })
    }

    /// A local file: reuse the cache when its metadata says it is the file
    /// we verified before; otherwise hash it while copying it in.
    fn take_local(
        &self,
        w: &Wanted,
        p: &Path,
        progress: &indicatif::ProgressBar,
    ) -> Result<(PathBuf, bool)> {
        let abs = fs::canonicalize(p)
            .with_context(|| format!("{}: opening {} ({})", w.at, p.display(), w.what))?;
        let meta = fs::metadata(&abs).with_context(|| format!("reading {}", abs.display()))?;
        if !meta.is_file() {
            bail!(
                "{}: {} ({}) is not a regular file",
                w.at,
                abs.display(),
                w.what
            );
        }
        let blob = self.blob(&w.sha256);
        let seen_path = self.seen_path(&abs);
        if let Ok(text) = fs::read_to_string(&seen_path) {
            if let Ok(seen) = serde_json::from_str::<Seen>(&text) {
                let now = Seen::of(&abs, &meta, seen.sha256.clone());
                if now == seen && blob.is_file() {
                    if seen.sha256 != w.sha256 {
                        bail!(mismatch(w, &abs, &seen.sha256));
                    }
                    return Ok((blob, true));
                }
            }
        }
        progress.set_message(format!("verifying {}", w.what));
        let actual = if blob.is_file() {
            // Already cached under this digest (another recipe, or the file
            // was touched): hash the local file without copying it.
            hash_file(&abs, progress)?
        } else {
            self.copy_in(&abs, w, progress)?
        };
        if actual != w.sha256 {
            bail!(mismatch(w, &abs, &actual));
        }
        let seen = Seen::of(&abs, &meta, actual);
        write_atomic(&seen_path, serde_json::to_string_pretty(&seen)?.as_bytes())?;
        Ok((blob, false))
    }

    /// Copies a file into a temporary name in the cache while hashing it,
    /// and gives it its digest name only when it matches.
    fn copy_in(&self, src: &Path, w: &Wanted, progress: &indicatif::ProgressBar) -> Result<String> {
        let dir = self.root.join("sha256");
        fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut reader = progress.wrap_read(input);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .with_context(|| format!("copying {} into the cache", src.display()))?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual == w.sha256 {
            tmp.as_file().sync_all().ok();
            tmp.persist(self.blob(&actual))
                .with_context(|| format!("storing {} in the cache", src.display()))?;
        }
        Ok(actual)
    }
}

/// The recipe file of a `recipe.toml:14:9` position.
fn recipe_of(at: &str) -> &str {
    let mut parts = at.rsplitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(l), Some(file)) if c.parse::<u32>().is_ok() && l.parse::<u32>().is_ok() => {
            file
        }
        _ => at.split(" (").next().unwrap_or(at),
    }
}

fn mismatch(w: &Wanted, file: &Path, actual: &str) -> String {
    format!(
        "{}: sha256 of {} ({}) is {actual}, expected {}; the file changed or the recipe pins the wrong digest",
        w.at,
        file.display(),
        w.what,
        w.sha256
    )
}

/// A reader over a cached input that hashes what it passes on.
pub struct CheckedReader {
    inner: File,
    state: std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.lock().expect("hash state");
        st.0.update(&buf[..n]);
        st.1 += n as u64;
        Ok(n)
    }
}

/// Proves, once a [`CheckedReader`] is done, that the cached copy still had
/// its pinned digest: the cache is verified as it is consumed, so a blob
/// changed after it entered the cache cannot slip into an image.
pub struct Check {
    state: std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>,
    path: PathBuf,
    what: String,
    sha256: String,
}

impl Resolved {
    /// Opens the cached copy for a single pass that is checked by [`Check::finish`].
    pub fn open_checked(&self) -> Result<(CheckedReader, Check)> {
        let inner = File::open(&self.path)
            .with_context(|| format!("opening cached {} ({})", self.what, self.path.display()))?;
        let state = std::sync::Arc::new(std::sync::Mutex::new((Sha256::new(), 0u64)));
        Ok((
            CheckedReader {
                inner,
                state: state.clone(),
            },
            Check {
                state,
                path: self.path.clone(),
                what: self.what.clone(),
                sha256: self.sha256.clone(),
            },
        ))
    }
}

impl Check {
    /// Hashes whatever the consumer did not read (tar padding, trailing
    /// bytes) and compares with the pin.
    pub fn finish(self) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let (mut hasher, read) = {
            let st = self.state.lock().expect("hash state");
            (st.0.clone(), st.1)
        };
        let mut f =
            File::open(&self.path).with_context(|| format!("reopening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(read))
            .with_context(|| format!("reading {}", self.path.display()))?;
        io::copy(&mut f, &mut hasher)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let actual = hex::encode(hasher.finalize());
        if actual != self.sha256 {
            bail!(
                "the cached copy of {} ({}) has sha256 {actual}, not the pinned {}: the cache was \
                 changed after it was verified; delete that file and build again",
                self.what,
                self.path.display(),
                self.sha256
            );
        }
        Ok(())
    }
}

/// sha256 of a file, streamed.
pub fn hash_file(path: &Path, progress: &indicatif::ProgressBar) -> Result<String> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut progress.wrap_read(f), &mut hasher)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Writes a small file under a temporary name and renames it into place.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::ProgressBar;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn wanted(p: &Path, sha256: &str) -> Wanted {
        Wanted {
            what: "file /x".into(),
            at: "r.toml:3:10".into(),
            source: Source::Path(p.to_path_buf()),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn local_file_is_verified_and_cached() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("in.bin");
        fs::write(&f, b"payload").unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let r = cache
            .resolve(&wanted(&f, &sha(b"payload")), &ProgressBar::hidden())
            .unwrap();
        assert_eq!(r.path, cache.blob(&sha(b"payload")));
        assert_eq!(fs::read(&r.path).unwrap(), b"payload");
        assert_eq!(r.size, 7);
    }

    #[test]
    fn mismatch_names_file_expected_and_actual_and_caches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("in.bin");
        fs::write(&f, b"evil").unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let want = sha(b"good");
        let err = cache
            .resolve(&wanted(&f, &want), &ProgressBar::hidden())
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("r.toml:3:10: "), "{msg}");
        assert!(msg.contains(&want) && msg.contains(&sha(b"evil")), "{msg}");
        assert!(msg.contains("in.bin"), "{msg}");
        let left: Vec<_> = fs::read_dir(d.path().join("cache/sha256"))
            .unwrap()
            .collect();
        assert!(
            left.is_empty(),
            "unverified bytes left in the cache: {left:?}"
        );
    }

    #[test]
    fn second_resolve_uses_metadata_and_notices_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("in.bin");
        fs::write(&f, b"one").unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let w = wanted(&f, &sha(b"one"));
        assert!(
            !cache
                .resolve(&w, &ProgressBar::hidden())
                .unwrap()
                .metadata_hit
        );
        // Unchanged metadata: the cache answers without reading the file.
        assert!(
            cache
                .resolve(&w, &ProgressBar::hidden())
                .unwrap()
                .metadata_hit
        );
        // Changing the content changes mtime/ctime: the file is read again and
        // the mismatch caught even though the old digest is cached.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"two").unwrap();
        let err = cache.resolve(&w, &ProgressBar::hidden()).unwrap_err();
        assert!(format!("{err:#}").contains(&sha(b"two")));
    }

    #[test]
    fn a_cache_blob_changed_after_verification_is_caught_on_use() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("in.bin");
        fs::write(&f, b"the pinned bytes").unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let r = cache
            .resolve(
                &wanted(&f, &sha(b"the pinned bytes")),
                &ProgressBar::hidden(),
            )
            .unwrap();
        // Read part of it only: the rest is hashed by finish().
        let (mut rd, check) = r.open_checked().unwrap();
        let mut head = [0u8; 4];
        rd.read_exact(&mut head).unwrap();
        drop(rd);
        check.finish().unwrap();
        fs::write(&r.path, b"the pinned bytez").unwrap();
        let (mut rd, check) = r.open_checked().unwrap();
        io::copy(&mut rd, &mut io::sink()).unwrap();
        let e = check.finish().unwrap_err().to_string();
        assert!(e.contains("the cache was changed"), "{e}");
    }

    #[test]
    fn url_missing_from_cache_says_what_to_fetch() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let w = Wanted {
            what: "base".into(),
            at: "r.toml:5:1".into(),
            source: Source::Url("https://example.invalid/base.tar.zst".into()),
            sha256: sha(b"x"),
        };
        let msg = format!(
            "{:#}",
            cache.resolve(&w, &ProgressBar::hidden()).unwrap_err()
        );
        assert!(
            msg.contains("https://example.invalid/base.tar.zst"),
            "{msg}"
        );
        assert!(
            msg.contains(&cache.blob(&sha(b"x")).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("airlock fetch r.toml --cache"), "{msg}");
    }
}
