// SPDX-License-Identifier: Apache-2.0
//! Opening a built image for reading, as an ordinary user, without mounts
//! or loop devices: a `.raw`, a `.raw.zst`, a VM disk (qcow2, vmdk, vhdx),
//! or a block device or regular file a stick was written to.
//!
//! zstd streams cannot seek, so a `.raw.zst` is decompressed once into an
//! unnamed temporary file in `$TMPDIR` that keeps the image's holes (it
//! needs room for the image's data, not its full size) and disappears when
//! the [`Image`] is dropped; its compressed and raw sha256 are taken on the
//! way. VM disks are turned into a sparse raw copy by `qemu-img convert`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use ext4_view::Ext4;

use crate::cmd::{self, CommandRunExt};
use crate::disk::gpt::GptInfo;
use crate::disk::layout::{ESP_TYPE, ROOT_X86_64_TYPE};

/// What kind of thing the image path named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A raw disk image file (or a file a stick was written to).
    Raw,
    /// A zstd-compressed raw image.
    RawZst,
    /// A block device.
    Device,
    /// A VM disk in a format qemu-img reads (qcow2, vmdk, vhdx).
    Vm(VmFormat),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmFormat {
    Qcow2,
    Vmdk,
    Vhdx,
}

impl VmFormat {
    fn name(self) -> &'static str {
        match self {
            VmFormat::Qcow2 => "qcow2",
            VmFormat::Vmdk => "vmdk",
            VmFormat::Vhdx => "vhdx",
        }
    }
}

/// An image opened for random-access reading.
#[derive(Debug)]
pub struct Image {
    /// The path as given.
    pub path: PathBuf,
    pub kind: Kind,
    /// The disk bytes: the image itself, or its decompressed/converted copy.
    file: File,
    /// Keeps a named temporary copy alive (qemu-img needs a path).
    _temp: Option<tempfile::TempPath>,
    /// sha256 of the file as given, when it was read whole on opening.
    pub file_sha256: Option<String>,
    /// sha256 of the raw disk bytes, when they were read whole on opening.
    pub raw_sha256: Option<String>,
}

impl Image {
    /// Opens `path`; a `.raw.zst` or VM disk is decompressed or converted
    /// into `$TMPDIR` first (with a progress bar on stderr when `progress`).
    pub fn open(path: &Path, progress: bool) -> Result<Image> {
        let ctx = || format!("opening image {}", path.display());
        let mut file = open_no_wait(path, "a regular file or a block device").with_context(ctx)?;
        let meta = file.metadata().with_context(ctx)?;
        if meta.file_type().is_block_device() {
            return Ok(Image::plain(path, Kind::Device, file));
        }
        if !meta.is_file() {
            bail!(
                "{} is neither a disk image file nor a block device",
                path.display()
            );
        }
        let mut head = [0u8; 8];
        let n = read_up_to(&mut file, &mut head).with_context(ctx)?;
        file.seek(SeekFrom::Start(0)).with_context(ctx)?;
        match sniff(&head[..n]) {
            None => Ok(Image::plain(path, Kind::Raw, file)),
            Some(Kind::RawZst) => decompress(path, file, meta.len(), progress),
            Some(Kind::Vm(f)) => convert(path, f),
            Some(k) => unreachable!("sniff never returns {k:?}"),
        }
    }

    fn plain(path: &Path, kind: Kind, file: File) -> Image {
        Image {
            path: path.to_path_buf(),
            kind,
            file,
            _temp: None,
            file_sha256: None,
            raw_sha256: None,
        }
    }

    /// The raw disk bytes.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Size of the raw disk in bytes (of the device, for a device).
    pub fn size(&self) -> Result<u64> {
        let mut f = &self.file;
        f.seek(SeekFrom::End(0))
            .with_context(|| format!("finding the size of {}", self.path.display()))
    }

    /// The ext4 filesystem that starts at byte `offset` of the disk.
    pub fn ext4(&self, offset: u64) -> Result<Ext4> {
        let file = self
            .file
            .try_clone()
            .with_context(|| format!("duplicating the descriptor of {}", self.path.display()))?;
        Ext4::load(Box::new(PartReader { file, offset })).with_context(|| {
            format!(
                "reading the ext4 filesystem at byte {offset} of {}",
                self.path.display()
            )
        })
    }
}

/// Opens `path` for reading without waiting: a named pipe (or a device
/// that blocks on open) is stat'ed first and refused by the caller instead
/// of hanging. A regular file or block device gets its normal blocking
/// mode back.
fn open_no_wait(path: &Path, wanted: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let t = m.file_type();
        if !(t.is_file() || t.is_block_device() || t.is_dir()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it is a {}, not {wanted}", describe_type(&t)),
            ));
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())?;
    Ok(file)
}

fn describe_type(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "named pipe"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Reads a small file (a manifest, a block map) whole, refusing anything
/// that is not a regular file or is larger than `limit` bytes: `/dev/zero`
/// or a pipe given by mistake must not fill memory or hang. `what` names
/// the file in errors.
pub fn read_small_file(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let ctx = || format!("reading {what} {}", path.display());
    let file = open_no_wait(path, "a regular file").with_context(ctx)?;
    let meta = file.metadata().with_context(ctx)?;
    if !meta.is_file() {
        bail!(
            "{what} {} is not a regular file: pass the {what} file of the build",
            path.display()
        );
    }
    if meta.len() > limit {
        bail!(
            "{what} {} is {} bytes, more than the {} MiB a {what} can be: is it the right file?",
            path.display(),
            meta.len(),
            limit >> 20
        );
    }
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(ctx)?;
    if buf.len() as u64 > limit {
        bail!(
            "{what} {} grew past {} MiB while being read",
            path.display(),
            limit >> 20
        );
    }
    Ok(buf)
}

/// The most a manifest or block map file is read into memory.
pub const SMALL_FILE_LIMIT: u64 = 64 << 20;

/// Why the disk is not a disk image at all (no protective MBR and no GPT
/// header), or `None` when it has either.
pub fn not_a_disk(img: &Image) -> Result<Option<String>> {
    let mut head = [0u8; 1024];
    let mut n = 0;
    while n < head.len() {
        match img.file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the start of {}", img.path.display()))
            }
        }
    }
    let head = &head[..n];
    let mbr = head.len() >= 512 && head[510..512] == [0x55, 0xaa] && head[446 + 4] == 0xee;
    let gpt = head.len() >= 520 && &head[512..520] == b"EFI PART";
    if mbr || gpt {
        return Ok(None);
    }
    let what = if n == 0 {
        "it is empty".to_string()
    } else {
        "it has neither a protective MBR nor a GPT header".to_string()
    };
    Ok(Some(format!(
        "{} is not a disk image: {what} (an airlock image, and a stick written from one, \
         starts with both)",
        img.path.display()
    )))
}

/// The partition table of the disk; a note when it was found only by
/// looking where the image ended, not where the disk ends (an image
/// written with plain dd onto a larger stick leaves its backup GPT in the
/// middle). Both copies are checked either way.
pub fn read_gpt(img: &Image) -> Result<(GptInfo, Option<String>)> {
    let first = match crate::disk::gpt::read(&mut img.file()) {
        Ok(g) => return Ok((g, None)),
        Err(e) => e,
    };
    let mut hdr = [0u8; 92];
    let backup = img
        .file()
        .read_exact_at(&mut hdr, 512)
        .ok()
        .filter(|_| &hdr[..8] == b"EFI PART")
        .map(|_| u64::from_le_bytes(hdr[32..40].try_into().expect("8 bytes")));
    let size = img.size()?;
    let Some(last) = backup.filter(|b| b.checked_add(1).is_some_and(|e| e * 512 < size)) else {
        return Err(first);
    };
    let mut window = Window {
        file: img.file(),
        len: (last + 1) * 512,
        pos: 0,
    };
    match crate::disk::gpt::read(&mut window) {
        Ok(g) => Ok((
            g,
            Some(format!(
                "the backup GPT is at sector {last}, not at the end of the disk (sector {}): \
                 the image was written with plain dd onto a larger disk; the partition table \
                 is intact (both copies checked). `sgdisk -e {}` moves the backup to the end",
                size / 512 - 1,
                img.path.display()
            )),
        )),
        Err(_) => Err(first),
    }
}

/// The first `len` bytes of a file, as a file of its own.
struct Window<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        let k = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// A byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Range {
    pub start: u64,
    pub size: u64,
}

/// Pairs of partitions that share sectors, in words: no tool makes them,
/// and writing one partition would overwrite the other.
pub fn overlaps(gpt: &GptInfo) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in gpt.partitions.iter().enumerate() {
        for b in &gpt.partitions[i + 1..] {
            let start = a.start.max(b.start);
            let end = (a.start + a.size).min(b.start + b.size);
            if start < end {
                out.push(format!(
                    "partitions {} ({}) and {} ({}) overlap in bytes {start} to {end}",
                    a.number, a.label, b.number, b.label
                ));
            }
        }
    }
    out
}

/// The ESP and the root partition of a partition table, by type.
pub fn find_partitions(gpt: &GptInfo) -> (Option<Range>, Option<Range>) {
    let by_type = |t| {
        gpt.partitions
            .iter()
            .find(|p| p.type_guid == t)
            .map(|p| Range {
                start: p.start,
                size: p.size,
            })
    };
    (by_type(ESP_TYPE), by_type(ROOT_X86_64_TYPE))
}

/// Copies the file at `path` (symlinks followed) of an ext4 filesystem
/// into `out`, a block at a time; returns its length.
pub fn copy_ext4_file(fs: &Ext4, path: &str, out: &mut dyn Write) -> Result<u64, CopyError> {
    let mut file = fs.open(path).map_err(CopyError::Ext4)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = file.read_bytes(&mut buf).map_err(CopyError::Ext4)?;
        if k == 0 {
            return Ok(n);
        }
        out.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
    }
}

/// Why [`copy_ext4_file`] failed: reading the image or writing the copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Ext4(ext4_view::Ext4Error),
    #[error(transparent)]
    Write(std::io::Error),
}

/// Reads the whole file at `path` of an ext4 filesystem; `None` when it
/// does not exist.
pub fn read_ext4_file(fs: &Ext4, path: &str) -> Result<Option<Vec<u8>>> {
    match fs.read(path) {
        Ok(b) => Ok(Some(b)),
        Err(ext4_view::Ext4Error::NotFound) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {path} from the root filesystem")),
    }
}

/// Reads `[offset..]` of a disk for ext4-view.
struct PartReader {
    file: File,
    offset: u64,
}

impl ext4_view::Ext4Read for PartReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let at = self
            .offset
            .checked_add(start)
            .ok_or("read offset overflows")?;
        self.file.read_exact_at(dst, at)?;
        Ok(())
    }
}

/// The kind of image its first bytes announce; `None` for raw.
fn sniff(head: &[u8]) -> Option<Kind> {
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Kind::RawZst)
    } else if head.starts_with(b"QFI\xfb") {
        Some(Kind::Vm(VmFormat::Qcow2))
    } else if head.starts_with(b"KDMV") {
        Some(Kind::Vm(VmFormat::Vmdk))
    } else if head.starts_with(b"vhdxfile") {
        Some(Kind::Vm(VmFormat::Vhdx))
    } else {
        None
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A reader that hashes what passes through it.
struct HashRead<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Holes are kept for runs of zeros this long and aligned.
const HOLE: usize = 64 << 10;

/// Decompresses a `.raw.zst` into a sparse unnamed temporary file.
fn decompress(path: &Path, file: File, len: u64, progress: bool) -> Result<Image> {
    let tmpdir = std::env::temp_dir();
    let out = tempfile::tempfile_in(&tmpdir).with_context(|| {
        format!(
            "creating a temporary file in {} (set TMPDIR)",
            tmpdir.display()
        )
    })?;
    let bar = if progress {
        crate::progress::Progress::new().bytes(len, "decompressing")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut input = HashRead {
        inner: bar.wrap_read(file),
        hasher: Sha256::new(),
    };
    let mut dec = zstd::stream::read::Decoder::new(&mut input)
        .with_context(|| format!("starting to decompress {}", path.display()))?;
    let mut raw_hash = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0u64;
    loop {
        let n = read_up_to(&mut dec, &mut buf)
            .with_context(|| format!("decompressing {}", path.display()))?;
        if n == 0 {
            break;
        }
        raw_hash.update(&buf[..n]);
        for chunk in buf[..n].chunks(HOLE) {
            if chunk.iter().any(|&b| b != 0) {
                out.write_all_at(chunk, at).with_context(|| {
                    format!(
                        "writing the decompressed image to {} (is it full?)",
                        tmpdir.display()
                    )
                })?;
            }
            at += chunk.len() as u64;
        }
    }
    drop(dec);
    out.set_len(at)
        .with_context(|| format!("sizing the decompressed image in {}", tmpdir.display()))?;
    bar.finish_and_clear();
    Ok(Image {
        path: path.to_path_buf(),
        kind: Kind::RawZst,
        file: out,
        _temp: None,
        file_sha256: Some(hex::encode(input.hasher.finalize())),
        raw_sha256: Some(hex::encode(raw_hash.finalize())),
    })
}

/// Refuses a VM disk whose bytes come partly from other files: a backing
/// file (qcow2, vmdk, vhdx can all name one) or a VMDK extent in another
/// file. Converting it would read those host files into the report.
pub fn refuse_other_files(path: &Path, format: VmFormat) -> Result<()> {
    let text = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", format.name()])
        .arg(path)
        .run_get_string()
        .with_context(|| format!("reading the header of {}", path.display()))?;
    let info: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("qemu-img info of {} is not JSON", path.display()))?;
    let backing = ["full-backing-filename", "backing-filename"]
        .iter()
        .find_map(|k| info[*k].as_str());
    if let Some(b) = backing {
        bail!(
            "{} is a {} disk with a backing file, {b}: its contents would be read from that \
             file on this machine; refusing (an airlock image has no backing file; flatten a \
             copy with qemu-img convert if you trust it)",
            path.display(),
            format.name()
        );
    }
    let own = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let own_full = std::fs::canonicalize(path).ok();
    let extents = info["format-specific"]["data"]["extents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in extents {
        let Some(f) = e["filename"].as_str() else {
            continue;
        };
        let is_own = Some(f) == own.as_deref()
            || Some(f) == path.to_str()
            || std::fs::canonicalize(f).ok() == own_full
            || std::fs::canonicalize(path.with_file_name(f)).ok() == own_full;
        if !is_own {
            bail!(
                "{} is a VMDK disk whose data lies in another file, {f}: refusing to read it \
                 (an airlock image keeps everything in one file)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Converts a VM disk to a sparse raw temporary file with qemu-img.
fn convert(path: &Path, format: VmFormat) -> Result<Image> {
    cmd::require_tool("qemu-img")?;
    refuse_other_files(path, format)?;
    let tmp = tempfile::Builder::new()
        .prefix("airlock-image-")
        .suffix(".raw")
        .tempfile()
        .context("creating a temporary file (set TMPDIR)")?
        .into_temp_path();
    Command::new("qemu-img")
        .args(["convert", "-q", "-f", format.name(), "-O", "raw"])
        .arg(path)
        .arg(&tmp)
        .run()
        .with_context(|| format!("converting {} to raw", path.display()))?;
    let file = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
    Ok(Image {
        path: path.to_path_buf(),
        kind: Kind::Vm(format),
        file,
        _temp: Some(tmp),
        file_sha256: None,
        raw_sha256: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn overlapping_partitions_are_named() {
        let part = |number: u32, start: u64, size: u64| crate::disk::gpt::PartitionInfo {
            number,
            label: format!("p{number}"),
            type_guid: uuid::Uuid::nil(),
            uuid: uuid::Uuid::nil(),
            start,
            size,
        };
        let mut g = GptInfo {
            disk_guid: uuid::Uuid::nil(),
            partitions: vec![part(1, 1 << 20, 1 << 20), part(2, 2 << 20, 4 << 20)],
        };
        assert!(overlaps(&g).is_empty());
        g.partitions.push(part(3, 5 << 20, 2 << 20));
        assert_eq!(
            overlaps(&g),
            ["partitions 2 (p2) and 3 (p3) overlap in bytes 5242880 to 6291456"]
        );
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some(Kind::RawZst));
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), Some(Kind::Vm(VmFormat::Qcow2)));
        assert_eq!(sniff(b"KDMV\x03\0\0\0"), Some(Kind::Vm(VmFormat::Vmdk)));
        assert_eq!(sniff(b"vhdxfile"), Some(Kind::Vm(VmFormat::Vhdx)));
        assert_eq!(sniff(&[0; 8]), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn zstd_is_decompressed_sparse_with_digests() {
        let d = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 8 << 20];
        raw[5] = 1;
        raw[(6 << 20) + 7] = 2;
        let zst = d.path().join("x.raw.zst");
        let mut enc = zstd::Encoder::new(File::create(&zst).unwrap(), 3).unwrap();
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap();
        let img = Image::open(&zst, false).unwrap();
        assert_eq!(img.kind, Kind::RawZst);
        assert_eq!(img.size().unwrap(), raw.len() as u64);
        let mut back = vec![0u8; raw.len()];
        img.file().read_exact_at(&mut back, 0).unwrap();
        assert!(back == raw);
        assert!(
            img.file().metadata().unwrap().blocks() * 512 < (1 << 20),
            "not sparse"
        );
        assert_eq!(img.raw_sha256.unwrap(), hex::encode(Sha256::digest(&raw)));
        let zbytes = std::fs::read(&zst).unwrap();
        assert_eq!(
            img.file_sha256.unwrap(),
            hex::encode(Sha256::digest(&zbytes))
        );
    }

    #[test]
    fn a_vm_disk_with_a_backing_file_is_refused_naming_it() {
        if crate::cmd::which("qemu-img").is_none() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host.raw");
        let mut secret = vec![0u8; 1 << 20];
        secret[..6].copy_from_slice(b"secret");
        std::fs::write(&host, &secret).unwrap();
        let evil = d.path().join("evil.qcow2");
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&host)
            .arg(&evil)
            .run()
            .unwrap();
        let err = format!("{:#}", Image::open(&evil, false).unwrap_err());
        assert!(
            err.contains("with a backing file, ") && err.contains(host.to_str().unwrap()),
            "{err}"
        );
        // The same disk flattened is read.
        let flat = d.path().join("flat.qcow2");
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "qcow2"])
            .arg(&evil)
            .arg(&flat)
            .run()
            .unwrap();
        let img = Image::open(&flat, false).unwrap();
        let mut head = [0u8; 6];
        img.file().read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"secret");
    }

    #[test]
    fn pipes_and_endless_files_are_refused_without_waiting() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo.raw");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(format!("{:#}", Image::open(&p, false).unwrap_err()));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a named pipe hung");
        assert!(
            err.contains("it is a named pipe, not a regular file or a block device"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            read_small_file(Path::new("/dev/zero"), SMALL_FILE_LIMIT, "manifest").unwrap_err()
        );
        assert!(
            err.contains("it is a character device, not a regular file"),
            "{err}"
        );
        let big = d.path().join("big.json");
        File::create(&big)
            .unwrap()
            .set_len(SMALL_FILE_LIMIT + 1)
            .unwrap();
        let err = format!(
            "{:#}",
            read_small_file(&big, SMALL_FILE_LIMIT, "manifest").unwrap_err()
        );
        assert!(
            err.contains("more than the 64 MiB a manifest can be"),
            "{err}"
        );
        let ok = d.path().join("ok.json");
        std::fs::write(&ok, b"{}").unwrap();
        assert_eq!(
            read_small_file(&ok, SMALL_FILE_LIMIT, "manifest").unwrap(),
            b"{}"
        );
    }

    #[test]
    fn raw_is_used_in_place_and_junk_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.raw");
        std::fs::write(&p, b"plain").unwrap();
        let img = Image::open(&p, false).unwrap();
        assert_eq!((img.kind, img.size().unwrap()), (Kind::Raw, 5));
        let err = format!("{:#}", Image::open(d.path(), false).unwrap_err());
        assert!(
            err.contains("neither a disk image file nor a block device"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Image::open(&d.path().join("missing"), false).unwrap_err()
        );
        assert!(
            err.contains("opening image") && err.contains("missing"),
            "{err}"
        );
    }
}
