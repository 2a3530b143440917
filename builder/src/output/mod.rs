// SPDX-License-Identifier: Apache-2.0
//! Outputs: the compressed image, checksums and the manifest.
//!
//! Everything is produced inside a temporary folder beside the final one and
//! renamed into place only when complete, so an interrupted build never
//! leaves a file under a final name.

pub mod formats;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A writer that hashes what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.hasher.finalize()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Digests of the raw image and its zstd-compressed copy.
pub struct Compressed {
    pub raw_sha256: String,
    pub zst_sha256: String,
    pub zst_size: u64,
}

/// Reads `raw` once, hashing it and compressing it with multi-threaded zstd
/// into `zst`, and hashes the compressed stream as it is written.
pub fn compress_and_hash(
    raw: &Path,
    zst: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<Compressed> {
    let input = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let out = File::create(zst).with_context(|| format!("creating {}", zst.display()))?;
    let mut enc =
        zstd::stream::Encoder::new(HashWriter::new(BufWriter::with_capacity(1 << 20, out)), 3)
            .context("starting zstd")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    enc.multithread(threads).context("enabling zstd threads")?;
    enc.include_checksum(true).context("configuring zstd")?;
    let mut reader = progress.wrap_read(input);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = read_full(&mut reader, &mut buf)
            .with_context(|| format!("reading {}", raw.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .with_context(|| format!("compressing into {}", zst.display()))?;
    }
    let hw = enc
        .finish()
        .with_context(|| format!("finishing {}", zst.display()))?;
    let (bw, zst_sha256, zst_size) = hw.finish();
    let file = bw
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", zst.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", zst.display()))?;
    Ok(Compressed {
        raw_sha256: hex::encode(hasher.finalize()),
        zst_sha256,
        zst_size,
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `sha256sum -c`-compatible lines, sorted by file name.
pub fn sha256sums(entries: &[(String, String)]) -> String {
    let mut e: Vec<_> = entries.to_vec();
    e.sort_by(|a, b| a.0.cmp(&b.0));
    e.iter()
        .map(|(name, sum)| format!("{sum}  {name}\n"))
        .collect()
}

/// A temporary folder inside the output folder; `commit` renames its files
/// to their final names, dropping it without commit removes everything.
pub struct Staging {
    dir: tempfile::TempDir,
    out: PathBuf,
    created_out: bool,
    committed: bool,
    /// Held for the whole build: one build at a time per output folder.
    _lock: File,
}

const LOCK_NAME: &str = ".airlock.lock";
const TMP_PREFIX: &str = ".airlock-tmp-";

/// An existing output folder must be one airlock made (it holds the build
/// lock), or hold nothing but cluster secrets: a build replaces files by
/// name, and must not do that in a folder of someone else's (or in `/`).
fn refuse_foreign_folder(out: &Path) -> Result<()> {
    if out.join(LOCK_NAME).is_file() {
        return Ok(());
    }
    let rd =
        fs::read_dir(out).with_context(|| format!("reading output folder {}", out.display()))?;
    let mut foreign: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "secrets")
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown = foreign
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    bail!(
        "output folder {} already holds files airlock did not write ({shown}{}): \
         pass a new or empty folder with --out",
        out.display(),
        if foreign.len() > 3 { ", ..." } else { "" }
    )
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging> {
        let created_out = !out.exists();
        if out.exists() && !out.is_dir() {
            bail!(
                "output folder {} exists and is not a folder: pass another --out",
                out.display()
            );
        }
        if !created_out {
            refuse_foreign_folder(out)?;
        }
        fs::create_dir_all(out)
            .with_context(|| format!("creating output folder {}", out.display()))?;
        let lock_path = out.join(LOCK_NAME);
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            bail!(
                "another airlock build is writing to {} right now: wait for it or pass another --out",
                out.display()
            );
        }
        // Holding the lock, any temporary folder left here belongs to a
        // build that was killed: remove it so it does not pile up.
        if let Ok(rd) = fs::read_dir(out) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    tracing::info!(
                        "removing {} left by an interrupted build",
                        e.path().display()
                    );
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(out)
            .with_context(|| format!("creating a temporary folder in {}", out.display()))?;
        crate::cmd::on_interrupt_say(format!(
            "nothing was written under a final name; the temporary {} is removed by the next build into {}",
            dir.path().display(),
            out.display()
        ));
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            created_out,
            committed: false,
            _lock: lock,
        })
    }

    /// Where a file is written before it gets its final name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the new files their final names. The previous build's
    /// `SHA256SUMS` and `manifest.json` go first (so a half-done commit is
    /// never mistaken for a complete set), then every file the previous
    /// build listed that this one does not make (no stale qcow2 beside a
    /// new manifest), then the new files in the order given, with the
    /// manifest and checksums last: their presence means "complete".
    pub fn commit(mut self, names: &[&str]) -> Result<()> {
        let old_sums = fs::read_to_string(self.out.join("SHA256SUMS")).unwrap_or_default();
        for marker in ["SHA256SUMS", "manifest.json"] {
            remove_if_file(&self.out.join(marker))?;
        }
        for line in old_sums.lines() {
            let Some((_, name)) = line.split_once("  ") else {
                continue;
            };
            let name = name.trim_start_matches('*');
            let plain = !name.is_empty() && !name.contains('/') && !name.starts_with('.');
            if plain && !names.contains(&name) {
                remove_if_file(&self.out.join(name))?;
            }
        }
        for n in names {
            let from = self.path(n);
            let to = self.out.join(n);
            fs::rename(&from, &to)
                .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        }
        if let Ok(d) = File::open(&self.out) {
            d.sync_all().ok();
        }
        self.committed = true;
        Ok(())
    }
}

fn remove_if_file(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => bail!(
            "{} is a folder where airlock writes a file: move it away",
            p.display()
        ),
        Ok(_) => {
            fs::remove_file(p).with_context(|| format!("removing the previous {}", p.display()))
        }
        Err(_) => Ok(()),
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed && self.created_out {
            // The temp dir is removed by its own Drop after this; remove
            // the output folder too if this build created it and it is
            // otherwise empty.
            let _ = fs::remove_dir_all(self.dir.path());
            let _ = fs::remove_file(self.out.join(LOCK_NAME));
            let _ = fs::remove_dir(&self.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_round_trips_and_hashes_match() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("a.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(9 << 20).unwrap();
        drop(f);
        let mut f = fs::OpenOptions::new().write(true).open(&raw).unwrap();
        f.write_all(b"hello disk").unwrap();
        drop(f);
        let zst = d.path().join("a.raw.zst");
        let c = compress_and_hash(&raw, &zst, &indicatif::ProgressBar::hidden()).unwrap();
        let raw_bytes = fs::read(&raw).unwrap();
        let zst_bytes = fs::read(&zst).unwrap();
        assert_eq!(c.raw_sha256, hex::encode(Sha256::digest(&raw_bytes)));
        assert_eq!(c.zst_sha256, hex::encode(Sha256::digest(&zst_bytes)));
        assert_eq!(c.zst_size, zst_bytes.len() as u64);
        assert_eq!(zstd::decode_all(&zst_bytes[..]).unwrap(), raw_bytes);
    }

    #[test]
    fn sums_are_sorted_sha256sum_lines() {
        let s = sha256sums(&[("b".into(), "22".into()), ("a".into(), "11".into())]);
        assert_eq!(s, "11  a\n22  b\n");
    }

    #[test]
    fn commit_replaces_the_previous_set_and_one_build_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let s = Staging::new(&out).unwrap();
        for n in ["a.raw", "a.qcow2", "SHA256SUMS"] {
            fs::write(s.path(n), n).unwrap();
        }
        fs::write(s.path("SHA256SUMS"), "11  a.raw\n22  a.qcow2\n").unwrap();
        s.commit(&["a.raw", "a.qcow2", "SHA256SUMS"]).unwrap();
        let s = Staging::new(&out).unwrap();
        // A second build into the same folder at the same time is refused.
        let err = Staging::new(&out).err().unwrap().to_string();
        assert!(err.contains("another airlock build"), "{err}");
        fs::write(s.path("b.raw"), "b").unwrap();
        fs::write(s.path("SHA256SUMS"), "33  b.raw\n").unwrap();
        s.commit(&["b.raw", "SHA256SUMS"]).unwrap();
        assert!(
            !out.join("a.qcow2").exists(),
            "stale output of the previous build kept"
        );
        assert!(!out.join("a.raw").exists());
        assert_eq!(
            fs::read_to_string(out.join("SHA256SUMS")).unwrap(),
            "33  b.raw\n"
        );
    }

    #[test]
    fn uncommitted_staging_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        {
            let s = Staging::new(&out).unwrap();
            fs::write(s.path("x.raw"), b"half").unwrap();
        }
        assert!(
            !out.exists(),
            "failed build left {:?}",
            fs::read_dir(&out).map(|r| r.count())
        );
        let s = Staging::new(&out).unwrap();
        fs::write(s.path("x.raw"), b"whole").unwrap();
        s.commit(&["x.raw"]).unwrap();
        assert_eq!(fs::read(out.join("x.raw")).unwrap(), b"whole");
        let mut left: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".airlock.lock", "x.raw"], "temp folder left behind");
    }

    #[test]
    fn a_folder_airlock_did_not_make_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("proj");
        fs::create_dir(&out).unwrap();
        for n in ["manifest.json", "SHA256SUMS", "tiny.raw"] {
            fs::write(out.join(n), "mine").unwrap();
        }
        let err = Staging::new(&out).err().unwrap().to_string();
        assert!(
            err.contains("did not write") && err.contains("SHA256SUMS") && err.contains("--out"),
            "{err}"
        );
        assert_eq!(fs::read(out.join("tiny.raw")).unwrap(), b"mine");
        assert!(!out.join(".airlock.lock").exists());
        // Empty, or holding only cluster secrets: fine.
        let empty = d.path().join("empty");
        fs::create_dir_all(empty.join("secrets")).unwrap();
        Staging::new(&empty).unwrap().commit(&[]).unwrap();
    }
}
