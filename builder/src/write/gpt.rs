// SPDX-License-Identifier: Apache-2.0
//! Moving the backup GPT to the real end of a device larger than the image.
//!
//! The image's backup header and entry array sit in its last 33 sectors,
//! which on a larger stick is somewhere in the middle. gptman recomputes the
//! headers for the device size into an in-memory recorder; the result is a
//! set of byte patches laid over the image as it streams past (protective
//! MBR, primary header, the old backup area zeroed) and a tail region that
//! ends in the new backup. Nothing is read back from the device.

use std::io::{self, Cursor, Seek, SeekFrom, Write};

use anyhow::{ensure, Context, Result};
use gptman::GPT;

const SECTOR: u64 = 512;
/// Protective MBR, primary header and 32 sectors of entries.
pub(crate) const HEAD: u64 = 34 * SECTOR;
/// The backup entries and header.
pub(crate) const BACKUP: u64 = 33 * SECTOR;
/// How much of the device's end is rewritten (zeros, then the backup GPT),
/// so old signatures near the end (md, a stale GPT) are gone too.
const TAIL_ZONE: u64 = 1 << 20;

/// Changes to the image for a device of a given size.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Relocation {
    /// Bytes laid over the image's own, at image offsets, in order (a later
    /// patch wins).
    pub(crate) patches: Vec<(u64, Vec<u8>)>,
    /// Bytes written past the end of the image: the device's last MiB (or
    /// less), ending in the backup GPT.
    pub(crate) tail: Option<(u64, Vec<u8>)>,
}

impl Relocation {
    /// Lays the patches that overlap `[off, off + buf.len())` over `buf`.
    pub(crate) fn apply(&self, off: u64, buf: &mut [u8]) -> bool {
        let end = off + buf.len() as u64;
        let mut touched = false;
        for (p, bytes) in &self.patches {
            let pend = p + bytes.len() as u64;
            if *p >= end || pend <= off {
                continue;
            }
            let s = (*p).max(off);
            let e = pend.min(end);
            buf[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&bytes[(s - p) as usize..(e - p) as usize]);
            touched = true;
        }
        touched
    }

    /// Whether any patch overlaps `[off, off + len)`.
    pub(crate) fn touches(&self, off: u64, len: u64) -> bool {
        self.patches
            .iter()
            .any(|(p, b)| *p < off + len && p + b.len() as u64 > off)
    }
}

/// Records what gptman writes, for a device of `len` bytes.
struct Recorder {
    len: u64,
    pos: u64,
    writes: Vec<(u64, Vec<u8>)>,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.writes.last_mut() {
            Some((at, b)) if *at + b.len() as u64 == self.pos => b.extend_from_slice(buf),
            _ => self.writes.push((self.pos, buf.to_vec())),
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Recorder {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap_or(0),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap_or(0),
        };
        Ok(self.pos)
    }
}

/// Whether `head` (the image's first sectors) holds a GPT header at LBA 1.
pub(crate) fn has_gpt(head: &[u8]) -> bool {
    head.len() >= 2 * SECTOR as usize && &head[SECTOR as usize..SECTOR as usize + 8] == b"EFI PART"
}

/// Plans the GPT of an image of `image_size` bytes, whose first [`HEAD`]
/// bytes are `head`, on a device of `device_size` bytes. `None` when the
/// sizes are equal (the image's own tables are right) or the image has no
/// GPT.
pub(crate) fn relocate(
    head: &[u8],
    image_size: u64,
    device_size: u64,
) -> Result<Option<Relocation>> {
    if device_size == image_size || !has_gpt(head) {
        return Ok(None);
    }
    ensure!(
        device_size > image_size,
        "the device is smaller than the image"
    );
    ensure!(
        device_size % SECTOR == 0,
        "the device size {device_size} is not whole 512-byte sectors"
    );
    let mut gpt = GPT::read_from(&mut Cursor::new(head), SECTOR)
        .context("reading the image's primary GPT")?;
    ensure!(
        gpt.header.backup_lba == image_size / SECTOR - 1,
        "the image's GPT puts its backup at sector {} but the image ends at sector {}: the image \
         was truncated or extended",
        gpt.header.backup_lba,
        image_size / SECTOR - 1
    );
    let mut rec = Recorder {
        len: device_size,
        pos: 0,
        writes: Vec::new(),
    };
    gpt.header
        .update_from(&mut rec, SECTOR)
        .context("sizing the GPT for the device")?;
    GPT::write_protective_mbr_into(&mut rec, SECTOR).context("writing the protective MBR")?;
    gpt.write_into(&mut rec)
        .context("writing the GPT for the device")?;

    let tail_start = device_size.saturating_sub(TAIL_ZONE).max(image_size);
    let mut tail = vec![0u8; (device_size - tail_start) as usize];
    // The old backup area, in the middle of the device now, becomes zeros.
    let mut patches = vec![(image_size - BACKUP, vec![0u8; BACKUP as usize])];
    // Writes go to the head or the last 33 sectors; on a device barely
    // larger than the image the latter straddle the image's end.
    for (at, bytes) in rec.writes {
        let end = at + bytes.len() as u64;
        if at < image_size {
            patches.push((at, bytes[..(end.min(image_size) - at) as usize].to_vec()));
        }
        if end > tail_start {
            let s = at.max(tail_start);
            tail[(s - tail_start) as usize..(end - tail_start) as usize]
                .copy_from_slice(&bytes[(s - at) as usize..]);
        }
    }
    Ok(Some(Relocation {
        patches,
        tail: Some((tail_start, tail)),
    }))
}

/// The reverse of [`relocate`], for checking a written device against the
/// image's block map: the image's own protective MBR and GPT, planned from
/// the device's primary GPT for `image_size`, as patches that turn the
/// device's first `image_size` bytes back into the image's. `None` when the
/// device's backup GPT is not at the device's end (a device the size of the
/// image, or one written with plain dd): then nothing was moved.
pub(crate) fn restore(
    head: &[u8],
    image_size: u64,
    device_size: u64,
) -> Result<Option<Relocation>> {
    if device_size <= image_size || !has_gpt(head) {
        return Ok(None);
    }
    let mut gpt = GPT::read_from(&mut Cursor::new(head), SECTOR)
        .context("reading the device's primary GPT")?;
    if gpt.header.backup_lba != device_size / SECTOR - 1 {
        return Ok(None);
    }
    let mut rec = Recorder {
        len: image_size,
        pos: 0,
        writes: Vec::new(),
    };
    gpt.header
        .update_from(&mut rec, SECTOR)
        .context("sizing the GPT for the image")?;
    GPT::write_protective_mbr_into(&mut rec, SECTOR).context("writing the protective MBR")?;
    gpt.write_into(&mut rec)
        .context("writing the GPT for the image")?;
    let patches = rec
        .writes
        .into_iter()
        .filter(|(at, b)| at + b.len() as u64 <= image_size)
        .collect();
    Ok(Some(Relocation {
        patches,
        tail: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPT image of `size` bytes with one partition, as bytes.
    fn image(size: u64) -> Vec<u8> {
        let mut c = Cursor::new(vec![0u8; size as usize]);
        let mut gpt = GPT::new_from(&mut c, SECTOR, [9; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 4095,
            attribute_bits: 0,
            partition_name: "root".into(),
        };
        GPT::write_protective_mbr_into(&mut c, SECTOR).unwrap();
        gpt.write_into(&mut c).unwrap();
        c.into_inner()
    }

    #[test]
    fn same_size_or_no_gpt_changes_nothing() {
        let img = image(4 << 20);
        assert_eq!(
            relocate(&img[..HEAD as usize], 4 << 20, 4 << 20).unwrap(),
            None
        );
        assert_eq!(
            relocate(&[0u8; HEAD as usize], 4 << 20, 8 << 20).unwrap(),
            None
        );
    }

    #[test]
    fn larger_device_gets_a_valid_gpt_at_its_end() {
        let size = 4u64 << 20;
        let dev = 3 * size + 7 * SECTOR;
        let img = image(size);
        let r = relocate(&img[..HEAD as usize], size, dev).unwrap().unwrap();
        // Lay it out as a writer would.
        let mut disk = vec![0xaau8; dev as usize];
        let mut body = img.clone();
        assert!(r.apply(0, &mut body));
        disk[..size as usize].copy_from_slice(&body);
        let (at, tail) = r.tail.as_ref().unwrap();
        assert_eq!(at + tail.len() as u64, dev);
        disk[*at as usize..].copy_from_slice(tail);
        // The old backup is gone; gptman reads both copies at the new places.
        assert!(body[(size - SECTOR) as usize..].iter().all(|&b| b == 0));
        let mut c = Cursor::new(disk);
        let gpt = GPT::read_from(&mut c, SECTOR).unwrap();
        assert_eq!(gpt.header.backup_lba, dev / SECTOR - 1);
        assert_eq!(gpt[1].partition_name.as_str(), "root");
        c.seek(SeekFrom::Start(dev - SECTOR)).unwrap();
        let backup = gptman::GPTHeader::read_from(&mut c).unwrap();
        assert_eq!(backup.primary_lba, dev / SECTOR - 1);
        assert_eq!(backup.partition_entry_lba, dev / SECTOR - 33);
        // The protective MBR covers the device.
        let mbr = &c.get_ref()[446 + 12..446 + 16];
        assert_eq!(
            u32::from_le_bytes(mbr.try_into().unwrap()) as u64,
            dev / SECTOR - 1
        );
        assert!(r.touches(0, SECTOR) && !r.touches(SECTOR * 40, SECTOR));
    }

    #[test]
    fn a_device_barely_larger_still_gets_both_copies() {
        let size = 4u64 << 20;
        for extra in [SECTOR, 8 * SECTOR, 40 * SECTOR] {
            let dev = size + extra;
            let img = image(size);
            let r = relocate(&img[..HEAD as usize], size, dev).unwrap().unwrap();
            let mut disk = img.clone();
            disk.resize(dev as usize, 0xaa);
            let mut body = disk[..size as usize].to_vec();
            r.apply(0, &mut body);
            disk[..size as usize].copy_from_slice(&body);
            let (at, tail) = r.tail.as_ref().unwrap();
            disk[*at as usize..].copy_from_slice(tail);
            let mut c = Cursor::new(disk);
            let gpt = GPT::read_from(&mut c, SECTOR).unwrap();
            assert_eq!(gpt.header.backup_lba, dev / SECTOR - 1, "extra {extra}");
            c.seek(SeekFrom::Start(dev - SECTOR)).unwrap();
            gptman::GPTHeader::read_from(&mut c).unwrap();
        }
    }

    #[test]
    fn a_truncated_image_is_refused() {
        let img = image(4 << 20);
        let err = relocate(&img[..HEAD as usize], 2 << 20, 8 << 20).unwrap_err();
        assert!(
            format!("{err:#}").contains("truncated or extended"),
            "{err:#}"
        );
    }

    #[test]
    fn restore_undoes_relocate() {
        let size = 4u64 << 20;
        let img = image(size);
        for dev in [size + SECTOR, 3 * size] {
            let r = relocate(&img[..HEAD as usize], size, dev).unwrap().unwrap();
            let mut body = img.clone();
            r.apply(0, &mut body);
            assert!(body != img);
            let back = restore(&body[..HEAD as usize], size, dev)
                .unwrap()
                .expect("a moved GPT");
            assert!(back.apply(0, &mut body));
            assert!(body == img, "device {dev}");
        }
        // Written with dd: the backup is still the image's own.
        assert_eq!(
            restore(&img[..HEAD as usize], size, 3 * size).unwrap(),
            None
        );
    }
}
