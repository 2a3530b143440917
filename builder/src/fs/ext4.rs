// SPDX-License-Identifier: Apache-2.0
//! The root filesystem: ext4 made by `mke2fs -d`, straight into the disk
//! image at the root partition's offset, then made reproducible.
//!
//! mke2fs is the trusted implementation, but two things about it vary from
//! host to host or run to run, and both are pinned here: the feature set
//! (taken from a config file we write, never the host's /etc/mke2fs.conf),
//! and the inode timestamps. mke2fs 1.47 copies each staged file's atime,
//! mtime and ctime into its inode, and the ctime of a freshly extracted
//! staging tree is "now". [`normalize_times`] walks the finished filesystem
//! and clamps every inode timestamp to the build epoch, recomputing the
//! inode checksums. (Superblock times, crtime and the root directory come
//! from `E2FSPROGS_FAKE_TIME`, which is the epoch.)

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use uuid::Uuid;

use crate::cmd::CommandRunExt;

/// Filesystem block size; the size argument to mke2fs counts these.
pub const BLOCK_SIZE: u64 = 4096;

/// The mke2fs configuration every build uses, whatever the host has.
///
/// The features are what both a Fedora 43 and a Debian 12 kernel mount
/// read-write and any e2fsprogs since 1.43 can check: no orphan_file, no
/// metadata_csum_seed. `-T default` selects the empty usage type, so the
/// size of the filesystem does not switch in "small" or "big" settings. Inode tables and the journal are zeroed at
/// mkfs time (no lazy init), so the first boot does not rewrite them.
pub const MKE2FS_CONF: &str = "\
# Written by airlock for one mke2fs run; the build host's /etc/mke2fs.conf is not used.
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
\thash_alg = half_md4
\tlazy_itable_init = false
\tlazy_journal_init = false

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t\tinode_size = 256
\t}
\tdefault = {
\t}
";

/// Environment variables that would change what mke2fs writes.
const MKE2FS_ENV: &[&str] = &[
    "MKE2FS_DEVICE_SECTSIZE",
    "MKE2FS_DEVICE_PHYS_SECTSIZE",
    "MKE2FS_FIRST_META_BG",
    "MKE2FS_SYNC",
    "E2FSPROGS_UNDO_DIR",
];

/// What to build and where.
#[derive(Debug, Clone)]
pub struct Ext4Opts {
    /// Filesystem label, at most 16 bytes.
    pub label: String,
    /// Filesystem UUID.
    pub uuid: Uuid,
    /// Seed of the directory-index hash.
    pub hash_seed: Uuid,
    /// Build time: superblock times, and the latest any inode time may be.
    pub epoch: i64,
    /// Byte offset of the filesystem in the image (the partition start).
    pub offset: u64,
    /// Size of the filesystem in bytes (the partition size).
    pub size: u64,
}

/// The mke2fs command line (without the program name) for `opts`.
///
/// The size is given in blocks so the filesystem never extends past
/// `offset + size`; `nodiscard` keeps mke2fs from discarding (punching)
/// the image outside the filesystem.
pub fn mke2fs_argv(opts: &Ext4Opts, staging: &Path, image: &Path) -> Vec<OsString> {
    let extended = format!(
        "offset={},nodiscard,root_owner=0:0,hash_seed={}",
        opts.offset, opts.hash_seed
    );
    let mut argv: Vec<OsString> = [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-T",
        "default",
        "-b",
        "4096",
        "-L",
        &opts.label,
        "-U",
        &opts.uuid.to_string(),
        "-E",
        &extended,
        "-d",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    argv.push(staging.into());
    argv.push(image.into());
    argv.push((opts.size / BLOCK_SIZE).to_string().into());
    argv
}

/// Creates the root filesystem from `staging` inside `image` and clamps its
/// timestamps to the epoch.
///
/// `image` must already be at least `offset + size` bytes long; nothing
/// outside that range is written.
pub fn make_root(opts: &Ext4Opts, staging: &Path, image: &Path) -> Result<()> {
    crate::cmd::require_tool("mke2fs")?;
    check_opts(opts)?;
    let len = std::fs::metadata(image)
        .with_context(|| format!("reading the size of {}", image.display()))?
        .len();
    let end = opts.offset + opts.size;
    ensure!(
        len >= end,
        "{} is {len} bytes but the root filesystem ends at byte {end}; size the image first",
        image.display()
    );

    // Beside the image (a build's temporary folder), not in /tmp: an
    // interrupted build's leftovers are then all in one place, which the
    // next build removes.
    let conf_dir = image.parent().filter(|p| !p.as_os_str().is_empty());
    let mut conf = tempfile::Builder::new()
        .prefix("airlock-mke2fs.")
        .suffix(".conf")
        .tempfile_in(conf_dir.unwrap_or(Path::new(".")))
        .context("creating the mke2fs config file")?;
    conf.write_all(MKE2FS_CONF.as_bytes())
        .and_then(|_| conf.flush())
        .context("writing the mke2fs config file")?;

    let mut cmd = Command::new("mke2fs");
    cmd.args(mke2fs_argv(opts, staging, image))
        .env("MKE2FS_CONFIG", conf.path())
        .env("E2FSPROGS_FAKE_TIME", opts.epoch.to_string());
    for var in MKE2FS_ENV {
        cmd.env_remove(var);
    }
    cmd.run().with_context(|| {
        format!(
            "creating the ext4 filesystem from {} in {} at offset {}",
            staging.display(),
            image.display(),
            opts.offset
        )
    })?;

    let n = normalize_times(image, opts.offset, opts.epoch)?;
    tracing::debug!("clamped the timestamps of {n} inodes to {}", opts.epoch);
    Ok(())
}

fn check_opts(opts: &Ext4Opts) -> Result<()> {
    ensure!(
        opts.label.len() <= 16,
        "ext4 label {:?} is longer than 16 bytes",
        opts.label
    );
    ensure!(
        opts.offset % BLOCK_SIZE == 0 && opts.size % BLOCK_SIZE == 0,
        "root filesystem range {}+{} is not whole 4 KiB blocks",
        opts.offset,
        opts.size
    );
    ensure!(
        (0..=i64::from(u32::MAX)).contains(&opts.epoch),
        "epoch {} is outside 1970..2106, which airlock supports for ext4",
        opts.epoch
    );
    Ok(())
}

/// Clamps the access, change, modification and creation times of every
/// in-use inode of the ext4 at `offset` in `image` to at most `epoch` (with
/// zero nanoseconds), and rewrites the inode checksums. Returns how many
/// inodes changed.
///
/// Inode tables are streamed a chunk at a time. Before an inode is
/// rewritten its stored checksum is verified, so a wrong checksum
/// algorithm, or a damaged image, stops the build instead of being blessed.
pub fn normalize_times(image: &Path, offset: u64, epoch: i64) -> Result<u64> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {} to normalize ext4 timestamps", image.display()))?;
    let mut changed = 0;
    walk_inodes(&file, offset, |fs, ino, inode| {
        let mut new = inode.to_vec();
        if !clamp_times(&mut new, epoch) {
            return Ok(false);
        }
        if let Some(seed) = fs.csum_seed {
            check_csum(fs, ino, inode).context(
                "refusing to rewrite an inode whose checksum does not verify: the filesystem \
                 is damaged or uses a checksum airlock does not know",
            )?;
            let csum = inode_csum(seed, ino, &new);
            set_csum(&mut new, csum);
        }
        inode.copy_from_slice(&new);
        changed += 1;
        Ok(true)
    })
    .with_context(|| {
        format!(
            "normalizing ext4 timestamps in {} at offset {offset}",
            image.display()
        )
    })?;
    Ok(changed)
}

/// What the inode walk needs from the superblock.
#[derive(Debug)]
struct Geometry {
    block_size: u64,
    inode_size: usize,
    inodes_per_group: u32,
    groups: u32,
    desc_size: u64,
    /// Group descriptors carry bg_itable_unused (gdt_csum or metadata_csum).
    itable_unused: bool,
    /// The metadata_csum seed, when inodes carry checksums.
    csum_seed: Option<u32>,
}

const SB_OFFSET: u64 = 1024;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The kernel's `ext4_chksum`: CRC32C without the final inversion.
fn ext4_crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

fn read_geometry(file: &File, offset: u64) -> Result<Geometry> {
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, offset + SB_OFFSET)
        .context("reading the superblock")?;
    ensure!(
        le16(&sb, 0x38) == 0xef53,
        "no ext4 superblock at offset {offset}"
    );
    let incompat = le32(&sb, 0x60);
    let ro_compat = le32(&sb, 0x64);
    ensure!(
        incompat & INCOMPAT_RECOVER == 0,
        "the journal needs recovery; run e2fsck first"
    );
    ensure!(incompat & INCOMPAT_META_BG == 0, "meta_bg is not supported");

    let csum_seed = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        let want = le32(&sb, 0x3fc);
        let got = ext4_crc(!0, &sb[..0x3fc]);
        ensure!(
            got == want,
            "superblock checksum is {want:#x} but the superblock sums to {got:#x}"
        );
        Some(if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(&sb, 0x270)
        } else {
            ext4_crc(!0, &sb[0x68..0x78])
        })
    } else {
        None
    };

    let log = le32(&sb, 0x18);
    ensure!(log <= 6, "block size 2^{} is not supported", log + 10);
    let block_size = 1024u64 << log;
    let is_64bit = incompat & INCOMPAT_64BIT != 0;
    let blocks = u64::from(le32(&sb, 0x04))
        | if is_64bit {
            u64::from(le32(&sb, 0x150)) << 32
        } else {
            0
        };
    let first_data_block = u64::from(le32(&sb, 0x14));
    let blocks_per_group = u64::from(le32(&sb, 0x20));
    let inodes_per_group = le32(&sb, 0x28);
    ensure!(
        blocks_per_group > 0 && inodes_per_group > 0,
        "superblock has an empty block group"
    );
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    ensure!(
        u64::from(le32(&sb, 0x00)) == groups * u64::from(inodes_per_group),
        "superblock inode count does not match its {groups} groups"
    );
    let inode_size = if le32(&sb, 0x4c) == 0 {
        128
    } else {
        le16(&sb, 0x58)
    };
    ensure!(
        inode_size >= 128 && inode_size.is_power_of_two() && u64::from(inode_size) <= block_size,
        "inode size {inode_size} is not supported"
    );
    let desc_size = if is_64bit {
        u64::from(le16(&sb, 0xfe))
    } else {
        32
    };
    ensure!(
        desc_size >= 32 && desc_size.is_power_of_two(),
        "group descriptor size {desc_size} is not supported"
    );
    Ok(Geometry {
        block_size,
        inode_size: usize::from(inode_size),
        inodes_per_group,
        groups: groups as u32,
        desc_size,
        itable_unused: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
        csum_seed,
    })
}

/// Calls `f(geometry, inode number, raw inode)` for every in-use inode of
/// the ext4 at `offset`; inodes for which `f` returns true are written back.
fn walk_inodes(
    file: &File,
    offset: u64,
    mut f: impl FnMut(&Geometry, u32, &mut [u8]) -> Result<bool>,
) -> Result<()> {
    const CHUNK: usize = 64 << 10;
    let fs = read_geometry(file, offset)?;
    let gdt_at = offset
        + if fs.block_size == 1024 {
            2048
        } else {
            fs.block_size
        };
    let per_chunk = (CHUNK / fs.inode_size).max(1) as u32;
    let mut desc = vec![0u8; fs.desc_size as usize];
    let mut bitmap = vec![0u8; fs.block_size as usize];
    let mut table = vec![0u8; per_chunk as usize * fs.inode_size];

    for group in 0..fs.groups {
        file.read_exact_at(&mut desc, gdt_at + u64::from(group) * fs.desc_size)
            .with_context(|| format!("reading group descriptor {group}"))?;
        let wide = fs.desc_size >= 64;
        let hi = |at: usize| {
            if wide {
                u64::from(le32(&desc, at)) << 32
            } else {
                0
            }
        };
        if le16(&desc, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let bitmap_block = u64::from(le32(&desc, 0x04)) | hi(0x24);
        let table_block = u64::from(le32(&desc, 0x08)) | hi(0x28);
        let mut in_use = fs.inodes_per_group;
        if fs.itable_unused {
            let unused = u32::from(le16(&desc, 0x1c))
                | if wide {
                    u32::from(le16(&desc, 0x32)) << 16
                } else {
                    0
                };
            in_use = in_use.saturating_sub(unused);
        }
        file.read_exact_at(&mut bitmap, offset + bitmap_block * fs.block_size)
            .with_context(|| format!("reading the inode bitmap of group {group}"))?;
        let used = |i: u32| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;

        let mut first = 0;
        while first < in_use {
            let count = per_chunk.min(in_use - first);
            if (first..first + count).any(used) {
                let at =
                    offset + table_block * fs.block_size + u64::from(first) * fs.inode_size as u64;
                let buf = &mut table[..count as usize * fs.inode_size];
                file.read_exact_at(buf, at)
                    .with_context(|| format!("reading the inode table of group {group}"))?;
                let mut dirty = false;
                for (i, inode) in buf.chunks_mut(fs.inode_size).enumerate() {
                    let index = first + i as u32;
                    if used(index) {
                        let ino = group * fs.inodes_per_group + index + 1;
                        dirty |= f(&fs, ino, inode)?;
                    }
                }
                if dirty {
                    file.write_all_at(buf, at)
                        .with_context(|| format!("writing the inode table of group {group}"))?;
                }
            }
            first += count;
        }
    }
    Ok(())
}

/// (seconds field, nanoseconds/epoch field) offsets of atime, ctime, mtime
/// and crtime in an ext4 inode.
const TIMES: [(usize, usize); 4] = [(0x08, 0x8c), (0x0c, 0x84), (0x10, 0x88), (0x90, 0x94)];

/// Whether the `size`-byte field at `at` exists in this inode: the first
/// 128 bytes always do, the rest only as far as i_extra_isize reaches.
fn fits(inode: &[u8], at: usize, size: usize) -> bool {
    if at + size <= 128 {
        return true;
    }
    inode.len() > 128 && at + size <= 128 + usize::from(le16(inode, 0x80))
}

/// An ext4 timestamp: signed 32-bit seconds, extended by the low two bits
/// of the extra field (epoch bits) whose upper 30 bits are nanoseconds.
fn decode_time(secs: u32, extra: Option<u32>) -> (i64, u32) {
    let base = i64::from(secs as i32);
    match extra {
        Some(x) => (base + (i64::from(x & 3) << 32), x >> 2),
        None => (base, 0),
    }
}

/// The inverse of [`decode_time`] for whole seconds (the kernel's
/// `ext4_encode_extra_time`).
fn encode_time(t: i64) -> (u32, u32) {
    let secs = t as u32;
    let epoch_bits = ((t - i64::from(secs as i32)) >> 32) as u32 & 3;
    (secs, epoch_bits)
}

/// Clamps the inode's timestamps to `epoch`; true if any changed.
fn clamp_times(inode: &mut [u8], epoch: i64) -> bool {
    let mut changed = false;
    for (base, extra) in TIMES {
        if !fits(inode, base, 4) {
            continue;
        }
        let has_extra = fits(inode, extra, 4);
        let old = decode_time(le32(inode, base), has_extra.then(|| le32(inode, extra)));
        if old <= (epoch, 0) {
            continue;
        }
        let (secs, epoch_bits) = encode_time(epoch);
        inode[base..base + 4].copy_from_slice(&secs.to_le_bytes());
        if has_extra {
            inode[extra..extra + 4].copy_from_slice(&epoch_bits.to_le_bytes());
        }
        changed = true;
    }
    changed
}

/// The checksum stored in the inode (only the low 16 bits when
/// i_checksum_hi does not fit).
fn stored_csum(inode: &[u8]) -> u32 {
    let lo = u32::from(le16(inode, 0x7c));
    if fits(inode, 0x82, 2) {
        lo | u32::from(le16(inode, 0x82)) << 16
    } else {
        lo
    }
}

/// The kernel's `ext4_inode_csum`: crc32c over the inode number, the
/// generation and the whole on-disk inode with the checksum fields as
/// zero, seeded with the filesystem checksum seed. Truncated to 16 bits
/// when i_checksum_hi does not fit, as it is stored.
fn inode_csum(fs_seed: u32, ino: u32, inode: &[u8]) -> u32 {
    let seed = ext4_crc(fs_seed, &ino.to_le_bytes());
    let seed = ext4_crc(seed, &inode[0x64..0x68]); // i_generation
    let mut copy = inode.to_vec();
    copy[0x7c..0x7e].fill(0);
    let full = fits(inode, 0x82, 2);
    if full {
        copy[0x82..0x84].fill(0);
    }
    let csum = ext4_crc(seed, &copy);
    if full {
        csum
    } else {
        csum & 0xffff
    }
}

fn set_csum(inode: &mut [u8], csum: u32) {
    inode[0x7c..0x7e].copy_from_slice(&(csum as u16).to_le_bytes());
    if fits(inode, 0x82, 2) {
        inode[0x82..0x84].copy_from_slice(&((csum >> 16) as u16).to_le_bytes());
    }
}

/// Fails with a message naming the inode when its checksum is wrong.
fn check_csum(fs: &Geometry, ino: u32, inode: &[u8]) -> Result<()> {
    if let Some(seed) = fs.csum_seed {
        let (stored, computed) = (stored_csum(inode), inode_csum(seed, ino, inode));
        if stored != computed {
            bail!("inode {ino} has checksum {stored:#x} but sums to {computed:#x}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    const MIB: u64 = 1 << 20;
    const EPOCH: i64 = 1_700_000_000;

    /// Whether the test can run; skips (prints why) locally, fails under CI.
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

    fn root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root when CI is set"
        );
        eprintln!("note: skipping, staging a tree with foreign owners and devices needs root");
        false
    }

    fn opts(offset: u64, size: u64) -> Ext4Opts {
        Ext4Opts {
            label: "airlock-root".into(),
            uuid: Uuid::parse_str("2b9e7f4c-57a1-4e2f-9d6b-3c8a1f0e5d42").unwrap(),
            hash_seed: Uuid::parse_str("6a1d4c3b-0e9f-4b8a-a7c6-5d4e3f2a1b0c").unwrap(),
            epoch: EPOCH,
            offset,
            size,
        }
    }

    #[test]
    fn argv() {
        let o = Ext4Opts {
            size: 100 * MIB + 4096,
            ..opts(3 * MIB, 0)
        };
        let argv = mke2fs_argv(&o, Path::new("/s t/staging"), Path::new("/out/disk.raw"));
        let want = [
            "-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096",
            "-L", "airlock-root",
            "-U", "2b9e7f4c-57a1-4e2f-9d6b-3c8a1f0e5d42",
            "-E", "offset=3145728,nodiscard,root_owner=0:0,hash_seed=6a1d4c3b-0e9f-4b8a-a7c6-5d4e3f2a1b0c",
            "-d", "/s t/staging", "/out/disk.raw", "25601",
        ];
        assert_eq!(argv, want.map(OsString::from));
    }

    #[test]
    fn config_pins_the_features() {
        let features = MKE2FS_CONF
            .lines()
            .find(|l| l.trim_start().starts_with("features"))
            .unwrap();
        assert!(features.ends_with(
            "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize"
        ));
        for absent in [
            "orphan_file",
            "metadata_csum_seed",
            "inline_data",
            "casefold",
        ] {
            assert!(!MKE2FS_CONF.contains(absent), "{absent}");
        }
    }

    #[test]
    fn rejects_bad_opts() {
        let cases: &[(&str, Ext4Opts, &str)] = &[
            (
                "long label",
                Ext4Opts {
                    label: "x".repeat(17),
                    ..opts(0, 64 * MIB)
                },
                "longer than 16 bytes",
            ),
            ("odd offset", opts(512, 64 * MIB), "not whole 4 KiB blocks"),
            (
                "odd size",
                opts(0, 64 * MIB + 512),
                "not whole 4 KiB blocks",
            ),
            (
                "negative epoch",
                Ext4Opts {
                    epoch: -1,
                    ..opts(0, 64 * MIB)
                },
                "outside 1970..2106",
            ),
        ];
        for (name, o, want) in cases {
            let msg = format!("{:#}", check_opts(o).expect_err(name));
            assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn time_codec() {
        // (seconds, extra) on disk -> (seconds since 1970, nanoseconds)
        let cases: &[(u32, Option<u32>, (i64, u32))] = &[
            (0, None, (0, 0)),
            (EPOCH as u32, Some(0), (EPOCH, 0)),
            (EPOCH as u32, Some(123 << 2), (EPOCH, 123)),
            (0xffff_ffff, None, (-1, 0)),
            (0x8000_0000, Some(1), (1 << 31, 0)), // 2038-01-19, epoch bits 01
            (0xffff_ffff, Some(1), ((1 << 32) - 1, 0)),
            (0x0000_0000, Some(1), (1 << 32, 0)), // 2106-02-07
        ];
        for &(secs, extra, want) in cases {
            assert_eq!(decode_time(secs, extra), want, "{secs:#x} {extra:?}");
            if let (0, Some(extra)) = (want.1, extra) {
                assert_eq!(encode_time(want.0), (secs, extra), "{want:?}");
            }
        }
    }

    /// A 256-byte inode with `extra_isize` and all four times at `t`.
    fn inode_at(t: u32, extra_isize: u16) -> Vec<u8> {
        let mut inode = vec![0u8; 256];
        inode[0..2].copy_from_slice(&0o100644u16.to_le_bytes());
        inode[0x80..0x82].copy_from_slice(&extra_isize.to_le_bytes());
        for (base, extra) in TIMES {
            inode[base..base + 4].copy_from_slice(&t.to_le_bytes());
            inode[extra..extra + 4].copy_from_slice(&(999u32 << 2).to_le_bytes());
        }
        inode
    }

    #[test]
    fn clamps_only_later_times() {
        // (name, time, extra_isize, changed, expected fields)
        let later = EPOCH as u32 + 10;
        let earlier = EPOCH as u32 - 10;
        let cases: &[(&str, u32, u16, bool)] = &[
            ("later, full extra", later, 32, true),
            ("earlier stays", earlier, 32, false),
            ("same second with nanoseconds", EPOCH as u32, 32, true),
            ("no extra fields", later, 0, true),
        ];
        for &(name, t, isize, want_changed) in cases {
            let mut inode = inode_at(t, isize);
            let before = inode.clone();
            assert_eq!(clamp_times(&mut inode, EPOCH), want_changed, "{name}");
            for (base, extra) in TIMES {
                let has_base = fits(&inode, base, 4);
                let has_extra = fits(&inode, extra, 4);
                let got = decode_time(le32(&inode, base), has_extra.then(|| le32(&inode, extra)));
                if !has_base {
                    assert_eq!(inode[base..base + 4], before[base..base + 4], "{name}");
                } else if want_changed {
                    assert_eq!(got, (EPOCH, 0), "{name}: field {base:#x}");
                } else {
                    assert_eq!(got.0, i64::from(t), "{name}: field {base:#x}");
                }
            }
            // Nothing but the time fields moved.
            let mut masked = (inode.clone(), before.clone());
            for (base, extra) in TIMES {
                for buf in [&mut masked.0, &mut masked.1] {
                    buf[base..base + 4].fill(0);
                    buf[extra..extra + 4].fill(0);
                }
            }
            assert_eq!(masked.0, masked.1, "{name}");
        }
    }

    #[test]
    fn checksum_fields() {
        let seed = 0x1234_5678;
        for (isize, full) in [(32u16, true), (2, false)] {
            let mut inode = inode_at(1, isize);
            let csum = inode_csum(seed, 12, &inode);
            set_csum(&mut inode, csum);
            assert_eq!(stored_csum(&inode), csum);
            assert_eq!(
                full,
                csum > 0xffff || inode[0x82..0x84] != [0, 0],
                "isize {isize}"
            );
            // The checksum does not depend on the checksum fields' old value,
            // but does depend on the inode number and every other byte.
            assert_eq!(inode_csum(seed, 12, &inode), csum);
            assert_ne!(inode_csum(seed, 13, &inode), csum);
            inode[0xff] ^= 1;
            assert_ne!(inode_csum(seed, 12, &inode), csum);
        }
    }

    /// Reads an ext4 that starts at `offset` of a file, for ext4-view.
    struct At(File, u64);

    impl ext4_view::Ext4Read for At {
        fn read(
            &mut self,
            start: u64,
            dst: &mut [u8],
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
            Ok(self.0.read_exact_at(dst, self.1 + start)?)
        }
    }

    const CAPABILITY: [u8; 20] = [
        0x01, 0x00, 0x00, 0x02, // VFS_CAP_REVISION_2 | effective
        0x00, 0x04, 0x00, 0x00, // permitted: CAP_NET_BIND_SERVICE
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// A small tree with every kind of inode mke2fs -d copies.
    fn stage(dir: &Path) {
        let p = |rel: &str| dir.join(rel);
        std::fs::create_dir(p("sub")).unwrap();
        std::fs::create_dir(p("sub/deeper")).unwrap();
        let tool = p("sub/tool");
        std::fs::write(&tool, b"#!/bin/sh\necho tool\n").unwrap();
        std::os::unix::fs::chown(&tool, Some(100_000), Some(100_001)).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
        xattr::set(&tool, "security.capability", &CAPABILITY).unwrap();
        xattr::set(&tool, "user.test", b"hello").unwrap();
        std::fs::hard_link(&tool, p("hard")).unwrap();
        std::os::unix::fs::symlink("sub/tool", p("link")).unwrap();
        std::os::unix::fs::symlink("a/".repeat(50), p("long-link")).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(p("sub/deeper/data"), data).unwrap();
        // An old mtime is kept; it is below the epoch.
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH as u64 - 86_400);
        File::options()
            .write(true)
            .open(p("sub/deeper/data"))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        std::fs::write(p("empty"), b"").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
    }

    /// An image of `offset + size + pad` bytes with 0xee outside the range.
    fn image(dir: &Path, name: &str, offset: u64, size: u64, pad: u64) -> PathBuf {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(offset + size + pad).unwrap();
        f.write_all_at(&vec![0xee; offset as usize], 0).unwrap();
        f.write_all_at(&vec![0xee; pad as usize], offset + size)
            .unwrap();
        path
    }

    /// Copies `[offset, offset + len)` of `src` into a new sparse file.
    fn extract(src: &Path, offset: u64, len: u64, dst: &Path) {
        let src = File::open(src).unwrap();
        let out = File::create(dst).unwrap();
        out.set_len(len).unwrap();
        let mut buf = vec![0; MIB as usize];
        let mut at = 0;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            src.read_exact_at(&mut buf[..n], offset + at).unwrap();
            if buf[..n].iter().any(|&b| b != 0) {
                out.write_all_at(&buf[..n], at).unwrap();
            }
            at += n as u64;
        }
    }

    /// Runs a tool through sh so its report survives a non-zero exit.
    fn report(script: &str, file: &Path) -> String {
        Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(file)
            .run_get_string()
            .unwrap()
    }

    #[test]
    fn builds_reproducibly_and_checks_clean() {
        if !have("mke2fs") || !have("e2fsck") || !have("debugfs") || !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (offset, size, pad) = (MIB, 128 * MIB, MIB);
        let mut images = Vec::new();
        for i in 0..2 {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(1100));
            }
            let staging = tmp.path().join(format!("staging{i}"));
            std::fs::create_dir(&staging).unwrap();
            stage(&staging);
            let img = image(tmp.path(), &format!("disk{i}.raw"), offset, size, pad);
            make_root(&opts(offset, size), &staging, &img).unwrap();
            images.push(img);
        }
        let (a, b) = (
            std::fs::read(&images[0]).unwrap(),
            std::fs::read(&images[1]).unwrap(),
        );
        assert!(a == b, "two builds from two stagings differ");
        let outside = a[..offset as usize]
            .iter()
            .chain(&a[(offset + size) as usize..]);
        assert!(
            outside.into_iter().all(|&x| x == 0xee),
            "bytes outside the filesystem changed"
        );
        drop((a, b));

        let fs = tmp.path().join("fs.raw");
        extract(&images[0], offset, size, &fs);
        let out = report("e2fsck -fn \"$1\" 2>&1; echo \"exit=$?\"", &fs);
        assert!(out.ends_with("exit=0\n"), "e2fsck -fn:\n{out}");

        let debugfs = |req: &str| report(&format!("debugfs -R '{req}' \"$1\" 2>&1"), &fs);
        let stat = debugfs("stat /sub/tool");
        for want in [
            "Type: regular    Mode:  04755",
            "User: 100000   Group: 100001",
            "Links: 2",
            "ctime: 0x6553f100:00000000",
            "atime: 0x6553f100:00000000",
            "mtime: 0x6553f100:00000000",
            "crtime: 0x6553f100:00000000",
        ] {
            assert!(
                stat.contains(want),
                "stat /sub/tool lacks {want:?}:\n{stat}"
            );
        }
        let inode = |s: &str| s.split_whitespace().nth(1).map(str::to_owned);
        assert_eq!(
            inode(&debugfs("stat /hard")),
            inode(&stat),
            "/hard is not a hard link"
        );
        let ea = debugfs("ea_list /sub/tool");
        assert!(
            ea.contains("security.capability (20)") && ea.contains("user.test (5) = \"hello\""),
            "{ea}"
        );
        let null = debugfs("stat /null");
        assert!(
            null.contains("Type: character special")
                && null.contains("Device major/minor number: 01:03"),
            "{null}"
        );
        let data = debugfs("stat /sub/deeper/data");
        assert!(
            data.contains(&format!("mtime: {:#x}:00000000", EPOCH - 86_400)),
            "old mtime lost:\n{data}"
        );

        // ext4-view reads it back, verifying metadata checksums as it goes.
        let view =
            ext4_view::Ext4::load(Box::new(At(File::open(&images[0]).unwrap(), offset))).unwrap();
        assert_eq!(view.read("/sub/tool").unwrap(), b"#!/bin/sh\necho tool\n");
        let meta = view.metadata("/sub/tool").unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode()),
            (100_000, 100_001, 0o4755)
        );
        assert_eq!(
            view.read_link("/link").unwrap(),
            ext4_view::Path::new("sub/tool")
        );
        assert_eq!(
            view.read_link("/long-link").unwrap(),
            ext4_view::Path::new(&"a/".repeat(50))
        );
        assert_eq!(view.read("/sub/deeper/data").unwrap().len(), 300_000);
        assert_eq!(view.label().to_str().unwrap(), "airlock-root");

        // Every in-use inode is at or before the epoch, with a good checksum.
        let file = File::open(&images[0]).unwrap();
        let mut seen = 0;
        walk_inodes(&file, offset, |fs, ino, inode| {
            check_csum(fs, ino, inode)?;
            for (base, extra) in TIMES {
                let t = decode_time(le32(inode, base), Some(le32(inode, extra)));
                ensure!(t <= (EPOCH, 0), "inode {ino}: time at {base:#x} is {t:?}");
            }
            seen += 1;
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, 19, "10 reserved inodes, lost+found and 8 staged");
    }

    #[test]
    fn at_offset_zero_e2fsck_reads_the_image() {
        if !have("mke2fs") || !have("e2fsck") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(staging.join("etc")).unwrap();
        std::fs::write(staging.join("etc/hostname"), b"node\n").unwrap();
        let img = image(tmp.path(), "fs.raw", 0, 64 * MIB, 0);
        make_root(&opts(0, 64 * MIB), &staging, &img).unwrap();
        let out = report("e2fsck -fn \"$1\" 2>&1; echo \"exit=$?\"", &img);
        assert!(out.ends_with("exit=0\n"), "e2fsck -fn:\n{out}");
        // A second pass has nothing left to do.
        assert_eq!(normalize_times(&img, 0, EPOCH).unwrap(), 0);
        // The superblock times are the epoch too.
        let sb = {
            let mut sb = [0u8; 1024];
            File::open(&img)
                .unwrap()
                .read_exact_at(&mut sb, 1024)
                .unwrap();
            sb
        };
        for (field, at) in [("s_wtime", 0x30), ("s_mkfs_time", 0x108)] {
            assert_eq!(le32(&sb, at), EPOCH as u32, "{field}");
        }
    }

    #[test]
    fn refuses_an_image_too_short() {
        if !have("mke2fs") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = image(tmp.path(), "short.raw", 0, 32 * MIB, 0);
        let msg = format!(
            "{:#}",
            make_root(&opts(MIB, 64 * MIB), tmp.path(), &img).unwrap_err()
        );
        assert!(msg.contains("size the image first"), "{msg}");
    }

    #[test]
    fn normalize_refuses_bad_checksums_and_non_ext4() {
        if !have("mke2fs") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("f"), b"f").unwrap();
        let img = image(tmp.path(), "fs.raw", 0, 64 * MIB, 0);
        make_root(&opts(0, 64 * MIB), &staging, &img).unwrap();
        // Find inode 12 (the first file), push its ctime past the epoch and
        // break its checksum.
        let file = File::options().read(true).write(true).open(&img).unwrap();
        let mut found = None;
        walk_inodes(&file, 0, |_, ino, inode| {
            if ino == 12 {
                inode[0x0c..0x10].copy_from_slice(&(EPOCH as u32 + 5).to_le_bytes());
                inode[0x7c] ^= 0xff;
                found = Some(ino);
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(found, Some(12));
        let msg = format!("{:#}", normalize_times(&img, 0, EPOCH).unwrap_err());
        assert!(
            msg.contains("refusing to rewrite") && msg.contains("inode 12 has checksum"),
            "{msg}"
        );

        let msg = format!("{:#}", normalize_times(&img, MIB, EPOCH).unwrap_err());
        assert!(
            msg.contains("no ext4 superblock at offset 1048576"),
            "{msg}"
        );
    }
}
