// SPDX-License-Identifier: Apache-2.0
//! Which bytes of a disk image must reach the target.
//!
//! The union of:
//! - the ranges the image file has data in (SEEK_DATA/SEEK_HOLE);
//! - the first and last MiB of the disk and of every partition, so that the
//!   stick's old partition table, boot sectors and filesystem or RAID
//!   signatures (ISO 9660 at 32 KiB, md and ZFS labels at the end, ...) are
//!   overwritten and cannot confuse blkid or udev;
//! - every block the filesystems themselves say is in use (ext4 bitmaps and
//!   group metadata, FAT tables and allocated clusters), whether or not the
//!   image file happens to have it allocated.
//!
//! The last two depend only on the image's bytes, never on how sparse the
//! file is, so the map of a `zstd -d`-ed or `cp --sparse=always` copy is
//! still safe.

use std::fs::File;

use anyhow::{Context, Result};
use gptman::GPT;
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::extents::Extents;
use super::{ext4, fat};

/// Size of the zones at both ends of the disk and of each partition that
/// are always written.
pub(crate) const ZONE: u64 = 1 << 20;

/// The byte ranges of `file` (of `size` bytes) that hold data, as the
/// filesystem under it reports them.
pub(crate) fn data_ranges(file: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos as i64)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break,
            // No SEEK_DATA here: everything counts as data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e).with_context(|| format!("finding data at offset {pos}")),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start as i64))
            .with_context(|| format!("finding the end of the data at offset {start}"))?
            .min(size);
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// One partition: number, first byte, length.
pub(crate) type Partition = (u32, u64, u64);

/// The partitions of the image's primary GPT (512-byte sectors), or `None`
/// when it has none.
pub(crate) fn partitions(file: &File) -> Option<Vec<Partition>> {
    let mut r = file;
    let gpt = GPT::read_from(&mut r, 512).ok()?;
    Some(
        gpt.iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| {
                (
                    n,
                    p.starting_lba * 512,
                    (p.ending_lba + 1 - p.starting_lba) * 512,
                )
            })
            .collect(),
    )
}

/// What `mapped` found, for the notes of `write` and the tests.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) extents: Extents,
    /// Per partition: number and the filesystem recognised ("ext4", "fat").
    pub(crate) filesystems: Vec<(u32, &'static str)>,
}

/// Computes the mapped bytes of the image `file` of `size` bytes, widened to
/// whole `block`s.
pub(crate) fn mapped(file: &File, size: u64, block: u64) -> Result<Scan> {
    let mut scan = Scan::default();
    let e = &mut scan.extents;
    e.extend(data_ranges(file, size)?);
    e.add(0, ZONE.min(size));
    e.add(size.saturating_sub(ZONE), size);
    for (n, start, len) in partitions(file).unwrap_or_default() {
        let end = (start + len).min(size);
        e.add(start, (start + ZONE).min(end));
        e.add(end.saturating_sub(ZONE).max(start), end);
        let len = end.saturating_sub(start);
        if let Some(r) = ext4::used_ranges(file, start, len)
            .with_context(|| format!("reading the ext4 filesystem in partition {n}"))?
        {
            e.extend(r);
            scan.filesystems.push((n, "ext4"));
        } else if let Some(r) = fat::used_ranges(file, start, len)
            .with_context(|| format!("reading the FAT filesystem in partition {n}"))?
        {
            e.extend(r);
            scan.filesystems.push((n, "fat"));
        }
    }
    e.align(block, size);
    Ok(scan)
}
