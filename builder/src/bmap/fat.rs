// SPDX-License-Identifier: Apache-2.0
//! The bytes a FAT filesystem uses: boot sector, reserved sectors, the FATs,
//! the FAT12/16 root directory, and every allocated cluster.
//!
//! A FAT table is mostly zeros, and a sparse copy of an image (`zstd -d`,
//! `cp --sparse=always`) turns long zero runs into holes. The filesystem
//! reads those zeros as "free cluster", so they must reach the target.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{ensure, Context, Result};

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64
}

/// The layout read from a boot sector.
#[derive(Debug, PartialEq)]
struct Bpb {
    cluster: u64,
    /// Bytes before the data area: reserved sectors, FATs, root directory.
    meta: u64,
    fat_offset: u64,
    clusters: u64,
    /// 12, 16 or 32.
    bits: u32,
}

impl Bpb {
    /// `None` when the sector does not look like a FAT boot sector at all.
    fn parse(bs: &[u8; 512], part_len: u64) -> Result<Option<Bpb>> {
        let sector = le16(bs, 11);
        let per_cluster = bs[13] as u64;
        let reserved = le16(bs, 14);
        let fats = bs[16] as u64;
        let root_entries = le16(bs, 17);
        let total = if le16(bs, 19) != 0 {
            le16(bs, 19)
        } else {
            le32(bs, 32)
        };
        let fat_size = if le16(bs, 22) != 0 {
            le16(bs, 22)
        } else {
            le32(bs, 36)
        };
        let looks_fat = bs[510..512] == [0x55, 0xaa]
            && matches!(bs[0], 0xeb | 0xe9)
            && matches!(sector, 512 | 1024 | 2048 | 4096)
            && per_cluster.is_power_of_two()
            && reserved > 0
            && (1..=4).contains(&fats)
            && fat_size > 0
            && total > 0;
        if !looks_fat {
            return Ok(None);
        }
        let root_sectors = (root_entries * 32).div_ceil(sector);
        let meta_sectors = reserved + fats * fat_size + root_sectors;
        ensure!(
            total > meta_sectors && total * sector <= part_len,
            "the FAT boot sector claims {total} sectors of {sector} bytes ({meta_sectors} of \
             them metadata) in a partition of {part_len} bytes"
        );
        let clusters = (total - meta_sectors) / per_cluster;
        let bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        ensure!(
            fat_size * sector * 8 >= (clusters + 2) * bits as u64,
            "the FAT of {} bytes is too small for {clusters} clusters",
            fat_size * sector
        );
        Ok(Some(Bpb {
            cluster: per_cluster * sector,
            meta: meta_sectors * sector,
            fat_offset: reserved * sector,
            clusters,
            bits,
        }))
    }

    fn entry(&self, fat: &[u8], c: u64) -> u64 {
        match self.bits {
            12 => {
                let at = (c * 3 / 2) as usize;
                let v = le16(fat, at);
                if c % 2 == 0 {
                    v & 0xfff
                } else {
                    v >> 4
                }
            }
            16 => le16(fat, (c * 2) as usize),
            _ => le32(fat, (c * 4) as usize) & 0x0fff_ffff,
        }
    }
}

/// The byte ranges (absolute in `file`) the FAT filesystem at `offset` uses,
/// or `None` when the partition does not start with a FAT boot sector.
pub(crate) fn used_ranges(file: &File, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
    if len < 512 {
        return Ok(None);
    }
    let mut bs = [0u8; 512];
    file.read_exact_at(&mut bs, offset)
        .context("reading the FAT boot sector")?;
    let Some(bpb) = Bpb::parse(&bs, len).context("reading the FAT boot sector")? else {
        return Ok(None);
    };
    let fat_len = ((bpb.clusters + 2) * bpb.bits as u64).div_ceil(8) + 1;
    let mut fat = vec![0u8; fat_len as usize];
    file.read_exact_at(&mut fat, offset + bpb.fat_offset)
        .context("reading the first FAT")?;
    let data = offset + bpb.meta;
    let mut out = vec![(offset, data)];
    let mut run: Option<u64> = None;
    for c in 2..bpb.clusters + 2 {
        let used = bpb.entry(&fat, c) != 0;
        match (used, run) {
            (true, None) => run = Some(c),
            (false, Some(s)) => {
                out.push((data + (s - 2) * bpb.cluster, data + (c - 2) * bpb.cluster));
                run = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run {
        out.push((
            data + (s - 2) * bpb.cluster,
            data + bpb.clusters * bpb.cluster,
        ));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat32_esp_used_ranges_cover_metadata_and_files() {
        let f = tempfile::tempfile().unwrap();
        let len = 40u64 << 20;
        f.set_len(len).unwrap();
        let opts = fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32);
        fatfs::format_volume(fscommon::StreamSlice::new(&f, 0, len).unwrap(), opts).unwrap();
        {
            let fs = fatfs::FileSystem::new(
                fscommon::StreamSlice::new(&f, 0, len).unwrap(),
                fatfs::FsOptions::new(),
            )
            .unwrap();
            let mut file = fs.root_dir().create_file("KERNEL").unwrap();
            std::io::Write::write_all(&mut file, &vec![0x5a; 100_000]).unwrap();
        }
        let used = used_ranges(&f, 0, len).unwrap().unwrap();
        let total: u64 = used.iter().map(|(s, e)| e - s).sum();
        // Metadata first, from sector 0.
        assert_eq!(used[0].0, 0);
        // The file's 100,000 bytes are in used clusters.
        assert!(total > 100_000 && total < 2 << 20, "{used:?}");
        let mut buf = vec![0u8; 100_000];
        let (s, e) = *used.iter().skip(1).max_by_key(|(s, e)| e - s).unwrap();
        assert!(e - s >= 100_000);
        f.read_exact_at(&mut buf, s).ok();
        assert!(buf.iter().filter(|&&b| b == 0x5a).count() > 90_000);
    }

    #[test]
    fn not_fat_is_none() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(used_ranges(&f, 0, 1 << 20).unwrap().is_none());
    }

    #[test]
    fn fat12_entries() {
        let bpb = Bpb {
            cluster: 512,
            meta: 0,
            fat_offset: 0,
            clusters: 10,
            bits: 12,
        };
        // Entries 0..4: 0xff8, 0xfff, 0x003, 0x000 packed in 12 bits each.
        let fat = [0xf8, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00];
        assert_eq!(bpb.entry(&fat, 0), 0xff8);
        assert_eq!(bpb.entry(&fat, 1), 0xfff);
        assert_eq!(bpb.entry(&fat, 2), 0x003);
        assert_eq!(bpb.entry(&fat, 3), 0x000);
    }
}
