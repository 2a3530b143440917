// SPDX-License-Identifier: Apache-2.0
//! The image being written: a raw file read at offsets, or a zstd stream
//! decompressed on the fly and read forward only (never to a temporary
//! file).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How an image is stored; the magic bytes decide, not the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Raw,
    Zstd,
}

pub(crate) fn format_of(path: &Path) -> Result<Format> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 520];
    let mut n = 0;
    while n < magic.len() {
        match f
            .read_at(&mut magic[n..], n as u64)
            .with_context(|| format!("reading {}", path.display()))?
        {
            0 => break,
            k => n += k,
        }
    }
    let magic = &magic[..n];
    if magic.starts_with(&ZSTD_MAGIC) {
        return Ok(Format::Zstd);
    }
    let vm = if magic.starts_with(b"QFI\xfb") {
        Some("a qcow2")
    } else if magic.starts_with(b"KDMV") {
        Some("a VMDK")
    } else if magic.starts_with(b"vhdxfile") {
        Some("a VHDX")
    } else {
        None
    };
    if let Some(what) = vm {
        bail!(
            "{} is {what} VM disk, not a raw disk image: write the .raw or .raw.zst built \
             beside it, or convert it first (qemu-img convert -O raw)",
            path.display()
        );
    }
    ensure!(
        magic.len() == 520 && &magic[512..] == b"EFI PART",
        "{} has no GPT: it is not a disk image (an airlock image starts with a GPT partition \
         table){}",
        path.display(),
        if magic.is_empty() {
            "; it is empty"
        } else {
            ""
        }
    );
    Ok(Format::Raw)
}

/// Reads the image at increasing offsets.
pub(crate) trait Source: Send {
    /// Fills `buf` from offset `off`; a zstd source cannot go back.
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<()>;
    /// Checks that the image ends at `size` bytes.
    fn check_end(&mut self, size: u64) -> Result<()>;
}

pub(crate) fn open(path: &Path, format: Format) -> Result<Box<dyn Source>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(match format {
        Format::Raw => Box::new(Raw {
            file: f,
            path: path.to_path_buf(),
        }),
        Format::Zstd => Box::new(Zstd {
            dec: zstd::stream::read::Decoder::new(f)
                .with_context(|| format!("starting to decompress {}", path.display()))?,
            pos: 0,
            path: path.to_path_buf(),
        }),
    })
}

struct Raw {
    file: File,
    path: PathBuf,
}

impl Source for Raw {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, off).with_context(|| {
            format!(
                "reading {} bytes of {} at offset {off}",
                buf.len(),
                self.path.display()
            )
        })
    }

    fn check_end(&mut self, size: u64) -> Result<()> {
        let len = self
            .file
            .metadata()
            .with_context(|| format!("reading {}", self.path.display()))?
            .len();
        ensure!(
            len == size,
            "{} is {len} bytes but its block map describes {size}: they do not belong together",
            self.path.display()
        );
        Ok(())
    }
}

struct Zstd {
    dec: zstd::stream::read::Decoder<'static, BufReader<File>>,
    pos: u64,
    path: PathBuf,
}

impl Zstd {
    fn skip_to(&mut self, off: u64) -> Result<()> {
        if off < self.pos {
            bail!(
                "internal error: reading {} backwards (at {off}, already at {})",
                self.path.display(),
                self.pos
            );
        }
        let want = off - self.pos;
        let n = io::copy(&mut (&mut self.dec).take(want), &mut io::sink())
            .with_context(|| format!("decompressing {} up to offset {off}", self.path.display()))?;
        self.pos += n;
        ensure!(
            n == want,
            "{} ends after {} bytes of image, before offset {off} its block map lists",
            self.path.display(),
            self.pos
        );
        Ok(())
    }
}

impl Source for Zstd {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.skip_to(off)?;
        let mut got = 0;
        while got < buf.len() {
            match self.dec.read(&mut buf[got..]) {
                Ok(0) => bail!(
                    "{} ends after {} bytes of image, inside a range its block map lists",
                    self.path.display(),
                    self.pos + got as u64
                ),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "decompressing {} at offset {}",
                            self.path.display(),
                            self.pos + got as u64
                        )
                    })
                }
            }
        }
        self.pos += got as u64;
        Ok(())
    }

    fn check_end(&mut self, size: u64) -> Result<()> {
        self.skip_to(size)?;
        let mut one = [0u8; 1];
        let n = self
            .dec
            .read(&mut one)
            .with_context(|| format!("decompressing the end of {}", self.path.display()))?;
        ensure!(
            n == 0,
            "{} holds more than the {size} bytes its block map describes: they do not belong together",
            self.path.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_zstd_read_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        data[512..520].copy_from_slice(b"EFI PART");
        let raw = d.path().join("a.raw");
        std::fs::write(&raw, &data).unwrap();
        let zst = d.path().join("a.raw.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        assert_eq!(format_of(&raw).unwrap(), Format::Raw);
        assert_eq!(format_of(&zst).unwrap(), Format::Zstd);
        for (p, f) in [(&raw, Format::Raw), (&zst, Format::Zstd)] {
            let mut s = open(p, f).unwrap();
            let mut buf = vec![0u8; 1000];
            s.read_at(5000, &mut buf).unwrap();
            assert_eq!(buf, data[5000..6000]);
            s.read_at(200_000, &mut buf).unwrap();
            assert_eq!(buf, data[200_000..201_000]);
            s.check_end(300_000).unwrap();
        }
        let mut s = open(&zst, Format::Zstd).unwrap();
        let err = s.check_end(200_000).unwrap_err();
        assert!(format!("{err:#}").contains("holds more than"), "{err:#}");
        let mut s = open(&zst, Format::Zstd).unwrap();
        let err = s.read_at(299_500, &mut [0u8; 1000]).unwrap_err();
        assert!(
            format!("{err:#}").contains("ends after 300000 bytes"),
            "{err:#}"
        );
    }
}
