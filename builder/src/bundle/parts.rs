// SPDX-License-Identifier: Apache-2.0
//! A bundle on disk: one or more part files and `<FILE>.sha256`, which lists
//! every part with its sha256 in `sha256sum` format, so a damaged part is
//! named before anything is unpacked (and `sha256sum -c` checks them too).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The checksum file of a bundle.
pub fn sums_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".sha256");
    PathBuf::from(p)
}

/// The name of part `i` of a split bundle: `FILE.000`, `FILE.001`, …
pub fn part_path(file: &Path, i: usize) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(format!(".{i:03}"));
    PathBuf::from(p)
}

/// Writes a stream into parts of at most `limit` bytes (one part when
/// `limit` is None), each under a temporary name, hashed on the way.
pub struct SplitWriter {
    file: PathBuf,
    limit: Option<u64>,
    current: Option<(tempfile::NamedTempFile, Sha256, u64)>,
    done: Vec<(tempfile::NamedTempFile, String)>,
}

impl SplitWriter {
    pub fn new(file: &Path, limit: Option<u64>) -> SplitWriter {
        SplitWriter {
            file: file.to_path_buf(),
            limit,
            current: None,
            done: Vec::new(),
        }
    }

    fn open(&mut self) -> io::Result<&mut (tempfile::NamedTempFile, Sha256, u64)> {
        if self.current.is_none() {
            let dir = self
                .file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".airlock-bundle-")
                .tempfile_in(dir)?;
            self.current = Some((tmp, Sha256::new(), 0));
        }
        Ok(self.current.as_mut().expect("opened"))
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some((mut tmp, hasher, _)) = self.current.take() {
            tmp.flush()?;
            tmp.as_file().sync_all()?;
            self.done.push((tmp, hex::encode(hasher.finalize())));
        }
        Ok(())
    }

    /// Renames the parts to their final names and writes the checksum
    /// file last. Returns (part path, sha256, size) of each.
    pub fn finish(mut self) -> Result<Vec<(PathBuf, String, u64)>> {
        self.close_current().context("writing the bundle")?;
        if self.done.is_empty() {
            self.open().context("writing the bundle")?;
            self.close_current().context("writing the bundle")?;
        }
        let split = self.done.len() > 1 || self.limit.is_some();
        let mut out = Vec::new();
        let mut sums = String::new();
        // Remove what an earlier bundle of the same name left.
        fs::remove_file(sums_path(&self.file)).ok();
        for i in 0.. {
            let p = part_path(&self.file, i);
            if fs::remove_file(&p).is_err() {
                break;
            }
        }
        for (i, (tmp, sha)) in self.done.into_iter().enumerate() {
            let path = if split {
                part_path(&self.file, i)
            } else {
                self.file.clone()
            };
            let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
            tmp.persist(&path)
                .with_context(|| format!("renaming the bundle part to {}", path.display()))?;
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            sums.push_str(&format!("{sha}  {name}\n"));
            out.push((path, sha, size));
        }
        crate::inputs::write_atomic(&sums_path(&self.file), sums.as_bytes())?;
        Ok(out)
    }
}

impl Write for SplitWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let limit = self.limit;
        if let (Some(limit), Some((_, _, len))) = (limit, &self.current) {
            if *len >= limit {
                self.close_current()?;
            }
        }
        let (tmp, hasher, len) = self.open()?;
        let room = limit
            .map(|l| (l - *len).min(buf.len() as u64) as usize)
            .unwrap_or(buf.len());
        let n = tmp.write(&buf[..room])?;
        hasher.update(&buf[..n]);
        *len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((tmp, _, _)) => tmp.flush(),
            None => Ok(()),
        }
    }
}

/// The parts a checksum file lists, in order, each checked against its
/// sha256. Every damaged or missing part is named, and nothing is returned
/// unless all are good.
pub fn check_parts(sums: &Path, progress: &indicatif::ProgressBar) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(sums)
        .with_context(|| format!("reading the bundle checksums {}", sums.display()))?;
    let dir = sums
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut parts = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (sha, name) = line
            .split_once("  ")
            .filter(|(s, _)| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| {
                format!(
                    "{}:{}: not a `<sha256>  <part>` line",
                    sums.display(),
                    n + 1
                )
            })?;
        if name.contains('/') || name.starts_with('.') {
            bail!(
                "{}:{}: part name {name:?} must be a file beside it",
                sums.display(),
                n + 1
            );
        }
        parts.push((dir.join(name), sha.to_ascii_lowercase()));
    }
    if parts.is_empty() {
        bail!("{} lists no bundle parts", sums.display());
    }
    let total: u64 = parts
        .iter()
        .map(|(p, _)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    progress.set_length(total);
    let mut bad = Vec::new();
    for (path, want) in &parts {
        match hash(path, progress) {
            Ok(got) if &got == want => {}
            Ok(got) => bad.push(format!(
                "part {} is damaged: its sha256 is {got}, {} says {want}; copy it again from the source media",
                path.display(),
                sums.display()
            )),
            Err(e) => bad.push(format!("part {} cannot be read: {e:#}", path.display())),
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} bundle parts failed their check, nothing was unpacked:\n  - {}",
            bad.len(),
            parts.len(),
            bad.join("\n  - ")
        );
    }
    Ok(parts.into_iter().map(|(p, _)| p).collect())
}

fn hash(path: &Path, progress: &indicatif::ProgressBar) -> Result<String> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut progress.wrap_read(f), &mut h)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// The parts read one after another as one stream.
pub struct Chain {
    parts: std::vec::IntoIter<PathBuf>,
    current: Option<File>,
}

impl Chain {
    pub fn new(parts: Vec<PathBuf>) -> Chain {
        Chain {
            parts: parts.into_iter(),
            current: None,
        }
    }
}

impl Read for Chain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                match self.parts.next() {
                    Some(p) => self.current = Some(File::open(p)?),
                    None => return Ok(0),
                }
            }
            let n = self.current.as_mut().expect("open").read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::ProgressBar;

    #[test]
    fn split_parts_rejoin_and_a_damaged_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("b.tar.zst");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut w = SplitWriter::new(&file, Some(3000));
        for chunk in data.chunks(777) {
            w.write_all(chunk).unwrap();
        }
        let parts = w.finish().unwrap();
        assert_eq!(parts.len(), 4);
        assert!(parts[..3].iter().all(|(_, _, s)| *s == 3000));
        let checked = check_parts(&sums_path(&file), &ProgressBar::hidden()).unwrap();
        let mut back = Vec::new();
        Chain::new(checked).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        // Damage part 2 (FILE.001).
        let p = part_path(&file, 1);
        let mut bytes = fs::read(&p).unwrap();
        bytes[10] ^= 1;
        fs::write(&p, bytes).unwrap();
        fs::remove_file(part_path(&file, 3)).unwrap();
        let err = format!(
            "{:#}",
            check_parts(&sums_path(&file), &ProgressBar::hidden()).unwrap_err()
        );
        assert!(
            err.contains("2 of 4 bundle parts")
                && err.contains("b.tar.zst.001 is damaged")
                && err.contains("b.tar.zst.003 cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn unsplit_is_one_file_named_as_asked() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("b.tar.zst");
        let mut w = SplitWriter::new(&file, None);
        w.write_all(b"hello").unwrap();
        let parts = w.finish().unwrap();
        assert_eq!(parts[0].0, file);
        let sums = fs::read_to_string(sums_path(&file)).unwrap();
        assert!(sums.ends_with("  b.tar.zst\n"), "{sums}");
    }
}
