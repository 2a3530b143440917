// SPDX-License-Identifier: Apache-2.0
//! What the target is, whether it is safe to write, and how to describe it
//! to the person about to erase it.
//!
//! Everything is read from sysfs, /proc/self/mountinfo, /proc/swaps and the
//! udev database, through [`Host`], whose paths tests point at a fake tree.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the host's device facts live.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) sys: PathBuf,
    pub(crate) mountinfo: PathBuf,
    pub(crate) swaps: PathBuf,
    pub(crate) udev: PathBuf,
}

impl Host {
    pub(crate) fn real() -> Host {
        Host {
            sys: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
            udev: "/run/udev/data".into(),
        }
    }

    fn class(&self, name: &str) -> PathBuf {
        self.sys.join("class/block").join(name)
    }

    fn by_devno(&self, (major, minor): (u32, u32)) -> PathBuf {
        self.sys.join(format!("dev/block/{major}:{minor}"))
    }

    fn attr(&self, name: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.class(name).join(file))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn udev_props(&self, devno: (u32, u32)) -> Vec<(String, String)> {
        let p = self.udev.join(format!("b{}:{}", devno.0, devno.1));
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("E:")?
                    .split_once('=')
                    .map(|(k, v)| (k.into(), v.into()))
            })
            .collect()
    }
}

/// What DEVICE turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Does not exist yet: a regular file is created.
    NewFile,
    /// An existing regular file of this many bytes.
    File(u64),
    /// A block device: its kernel name and device number.
    Block(String, (u32, u32)),
}

/// Finds out what `path` is (following symlinks such as /dev/disk/by-id).
pub(crate) fn identify(host: &Host, path: &Path) -> Result<Kind> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail!(
                    "{} does not exist, nor does the folder to create it in",
                    path.display()
                );
            }
            // A device that is not plugged in must not become a file in
            // /dev (in RAM, and found there by the next write).
            let real = fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
            if real.starts_with("/dev") {
                bail!(
                    "{} does not exist: no such device (is the stick plugged in? lsblk lists the disks)",
                    path.display()
                );
            }
            check_not_pseudo(parent)?;
            return Ok(Kind::NewFile);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        check_not_pseudo(path)?;
        return Ok(Kind::File(meta.len()));
    }
    if !ft.is_block_device() {
        bail!(
            "{} is neither a block device nor a regular file",
            path.display()
        );
    }
    let (name, devno) = block_name(host, path, meta.rdev())?;
    Ok(Kind::Block(name, devno))
}

/// Refuses a regular file that something is using as a disk: the backing
/// file of a loop device (whose filesystem may be mounted: writing under
/// it corrupts it), or a file another program holds a lock on (QEMU locks
/// the disk images it runs). The locks taken to find out stay with `file`
/// while it is open, so such a program cannot start on it meanwhile.
pub(crate) fn check_file_in_use(host: &Host, path: &Path, file: &fs::File) -> Result<()> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading the open {}", path.display()))?;
    let id = (meta.dev(), meta.ino());
    let mut loops: Vec<String> = fs::read_dir(host.sys.join("class/block"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("loop"))
                .collect()
        })
        .unwrap_or_default();
    loops.sort();
    for name in loops {
        let Some(backing) = host.attr(&name, "loop/backing_file") else {
            continue;
        };
        let same = fs::metadata(&backing).is_ok_and(|m| (m.dev(), m.ino()) == id);
        if same {
            bail!(
                "refusing to write to {}: it is the backing file of /dev/{name} (its filesystem \
                 may be mounted, and writing under it would corrupt it); unmount it and detach \
                 the loop device first (losetup -d /dev/{name})",
                path.display()
            );
        }
    }
    let held = |e: rustix::io::Errno| {
        matches!(e, rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::ACCESS)
    };
    use rustix::fs::FlockOperation::NonBlockingLockExclusive;
    let locked = match rustix::fs::flock(file, NonBlockingLockExclusive) {
        Err(e) if held(e) => Some("flock"),
        _ => match rustix::fs::fcntl_lock(file, NonBlockingLockExclusive) {
            Err(e) if held(e) => Some("fcntl"),
            _ => None,
        },
    };
    if let Some(kind) = locked {
        bail!(
            "refusing to write to {}: another program holds a lock on it ({kind}; a running \
             VM, for one, locks its disk image); stop it first (fuser -v {} names it)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Refuses a path on a filesystem that only looks like files: /proc and
/// /sys (`/proc/self/mem` is a "regular file" that fails mid-write).
pub(crate) fn check_not_pseudo(path: &Path) -> Result<()> {
    let Ok(st) = rustix::fs::statfs(path) else {
        return Ok(());
    };
    let kind = match st.f_type as u64 {
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x0027_e0eb => "cgroup",
        0x6367_7270 => "cgroup2",
        0x7363_6673 => "securityfs",
        0xcafe_4a11 => "bpf",
        0x6e73_6673 => "nsfs",
        _ => return Ok(()),
    };
    bail!(
        "refusing to write to {}: it is on a {kind} pseudo-filesystem, not a disk or a file on \
         one; name the stick (/dev/sdX) or a file on a real filesystem",
        path.display()
    )
}

/// The kernel name and device number of the block device open as `file`:
/// what the checks and the prompt describe is what the descriptor reaches,
/// whatever the path has come to point at since.
pub(crate) fn identify_fd(
    host: &Host,
    path: &Path,
    file: &fs::File,
) -> Result<(String, (u32, u32))> {
    let meta = file
        .metadata()
        .with_context(|| format!("reading the open {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is no longer a block device", path.display());
    }
    block_name(host, path, meta.rdev())
}

fn block_name(host: &Host, path: &Path, dev: u64) -> Result<(String, (u32, u32))> {
    let devno = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let dir = host.by_devno(devno);
    let real = fs::canonicalize(&dir).with_context(|| {
        format!(
            "finding {} ({}:{}) in {}",
            path.display(),
            devno.0,
            devno.1,
            dir.display()
        )
    })?;
    Ok((file_name(&real), devno))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parse_devno(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A disk and its partitions: (kernel name, device number).
fn members(host: &Host, disk: &str) -> Vec<(String, (u32, u32))> {
    let mut out = Vec::new();
    let dir = fs::canonicalize(host.class(disk)).unwrap_or_else(|_| host.class(disk));
    if let Some(d) = host.attr(disk, "dev").as_deref().and_then(parse_devno) {
        out.push((disk.to_string(), d));
    }
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut parts: Vec<_> = rd
            .flatten()
            .filter(|e| e.path().join("partition").is_file())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let devno = parse_devno(&fs::read_to_string(e.path().join("dev")).ok()?)?;
                Some((name, devno))
            })
            .collect();
        parts.sort();
        out.extend(parts);
    }
    out
}

/// The whole disks under a block device: itself, the disk a partition is
/// on, or (for device-mapper and md devices) the disks of its slaves.
fn disks_under(host: &Host, devno: (u32, u32), depth: u32) -> Vec<String> {
    let Ok(real) = fs::canonicalize(host.by_devno(devno)) else {
        return Vec::new();
    };
    if real.join("partition").is_file() {
        return real
            .parent()
            .map(|p| vec![file_name(p)])
            .unwrap_or_default();
    }
    let slaves: Vec<String> = fs::read_dir(real.join("slaves"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() || depth > 8 {
        return vec![file_name(&real)];
    }
    slaves
        .iter()
        .filter_map(|s| host.attr(s, "dev").as_deref().and_then(parse_devno))
        .flat_map(|d| disks_under(host, d, depth + 1))
        .collect()
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, PartialEq)]
struct Mount {
    devno: (u32, u32),
    point: String,
    source: String,
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|w| *w == "-")?;
            Some(Mount {
                devno: parse_devno(f.get(2)?)?,
                point: unescape(f.get(4)?),
                source: f.get(dash + 2).map(|s| unescape(s)).unwrap_or_default(),
            })
        })
        .collect()
}

/// Mount points whose disk must never be written.
const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/efi", "/usr"];

/// Why writing to the disk `name` would overwrite `image` itself: the
/// image is the loop device's backing file, or lives on a filesystem on
/// that disk.
pub(crate) fn holds_image(host: &Host, name: &str, image: &Path) -> Option<String> {
    let meta = fs::metadata(image).ok()?;
    let real = fs::canonicalize(image).ok()?;
    let backing = host.attr(name, "loop/backing_file").map(PathBuf::from);
    if backing.is_some_and(|b| fs::canonicalize(&b).unwrap_or(b) == real) {
        return Some(format!(
            "{} is the backing file of /dev/{name}",
            image.display()
        ));
    }
    let dev = meta.dev();
    let on = disks_under(host, (rustix::fs::major(dev), rustix::fs::minor(dev)), 0);
    on.iter()
        .any(|d| d == name)
        .then(|| format!("{} is stored on /dev/{name}", image.display()))
}

/// Refuses a target that is a partition, holds the running system, is
/// mounted, held, used as swap, read-only, smaller than `image_size`, or
/// (unless `force`) not removable.
pub(crate) fn check(
    host: &Host,
    path: &Path,
    name: &str,
    devno: (u32, u32),
    image_size: u64,
    force: bool,
) -> Result<()> {
    let shown = path.display();
    let real = fs::canonicalize(host.by_devno(devno)).unwrap_or_default();
    if real.join("partition").is_file() {
        let parent = real.parent().map(file_name).unwrap_or_default();
        let n = fs::read_to_string(real.join("partition")).unwrap_or_default();
        bail!(
            "refusing to write to {shown}: it is partition {} of /dev/{parent}, and airlock writes \
             whole disks; give /dev/{parent}",
            n.trim()
        );
    }
    let info = fs::read_to_string(&host.mountinfo)
        .with_context(|| format!("reading {}", host.mountinfo.display()))?;
    let mounts = mounts(&info);
    for m in mounts
        .iter()
        .filter(|m| SYSTEM_MOUNTS.contains(&m.point.as_str()))
    {
        let mut disks = disks_under(host, m.devno, 0);
        if let Ok(meta) = fs::metadata(&m.source) {
            if meta.file_type().is_block_device() {
                let d = meta.rdev();
                disks.extend(disks_under(
                    host,
                    (rustix::fs::major(d), rustix::fs::minor(d)),
                    0,
                ));
            }
        }
        if disks.iter().any(|d| d == name) {
            bail!(
                "refusing to write to {shown}: it holds the running system's {}",
                m.point
            );
        }
    }
    let members = members(host, name);
    for m in &mounts {
        if let Some((part, _)) = members.iter().find(|(_, d)| *d == m.devno) {
            bail!(
                "refusing to write to {shown}: /dev/{part} is mounted at {}; unmount it first \
                 (umount {})",
                m.point,
                m.point
            );
        }
    }
    for (part, _) in &members {
        let holders: Vec<String> = fs::read_dir(host.class(part).join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(h) = holders.first() {
            bail!(
                "refusing to write to {shown}: /dev/{part} is in use by {h} (device-mapper, LVM, \
                 RAID or a crypt mapping); stop that first"
            );
        }
    }
    let swaps = fs::read_to_string(&host.swaps).unwrap_or_default();
    for dev in swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        let dev = unescape(dev);
        if let Some((part, _)) = members
            .iter()
            .find(|(n, _)| Path::new(&dev).file_name().is_some_and(|f| f == n.as_str()))
        {
            bail!(
                "refusing to write to {shown}: /dev/{part} is in use as swap; swapoff {dev} first"
            );
        }
    }
    if host.attr(name, "ro").as_deref() == Some("1") {
        bail!("refusing to write to {shown}: the device is read-only (a write-protect switch?)");
    }
    let size = device_size(host, name);
    if size < image_size {
        bail!(
            "refusing to write to {shown}: it holds {} but the image needs {}; use a larger device",
            human_exact(size),
            human_exact(image_size)
        );
    }
    if host.attr(name, "removable").as_deref() != Some("1") && !force {
        bail!(
            "refusing to write to {shown}: the kernel reports it as a fixed (non-removable) disk; \
             if it really is the disk you mean to erase, use --force"
        );
    }
    Ok(())
}

/// The size sysfs reports, in bytes (its "size" counts 512-byte sectors).
pub(crate) fn device_size(host: &Host, name: &str) -> u64 {
    host.attr(name, "size")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        * 512
}

pub(crate) fn human(bytes: u64) -> String {
    let (mut v, mut u) = (bytes as f64, 0);
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// [`human`] with the exact count, for sizes a refusal compares.
pub(crate) fn human_exact(bytes: u64) -> String {
    if bytes < 1024 {
        return human(bytes);
    }
    format!("{} ({bytes} bytes)", human(bytes))
}

/// A description of a block device for the confirmation prompt.
pub(crate) fn describe(
    host: &Host,
    path: &Path,
    name: &str,
    devno: (u32, u32),
    gpt: Option<&[String]>,
) -> String {
    let props = host.udev_props(devno);
    let prop = |k: &str| props.iter().find(|(p, _)| p == k).map(|(_, v)| v.clone());
    let model = [
        host.attr(name, "device/vendor"),
        host.attr(name, "device/model").or_else(|| prop("ID_MODEL")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let serial = prop("ID_SERIAL_SHORT")
        .or_else(|| host.attr(name, "serial"))
        .or_else(|| host.attr(name, "device/serial"))
        .unwrap_or_else(|| "unknown".into());
    let real = fs::canonicalize(host.class(name)).unwrap_or_default();
    let mut facts = vec![if model.is_empty() {
        "unknown model".to_string()
    } else {
        model
    }];
    facts.push(format!("serial {serial}"));
    if real.to_string_lossy().contains("/usb") {
        facts.push("USB".into());
    }
    facts.push(
        if host.attr(name, "removable").as_deref() == Some("1") {
            "removable"
        } else {
            "fixed"
        }
        .into(),
    );
    if let Some(b) = host.attr(name, "loop/backing_file") {
        facts.push(format!("loop device over {b}"));
    }
    let mut s = format!(
        "{} ({name}): {}, {}\n",
        path.display(),
        facts.join(", "),
        human_exact(device_size(host, name))
    );
    match gpt {
        Some(lines) if !lines.is_empty() => {
            s.push_str("  current partitions (GPT):\n");
            for l in lines {
                s.push_str(&format!("    {l}\n"));
            }
        }
        _ => {
            let parts: Vec<_> = members(host, name).into_iter().skip(1).collect();
            if parts.is_empty() {
                s.push_str("  no partitions the kernel knows of, no GPT\n");
            } else {
                s.push_str("  current partitions:\n");
            }
            for (p, d) in parts {
                let props = host.udev_props(d);
                let get = |k: &str| {
                    props
                        .iter()
                        .find(|(x, _)| x == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                s.push_str(&format!(
                    "    {p}  {}  {} {}\n",
                    human(device_size(host, &p)),
                    get("ID_FS_TYPE"),
                    get("ID_FS_LABEL")
                ));
            }
        }
    }
    s
}

/// One line per used partition of a GPT read from the device, if any.
pub(crate) fn gpt_lines(file: &fs::File) -> Option<Vec<String>> {
    let mut reader = file;
    let gpt = gptman::GPT::find_from(&mut reader).ok()?;
    let ss = gpt.sector_size;
    Some(
        gpt.iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| {
                let size = p.size().unwrap_or(0) * ss;
                format!(
                    "{n}  {:<20} {}  {}",
                    format!("{:?}", p.partition_name.as_str()),
                    uuid::Uuid::from_bytes_le(p.partition_type_guid),
                    human(size)
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
