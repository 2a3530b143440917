// SPDX-License-Identifier: Apache-2.0
//! Output formats: the raw image, its zstd copy, and VM disks made from the
//! raw image by `qemu-img` (the standard implementation of those formats),
//! each checked with `qemu-img check` where the format supports it.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::{self, CommandRunExt};

/// One kind of output file.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum Format {
    /// The raw disk image (always written: the others are made from it).
    #[serde(rename = "raw")]
    #[value(name = "raw")]
    Raw,
    /// The raw image compressed with zstd (for carrying and `airlock write`).
    #[serde(rename = "raw.zst")]
    #[value(name = "raw.zst")]
    RawZst,
    /// QEMU/KVM, Proxmox, OpenStack.
    #[serde(rename = "qcow2")]
    #[value(name = "qcow2")]
    Qcow2,
    /// Stream-optimized VMDK, importable by VMware and VirtualBox.
    #[serde(rename = "vmdk")]
    #[value(name = "vmdk")]
    Vmdk,
    /// Dynamic VHDX for Hyper-V.
    #[serde(rename = "vhdx")]
    #[value(name = "vhdx")]
    Vhdx,
}

/// What a recipe gets without `[disk] formats`.
pub const DEFAULT: &[Format] = &[Format::Raw, Format::RawZst];

impl Format {
    /// The file name extension, also the name in recipes and on the command line.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::RawZst => "raw.zst",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhdx => "vhdx",
        }
    }

    /// Made by `qemu-img convert`.
    pub fn is_vm(self) -> bool {
        matches!(self, Format::Qcow2 | Format::Vmdk | Format::Vhdx)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// The formats to write: the requested ones, sorted, without repeats, and
/// always with raw.
pub fn effective(requested: &[Format]) -> Vec<Format> {
    let mut v: Vec<Format> = requested.to_vec();
    v.push(Format::Raw);
    v.sort();
    v.dedup();
    v
}

/// Fails early, naming the package, when a VM format needs qemu-img.
pub fn require_tools(formats: &[Format]) -> Result<()> {
    if formats.iter().any(|f| f.is_vm()) {
        cmd::require_tool("qemu-img")
            .context("VM disk formats (qcow2, vmdk, vhdx) are made with qemu-img")?;
    }
    Ok(())
}

/// `qemu-img convert` arguments that turn `raw` into `out`.
pub fn convert_argv(format: Format, raw: &Path, out: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["convert", "-q", "-f", "raw", "-O", qemu_name(format)]
        .iter()
        .map(OsString::from)
        .collect();
    match format {
        Format::Vmdk => a.extend(["-o".into(), "subformat=streamOptimized".into()]),
        Format::Vhdx => a.extend(["-o".into(), "subformat=dynamic".into()]),
        _ => {}
    }
    a.push(raw.into());
    a.push(out.into());
    a
}

/// `qemu-img check` arguments, for the formats it can check.
pub fn check_argv(format: Format, file: &Path) -> Option<Vec<OsString>> {
    format.is_vm().then(|| {
        let mut a: Vec<OsString> = ["check", "-q", "-f", qemu_name(format)]
            .iter()
            .map(OsString::from)
            .collect();
        a.push(file.into());
        a
    })
}

fn qemu_name(format: Format) -> &'static str {
    match format {
        Format::Raw | Format::RawZst => "raw",
        Format::Qcow2 => "qcow2",
        Format::Vmdk => "vmdk",
        Format::Vhdx => "vhdx",
    }
}

/// Converts the raw image to a VM format and checks the result. `raw_sha256`
/// seeds what qemu-img would otherwise pick at random (the VMDK content ID),
/// so the same raw image gives the same VMDK.
pub fn convert(format: Format, raw: &Path, out: &Path, raw_sha256: &str) -> Result<()> {
    Command::new("qemu-img")
        .args(convert_argv(format, raw, out))
        .run()
        .with_context(|| format!("converting {} to {format}", raw.display()))?;
    if format == Format::Vmdk {
        pin_vmdk_cid(out, &raw_sha256[..8])?;
    }
    if let Some(argv) = check_argv(format, out) {
        Command::new("qemu-img")
            .args(argv)
            .run()
            .with_context(|| format!("checking {} with qemu-img check", out.display()))?;
    }
    Ok(())
}

/// Replaces the random content ID in a VMDK's embedded descriptor with
/// `cid` (eight hex digits). qemu-img writes the ID without leading zeros
/// (`CID=%x`), so the value may be shorter than ours: the descriptor text is
/// rewritten within its area (from the header), which is padded with NULs.
fn pin_vmdk_cid(path: &Path, cid: &str) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let ctx = || format!("setting the content ID of {}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(ctx)?;
    let mut header = [0u8; 512];
    f.read_exact_at(&mut header, 0).with_context(ctx)?;
    let (off, len) = descriptor_area(&header)
        .with_context(|| format!("{}: not a sparse VMDK with an embedded descriptor", ctx()))?;
    let mut area = vec![0u8; len];
    f.read_exact_at(&mut area, off).with_context(ctx)?;
    let new = with_cid(&area, cid)
        .with_context(|| format!("{}: no CID= in the VMDK descriptor", ctx()))?;
    f.write_all_at(&new, off).with_context(ctx)?;
    f.sync_all().with_context(ctx)
}

/// Byte offset and length of the descriptor named by a sparse extent
/// header (`KDMV`, descriptorOffset and descriptorSize in sectors), capped
/// at 1 MiB.
fn descriptor_area(h: &[u8; 512]) -> Option<(u64, usize)> {
    if &h[..4] != b"KDMV" {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
    let (off, size) = (word(28), word(36));
    (off > 0 && size > 0 && size <= 2048).then(|| (off * 512, size as usize * 512))
}

/// The descriptor area with the `CID=` line set to `cid`, padded with NULs
/// to the same length; `None` without a CID line or room for the text.
fn with_cid(area: &[u8], cid: &str) -> Option<Vec<u8>> {
    let text_end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = &area[..text_end];
    let key = b"\nCID=";
    let start = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[start..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 || digits > 8 {
        return None;
    }
    let mut out = Vec::with_capacity(area.len());
    out.extend_from_slice(&text[..start]);
    out.extend_from_slice(cid.as_bytes());
    out.extend_from_slice(&text[start + digits..]);
    if out.len() > area.len() {
        return None;
    }
    out.resize(area.len(), 0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_is_always_kept_and_order_is_fixed() {
        assert_eq!(
            effective(&[Format::Vmdk, Format::Qcow2, Format::Vmdk]),
            [Format::Raw, Format::Qcow2, Format::Vmdk]
        );
        assert_eq!(effective(DEFAULT), [Format::Raw, Format::RawZst]);
        assert_eq!(effective(&[]), [Format::Raw]);
    }

    #[test]
    fn names_parse_in_toml_and_on_the_command_line() {
        #[derive(Deserialize)]
        struct D {
            formats: Vec<Format>,
        }
        let d: D =
            toml::from_str(r#"formats = ["raw", "raw.zst", "qcow2", "vmdk", "vhdx"]"#).unwrap();
        assert_eq!(d.formats.len(), 5);
        assert!(toml::from_str::<D>(r#"formats = ["vdi"]"#).is_err());
        use clap::ValueEnum;
        assert_eq!(Format::from_str("raw.zst", false).unwrap(), Format::RawZst);
        for f in d.formats {
            assert_eq!(Format::from_str(f.extension(), false).unwrap(), f);
        }
    }

    #[test]
    fn sets_the_vmdk_cid_even_when_qemu_wrote_it_short() {
        let text = b"# Disk DescriptorFile\nversion=1\nCID=5f248c17\nparentCID=ffffffff\n";
        let mut area = text.to_vec();
        area.resize(1024, 0);
        let new = with_cid(&area, "0123abcd").unwrap();
        assert_eq!(new.len(), 1024);
        assert!(new.starts_with(
            b"# Disk DescriptorFile\nversion=1\nCID=0123abcd\nparentCID=ffffffff\n\0"
        ));
        // qemu-img prints the ID with %x: a leading zero makes it shorter.
        let short =
            b"# Disk DescriptorFile\nversion=1\nCID=a24c17\nparentCID=ffffffff\ncreateType=\"x\"\n";
        let mut area = short.to_vec();
        area.resize(512, 0);
        let new = with_cid(&area, "0123abcd").unwrap();
        let end = new.iter().position(|&b| b == 0).unwrap();
        assert_eq!(
            &new[..end],
            &b"# Disk DescriptorFile\nversion=1\nCID=0123abcd\nparentCID=ffffffff\ncreateType=\"x\"\n"[..]
        );
        assert_eq!(with_cid(b"\nCID=xyz\0\0", "0123abcd"), None);
        assert_eq!(with_cid(b"\nCID=1\n", "0123abcd"), None, "no room");
        let mut h = [0u8; 512];
        h[..4].copy_from_slice(b"KDMV");
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&20u64.to_le_bytes());
        assert_eq!(descriptor_area(&h), Some((512, 20 * 512)));
    }

    #[test]
    fn argv_per_format() {
        let s = |v: Vec<OsString>| {
            v.iter()
                .map(|a| a.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (raw, out) = (Path::new("a.raw"), Path::new("a.out"));
        assert_eq!(
            s(convert_argv(Format::Qcow2, raw, out)),
            "convert -q -f raw -O qcow2 a.raw a.out"
        );
        assert_eq!(
            s(convert_argv(Format::Vmdk, raw, out)),
            "convert -q -f raw -O vmdk -o subformat=streamOptimized a.raw a.out"
        );
        assert_eq!(
            s(convert_argv(Format::Vhdx, raw, out)),
            "convert -q -f raw -O vhdx -o subformat=dynamic a.raw a.out"
        );
        assert_eq!(
            s(check_argv(Format::Vhdx, out).unwrap()),
            "check -q -f vhdx a.out"
        );
        assert!(check_argv(Format::RawZst, out).is_none());
    }
}
