// SPDX-License-Identifier: Apache-2.0
//! The device or file being written: positioned writes that report the
//! offset they failed at, fast zeroing, flushes, and reads that bypass the
//! page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{Advice, FallocateFlags};
use rustix::io::Errno;

/// Buffers are aligned to this, enough for O_DIRECT on any device.
pub(crate) const ALIGN: usize = 4096;

/// A byte buffer whose data starts on an [`ALIGN`] boundary.
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len }
    }
    pub(crate) fn get(&self, n: usize) -> &[u8] {
        &self.raw[self.start..self.start + n.min(self.len)]
    }
    pub(crate) fn get_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + n.min(self.len)]
    }
}

/// Where the image goes. Implemented by [`FileTarget`] and, in tests, by
/// targets that fail on purpose.
pub(crate) trait Target: Send + Sync {
    /// Writes all of `buf` at `off`; on failure, the offset the failing
    /// write started at.
    fn write_at(&mut self, buf: &[u8], off: u64) -> std::result::Result<(), (u64, io::Error)>;
    /// Makes `[off, off + len)` read as zeros without sending the zeros,
    /// when the target can (`Ok(false)`: it cannot, write them instead).
    fn zero(&mut self, off: u64, len: u64) -> io::Result<bool>;
    /// Fills `buf` from `off`, from the medium rather than a cache.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Flushes everything written to stable storage.
    fn sync(&mut self) -> io::Result<()>;
    /// Drops cached pages, so later reads come from the medium.
    fn drop_cache(&mut self) -> io::Result<()>;
    /// Whether writes bypass the page cache (O_DIRECT): then a flush now
    /// and then is cheap, and bounds what a failed flush can have lost.
    fn writes_through(&self) -> bool;
}

/// A block device or regular file.
pub(crate) struct FileTarget {
    file: File,
    /// The same device opened with O_DIRECT, for aligned I/O.
    direct: Option<File>,
    /// Whether `direct` is used for writes too (block devices).
    direct_writes: bool,
    can_zero: bool,
}

/// Whether two descriptors reach the same device or file. (While the
/// first is open, the kernel does not give its device number to a newly
/// plugged disk.)
fn same_disk(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino(), m.rdev())).ok();
    id(a).is_some() && id(a) == id(b)
}

fn aligned(ptr: *const u8, len: usize, off: u64) -> bool {
    (ptr as usize) % ALIGN == 0 && len % ALIGN == 0 && off % ALIGN as u64 == 0
}

impl FileTarget {
    /// Opens a block device for writing: exclusively (the kernel refuses if
    /// anything has it mounted or claimed) and, where it allows, a second
    /// time with O_DIRECT. This is done once, before the device is checked
    /// and shown, and everything later goes through these descriptors: a
    /// path that comes to name another disk meanwhile (a stick swapped
    /// during the prompt, a udev rename) changes nothing.
    pub(crate) fn open_device(path: &Path) -> io::Result<FileTarget> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)?;
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .filter(|d| same_disk(&file, d));
        Ok(FileTarget {
            file,
            direct_writes: direct.is_some(),
            direct,
            can_zero: true,
        })
    }

    /// Opens a device or file read-only, for verifying.
    pub(crate) fn open_read(path: &Path) -> Result<FileTarget> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(FileTarget {
            file,
            direct,
            direct_writes: false,
            can_zero: false,
        })
    }

    /// A regular file at `path`, written and read back with O_DIRECT
    /// where its filesystem allows (no copy into the page cache, and the
    /// final flush has little left to do), else through the page cache
    /// and flushed at the end.
    pub(crate) fn from_file(file: File, path: &Path) -> FileTarget {
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .filter(|d| same_disk(&file, d));
        FileTarget {
            file,
            direct_writes: direct.is_some(),
            direct,
            can_zero: true,
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether writes bypass the page cache.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct_writes
    }
}

impl Target for FileTarget {
    fn write_at(&mut self, buf: &[u8], off: u64) -> std::result::Result<(), (u64, io::Error)> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let rest = &buf[done..];
            let f = match &self.direct {
                Some(d) if self.direct_writes && aligned(rest.as_ptr(), rest.len(), at) => d,
                _ => &self.file,
            };
            match f.write_at(rest, at) {
                Ok(0) => {
                    return Err((
                        at,
                        io::Error::new(io::ErrorKind::WriteZero, "the device took no more bytes"),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((at, e)),
            }
        }
        Ok(())
    }

    fn zero(&mut self, off: u64, len: u64) -> io::Result<bool> {
        if !self.can_zero {
            return Ok(false);
        }
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS | Errno::NODEV) => {
                self.can_zero = false;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        match &self.direct {
            Some(d) if aligned(buf.as_ptr(), buf.len(), off) => d.read_exact_at(buf, off),
            _ => self.file.read_exact_at(buf, off),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        rustix::fs::fadvise(&self.file, 0, 0, Advice::DontNeed)?;
        Ok(())
    }

    fn writes_through(&self) -> bool {
        self.direct_writes
    }
}
