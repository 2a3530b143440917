// SPDX-License-Identifier: Apache-2.0
//! The operations behind [`Root`]'s public methods, on cleaned [`Rel`] paths
//! (also used by extraction and overlays): resolving and creating parent
//! directories inside the root, and creating or replacing the final name with
//! `*at` calls that never follow it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{bail, ensure, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{at, Attrs, Existing, NodeKind, Rel, Root};

impl Root {
    pub(crate) fn write_file_rel(
        &self,
        rel: &Rel,
        data: &mut dyn Read,
        attrs: &Attrs,
    ) -> Result<u64> {
        let ctx = || format!("writing {rel} in {}", self.path.display());
        let dir = self.parent_created(rel, attrs.mtime).with_context(ctx)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = replacing(dir.as_fd(), rel, || {
            rustix::fs::openat(&dir, rel.name(), flags, Mode::from_raw_mode(0o600))
        })
        .with_context(ctx)?;
        let mut out = BufWriter::with_capacity(256 * 1024, File::from(fd));
        let bytes = std::io::copy(data, &mut out).with_context(ctx)?;
        out.flush().with_context(ctx)?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(ctx)?;
        at::set_fd_attrs(file.as_fd(), attrs).with_context(ctx)?;
        self.note_written(rel);
        Ok(bytes)
    }

    pub(crate) fn mkdir_rel(&self, rel: &Rel, attrs: &Attrs, existing: Existing) -> Result<()> {
        let ctx = || format!("creating directory {rel} in {}", self.path.display());
        if rel.is_root() {
            if existing != Existing::Keep {
                at::set_fd_attrs(self.fd(), attrs).with_context(ctx)?;
            }
            return Ok(());
        }
        let dir = self.parent_created(rel, attrs.mtime).with_context(ctx)?;
        let name = rel.name();
        match at::lstat(dir.as_fd(), name).with_context(ctx)? {
            Some(st) if at::file_type(&st) == FileType::Directory => {
                if existing == Existing::Keep {
                    return Ok(());
                }
            }
            Some(st) => {
                if at::file_type(&st) == FileType::Symlink && existing != Existing::Replace {
                    // Keep a symlink to a directory; a dangling one gets its
                    // target created, as for any parent directory.
                    match at::open_in_root(self.fd(), rel.as_os(), at::DIR_FLAGS) {
                        Ok(_) => return Ok(()),
                        Err(Errno::NOENT) => {
                            return self
                                .create_dirs(rel, attrs.mtime)
                                .map(drop)
                                .with_context(ctx)
                        }
                        Err(_) => {} // leads to a non-directory: replace it
                    }
                }
                replacing(dir.as_fd(), rel, || {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                })
                .with_context(ctx)?;
            }
            None => replacing(dir.as_fd(), rel, || {
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
            })
            .with_context(ctx)?,
        }
        let fd = at::open_subdir(dir.as_fd(), name).with_context(ctx)?;
        at::set_fd_attrs(fd.as_fd(), attrs).with_context(ctx)
    }

    pub(crate) fn mkdir_all_rel(&self, rel: &Rel, mtime: i64) -> Result<()> {
        match at::open_in_root(self.fd(), rel.as_os(), at::DIR_FLAGS | OFlags::PATH) {
            Ok(_) => Ok(()),
            Err(_) => self.create_dirs(rel, mtime).map(drop),
        }
        .with_context(|| format!("creating directory {rel} in {}", self.path.display()))
    }

    pub(crate) fn symlink_rel(&self, rel: &Rel, target: &OsStr, attrs: &Attrs) -> Result<()> {
        let ctx = || {
            let target = target.to_string_lossy();
            format!(
                "creating symlink {rel} -> {target} in {}",
                self.path.display()
            )
        };
        ensure!(!target.is_empty(), "symlink {rel} has an empty target");
        let dir = self.parent_created(rel, attrs.mtime).with_context(ctx)?;
        replacing(dir.as_fd(), rel, || {
            rustix::fs::symlinkat(target, &dir, rel.name())
        })
        .with_context(ctx)?;
        at::set_at_attrs(dir.as_fd(), rel.name(), attrs, true).with_context(ctx)
    }

    pub(crate) fn hardlink_rel(&self, rel: &Rel, existing: &Rel) -> Result<()> {
        let ctx = || {
            format!(
                "creating hard link {rel} to {existing} in {}",
                self.path.display()
            )
        };
        let missing = || {
            format!(
                "hard link target {existing} does not exist; it must be created before the link"
            )
        };
        let src_dir = self
            .parent(existing, None)
            .with_context(ctx)?
            .with_context(missing)?;
        let src = at::lstat(src_dir.as_fd(), existing.name())
            .with_context(ctx)?
            .with_context(missing)?;
        if at::file_type(&src) == FileType::Directory {
            bail!("hard link target {existing} is a directory; directories cannot be hard-linked");
        }
        let dir = self
            .parent_created(rel, at::mtime(&src))
            .with_context(ctx)?;
        if let Some(st) = at::lstat(dir.as_fd(), rel.name()).with_context(ctx)? {
            if (st.st_dev, st.st_ino) == (src.st_dev, src.st_ino) {
                return Ok(()); // already the same file
            }
        }
        replacing(dir.as_fd(), rel, || {
            rustix::fs::linkat(
                &src_dir,
                existing.name(),
                &dir,
                rel.name(),
                AtFlags::empty(),
            )
        })
        .with_context(ctx)
    }

    pub(crate) fn mknod_rel(
        &self,
        rel: &Rel,
        kind: NodeKind,
        major: u32,
        minor: u32,
        attrs: &Attrs,
    ) -> Result<()> {
        let ctx = || {
            format!(
                "creating {kind:?} node {rel} ({major}:{minor}) in {}",
                self.path.display()
            )
        };
        let (ftype, dev) = match kind {
            NodeKind::Char => (FileType::CharacterDevice, rustix::fs::makedev(major, minor)),
            NodeKind::Block => (FileType::BlockDevice, rustix::fs::makedev(major, minor)),
            NodeKind::Fifo => (FileType::Fifo, 0),
        };
        let dir = self.parent_created(rel, attrs.mtime).with_context(ctx)?;
        replacing(dir.as_fd(), rel, || {
            rustix::fs::mknodat(&dir, rel.name(), ftype, Mode::from_raw_mode(0o600), dev)
        })
        .with_context(ctx)?;
        at::set_at_attrs(dir.as_fd(), rel.name(), attrs, false).with_context(ctx)
    }

    /// The parent directory of `rel`, created (0755 root:root, `mtime`) when
    /// missing.
    fn parent_created(&self, rel: &Rel, mtime: i64) -> Result<OwnedFd> {
        Ok(self.parent(rel, Some(mtime))?.expect("created"))
    }

    /// The parent directory of `rel`, resolved inside the root. Missing
    /// parents are created when `create` has an mtime, else `None`.
    pub(super) fn parent(&self, rel: &Rel, create: Option<i64>) -> Result<Option<OwnedFd>> {
        let parent = rel.parent();
        match (
            at::open_in_root(self.fd(), parent.as_os(), at::DIR_FLAGS),
            create,
        ) {
            (Ok(fd), _) => Ok(Some(fd)),
            (Err(Errno::NOENT | Errno::NOTDIR), None) => Ok(None),
            // The walk names the component that is missing or in the way.
            (Err(Errno::NOENT | Errno::NOTDIR), Some(mtime)) => {
                self.create_dirs(&parent, mtime).map(Some)
            }
            (Err(e), _) => Err(e).with_context(|| format!("opening directory {parent}")),
        }
    }

    /// `mkdir -p` inside the root, one component at a time: a symlink on the
    /// way (even a dangling `opt -> var/opt`) is followed inside the root and
    /// its missing target directories are created. Each step is a
    /// single-name, no-follow lookup below a directory already held, and
    /// `..` stops at the root, so the walk cannot leave it.
    fn create_dirs(&self, rel: &Rel, mtime: i64) -> Result<OwnedFd> {
        let mut queue: VecDeque<OsString> = rel.components().map(OsStr::to_owned).collect();
        let mut resolved = Rel::default();
        let mut cur = at::open_in_root(self.fd(), OsStr::new(""), at::DIR_FLAGS)?;
        let mut links = 0;
        while let Some(name) = queue.pop_front() {
            match name.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    resolved = resolved.parent();
                    cur = at::open_in_root(self.fd(), resolved.as_os(), at::DIR_FLAGS)
                        .with_context(|| format!("opening directory {resolved}"))?;
                    continue;
                }
                _ => {}
            }
            let here = resolved.join_name(&name);
            let st = at::lstat(cur.as_fd(), &name).with_context(|| format!("looking up {here}"))?;
            match st.as_ref().map(at::file_type) {
                Some(FileType::Directory) => {}
                Some(FileType::Symlink) => {
                    links += 1;
                    ensure!(
                        links <= 40,
                        "too many levels of symbolic links resolving {rel}"
                    );
                    let target = rustix::fs::readlinkat(&cur, &name, Vec::new())
                        .with_context(|| format!("reading symlink {here}"))?;
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        resolved = Rel::default();
                        cur = at::open_in_root(self.fd(), OsStr::new(""), at::DIR_FLAGS)?;
                    }
                    for comp in target.split(|b| *b == b'/').rev() {
                        queue.push_front(OsStr::from_bytes(comp).to_owned());
                    }
                    continue;
                }
                Some(_) => bail!("{here} is not a directory, so {rel} cannot be created below it"),
                None => match at::keeping_times(cur.as_fd(), || {
                    rustix::fs::mkdirat(&cur, &name, Mode::from_raw_mode(0o700))
                }) {
                    Ok(()) => {
                        let fd = at::open_subdir(cur.as_fd(), &name)
                            .with_context(|| format!("opening directory {here}"))?;
                        at::set_fd_attrs(fd.as_fd(), &Attrs::root(0o755, mtime))
                            .with_context(|| format!("creating directory {here}"))?;
                        (cur, resolved) = (fd, here);
                        continue;
                    }
                    Err(Errno::EXIST) => {
                        queue.push_front(name); // created meanwhile: look again
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("creating directory {here}")),
                },
            }
            cur = at::open_subdir(cur.as_fd(), &name)
                .with_context(|| format!("opening directory {here}"))?;
            resolved = here;
        }
        Ok(cur)
    }
}

/// Runs `create` for the last component of `rel` in `dir`; when the name is
/// taken by a non-directory, removes that (never following a symlink) and
/// tries once more. An existing directory is an error. `dir`'s times are
/// kept.
fn replacing<T>(
    dir: BorrowedFd<'_>,
    rel: &Rel,
    create: impl FnMut() -> rustix::io::Result<T>,
) -> Result<T> {
    at::keeping_times(dir, || replacing_inner(dir, rel, create))
}

fn replacing_inner<T>(
    dir: BorrowedFd<'_>,
    rel: &Rel,
    mut create: impl FnMut() -> rustix::io::Result<T>,
) -> Result<T> {
    match create() {
        Err(Errno::EXIST) => {}
        other => return Ok(other?),
    }
    if let Some(st) = at::lstat(dir, rel.name())? {
        if at::file_type(&st) == FileType::Directory {
            bail!("{rel} is an existing directory; refusing to replace a directory with a non-directory (remove it first)");
        }
        rustix::fs::unlinkat(dir, rel.name(), AtFlags::empty())?;
    }
    Ok(create()?)
}
