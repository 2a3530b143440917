// SPDX-License-Identifier: Apache-2.0
//! The EFI System Partition: FAT32 written in process with fatfs.
//!
//! The filesystem is formatted inside a byte range of the disk image (the
//! ESP partition) and never touches a byte outside it. Everything that
//! could vary between builds is pinned: the volume ID and label come from
//! the caller, files are written in sorted order, and every timestamp is
//! the build epoch.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use fscommon::{BufStream, StreamSlice};

/// Where the bytes of an ESP file come from.
#[derive(Debug, Clone)]
pub enum EspSource {
    /// A file on the build host.
    Host(PathBuf),
    /// Bytes rendered in memory.
    Bytes(Vec<u8>),
}

/// One file to put on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// Path inside the ESP, '/'-separated, no leading slash
    /// (`EFI/BOOT/BOOTX64.EFI`). Parent directories are created.
    pub path: String,
    /// The content.
    pub source: EspSource,
}

/// Filesystem identity and time.
#[derive(Debug, Clone)]
pub struct FatOpts {
    /// Volume label, at most 11 characters of upper-case ASCII.
    pub label: String,
    /// Volume serial number.
    pub volume_id: u32,
    /// Seconds since 1970 (UTC) used for every timestamp. FAT stores local
    /// time without a zone from 1980 to 2107 with 2-second resolution; the
    /// epoch is taken as UTC and clamped into that range.
    pub epoch: i64,
}

/// The largest file FAT can hold.
const MAX_FILE: u64 = u32::MAX as u64;

/// The disk as fatfs sees it: the partition's byte range of the image.
type Volume<'a> = BufStream<StreamSlice<&'a File>>;

/// Formats FAT32 in `[offset, offset + size)` of `disk` and copies `files`
/// into it.
///
/// The range must already exist in the file and read as zeros (a fresh
/// sparse image): formatting is quick, so free clusters are not rewritten.
pub fn make_esp(
    disk: &File,
    offset: u64,
    size: u64,
    opts: &FatOpts,
    files: &[EspFile],
) -> Result<()> {
    let label = volume_label(&opts.label)?;
    let files = plan_files(files)?;
    let mut volume = open_volume(disk, offset, size)?;
    let where_ = format!("the ESP ({} bytes at offset {offset})", size);

    let format = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_sector(512)
        .total_sectors((size / 512) as u32)
        .volume_id(opts.volume_id)
        .volume_label(label);
    fatfs::format_volume(&mut volume, format).with_context(|| {
        format!(
            "formatting FAT32 in {where_}: FAT32 needs at least {} MiB",
            crate::disk::layout::MIN_ESP >> 20
        )
    })?;
    volume
        .seek(SeekFrom::Start(0))
        .context("rewinding the ESP")?;

    let time: &'static EpochTime = Box::leak(Box::new(EpochTime(dos_date_time(opts.epoch))));
    let fs_opts = FsOptions::new()
        .update_accessed_date(false)
        .time_provider(time);
    let fs = FileSystem::new(&mut volume, fs_opts)
        .with_context(|| format!("opening the new FAT32 in {where_}"))?;

    ensure!(
        fs.fat_type() == FatType::Fat32,
        "{where_} is too small for FAT32 (fatfs chose {:?}); it needs at least {} MiB",
        fs.fat_type(),
        crate::disk::layout::MIN_ESP >> 20
    );
    check_space(&fs, &files, size)?;
    write_files(&fs, &files)?;
    fs.unmount()
        .with_context(|| format!("finishing the FAT32 in {where_}"))?;
    volume.flush().context("flushing the ESP to the image")?;
    drop(volume);
    fix_dot_entries(disk, offset).with_context(|| format!("tidying directories in {where_}"))
}

fn write_files<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    files: &[(&str, &EspSource, u64)],
) -> Result<()> {
    let root = fs.root_dir();
    for (path, source, _) in files {
        if let Some((parent, _)) = path.rsplit_once('/') {
            let mut dir = root.clone();
            for name in parent.split('/') {
                dir = dir
                    .create_dir(name)
                    .with_context(|| format!("creating directory {parent} in the ESP"))?;
            }
        }
        let mut out = root
            .create_file(path)
            .with_context(|| format!("creating {path} in the ESP"))?;
        out.truncate()
            .with_context(|| format!("truncating {path} in the ESP"))?;
        let copied = match source {
            EspSource::Bytes(bytes) => out.write_all(bytes),
            EspSource::Host(host) => {
                let mut src = File::open(host)
                    .with_context(|| format!("opening {} for {path} in the ESP", host.display()))?;
                io::copy(&mut src, &mut out).map(drop)
            }
        };
        copied.with_context(|| format!("writing {path} into the ESP"))?;
        out.flush()
            .with_context(|| format!("flushing {path} in the ESP"))?;
    }
    Ok(())
}

/// Reads one file of the ESP at `[offset, offset + size)` of `disk`.
pub fn read_file(disk: &File, offset: u64, size: u64, path: &str) -> Result<Vec<u8>> {
    let mut volume = open_volume(disk, offset, size)?;
    let fs = FileSystem::new(&mut volume, FsOptions::new())
        .with_context(|| format!("opening the FAT filesystem at offset {offset}"))?;
    let mut file = fs
        .root_dir()
        .open_file(path.trim_start_matches('/'))
        .with_context(|| format!("opening {path} in the ESP"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("reading {path} from the ESP"))?;
    Ok(bytes)
}

/// Lists every file (not directory) of the ESP with its size, sorted by path.
pub fn list(disk: &File, offset: u64, size: u64) -> Result<Vec<(String, u64)>> {
    let mut volume = open_volume(disk, offset, size)?;
    let fs = FileSystem::new(&mut volume, FsOptions::new())
        .with_context(|| format!("opening the FAT filesystem at offset {offset}"))?;
    let mut out = Vec::new();
    let mut dirs = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = dirs.pop() {
        for entry in dir.iter() {
            let entry = entry.with_context(|| format!("listing /{prefix} in the ESP"))?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if entry.is_dir() {
                dirs.push((format!("{path}/"), entry.to_dir()));
            } else {
                out.push((path, entry.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn open_volume(disk: &File, offset: u64, size: u64) -> Result<Volume<'_>> {
    ensure!(
        offset % 512 == 0 && size % 512 == 0,
        "ESP range {offset}+{size} is not whole 512-byte sectors"
    );
    ensure!(
        size / 512 <= u64::from(u32::MAX),
        "ESP of {size} bytes is too large for FAT32"
    );
    let end = offset.checked_add(size).context("ESP range overflows")?;
    // Seeking to the end gives the real size of a block device too, whose
    // metadata length is 0.
    let mut seeker = disk;
    let len = seeker
        .seek(SeekFrom::End(0))
        .context("reading the disk image size")?;
    ensure!(
        len >= end,
        "the disk image is {len} bytes but the ESP ends at byte {end}; size the image first"
    );
    let slice = StreamSlice::new(disk, offset, end)
        .with_context(|| format!("seeking to the ESP at offset {offset}"))?;
    Ok(BufStream::new(slice))
}

/// Validates and sorts the file list; returns (path, source, length).
fn plan_files(files: &[EspFile]) -> Result<Vec<(&str, &EspSource, u64)>> {
    let mut planned = Vec::with_capacity(files.len());
    for f in files {
        check_path(&f.path).with_context(|| format!("ESP path {:?}", f.path))?;
        let len = match &f.source {
            EspSource::Bytes(b) => b.len() as u64,
            EspSource::Host(p) => std::fs::metadata(p)
                .with_context(|| format!("reading {} for {} in the ESP", p.display(), f.path))?
                .len(),
        };
        ensure!(
            len <= MAX_FILE,
            "{} is {len} bytes; FAT32 files end at 4 GiB - 1",
            f.path
        );
        planned.push((f.path.as_str(), &f.source, len));
    }
    planned.sort_by(|a, b| a.0.cmp(b.0));
    // FAT names are case-insensitive, so "EFI/BOOT" and "efi/boot" collide;
    // a file may not also be a directory.
    let mut seen = std::collections::BTreeMap::new();
    for (path, _, _) in &planned {
        let key = path.to_uppercase();
        if let Some(other) = seen.insert(key.clone(), *path) {
            bail!("ESP paths {other} and {path} name the same file (FAT ignores case)");
        }
    }
    for (key, path) in &seen {
        let mut prefix = key.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if let Some(file) = seen.get(parent) {
                bail!("ESP path {file} is a file but {path} needs it to be a directory");
            }
            prefix = parent;
        }
    }
    Ok(planned)
}

fn check_path(path: &str) -> Result<()> {
    ensure!(!path.is_empty(), "is empty");
    ensure!(
        !path.starts_with('/'),
        "starts with '/'; ESP paths are relative"
    );
    for name in path.split('/') {
        ensure!(!name.is_empty(), "has an empty component");
        ensure!(name != "." && name != "..", "contains {name:?}");
        ensure!(
            !name.ends_with('.') && !name.ends_with(' '),
            "component {name:?} ends with '.' or ' ', which FAT drops"
        );
        ensure!(
            name.len() <= 255,
            "component {name:?} is longer than 255 bytes"
        );
        // The characters fatfs 0.3 accepts in a long name.
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || ('\u{80}'..='\u{ffff}').contains(&c)
                || "$%'-_@~`!(){}. +,;=[]^#&".contains(c)
        };
        if let Some(c) = name.chars().find(|&c| !allowed(c)) {
            bail!("component {name:?} contains {c:?}, which FAT does not allow");
        }
    }
    Ok(())
}

/// Pads a label to the 11 bytes FAT stores; empty means "NO NAME".
fn volume_label(label: &str) -> Result<[u8; 11]> {
    let label = if label.is_empty() { "NO NAME" } else { label };
    ensure!(
        label.len() <= 11,
        "ESP label {label:?} is longer than 11 characters"
    );
    if let Some(c) = label.chars().find(|&c| {
        !(c.is_ascii_uppercase() || c.is_ascii_digit() || " !#$%&'()-@^_`{}~".contains(c))
    }) {
        bail!("ESP label {label:?} contains {c:?}; use upper-case letters, digits, '-' or '_'");
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

/// Repairs the "." and ".." entries fatfs 0.3.6 writes.
///
/// FAT wants "." and ".." as the first two slots of every directory, and
/// the ".." of a top-level directory to name the root as cluster 0. fatfs
/// 0.3.6 puts a long-name entry in front of each of them and stores the
/// root's real cluster in "..", so fsck.fat would "repair" every directory.
/// This walks the finished volume (after fatfs has unmounted, with
/// positional I/O) and rewrites each directory with those long-name entries
/// dropped (later slots move up, the tail is zeroed) and ".." fixed.
fn fix_dot_entries(disk: &File, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;

    let mut bpb = [0u8; 512];
    disk.read_exact_at(&mut bpb, offset)
        .context("reading the boot sector")?;
    let le16 = |at: usize| u64::from(u16::from_le_bytes([bpb[at], bpb[at + 1]]));
    let le32 = |at: usize| u32::from_le_bytes(bpb[at..at + 4].try_into().unwrap());
    let sector = le16(11);
    let cluster_size = sector * u64::from(bpb[13]);
    let fat_start = offset + le16(14) * sector;
    let fat_sectors = u64::from(le32(36));
    let data_start = fat_start + u64::from(bpb[16]) * fat_sectors * sector;
    let max_cluster = (fat_sectors * sector / 4) as u32;
    let cluster_at = |c: u32| data_start + u64::from(c - 2) * cluster_size;

    let chain = |first: u32| -> Result<Vec<u32>> {
        let mut out = vec![first];
        let mut c = first;
        loop {
            let mut e = [0u8; 4];
            disk.read_exact_at(&mut e, fat_start + u64::from(c) * 4)
                .context("reading the FAT")?;
            c = u32::from_le_bytes(e) & 0x0fff_ffff;
            if c >= 0x0fff_fff8 {
                return Ok(out);
            }
            ensure!(
                (2..max_cluster).contains(&c) && out.len() < max_cluster as usize,
                "broken cluster chain at cluster {c}"
            );
            out.push(c);
        }
    };

    let root = le32(44);
    let mut todo = vec![(root, root)]; // (directory, its parent)
    while let Some((first, parent)) = todo.pop() {
        let clusters = chain(first)?;
        let mut raw = vec![0u8; clusters.len() * cluster_size as usize];
        for (buf, &c) in raw.chunks_mut(cluster_size as usize).zip(&clusters) {
            disk.read_exact_at(buf, cluster_at(c))
                .context("reading a directory")?;
        }
        let mut fixed: Vec<u8> = Vec::with_capacity(raw.len());
        let mut pending: Vec<&[u8]> = Vec::new();
        for slot in raw.chunks(32) {
            if slot[0] == 0x00 {
                break; // end of directory
            }
            if slot[11] == 0x0f && slot[0] != 0xe5 {
                pending.push(slot); // long-name part, belongs to the next short entry
                continue;
            }
            let name = &slot[..11];
            if name == b".          " || name == b"..         " {
                pending.clear();
                fixed.extend_from_slice(slot);
                if name == b"..         " && parent == root {
                    // ".." of a top-level directory names the root as cluster 0.
                    let at = fixed.len() - 32;
                    fixed[at + 20..at + 22].fill(0);
                    fixed[at + 26..at + 28].fill(0);
                }
                continue;
            }
            for p in pending.drain(..) {
                fixed.extend_from_slice(p);
            }
            fixed.extend_from_slice(slot);
            if slot[0] != 0xe5 && slot[11] & 0x18 == 0x10 {
                let hi = u32::from(u16::from_le_bytes([slot[20], slot[21]]));
                let lo = u32::from(u16::from_le_bytes([slot[26], slot[27]]));
                todo.push((hi << 16 | lo, first));
            }
        }
        if raw.starts_with(&fixed) {
            continue; // nothing dropped
        }
        fixed.resize(raw.len(), 0);
        for (buf, &c) in fixed.chunks(cluster_size as usize).zip(&clusters) {
            disk.write_all_at(buf, cluster_at(c))
                .context("rewriting a directory")?;
        }
    }
    Ok(())
}

/// Fails early, with sizes, when the files cannot fit.
fn check_space<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    files: &[(&str, &EspSource, u64)],
    size: u64,
) -> Result<()> {
    let stats = fs.stats().context("reading ESP free space")?;
    let cluster = u64::from(stats.cluster_size());
    let dirs: std::collections::BTreeSet<&str> = files
        .iter()
        .flat_map(|(p, _, _)| p.match_indices('/').map(move |(i, _)| &p[..i]))
        .collect();
    let need_clusters: u64 =
        files.iter().map(|f| f.2.div_ceil(cluster)).sum::<u64>() + dirs.len() as u64;
    let free = u64::from(stats.free_clusters());
    if need_clusters > free {
        let data: u64 = files.iter().map(|f| f.2).sum();
        bail!(
            "the ESP files need {:.1} MiB ({data} bytes in {} files) but the {} MiB ESP has only \
             {:.1} MiB free; make the ESP larger",
            (need_clusters * cluster) as f64 / 1048576.0,
            files.len(),
            size >> 20,
            (free * cluster) as f64 / 1048576.0
        );
    }
    Ok(())
}

/// fatfs 0.3 asks a `&'static TimeProvider` for "now"; this one always
/// answers the build epoch. One is leaked per `make_esp` call (a few bytes).
#[derive(Debug)]
struct EpochTime(fatfs::DateTime);

impl fatfs::TimeProvider for EpochTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// 1980-01-01T00:00:00Z, the first FAT timestamp.
const DOS_MIN: i64 = 315_532_800;
/// 2107-12-31T23:59:58Z, the last FAT timestamp.
const DOS_MAX: i64 = 4_354_819_198;

/// Converts seconds since 1970 (UTC) to a FAT date and time, clamped to
/// the range FAT can store.
fn dos_date_time(epoch: i64) -> fatfs::DateTime {
    let t = epoch.clamp(DOS_MIN, DOS_MAX);
    let (year, month, day) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400) as u32;
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`). Only called for 1980..=2107.
fn civil_from_days(days: i64) -> (u16, u16, u16) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u16, month as u16, day as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::CommandRunExt;
    use crate::disk::layout::MIN_ESP;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

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

    fn opts() -> FatOpts {
        FatOpts {
            label: "AIRLOCK-ESP".into(),
            volume_id: 0x1234_abcd,
            epoch: 1_700_000_000,
        }
    }

    /// Pseudo-random bytes, so a misplaced cluster shows.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        files: Vec<EspFile>,
        want: Vec<(String, Vec<u8>)>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("systemd-bootx64.efi");
        let host_bytes = noise(1_000_003, 7);
        std::fs::write(&host, &host_bytes).unwrap();
        let mut want = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), noise(300 * 1024, 1)),
            (
                "loader/loader.conf".to_string(),
                b"timeout 0\ndefault airlock.conf\n".to_vec(),
            ),
            (
                "loader/entries/airlock.conf".to_string(),
                b"title Airlock\n".to_vec(),
            ),
            (
                "EFI/Linux/a fairly long file name.with.dots".to_string(),
                noise(5000, 3),
            ),
            ("EMPTY".to_string(), Vec::new()),
        ];
        let mut files: Vec<EspFile> = want
            .iter()
            .map(|(p, b)| EspFile {
                path: p.clone(),
                source: EspSource::Bytes(b.clone()),
            })
            .collect();
        files.push(EspFile {
            path: "EFI/systemd/systemd-bootx64.efi".into(),
            source: EspSource::Host(host),
        });
        want.push(("EFI/systemd/systemd-bootx64.efi".into(), host_bytes));
        want.sort();
        Fixture {
            _dir: dir,
            files,
            want,
        }
    }

    /// An image with `pad` bytes of 0xee around the ESP range.
    fn image(offset: u64, size: u64, pad: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(offset + size + pad).unwrap();
        f.as_file()
            .write_all_at(&vec![0xee; offset as usize], 0)
            .unwrap();
        f.as_file()
            .write_all_at(&vec![0xee; pad as usize], offset + size)
            .unwrap();
        f
    }

    /// Copies `[offset, offset + len)` of `src` into a new sparse file.
    fn extract(src: &File, offset: u64, len: u64) -> tempfile::NamedTempFile {
        let out = tempfile::NamedTempFile::new().unwrap();
        out.as_file().set_len(len).unwrap();
        let mut buf = vec![0; MIB as usize];
        let mut at = 0;
        while at < len {
            let n = buf.len().min((len - at) as usize);
            src.read_exact_at(&mut buf[..n], offset + at).unwrap();
            if buf[..n].iter().any(|&b| b != 0) {
                out.as_file().write_all_at(&buf[..n], at).unwrap();
            }
            at += n as u64;
        }
        out
    }

    /// `fsck.fat -n` must exit 0 without complaints about the volume.
    fn fsck(file: &std::path::Path) {
        if !have("fsck.fat") {
            return;
        }
        // Through sh so the report (on stdout) survives a non-zero exit.
        let out = Command::new("sh")
            .args(["-c", "fsck.fat -n -v \"$1\" 2>&1; echo \"exit=$?\"", "sh"])
            .arg(file)
            .run_get_string()
            .unwrap();
        assert!(out.ends_with("exit=0\n"), "fsck.fat -n -v:\n{out}");
        assert!(out.contains("2 FATs, 32 bit entries"), "not FAT32:\n{out}");
        for bad in [
            "differ",
            "dirty",
            "Label",
            "invalid",
            "Free cluster summary wrong",
        ] {
            assert!(!out.contains(bad), "fsck.fat -n -v reports {bad:?}:\n{out}");
        }
    }

    #[test]
    fn builds_reads_back_and_passes_fsck() {
        let fx = fixture();
        for offset in [0, MIB] {
            let size = 128 * MIB;
            let pad = if offset == 0 { 0 } else { MIB };
            let img = image(offset, size, pad);
            make_esp(img.as_file(), offset, size, &opts(), &fx.files).unwrap();

            let listed = list(img.as_file(), offset, size).unwrap();
            let want: Vec<_> = fx
                .want
                .iter()
                .map(|(p, b)| (p.clone(), b.len() as u64))
                .collect();
            assert_eq!(listed, want, "offset {offset}");
            for (path, bytes) in &fx.want {
                let got = read_file(img.as_file(), offset, size, path).unwrap();
                assert!(&got == bytes, "offset {offset}: {path} differs");
            }

            // Nothing outside the range changed.
            let mut buf = vec![0; (offset + pad) as usize];
            img.as_file()
                .read_exact_at(&mut buf[..offset as usize], 0)
                .unwrap();
            img.as_file()
                .read_exact_at(&mut buf[offset as usize..], offset + size)
                .unwrap();
            assert!(
                buf.iter().all(|&b| b == 0xee),
                "offset {offset}: bytes outside the ESP changed"
            );

            if offset == 0 {
                fsck(img.path());
            } else {
                fsck(extract(img.as_file(), offset, size).path());
            }
        }
    }

    #[test]
    fn reproducible() {
        let fx = fixture();
        let build = |o: &FatOpts, files: &[EspFile]| {
            let img = image(MIB, 64 * MIB, 0);
            make_esp(img.as_file(), MIB, 64 * MIB, o, files).unwrap();
            std::fs::read(img.path()).unwrap()
        };
        let a = build(&opts(), &fx.files);
        // Input order does not matter either: files are written sorted.
        let mut reversed = fx.files.clone();
        reversed.reverse();
        let b = build(&opts(), &reversed);
        assert!(a == b, "two builds differ");
        let c = build(
            &FatOpts {
                volume_id: 1,
                ..opts()
            },
            &fx.files,
        );
        assert!(a != c, "volume id had no effect");
    }

    #[test]
    fn timestamps_are_the_epoch() {
        let img = image(0, 64 * MIB, 0);
        let files = [EspFile {
            path: "A/B.TXT".into(),
            source: EspSource::Bytes(b"x".to_vec()),
        }];
        make_esp(
            img.as_file(),
            0,
            64 * MIB,
            &FatOpts {
                epoch: 951_827_697,
                ..opts()
            },
            &files,
        )
        .unwrap();
        let mut v = open_volume(img.as_file(), 0, 64 * MIB).unwrap();
        let fs = FileSystem::new(&mut v, FsOptions::new()).unwrap();
        let want = dos_date_time(951_827_697);
        let dir = fs.root_dir();
        let a = dir
            .iter()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "A")
            .unwrap();
        let b = a
            .to_dir()
            .iter()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "B.TXT")
            .unwrap();
        for e in [&a, &b] {
            assert_eq!(e.created(), want, "{}", e.file_name());
            assert_eq!(e.accessed(), want.date, "{}", e.file_name());
            // Modification times have 2-second resolution: 56.x s.
            let m = e.modified();
            assert_eq!(
                (m.date, m.time.hour, m.time.min, m.time.sec),
                (want.date, 12, 34, 56)
            );
        }
        assert_eq!(fs.volume_id(), 0x1234_abcd);
        assert_eq!(fs.volume_label(), "AIRLOCK-ESP");
    }

    #[test]
    fn dot_entries_come_first() {
        let img = image(0, 64 * MIB, 0);
        let files = [EspFile {
            path: "A/B/C.TXT".into(),
            source: EspSource::Bytes(b"c".to_vec()),
        }];
        make_esp(img.as_file(), 0, 64 * MIB, &opts(), &files).unwrap();
        let raw = std::fs::read(img.path()).unwrap();
        let cluster = 512; // fatfs's choice for FAT32 up to 260 MiB
        let mut dirs = Vec::new();
        for (i, slot) in raw.chunks(32).enumerate() {
            if &slot[..11] != b".          " || slot[11] != 0x10 {
                continue;
            }
            assert_eq!(
                i * 32 % cluster,
                0,
                "'.' is not the first slot of its directory"
            );
            let dotdot = &raw[(i + 1) * 32..(i + 2) * 32];
            assert_eq!(&dotdot[..11], b"..         ", "'..' does not follow '.'");
            let parent = u32::from_le_bytes([dotdot[26], dotdot[27], dotdot[20], dotdot[21]]);
            let this = u32::from_le_bytes([slot[26], slot[27], slot[20], slot[21]]);
            dirs.push((parent, this));
        }
        // A's parent is the root, which ".." names as cluster 0; B's is A.
        dirs.sort();
        assert!(matches!(dirs[..], [(0, a), (p, _)] if p == a), "{dirs:?}");
        assert_eq!(
            read_file(img.as_file(), 0, 64 * MIB, "A/B/C.TXT").unwrap(),
            b"c"
        );
    }

    #[test]
    fn dos_times() {
        // (epoch, y, mo, d, h, mi, s)
        let cases: &[(i64, [u16; 6])] = &[
            (0, [1980, 1, 1, 0, 0, 0]),
            (-1, [1980, 1, 1, 0, 0, 0]),
            (DOS_MIN, [1980, 1, 1, 0, 0, 0]),
            (951_827_696, [2000, 2, 29, 12, 34, 56]),
            (1_700_000_000, [2023, 11, 14, 22, 13, 20]),
            (4_102_444_800, [2100, 1, 1, 0, 0, 0]),
            (DOS_MAX, [2107, 12, 31, 23, 59, 58]),
            (i64::MAX, [2107, 12, 31, 23, 59, 58]),
        ];
        for &(epoch, [y, mo, d, h, mi, s]) in cases {
            let t = dos_date_time(epoch);
            assert_eq!(
                [
                    t.date.year,
                    t.date.month,
                    t.date.day,
                    t.time.hour,
                    t.time.min,
                    t.time.sec
                ],
                [y, mo, d, h, mi, s],
                "epoch {epoch}"
            );
        }
    }

    #[test]
    fn too_large_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("initrd");
        File::create(&big).unwrap().set_len(200 * MIB).unwrap();
        let img = image(0, 128 * MIB, 0);
        let files = [EspFile {
            path: "EFI/Linux/initrd".into(),
            source: EspSource::Host(big),
        }];
        let msg = format!(
            "{:#}",
            make_esp(img.as_file(), 0, 128 * MIB, &opts(), &files).unwrap_err()
        );
        assert!(
            msg.contains("the ESP files need 200.0 MiB")
                && msg.contains("the 128 MiB ESP has only")
                && msg.contains("make the ESP larger"),
            "{msg}"
        );
    }

    #[test]
    fn layout_minimum_is_the_fat32_minimum() {
        let img = image(0, MIN_ESP, 0);
        make_esp(img.as_file(), 0, MIN_ESP, &opts(), &[]).unwrap();
        let mut v = open_volume(img.as_file(), 0, MIN_ESP).unwrap();
        assert_eq!(
            FileSystem::new(&mut v, FsOptions::new())
                .unwrap()
                .fat_type(),
            FatType::Fat32
        );
        drop(v);
        fsck(img.path());

        let small = MIN_ESP - MIB;
        let img = image(0, small, 0);
        let msg = format!(
            "{:#}",
            make_esp(img.as_file(), 0, small, &opts(), &[]).unwrap_err()
        );
        assert!(
            msg.contains("too small for FAT32") && msg.contains("at least 33 MiB"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let bytes = |p: &str| EspFile {
            path: p.into(),
            source: EspSource::Bytes(vec![1]),
        };
        // (name, files, label, message fragment)
        let cases: Vec<(&str, Vec<EspFile>, &str, &str)> = vec![
            (
                "leading slash",
                vec![bytes("/EFI/x")],
                "ESP",
                "\"/EFI/x\": starts with '/'",
            ),
            (
                "empty component",
                vec![bytes("EFI//x")],
                "ESP",
                "has an empty component",
            ),
            ("dot dot", vec![bytes("EFI/../x")], "ESP", "contains \"..\""),
            (
                "trailing slash",
                vec![bytes("EFI/")],
                "ESP",
                "has an empty component",
            ),
            ("empty", vec![bytes("")], "ESP", "is empty"),
            ("colon", vec![bytes("a:b")], "ESP", "contains ':'"),
            ("trailing dot", vec![bytes("a.")], "ESP", "ends with '.'"),
            (
                "case clash",
                vec![bytes("EFI/BOOT/X"), bytes("efi/boot/x")],
                "ESP",
                "name the same file",
            ),
            (
                "file as dir",
                vec![bytes("EFI"), bytes("EFI/BOOT/X")],
                "ESP",
                "EFI is a file but EFI/BOOT/X",
            ),
            (
                "missing host file",
                vec![EspFile {
                    path: "K".into(),
                    source: EspSource::Host("/nonexistent/k".into()),
                }],
                "ESP",
                "reading /nonexistent/k for K in the ESP",
            ),
            ("label too long", vec![], "AIRLOCK-ESP1", "longer than 11"),
            ("label lower case", vec![], "esp", "contains 'e'"),
        ];
        for (name, files, label, want) in cases {
            let img = image(0, 64 * MIB, 0);
            let o = FatOpts {
                label: label.into(),
                ..opts()
            };
            let msg = format!(
                "{:#}",
                make_esp(img.as_file(), 0, 64 * MIB, &o, &files).expect_err(name)
            );
            assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn range_must_exist() {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(32 * MIB).unwrap();
        let msg = format!(
            "{:#}",
            make_esp(img.as_file(), MIB, 64 * MIB, &opts(), &[]).unwrap_err()
        );
        assert!(msg.contains("size the image first"), "{msg}");
        let msg = format!(
            "{:#}",
            read_file(img.as_file(), 0, 32 * MIB, "x").unwrap_err()
        );
        assert!(
            msg.contains("opening the FAT filesystem at offset 0"),
            "{msg}"
        );
    }
}
