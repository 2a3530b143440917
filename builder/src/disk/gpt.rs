// SPDX-License-Identifier: Apache-2.0
//! Writes and reads the GPT of a disk image, in process, with gptman.
//!
//! `write` is the only code that puts a partition table on disk: a
//! protective MBR, the primary GPT at sector 1 and the backup GPT in the
//! last 33 sectors, all derived from a [`DiskLayout`], so the same layout
//! always gives the same bytes. `read` is its strict inverse for `inspect`
//! and `verify`: it checks both headers and both entry arrays.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{bail, ensure, Context, Result};
use gptman::{GPTHeader, GPTPartitionEntry, GPT};
use uuid::Uuid;

use crate::disk::layout::{DiskLayout, PartitionPlan, BACKUP_GPT_BYTES, SECTOR};

/// Protective MBR, primary header and 32 sectors of partition entries.
const PRIMARY_GPT_BYTES: u64 = 34 * SECTOR;
/// The entry geometry gptman writes and the only one `read` accepts.
const ENTRY_SIZE: u32 = 128;
/// Refuse tables larger than this when reading (the spec minimum is 128
/// entries; a corrupt header must not make us read gigabytes).
const MAX_ENTRIES: u32 = 4096;

/// A partition table as read back from an image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GptInfo {
    /// GPT disk GUID.
    pub disk_guid: Uuid,
    /// The used entries, by partition number.
    pub partitions: Vec<PartitionInfo>,
}

/// One used partition entry. Offsets and sizes are in bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartitionInfo {
    /// GPT partition number, starting at 1.
    pub number: u32,
    /// GPT partition name.
    pub label: String,
    /// GPT partition type.
    pub type_guid: Uuid,
    /// GPT unique partition GUID (PARTUUID).
    pub uuid: Uuid,
    /// First byte of the partition.
    pub start: u64,
    /// Length of the partition in bytes.
    pub size: u64,
}

/// Sizes `file` to the layout and writes the protective MBR and both GPTs.
///
/// Only the first 34 and the last 33 sectors are written (zeroed first, so
/// whatever was there does not leak into the result); partition contents
/// are left alone, so this may run before or after the filesystems.
pub fn write(layout: &DiskLayout, file: &mut File) -> Result<()> {
    let size = layout.size;
    ensure!(
        size % SECTOR == 0 && size >= PRIMARY_GPT_BYTES + BACKUP_GPT_BYTES,
        "disk size {size} bytes cannot hold a GPT"
    );
    file.set_len(size)
        .with_context(|| format!("setting the disk image size to {size} bytes"))?;
    write_zeros(file, 0, PRIMARY_GPT_BYTES).context("clearing the primary GPT area")?;
    write_zeros(file, size - BACKUP_GPT_BYTES, BACKUP_GPT_BYTES)
        .context("clearing the backup GPT area")?;

    let mut gpt =
        GPT::new_from(file, SECTOR, layout.disk_guid.to_bytes_le()).context("creating the GPT")?;
    for part in [&layout.esp, &layout.root] {
        gpt[part.number] = entry(part)?;
    }
    GPT::write_protective_mbr_into(file, SECTOR).context("writing the protective MBR")?;
    gpt.write_into(file)
        .with_context(|| format!("writing the GPT for {layout:?}"))?;
    file.flush().context("flushing the GPT")?;
    Ok(())
}

fn entry(part: &PartitionPlan) -> Result<GPTPartitionEntry> {
    ensure!(
        part.start % SECTOR == 0 && part.size % SECTOR == 0 && part.size > 0,
        "partition {} ({}) at {} with {} bytes is not whole sectors",
        part.number,
        part.label,
        part.start,
        part.size
    );
    ensure!(
        part.label.encode_utf16().count() <= 36,
        "partition name {:?} is longer than the 36 UTF-16 units GPT allows",
        part.label
    );
    Ok(GPTPartitionEntry {
        partition_type_guid: part.type_guid.to_bytes_le(),
        unique_partition_guid: part.uuid.to_bytes_le(),
        starting_lba: part.start / SECTOR,
        ending_lba: (part.start + part.size) / SECTOR - 1,
        attribute_bits: 0,
        partition_name: part.label.as_str().into(),
    })
}

fn write_zeros(file: &mut File, offset: u64, len: u64) -> Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    std::io::copy(&mut std::io::repeat(0).take(len), file)?;
    Ok(())
}

/// Reads the partition table of an image with 512-byte sectors.
///
/// Both the primary and the backup GPT must be intact (header CRC, entry
/// array CRC, locations that match the image size) and must agree; any
/// damage is an error that says which copy is bad.
pub fn read(r: &mut (impl Read + Seek)) -> Result<GptInfo> {
    let len = r.seek(SeekFrom::End(0)).context("finding the image size")?;
    ensure!(
        len % SECTOR == 0 && len >= PRIMARY_GPT_BYTES + BACKUP_GPT_BYTES,
        "image of {len} bytes is too small for a GPT or not whole 512-byte sectors"
    );
    let last = len / SECTOR - 1;

    let (primary, entries) = read_table(r, 1).context("reading the primary GPT")?;
    if primary.backup_lba != last {
        bail!(
            "the primary GPT puts the backup header at sector {} but the image ends at sector \
             {last}: the image was truncated or extended",
            primary.backup_lba
        );
    }
    let (backup, backup_entries) = read_table(r, last).context("reading the backup GPT")?;
    ensure!(
        backup.backup_lba == 1
            && backup.disk_guid == primary.disk_guid
            && backup.first_usable_lba == primary.first_usable_lba
            && backup.last_usable_lba == primary.last_usable_lba
            && backup_entries == entries,
        "the backup GPT does not match the primary GPT"
    );

    let mut partitions = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.is_unused() {
            continue;
        }
        let number = i as u32 + 1;
        ensure!(
            e.starting_lba >= primary.first_usable_lba
                && e.starting_lba <= e.ending_lba
                && e.ending_lba <= primary.last_usable_lba,
            "partition {number} (sectors {}..={}) lies outside the usable sectors {}..={}",
            e.starting_lba,
            e.ending_lba,
            primary.first_usable_lba,
            primary.last_usable_lba
        );
        partitions.push(PartitionInfo {
            number,
            label: e.partition_name.as_str().to_owned(),
            type_guid: Uuid::from_bytes_le(e.partition_type_guid),
            uuid: Uuid::from_bytes_le(e.unique_partition_guid),
            start: e.starting_lba * SECTOR,
            size: (e.ending_lba - e.starting_lba + 1) * SECTOR,
        });
    }
    Ok(GptInfo {
        disk_guid: Uuid::from_bytes_le(primary.disk_guid),
        partitions,
    })
}

/// Reads and checks the header at sector `lba` and the entry array it names.
fn read_table(r: &mut (impl Read + Seek), lba: u64) -> Result<(GPTHeader, Vec<GPTPartitionEntry>)> {
    r.seek(SeekFrom::Start(lba * SECTOR))
        .with_context(|| format!("seeking to sector {lba}"))?;
    let header = GPTHeader::read_from(r).with_context(|| format!("header at sector {lba}"))?;
    ensure!(
        header.primary_lba == lba,
        "header at sector {lba} says it lives at sector {}",
        header.primary_lba
    );
    ensure!(
        header.size_of_partition_entry == ENTRY_SIZE,
        "entry size {} is not supported (only {ENTRY_SIZE})",
        header.size_of_partition_entry
    );
    ensure!(
        (1..=MAX_ENTRIES).contains(&header.number_of_partition_entries),
        "{} partition entries is out of range",
        header.number_of_partition_entries
    );
    // The CRC is taken over the raw bytes: gptman re-serialises parsed
    // entries, which would hide damage after a name's terminating NUL.
    let mut raw = vec![0; (header.number_of_partition_entries * ENTRY_SIZE) as usize];
    r.seek(SeekFrom::Start(header.partition_entry_lba * SECTOR))
        .and_then(|_| r.read_exact(&mut raw))
        .with_context(|| {
            format!(
                "reading the entries at sector {}",
                header.partition_entry_lba
            )
        })?;
    let crc = crc32fast::hash(&raw);
    ensure!(
        crc == header.partition_entry_array_crc32,
        "partition entry array at sector {} is corrupt (CRC32 {crc:08x}, header says {:08x})",
        header.partition_entry_lba,
        header.partition_entry_array_crc32
    );
    let entries = raw
        .chunks(ENTRY_SIZE as usize)
        .enumerate()
        .map(|(i, mut chunk)| {
            GPTPartitionEntry::read_from(&mut chunk).with_context(|| format!("parsing entry {i}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::{plan, DiskIds, ALIGN, ESP_TYPE, ROOT_X86_64_TYPE};
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    use crate::cmd::CommandRunExt;

    /// Whether `tool` can run; skips (prints why) locally, fails under CI.
    fn have(tool: &str) -> bool {
        if crate::cmd::which(tool).is_some() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required when CI is set"
        );
        eprintln!("note: skipping, {tool} is not installed");
        false
    }

    fn layout() -> DiskLayout {
        let ids = DiskIds {
            disk: Uuid::parse_str("0d0e0f10-1112-4314-9516-1718191a1b1c").unwrap(),
            esp: Uuid::parse_str("a1a2a3a4-b1b2-4c1c-9d1d-e1e2e3e4e5e6").unwrap(),
            root: Uuid::parse_str("f0e0d0c0-b0a0-4090-8070-605040302010").unwrap(),
        };
        plan(200 * ALIGN, 40 * ALIGN, &ids).unwrap()
    }

    fn written(layout: &DiskLayout) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write(layout, f.as_file_mut()).unwrap();
        f
    }

    #[test]
    fn read_returns_what_write_wrote() {
        let l = layout();
        let mut f = written(&l).into_file();
        assert_eq!(f.metadata().unwrap().len(), l.size);
        let info = read(&mut f).unwrap();
        assert_eq!(info.disk_guid, l.disk_guid);
        let want: Vec<_> = [&l.esp, &l.root]
            .iter()
            .map(|p| PartitionInfo {
                number: p.number,
                label: p.label.clone(),
                type_guid: p.type_guid,
                uuid: p.uuid,
                start: p.start,
                size: p.size,
            })
            .collect();
        assert_eq!(info.partitions, want);
        assert_eq!(info.partitions[0].type_guid, ESP_TYPE);
        assert_eq!(info.partitions[1].type_guid, ROOT_X86_64_TYPE);
    }

    #[test]
    fn same_layout_same_bytes_whatever_was_there() {
        let l = layout();
        let a = std::fs::read(written(&l).path()).unwrap();
        // A second image that starts out full of junk in the table areas.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(l.size).unwrap();
        f.as_file().write_all_at(&[0xa5; 34 * 512], 0).unwrap();
        f.as_file()
            .write_all_at(&[0x5a; 33 * 512], l.size - 33 * 512)
            .unwrap();
        write(&l, f.as_file_mut()).unwrap();
        let b = std::fs::read(f.path()).unwrap();
        assert!(a == b, "two writes of one layout differ");
        // And something changed when the layout did.
        let mut other = l.clone();
        other.root.uuid = Uuid::from_u128(42);
        assert!(std::fs::read(written(&other).path()).unwrap() != a);
    }

    #[test]
    fn leaves_partition_contents_alone() {
        let l = layout();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(l.size).unwrap();
        for p in [&l.esp, &l.root] {
            f.as_file().write_all_at(&[0x77; 4096], p.start).unwrap();
            f.as_file()
                .write_all_at(&[0x77; 4096], p.end() - 4096)
                .unwrap();
        }
        write(&l, f.as_file_mut()).unwrap();
        for p in [&l.esp, &l.root] {
            for at in [p.start, p.end() - 4096] {
                let mut buf = [0; 4096];
                f.as_file().read_exact_at(&mut buf, at).unwrap();
                assert!(
                    buf.iter().all(|&b| b == 0x77),
                    "{} clobbered at {at}",
                    p.label
                );
            }
        }
    }

    #[test]
    fn read_rejects_damage() {
        let l = layout();
        let last = l.size - 512;
        // (name, byte to flip, expected message fragment)
        let cases: &[(&str, u64, &str)] = &[
            (
                "primary header disk GUID",
                512 + 56,
                "reading the primary GPT: header at sector 1: corrupted CRC32",
            ),
            (
                "primary header signature",
                512,
                "reading the primary GPT: header at sector 1: invalid signature",
            ),
            (
                "primary entry array",
                1024 + 56,
                "reading the primary GPT: partition entry array at sector 2 is corrupt",
            ),
            (
                "backup header",
                last + 56,
                "reading the backup GPT: header at sector 409599: corrupted CRC32",
            ),
            (
                "backup entry array",
                l.size - 33 * 512 + 200,
                "reading the backup GPT: partition entry array at sector 409567 is corrupt",
            ),
        ];
        for &(name, at, want) in cases {
            let f = written(&l);
            let mut byte = [0];
            f.as_file().read_exact_at(&mut byte, at).unwrap();
            f.as_file().write_all_at(&[byte[0] ^ 0xff], at).unwrap();
            let err = read(&mut f.as_file()).expect_err(name);
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn read_rejects_resized_image() {
        let l = layout();
        let f = written(&l);
        f.as_file().set_len(l.size + ALIGN).unwrap();
        let msg = format!("{:#}", read(&mut f.as_file()).unwrap_err());
        assert!(msg.contains("truncated or extended"), "{msg}");
    }

    #[test]
    fn sgdisk_agrees() {
        if !have("sgdisk") {
            return;
        }
        let l = layout();
        let f = written(&l);
        let out = Command::new("sgdisk")
            .arg("-v")
            .arg(f.path())
            .run_get_string()
            .unwrap();
        assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
        let out = Command::new("sgdisk")
            .arg("-p")
            .arg(f.path())
            .run_get_string()
            .unwrap();
        let disk = l.disk_guid.to_string().to_uppercase();
        assert!(
            out.contains(&format!("Disk identifier (GUID): {disk}")),
            "sgdisk -p:\n{out}"
        );
        for p in [&l.esp, &l.root] {
            let out = Command::new("sgdisk")
                .arg(format!("--info={}", p.number))
                .arg(f.path())
                .run_get_string()
                .unwrap();
            let want = [
                format!(
                    "Partition GUID code: {}",
                    p.type_guid.to_string().to_uppercase()
                ),
                format!(
                    "Partition unique GUID: {}",
                    p.uuid.to_string().to_uppercase()
                ),
                format!("First sector: {} ", p.start / 512),
                format!("Last sector: {} ", p.end() / 512 - 1),
                format!("Partition name: '{}'", p.label),
            ];
            for w in want {
                assert!(
                    out.contains(&w),
                    "sgdisk --info={}: lacks {w:?}:\n{out}",
                    p.number
                );
            }
        }
    }
}
