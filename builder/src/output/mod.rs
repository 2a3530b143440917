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

use anyhow::{Context, Result};
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
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging> {
        let created_out = !out.exists();
        fs::create_dir_all(out)
            .with_context(|| format!("creating output folder {}", out.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(".airlock-tmp-")
            .tempdir_in(out)
            .with_context(|| format!("creating a temporary folder in {}", out.display()))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            created_out,
            committed: false,
        })
    }

    /// Where a file is written before it gets its final name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Renames files to their final names, in the order given (the
    /// manifest and checksums last, so their presence means "complete").
    pub fn commit(mut self, names: &[&str]) -> Result<()> {
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

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed && self.created_out {
            // The temp dir is removed by its own Drop after this; remove
            // the output folder too if this build created it and it is
            // otherwise empty.
            let _ = fs::remove_dir_all(self.dir.path());
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
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            1,
            "temp folder left behind"
        );
    }
}
