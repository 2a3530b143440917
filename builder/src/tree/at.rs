// SPDX-License-Identifier: Apache-2.0
//! Low-level helpers for the staging root: resolving a path inside it with
//! `openat2(RESOLVE_IN_ROOT)`, and `*at` calls on one name in a directory
//! descriptor that never follow a symlink in that name.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use super::Attrs;

/// Flags for opening a directory we are going to read or change.
pub(super) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// How every multi-component path is resolved: `/` and `..` stop at the
/// staging root, so absolute symlinks in the image point into the image.
pub(super) const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT)`, retrying the rare `EAGAIN`
/// the kernel returns when a rename raced with the lookup.
pub(super) fn open_in_root(
    dir: BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let path = if path.is_empty() {
        OsStr::new(".")
    } else {
        path
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, Mode::empty(), IN_ROOT) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

/// `lstat` of one name in `dir`; `None` when it does not exist.
pub(super) fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Opens the directory `name` in `dir` without following a symlink.
pub(super) fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Sets owner, mode, xattrs and times on an open regular file or directory,
/// in that order: chown clears setuid/setgid and `security.capability`.
pub(super) fn set_fd_attrs(fd: BorrowedFd<'_>, attrs: &Attrs) -> Result<()> {
    std::os::unix::fs::fchown(fd, Some(attrs.uid), Some(attrs.gid))
        .with_context(|| format!("changing owner to {}:{}", attrs.uid, attrs.gid))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(attrs.mode & 0o7777))
        .with_context(|| format!("changing mode to {:04o}", attrs.mode & 0o7777))?;
    for (name, value) in &attrs.xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())
            .map_err(|e| xattr_error(e, name))?;
    }
    rustix::fs::futimens(fd, &timestamps(attrs.mtime))
        .with_context(|| format!("setting mtime to {}", attrs.mtime))?;
    Ok(())
}

/// Sets owner, mode (unless `name` is a symlink), xattrs and times on a
/// symlink, device node or fifo, which cannot be opened for writing safely.
pub(super) fn set_at_attrs(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attrs: &Attrs,
    is_symlink: bool,
) -> Result<()> {
    // `/proc/self/fd/N/name`: the magic link N is the directory we hold, and
    // the l* calls do not follow `name` itself.
    let via_proc = proc_path(dir, name);
    std::os::unix::fs::lchown(&via_proc, Some(attrs.uid), Some(attrs.gid))
        .with_context(|| format!("changing owner to {}:{}", attrs.uid, attrs.gid))?;
    if !is_symlink {
        // The name is a node we just created, not a symlink, so following it is moot.
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(attrs.mode & 0o7777),
            AtFlags::empty(),
        )
        .with_context(|| format!("changing mode to {:04o}", attrs.mode & 0o7777))?;
    }
    for (xname, value) in &attrs.xattrs {
        rustix::fs::lsetxattr(&via_proc, xname.as_str(), value, XattrFlags::empty())
            .map_err(|e| xattr_error(e, xname))?;
    }
    rustix::fs::utimensat(
        dir,
        name,
        &timestamps(attrs.mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("setting mtime to {}", attrs.mtime))?;
    Ok(())
}

/// Runs `f`, which adds or removes a name in `dir`, then puts `dir`'s times
/// back: an image's directory times must not depend on when it was built.
pub(super) fn keeping_times<T, E: From<Errno>>(
    dir: BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let st = rustix::fs::fstat(dir)?;
    let out = f()?;
    // The kernel's `struct stat` fields are unsigned; times before 1970 wrap.
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as i64,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as i64,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(dir, &times)?;
    Ok(out)
}

/// Sets only the times of `name` in `dir`, without following a symlink.
pub(super) fn set_mtime_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mtime: i64,
) -> rustix::io::Result<()> {
    let name = if name.is_empty() {
        OsStr::new(".")
    } else {
        name
    };
    rustix::fs::utimensat(dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
}

fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    p.push(name);
    PathBuf::from(p)
}

fn xattr_error(e: Errno, name: &str) -> anyhow::Error {
    let hint = match e {
        Errno::NOTSUP => "; the staging directory's filesystem must support this xattr namespace (use ext4 or xfs for the work directory)",
        Errno::INVAL if name == "security.capability" => "; the value is not a valid file capability",
        _ => "",
    };
    anyhow::Error::new(e).context(format!("setting extended attribute {name}{hint}"))
}

/// Names in a directory, without `.` and `..`, in byte order.
pub(super) fn read_names(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` in `dir` and, when it is a directory, everything below it.
/// Symlinks are removed, never followed.
pub(super) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    let Some(st) = lstat(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let sub = open_subdir(dir, name)?;
    for child in read_names(sub.as_fd())? {
        remove_tree(sub.as_fd(), &child)?;
    }
    drop(sub);
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Lowers every mtime above `epoch` below `dir` (not `dir` itself) to `epoch`,
/// without following symlinks. Returns how many entries were changed.
pub(super) fn clamp_tree(dir: BorrowedFd<'_>, epoch: i64) -> rustix::io::Result<u64> {
    let mut changed = 0;
    for name in read_names(dir)? {
        let Some(st) = lstat(dir, &name)? else {
            continue;
        };
        if file_type(&st) == FileType::Directory {
            let sub = open_subdir(dir, &name)?;
            changed += clamp_tree(sub.as_fd(), epoch)?;
        }
        changed += u64::from(clamp_one(dir, &name, &st, epoch)?);
    }
    Ok(changed)
}

/// Lowers the mtime of `name` (`""`: `dir` itself) to `epoch` if later, and
/// sets atime = mtime. Returns whether anything changed.
pub(super) fn clamp_one(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    epoch: i64,
) -> rustix::io::Result<bool> {
    // The kernel's `struct stat` fields are unsigned; times before 1970 wrap.
    let (mtime, atime) = (st.st_mtime as i64, st.st_atime as i64);
    let want = mtime.min(epoch);
    if mtime == want && atime == want {
        return Ok(false);
    }
    set_mtime_at(dir, name, want)?;
    Ok(true)
}

/// The mtime from a `Stat`, as the signed value it was set with.
pub(super) fn mtime(st: &Stat) -> i64 {
    st.st_mtime as i64
}
