// SPDX-License-Identifier: Apache-2.0
//! The blocks an ext4 filesystem uses, read from its own group descriptors
//! and block bitmaps.
//!
//! This is what makes the block map safe. mke2fs "zeroes" inode tables and
//! the journal with fallocate, so in the image file they are holes (or
//! unwritten extents, which SEEK_DATA reports as holes or data depending
//! on the page cache), while the group descriptors promise they hold zeros
//! (`ITABLE_ZEROED`, a clean journal). A map built from holes alone lets a
//! writer leave a stick's old bytes there. Every block the bitmaps mark as
//! used, plus every group's metadata, is therefore mapped, whatever the
//! image file's allocation says.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{bail, ensure, Context, Result};

use super::extents::bit_runs;

const SB_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xef53;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const BG_BLOCK_UNINIT: u16 = 0x2;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The geometry the used-block computation needs.
#[derive(Debug)]
struct Geometry {
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    groups: u64,
    desc_size: usize,
    itable_blocks: u64,
    gdt_blocks: u64,
    reserved_gdt: u64,
    compat: u32,
    ro_compat: u32,
    backup_bgs: [u32; 2],
}

impl Geometry {
    fn parse(sb: &[u8], part_len: u64) -> Result<Geometry> {
        let log = le32(sb, 0x18);
        ensure!(
            log <= 6,
            "block size 2^(10+{log}) is not a valid ext4 block size"
        );
        let block_size = 1024u64 << log;
        let incompat = le32(sb, 0x60);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let blocks = le32(sb, 0x4) as u64
            | if is64 {
                (le32(sb, 0x150) as u64) << 32
            } else {
                0
            };
        let first_data_block = le32(sb, 0x14) as u64;
        let blocks_per_group = le32(sb, 0x20) as u64;
        let inodes_per_group = le32(sb, 0x28) as u64;
        let inode_size = le16(sb, 0x58) as u64;
        let desc_size = if is64 { le16(sb, 0xfe) as usize } else { 32 };
        ensure!(
            blocks_per_group > 0 && blocks_per_group <= 8 * block_size,
            "{blocks_per_group} blocks per group does not fit one bitmap block"
        );
        ensure!(
            (32..=1024).contains(&desc_size) && desc_size.is_power_of_two(),
            "group descriptor size {desc_size} is invalid"
        );
        ensure!(
            blocks > first_data_block && blocks.saturating_mul(block_size) <= part_len,
            "the filesystem claims {blocks} blocks of {block_size} bytes, more than its \
             partition's {part_len} bytes"
        );
        ensure!(inode_size >= 128, "inode size {inode_size} is invalid");
        if incompat & INCOMPAT_META_BG != 0 {
            bail!(
                "the filesystem uses meta_bg, whose group descriptor layout the block map \
                 does not read; make a block map with bmaptool create and pass it with --bmap"
            );
        }
        let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
        Ok(Geometry {
            block_size,
            blocks,
            first_data_block,
            blocks_per_group,
            groups,
            desc_size,
            itable_blocks: (inodes_per_group * inode_size).div_ceil(block_size),
            gdt_blocks: (groups * desc_size as u64).div_ceil(block_size),
            reserved_gdt: le16(sb, 0xce) as u64,
            compat: le32(sb, 0x5c),
            ro_compat: le32(sb, 0x64),
            backup_bgs: [le32(sb, 0x24c), le32(sb, 0x250)],
        })
    }

    /// Whether group `g` holds a copy of the superblock and descriptors.
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.contains(&(g as u32));
        }
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        g == 1 || [3u64, 5, 7].iter().any(|&b| is_power_of(g, b))
    }

    fn group_first(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n % base == 0 {
        n /= base;
    }
    n == 1
}

/// The byte ranges (absolute in `file`) the ext4 filesystem at `offset`
/// uses, or `None` when the partition holds no ext4 superblock.
pub(crate) fn used_ranges(file: &File, offset: u64, len: u64) -> Result<Option<Vec<(u64, u64)>>> {
    if len < SB_OFFSET + 1024 {
        return Ok(None);
    }
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, offset + SB_OFFSET)
        .context("reading the ext4 superblock")?;
    if le16(&sb, 0x38) != MAGIC {
        return Ok(None);
    }
    let geo = Geometry::parse(&sb, len).context("reading the ext4 superblock")?;
    let bs = geo.block_size;
    let mut gdt = vec![0u8; (geo.groups as usize) * geo.desc_size];
    file.read_exact_at(&mut gdt, offset + (geo.first_data_block + 1) * bs)
        .context("reading the ext4 group descriptors")?;

    let mut blocks: Vec<(u64, u64)> = Vec::new();
    let mut bitmap = vec![0u8; bs as usize];
    for g in 0..geo.groups {
        let d = &gdt[g as usize * geo.desc_size..][..geo.desc_size];
        let hi = |at: usize| -> u64 {
            if geo.desc_size >= 64 {
                (le32(d, at) as u64) << 32
            } else {
                0
            }
        };
        let block_bitmap = le32(d, 0x0) as u64 | hi(0x20);
        let inode_bitmap = le32(d, 0x4) as u64 | hi(0x24);
        let inode_table = le32(d, 0x8) as u64 | hi(0x28);
        let flags = le16(d, 0x12);
        for (what, start, count) in [
            ("block bitmap", block_bitmap, 1),
            ("inode bitmap", inode_bitmap, 1),
            ("inode table", inode_table, geo.itable_blocks),
        ] {
            ensure!(
                start >= geo.first_data_block && start + count <= geo.blocks,
                "group {g}'s {what} at block {start} lies outside the filesystem ({} blocks)",
                geo.blocks
            );
            blocks.push((start, count));
        }
        let first = geo.group_first(g);
        if geo.has_super(g) {
            let n = 1 + geo.gdt_blocks + geo.reserved_gdt;
            blocks.push((first, n.min(geo.blocks - first)));
        }
        if flags & BG_BLOCK_UNINIT == 0 {
            file.read_exact_at(&mut bitmap, offset + block_bitmap * bs)
                .with_context(|| format!("reading the block bitmap of ext4 group {g}"))?;
            let n = geo.blocks_per_group.min(geo.blocks - first);
            blocks.extend(
                bit_runs(&bitmap, n)
                    .into_iter()
                    .map(|(s, c)| (first + s, c)),
            );
        }
    }
    Ok(Some(
        blocks
            .into_iter()
            .map(|(s, c)| (offset + s * bs, offset + (s + c) * bs))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups() {
        let geo = Geometry {
            block_size: 4096,
            blocks: 1 << 20,
            first_data_block: 0,
            blocks_per_group: 32768,
            groups: 32,
            desc_size: 64,
            itable_blocks: 512,
            gdt_blocks: 1,
            reserved_gdt: 14,
            compat: 0,
            ro_compat: RO_COMPAT_SPARSE_SUPER,
            backup_bgs: [0, 0],
        };
        let with: Vec<u64> = (0..30).filter(|&g| geo.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27]);
        let all = Geometry {
            ro_compat: 0,
            ..geo
        };
        assert!((0..30).all(|g| all.has_super(g)));
        let two = Geometry {
            compat: COMPAT_SPARSE_SUPER2,
            backup_bgs: [1, 29],
            ..all
        };
        let with: Vec<u64> = (0..30).filter(|&g| two.has_super(g)).collect();
        assert_eq!(with, [0, 1, 29]);
    }

    #[test]
    fn not_ext4_is_none() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(used_ranges(&f, 0, 1 << 20).unwrap().is_none());
        assert!(used_ranges(&f, 0, 100).unwrap().is_none());
    }
}
