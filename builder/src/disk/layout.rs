// SPDX-License-Identifier: Apache-2.0
//! The partition plan: where the ESP and the root filesystem go on the disk.
//!
//! Pure arithmetic, no I/O. [`plan`] turns a disk size, an ESP size and the
//! disk's identities into byte ranges that `disk::gpt::write` and the
//! filesystem builders use, so the numbers are tested once, here.

use anyhow::{bail, ensure, Context, Result};
use uuid::Uuid;

/// Logical sector size of the image, in bytes.
pub const SECTOR: u64 = 512;
/// Every partition starts and ends on a 1 MiB boundary.
pub const ALIGN: u64 = 1 << 20;
/// EFI System Partition.
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
/// Root partition (x86-64), from the Discoverable Partitions Specification,
/// so systemd-gpt-auto-generator can find it without a root= argument.
pub const ROOT_X86_64_TYPE: Uuid = Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);

/// The backup GPT at the end of the disk: 32 sectors of partition entries
/// (128 entries of 128 bytes) and the backup header in the very last sector.
pub const BACKUP_GPT_BYTES: u64 = 33 * SECTOR;

/// The smallest ESP we accept.
///
/// FAT32 needs at least 65,525 clusters. For volumes up to 260 MiB fatfs
/// (like mkfs.fat) uses 512-byte clusters on 512-byte sectors, so 32 MiB
/// holds only 64,518 clusters once the reserved sectors and both FATs are
/// taken out, and 33 MiB holds 66,536: the smallest whole-MiB FAT32 volume.
/// `fs::fat`'s tests format both sizes to keep this number honest.
pub const MIN_ESP: u64 = 33 << 20;

/// The largest ESP: FAT32 counts sectors in 32 bits.
pub const MAX_ESP: u64 = (u32::MAX as u64) / (ALIGN / SECTOR) * ALIGN;

/// The smallest root partition we accept; anything less cannot hold a
/// kernel's modules, let alone a Kubernetes node.
pub const MIN_ROOT: u64 = 64 << 20;

/// One partition of the plan. Offsets and sizes are in bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartitionPlan {
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

impl PartitionPlan {
    /// One past the last byte of the partition.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The whole disk: its size, GUID and the two partitions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskLayout {
    /// Size of the disk image in bytes.
    pub size: u64,
    /// GPT disk GUID.
    pub disk_guid: Uuid,
    /// Partition 1, the EFI System Partition.
    pub esp: PartitionPlan,
    /// Partition 2, the root filesystem.
    pub root: PartitionPlan,
}

/// The identities the plan stamps into the GPT, derived by the caller
/// (from the recipe and input digests) so that builds are reproducible.
#[derive(Debug, Clone)]
pub struct DiskIds {
    /// GPT disk GUID.
    pub disk: Uuid,
    /// Unique partition GUID of the ESP.
    pub esp: Uuid,
    /// Unique partition GUID of the root partition.
    pub root: Uuid,
}

/// Checks an ESP size on its own: whole MiB, within what FAT32 can hold.
pub fn check_esp(esp_size: u64) -> Result<()> {
    ensure!(
        esp_size % ALIGN == 0,
        "ESP size {esp_size} bytes is not a multiple of 1 MiB; round it to whole MiB"
    );
    ensure!(
        esp_size >= MIN_ESP,
        "ESP size {} is too small: FAT32 needs at least 65,525 clusters, which takes {} \
         with 512-byte sectors",
        mib(esp_size),
        mib(MIN_ESP)
    );
    ensure!(
        esp_size <= MAX_ESP,
        "ESP size {} is too large: FAT32 with 512-byte sectors ends at {}",
        mib(esp_size),
        mib(MAX_ESP)
    );
    Ok(())
}

/// Checks that a disk of `size` bytes holds an ESP of `esp_size` (already
/// checked with [`check_esp`]) and a root partition; returns the root's
/// byte range. Pure arithmetic, so a recipe can be checked before the build.
pub fn check_sizes(size: u64, esp_size: u64) -> Result<(u64, u64)> {
    ensure!(
        size % ALIGN == 0,
        "disk size {size} bytes is not a multiple of 1 MiB; round it to whole MiB"
    );
    let esp_start = ALIGN;
    let root_start = esp_start
        .checked_add(esp_size)
        .context("ESP size overflows the disk size arithmetic")?;
    let min_size = root_start + MIN_ROOT + ALIGN;
    // The last whole MiB before the backup GPT; with `size` MiB-aligned this
    // is `size - 1 MiB`, leaving that MiB for the 33 sectors of backup GPT.
    let root_end = size.saturating_sub(BACKUP_GPT_BYTES) / ALIGN * ALIGN;
    if root_end < root_start || root_end - root_start < MIN_ROOT {
        bail!(
            "disk size {} is too small: it needs 1 MiB for the GPT, {} for the ESP, at least {} \
             for root and 1 MiB for the backup GPT; make it at least {}",
            mib(size),
            mib(esp_size),
            mib(MIN_ROOT),
            mib(min_size)
        );
    }
    Ok((root_start, root_end))
}

/// Plans a disk of `size` bytes with an ESP of `esp_size` bytes at 1 MiB and
/// the root partition filling the rest, up to the last whole MiB that leaves
/// room for the backup GPT.
pub fn plan(size: u64, esp_size: u64, ids: &DiskIds) -> Result<DiskLayout> {
    check_esp(esp_size)?;
    let (root_start, root_end) = check_sizes(size, esp_size)?;
    check_ids(ids)?;
    let esp_start = ALIGN;

    Ok(DiskLayout {
        size,
        disk_guid: ids.disk,
        esp: PartitionPlan {
            number: 1,
            label: "ESP".into(),
            type_guid: ESP_TYPE,
            uuid: ids.esp,
            start: esp_start,
            size: esp_size,
        },
        root: PartitionPlan {
            number: 2,
            label: "root".into(),
            type_guid: ROOT_X86_64_TYPE,
            uuid: ids.root,
            start: root_start,
            size: root_end - root_start,
        },
    })
}

fn check_ids(ids: &DiskIds) -> Result<()> {
    let named = [
        ("disk GUID", ids.disk),
        ("ESP UUID", ids.esp),
        ("root UUID", ids.root),
    ];
    for (i, (name, id)) in named.iter().enumerate() {
        ensure!(!id.is_nil(), "the {name} is nil; derive or set a real UUID");
        for (other, other_id) in &named[i + 1..] {
            ensure!(
                id != other_id,
                "the {name} and the {other} are both {id}; they must differ"
            );
        }
    }
    Ok(())
}

/// Formats a byte count as MiB for messages ("33 MiB", or "1.5 MiB").
fn mib(bytes: u64) -> String {
    if bytes % ALIGN == 0 {
        format!("{} MiB", bytes / ALIGN)
    } else {
        format!("{:.1} MiB", bytes as f64 / ALIGN as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = ALIGN;

    fn ids() -> DiskIds {
        DiskIds {
            disk: Uuid::from_u128(1),
            esp: Uuid::from_u128(2),
            root: Uuid::from_u128(3),
        }
    }

    #[test]
    fn plans() {
        // (name, disk, esp, expected (root start, root size) in MiB)
        let cases: &[(&str, u64, u64, (u64, u64))] = &[
            ("4 GiB, 512 MiB ESP", 4096, 512, (513, 3582)),
            ("smallest disk", 99, 33, (34, 64)),
            ("100 GiB, 1 GiB ESP", 102_400, 1024, (1025, 101_374)),
        ];
        for &(name, size, esp, (root_start, root_size)) in cases {
            let l = plan(size * MIB, esp * MIB, &ids()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(l.size, size * MIB, "{name}");
            assert_eq!(
                (l.esp.number, l.esp.label.as_str(), l.esp.start, l.esp.size),
                (1, "ESP", MIB, esp * MIB),
                "{name}"
            );
            assert_eq!(
                (
                    l.root.number,
                    l.root.label.as_str(),
                    l.root.start,
                    l.root.size
                ),
                (2, "root", root_start * MIB, root_size * MIB),
                "{name}"
            );
            assert_eq!(l.esp.type_guid, ESP_TYPE, "{name}");
            assert_eq!(l.root.type_guid, ROOT_X86_64_TYPE, "{name}");
            assert_eq!(
                (l.disk_guid, l.esp.uuid, l.root.uuid),
                (ids().disk, ids().esp, ids().root)
            );
            // Invariants: aligned, adjacent, and clear of the backup GPT.
            for p in [&l.esp, &l.root] {
                assert_eq!(p.start % ALIGN, 0, "{name}: {p:?}");
                assert_eq!(p.size % ALIGN, 0, "{name}: {p:?}");
            }
            assert_eq!(l.esp.end(), l.root.start, "{name}");
            assert!(l.root.end() + BACKUP_GPT_BYTES <= l.size, "{name}");
            assert!(
                l.size - l.root.end() < ALIGN + BACKUP_GPT_BYTES,
                "{name}: root wastes space"
            );
        }
    }

    #[test]
    fn rejects() {
        let big = u64::MAX / MIB * MIB;
        // (name, disk bytes, esp bytes, expected message fragment)
        let cases: &[(&str, u64, u64, &str)] = &[
            (
                "disk not MiB aligned",
                4096 * MIB + 512,
                512 * MIB,
                "disk size 4294967808 bytes is not a multiple of 1 MiB",
            ),
            (
                "esp not MiB aligned",
                4096 * MIB,
                512 * MIB + 4096,
                "ESP size 536875008 bytes is not a multiple of 1 MiB",
            ),
            (
                "esp zero",
                4096 * MIB,
                0,
                "ESP size 0 MiB is too small: FAT32",
            ),
            (
                "esp below FAT32 minimum",
                4096 * MIB,
                32 * MIB,
                "ESP size 32 MiB is too small",
            ),
            (
                "esp beyond FAT32",
                big,
                2 * 1024 * 1024 * MIB,
                "ESP size 2097152 MiB is too large",
            ),
            (
                "disk one MiB short",
                98 * MIB,
                33 * MIB,
                "make it at least 99 MiB",
            ),
            (
                "disk smaller than ESP",
                64 * MIB,
                512 * MIB,
                "disk size 64 MiB is too small",
            ),
            ("disk empty", 0, 512 * MIB, "make it at least 578 MiB"),
        ];
        for &(name, size, esp, want) in cases {
            let err = plan(size, esp, &ids()).expect_err(name);
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn rejects_bad_ids() {
        let cases: &[(&str, DiskIds, &str)] = &[
            (
                "nil disk",
                DiskIds {
                    disk: Uuid::nil(),
                    ..ids()
                },
                "the disk GUID is nil",
            ),
            (
                "nil root",
                DiskIds {
                    root: Uuid::nil(),
                    ..ids()
                },
                "the root UUID is nil",
            ),
            (
                "esp = root",
                DiskIds {
                    root: ids().esp,
                    ..ids()
                },
                "the ESP UUID and the root UUID are both",
            ),
            (
                "disk = esp",
                DiskIds {
                    esp: ids().disk,
                    ..ids()
                },
                "the disk GUID and the ESP UUID are both",
            ),
        ];
        for (name, ids, want) in cases {
            let msg = format!("{:#}", plan(4096 * MIB, 512 * MIB, ids).expect_err(name));
            assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn type_guids_are_the_spec_values() {
        assert_eq!(ESP_TYPE.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            ROOT_X86_64_TYPE.to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
    }

    #[test]
    fn esp_limits_are_whole_mib() {
        assert_eq!(MIN_ESP % ALIGN, 0);
        assert_eq!(MAX_ESP % ALIGN, 0);
        assert!(MAX_ESP / SECTOR <= u64::from(u32::MAX));
        assert!((MAX_ESP + ALIGN) / SECTOR > u64::from(u32::MAX));
    }

    #[test]
    fn mib_formats() {
        assert_eq!(mib(33 * MIB), "33 MiB");
        assert_eq!(mib(MIB + MIB / 2), "1.5 MiB");
    }
}
