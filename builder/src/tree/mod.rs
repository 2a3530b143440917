// SPDX-License-Identifier: Apache-2.0
//! The staging root: the directory on the build host that becomes the
//! image's root filesystem (`mke2fs -d STAGING`).
//!
//! Every path handed to [`Root`] is a path *inside the image*, with or
//! without a leading `/`. Parent directories are resolved with
//! `openat2(RESOLVE_IN_ROOT)`, so a base image's `/opt -> var/opt` or
//! `/lib -> /usr/lib` is followed inside the staging directory, and neither
//! `..` nor an absolute symlink can reach the build host. The final component
//! is then handled with `*at` calls on the parent's descriptor and is never
//! followed when it is replaced: writing a file over a symlink replaces the
//! symlink, it does not write through it.
//!
//! Attributes are applied in the only order in which they all stick: content,
//! owner (chown clears setuid/setgid), mode, extended attributes (chown also
//! clears `security.capability`), then times (atime = mtime). Adding or
//! removing a name leaves the parent directory's times as they were, so no
//! directory carries the build's wall-clock time; parents created on the way
//! get the mtime of the entry that needed them.
//!
//! Building needs root (CAP_CHOWN, CAP_MKNOD, CAP_SETFCAP): owners, device
//! nodes and file capabilities must be real in the staging tree for
//! `mke2fs -d` to copy them.

mod at;
pub mod extract;
mod ops;
pub mod overlay;
mod rel;
mod whiteout;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{ensure, Context, Result};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

pub(crate) use rel::Rel;

/// Owner, permissions, time and extended attributes of one tree entry.
#[derive(Clone, Debug)]
pub struct Attrs {
    /// Permission bits, including setuid/setgid/sticky (07000).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; atime is set to the same value.
    pub mtime: i64,
    /// Extended attributes, e.g. `security.capability`, set after chown.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    /// `root:root`, `mode`, `mtime`, no extended attributes.
    pub fn root(mode: u32, mtime: i64) -> Attrs {
        Attrs {
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }
}

/// The kind of special file [`Root::mknod`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// What [`Root::mkdir_rel`] does when something already exists at the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Update an existing directory's attributes; replace anything else,
    /// symlinks included ([`Root::mkdir`]).
    Replace,
    /// Update an existing directory's attributes; keep a symlink that leads to
    /// a directory inside the root, like `tar --keep-directory-symlink`, so a
    /// `bin/` entry does not break a merged-/usr `bin -> usr/bin` (a dangling
    /// one gets its target created 0755 root:root).
    Update,
    /// Leave an existing directory, or a symlink to one, exactly as it is
    /// (overlays: a checkout's 0775 must not loosen `/etc`).
    Keep,
}

/// The staging directory, held open; all paths are resolved inside it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Paths of regular files written since [`Root::record_writes`], as given.
    written: Mutex<Option<Vec<OsString>>>,
}

impl Root {
    /// Creates the staging directory (and its missing parents) with mode 0755.
    /// An existing empty directory is accepted; a non-empty one is refused.
    pub fn create(path: &Path) -> Result<Root> {
        let ctx = || format!("creating staging directory {}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(ctx)?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut entries = std::fs::read_dir(path).with_context(ctx)?;
                ensure!(
                    entries.next().is_none(),
                    "staging directory {} already exists and is not empty; remove it or use another work directory",
                    path.display()
                );
            }
            Err(e) => return Err(e).with_context(ctx),
        }
        let fd = rustix::fs::open(path, at::DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
            .with_context(ctx)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).with_context(ctx)?;
        match at::open_in_root(fd.as_fd(), OsStr::new(""), at::DIR_FLAGS) {
            Ok(_) => {}
            Err(e @ (Errno::NOSYS | Errno::PERM)) => {
                return Err(e).with_context(|| {
                    format!(
                        "probing openat2(RESOLVE_IN_ROOT) on {}: Airlock needs Linux 5.6 or later, \
                         and a container's seccomp profile must allow openat2",
                        path.display()
                    )
                })
            }
            Err(e) => return Err(e).with_context(ctx),
        }
        Ok(Root {
            fd,
            path: path.to_owned(),
            written: Mutex::new(None),
        })
    }

    /// The staging directory on the build host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `data` to `dest`, replacing a file, symlink or special file
    /// there (never writing through a symlink). Returns the bytes written.
    pub fn write_file(&self, dest: &str, data: &mut dyn Read, attrs: &Attrs) -> Result<u64> {
        self.write_file_rel(&Rel::named(dest.as_ref())?, data, attrs)
    }

    /// Creates directory `dest`. An existing directory gets `attrs`; anything
    /// else at `dest` (a symlink too) is replaced.
    pub fn mkdir(&self, dest: &str, attrs: &Attrs) -> Result<()> {
        self.mkdir_rel(&Rel::parse(dest.as_ref())?, attrs, Existing::Replace)
    }

    /// Creates `dest` and its missing parents, 0755 root:root with `mtime`.
    /// Existing directories (and symlinks to them) are left as they are.
    pub fn mkdir_all(&self, dest: &str, mtime: i64) -> Result<()> {
        let rel = Rel::parse(dest.as_ref())?;
        self.mkdir_all_rel(&rel, mtime)
    }

    /// Creates symlink `dest -> target`, replacing a non-directory at `dest`.
    /// The target is stored verbatim; it is resolved inside the image at use.
    pub fn symlink(&self, dest: &str, target: &str, attrs: &Attrs) -> Result<()> {
        self.symlink_rel(&Rel::named(dest.as_ref())?, target.as_ref(), attrs)
    }

    /// Makes `dest` a hard link to the existing non-directory `existing`.
    pub fn hardlink(&self, dest: &str, existing: &str) -> Result<()> {
        let dest = Rel::named(dest.as_ref())?;
        self.hardlink_rel(&dest, &Rel::named(existing.as_ref())?)
    }

    /// Creates a device node or fifo at `dest`, replacing a non-directory.
    pub fn mknod(
        &self,
        dest: &str,
        kind: NodeKind,
        major: u32,
        minor: u32,
        attrs: &Attrs,
    ) -> Result<()> {
        self.mknod_rel(&Rel::named(dest.as_ref())?, kind, major, minor, attrs)
    }

    /// Removes a file, symlink (not its target) or whole directory tree.
    /// A missing `dest` is fine.
    pub fn remove(&self, dest: &str) -> Result<()> {
        let rel = Rel::named(dest.as_ref())?;
        let ctx = || format!("removing {rel} in {}", self.path.display());
        let Some(dir) = self.parent(&rel, None).with_context(ctx)? else {
            return Ok(());
        };
        at::keeping_times(dir.as_fd(), || at::remove_tree(dir.as_fd(), rel.name()))
            .with_context(ctx)
    }

    /// The content of `dest`, following symlinks inside the root; `None`
    /// when it does not exist.
    pub fn read(&self, dest: &str) -> Result<Option<Vec<u8>>> {
        let rel = Rel::named(dest.as_ref())?;
        let ctx = || format!("reading {rel} in {}", self.path.display());
        let fd = match at::open_in_root(self.fd(), rel.as_os(), OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e).with_context(ctx),
        };
        let mut data = Vec::new();
        File::from(fd).read_to_end(&mut data).with_context(ctx)?;
        Ok(Some(data))
    }

    /// Opens `dest` for reading, following symlinks inside the root;
    /// `None` when it does not exist. Like [`Root::read`], but streaming.
    pub fn open(&self, dest: &str) -> Result<Option<File>> {
        let rel = Rel::named(dest.as_ref())?;
        let ctx = || format!("opening {rel} in {}", self.path.display());
        match at::open_in_root(self.fd(), rel.as_os(), OFlags::RDONLY) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e).with_context(ctx),
        }
    }

    /// The image path `dest` names once every symlink in it is followed
    /// inside the root (`/opt/x` with `opt -> var/opt` is `/var/opt/x`);
    /// `None` when it does not exist.
    pub fn resolve(&self, dest: &str) -> Result<Option<String>> {
        let rel = Rel::parse(dest.as_ref())?;
        let ctx = || format!("resolving {rel} in {}", self.path.display());
        let fd = match at::open_in_root(self.fd(), rel.as_os(), OFlags::PATH) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e).with_context(ctx),
        };
        let host = |fd: BorrowedFd<'_>| {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .context("reading the path of a descriptor in /proc/self/fd (is /proc mounted?)")
        };
        let top = host(self.fd()).with_context(ctx)?;
        let here = host(fd.as_fd()).with_context(ctx)?;
        let inside = here.strip_prefix(&top).with_context(|| {
            format!("{}: resolved to {} outside the root", ctx(), here.display())
        })?;
        let inside = inside
            .to_str()
            .with_context(|| format!("{}: {} is not UTF-8", ctx(), inside.display()))?;
        Ok(Some(format!("/{inside}")))
    }

    /// From now on, remember the path of every regular file written (by
    /// [`Root::write_file`], archives and overlays), for the manifest of
    /// what the build placed on top of the base.
    pub fn record_writes(&self) {
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// The image paths recorded since [`Root::record_writes`], as they were
    /// given (not resolved), in write order, with repeats.
    pub fn written(&self) -> Vec<String> {
        let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.iter()
            .flatten()
            .map(|p| format!("/{}", p.to_string_lossy()))
            .collect()
    }

    pub(crate) fn note_written(&self, rel: &Rel) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = w.as_mut() {
            w.push(rel.as_os().to_owned());
        }
    }

    /// Whether `dest` exists, following symlinks inside the root (like
    /// `Path::exists`: a dangling symlink does not exist).
    pub fn exists(&self, dest: &str) -> bool {
        Rel::parse(dest.as_ref())
            .map(|rel| at::open_in_root(self.fd(), rel.as_os(), OFlags::PATH).is_ok())
            .unwrap_or(false)
    }

    /// Whether `dest` itself is a symlink (its parents are resolved in root).
    pub fn is_symlink(&self, dest: &str) -> bool {
        let Ok(rel) = Rel::named(dest.as_ref()) else {
            return false;
        };
        match self.parent(&rel, None) {
            Ok(Some(dir)) => matches!(
                at::lstat(dir.as_fd(), rel.name()),
                Ok(Some(st)) if at::file_type(&st) == FileType::Symlink
            ),
            _ => false,
        }
    }

    /// Sorted names in directory `dest` (symlinks followed inside the root);
    /// empty when it does not exist. Non-UTF-8 names are shown lossily.
    pub fn list_dir(&self, dest: &str) -> Result<Vec<String>> {
        let rel = Rel::parse(dest.as_ref())?;
        let ctx = || format!("listing directory {rel} in {}", self.path.display());
        let names = match at::open_in_root(self.fd(), rel.as_os(), at::DIR_FLAGS) {
            Ok(fd) => at::read_names(fd.as_fd()).with_context(ctx)?,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(ctx),
        };
        Ok(names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    /// Image-absolute paths matching `pattern` (e.g. `boot/vmlinuz-*`,
    /// `usr/lib/modules/*/vmlinuz`), sorted. Each component is a shell glob
    /// (`*`, `?`, `[...]`; `*` does not match a leading dot; no `**`).
    /// Symlinks are followed inside the root.
    pub fn glob(&self, pattern: &str) -> Result<Vec<String>> {
        let rel = Rel::named(pattern.as_ref())
            .with_context(|| format!("bad glob pattern {pattern:?}"))?;
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let mut found = vec![String::new()];
        for comp in rel.components() {
            let comp = comp.to_str().expect("parsed from a str");
            let mut next = Vec::new();
            if comp.contains(['*', '?', '[']) {
                let pat = glob::Pattern::new(comp)
                    .with_context(|| format!("bad glob pattern {pattern:?} at {comp:?}"))?;
                for dir in &found {
                    let names = match self.list_dir(dir) {
                        Ok(names) => names,
                        Err(_) if !self.is_dir(dir) => continue,
                        Err(e) => return Err(e),
                    };
                    for name in names.iter().filter(|n| pat.matches_with(n, opts)) {
                        next.push(if dir.is_empty() {
                            name.clone()
                        } else {
                            format!("{dir}/{name}")
                        });
                    }
                }
            } else {
                for dir in &found {
                    next.push(if dir.is_empty() {
                        comp.to_owned()
                    } else {
                        format!("{dir}/{comp}")
                    });
                }
            }
            found = next;
        }
        let mut out: Vec<String> = found
            .into_iter()
            .filter(|p| self.exists(p))
            .map(|p| format!("/{p}"))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Lowers every mtime in the tree that is later than `epoch` to `epoch`
    /// and sets atime = mtime, without following symlinks. The staging
    /// directory itself carries the time it was created (unless a base
    /// archive's `./` entry set it) and files written with a later time keep
    /// it; call this last so the image is the same on every build. Returns
    /// how many entries changed.
    pub fn clamp_mtimes(&self, epoch: i64) -> Result<u64> {
        let ctx = || format!("clamping mtimes to {epoch} in {}", self.path.display());
        let mut changed = at::clamp_tree(self.fd(), epoch).with_context(ctx)?;
        let st = rustix::fs::fstat(&self.fd).with_context(ctx)?;
        changed +=
            u64::from(at::clamp_one(self.fd(), OsStr::new(""), &st, epoch).with_context(ctx)?);
        Ok(changed)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn is_dir(&self, dest: &str) -> bool {
        Rel::parse(dest.as_ref())
            .map(|rel| at::open_in_root(self.fd(), rel.as_os(), at::DIR_FLAGS).is_ok())
            .unwrap_or(false)
    }
}

/// Cleans a destination path from a recipe: `"/etc//x/./y"` -> `"etc/x/y"`.
/// `..` components and paths that name nothing (`""`, `"/"`) are refused.
pub fn clean_path(p: &str) -> Result<String> {
    let rel = Rel::named(p.as_ref())?;
    Ok(rel.as_os().to_str().expect("parsed from a str").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tempfile::TempDir;

    /// A staging root at `T/root` beside a canary directory `T/canary`
    /// holding one file; nothing may ever change outside `T/root`.
    pub(crate) fn setup() -> (TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("canary")).unwrap();
        std::fs::write(t.path().join("canary/keep"), b"keep").unwrap();
        let root = Root::create(&t.path().join("root")).unwrap();
        (t, root)
    }

    pub(crate) fn assert_canary_untouched(t: &TempDir) {
        let mut top: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["canary", "root"],
            "something was created beside the root"
        );
        let canary: Vec<_> = std::fs::read_dir(t.path().join("canary"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(canary, ["keep"], "something was written into the canary");
        assert_eq!(
            std::fs::read(t.path().join("canary/keep")).unwrap(),
            b"keep"
        );
    }

    /// A name under the build host's /usr/lib that a test writes through
    /// `lib -> /usr/lib`: it must land in the staging root. Should a broken
    /// resolver write it on the host instead, the test fails and the stray
    /// file is removed.
    pub(crate) struct HostProbe(pub(crate) String);

    impl HostProbe {
        pub(crate) fn new(tag: &str) -> HostProbe {
            HostProbe(format!("airlock-tree-test-{}-{tag}", std::process::id()))
        }
    }

    impl Drop for HostProbe {
        fn drop(&mut self) {
            let host = Path::new("/usr/lib").join(&self.0);
            if host.exists() {
                std::fs::remove_file(&host).unwrap();
                if !std::thread::panicking() {
                    panic!("{} was written on the build host", host.display());
                }
            }
        }
    }

    fn write(root: &Root, dest: &str, data: &[u8]) {
        root.write_file(dest, &mut &data[..], &Attrs::root(0o644, 1000))
            .unwrap();
    }

    #[test]
    fn clean_path_table() {
        for (input, want) in [
            ("/etc//x/./y", Some("etc/x/y")),
            ("etc/hostname", Some("etc/hostname")),
            ("./usr/bin/", Some("usr/bin")),
            ("", None),
            ("/", None),
            ("/./", None),
            ("../etc", None),
            ("/etc/../../x", None),
            ("a\0b", None),
        ] {
            let got = clean_path(input);
            assert_eq!(got.as_deref().ok(), want, "clean_path({input:?}) = {got:?}");
        }
        let err = format!("{:#}", clean_path("/etc/../x").unwrap_err());
        assert!(err.contains("'..'"), "{err}");
        let err = format!("{:#}", clean_path("/").unwrap_err());
        assert!(err.contains("empty path"), "{err}");
    }

    #[test]
    fn symlinked_parents_resolve_inside_root() {
        let (t, root) = setup();
        let a = Attrs::root(0o777, 1000);
        root.symlink("opt", "var/opt", &a).unwrap(); // dangling
        root.symlink("lib", "/usr/lib", &a).unwrap(); // absolute, dangling
        let canary = t.path().join("canary");
        root.symlink("esc", &format!("../../../{}", canary.display()), &a)
            .unwrap();
        root.symlink("abs", canary.to_str().unwrap(), &a).unwrap();
        let probe = HostProbe::new("z");
        write(&root, "/opt/x/y", b"1");
        write(&root, &format!("lib/{}", probe.0), b"2");
        write(&root, "esc/evil", b"3");
        write(&root, "/abs/evil", b"4");
        let r = root.path();
        assert_eq!(std::fs::read(r.join("var/opt/x/y")).unwrap(), b"1");
        assert_eq!(
            std::fs::read(r.join("usr/lib").join(&probe.0)).unwrap(),
            b"2"
        );
        assert_eq!(
            std::fs::read(r.join(canary.strip_prefix("/").unwrap()).join("evil")).unwrap(),
            b"4"
        );
        assert!(root.is_symlink("opt") && root.is_symlink("lib"));
        assert_eq!(root.read("/opt/x/y").unwrap().unwrap(), b"1");
        let meta = std::fs::metadata(r.join("var/opt")).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.mtime()),
            (0o755, 0, 1000)
        );
        assert_canary_untouched(&t);
    }

    #[test]
    fn replacing_a_symlink_does_not_write_through_it() {
        let (t, root) = setup();
        write(&root, "etc/target", b"orig");
        let a = Attrs::root(0o777, 1000);
        root.symlink("etc/link", "target", &a).unwrap();
        root.symlink(
            "etc/host",
            t.path().join("canary/keep").to_str().unwrap(),
            &a,
        )
        .unwrap();
        write(&root, "etc/link", b"new");
        write(&root, "etc/host", b"new");
        root.mknod("etc/target2", NodeKind::Fifo, 0, 0, &Attrs::root(0o600, 1))
            .unwrap();
        root.symlink("etc/target2", "target", &a).unwrap(); // a fifo is replaced too
        assert!(!root.is_symlink("etc/link"));
        assert_eq!(root.read("etc/link").unwrap().unwrap(), b"new");
        assert_eq!(root.read("etc/target").unwrap().unwrap(), b"orig");
        assert_eq!(root.read("etc/target2").unwrap().unwrap(), b"orig");
        assert_canary_untouched(&t);
        root.mkdir("etc/d", &Attrs::root(0o755, 1)).unwrap();
        let err = format!(
            "{:#}",
            root.write_file("etc/d", &mut &b""[..], &a).unwrap_err()
        );
        assert!(err.contains("/etc/d is an existing directory"), "{err}");
    }

    #[test]
    fn owner_mode_xattrs_and_times_survive() {
        let (_t, root) = setup();
        // v2 file capability: cap_net_raw, effective.
        let cap = [
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]
        .to_vec();
        let attrs = Attrs {
            mode: 0o4755,
            uid: 100_000,
            gid: 3_000_000_000,
            mtime: 1_234_567_890,
            xattrs: vec![
                ("security.capability".into(), cap.clone()),
                ("user.note".into(), b"hi".to_vec()),
            ],
        };
        assert_eq!(
            root.write_file("usr/bin/ping", &mut &b"elf"[..], &attrs)
                .unwrap(),
            3
        );
        root.mkdir(
            "srv/shared",
            &Attrs {
                mode: 0o3775,
                ..attrs.clone()
            },
        )
        .unwrap();
        // user.* xattrs are for regular files and directories only.
        let dev = Attrs {
            mode: 0o666,
            xattrs: vec![],
            ..attrs.clone()
        };
        root.mknod("dev/null", NodeKind::Char, 1, 3, &dev).unwrap();
        root.mknod("dev/loop0", NodeKind::Block, 7, 0, &Attrs::root(0o660, 5))
            .unwrap();
        root.mknod("run/initctl", NodeKind::Fifo, 0, 0, &Attrs::root(0o600, 5))
            .unwrap();
        root.symlink(
            "bin",
            "usr/bin",
            &Attrs {
                mode: 0o777,
                uid: 7,
                gid: 8,
                mtime: 99,
                xattrs: vec![],
            },
        )
        .unwrap();

        let p = root.path();
        let m = std::fs::metadata(p.join("usr/bin/ping")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o4755, 100_000, 3_000_000_000)
        );
        assert_eq!((m.mtime(), m.atime()), (1_234_567_890, 1_234_567_890));
        assert_eq!(
            xattr::get(p.join("usr/bin/ping"), "security.capability").unwrap(),
            Some(cap)
        );
        assert_eq!(
            xattr::get(p.join("usr/bin/ping"), "user.note").unwrap(),
            Some(b"hi".to_vec())
        );
        let m = std::fs::metadata(p.join("srv/shared")).unwrap();
        assert!(m.is_dir() && m.mode() & 0o7777 == 0o3775 && m.mtime() == 1_234_567_890);
        let m = std::fs::symlink_metadata(p.join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(
            (m.rdev(), m.mode() & 0o7777, m.uid()),
            (rustix::fs::makedev(1, 3), 0o666, 100_000)
        );
        let m = std::fs::symlink_metadata(p.join("dev/loop0")).unwrap();
        assert!(
            m.file_type().is_block_device()
                && m.rdev() == rustix::fs::makedev(7, 0)
                && m.mode() & 0o777 == 0o660
        );
        let m = std::fs::symlink_metadata(p.join("run/initctl")).unwrap();
        assert!(m.file_type().is_fifo() && m.mode() & 0o777 == 0o600 && m.mtime() == 5);
        let m = std::fs::symlink_metadata(p.join("bin")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!((m.uid(), m.gid(), m.mtime()), (7, 8, 99));
    }

    #[test]
    fn mkdir_hardlink_remove_and_queries() {
        let (t, root) = setup();
        write(&root, "a/file", b"x");
        root.mkdir("a", &Attrs::root(0o700, 5)).unwrap(); // existing: attrs updated
        assert_eq!(
            std::fs::metadata(root.path().join("a")).unwrap().mode() & 0o7777,
            0o700
        );
        assert!(root.exists("a/file"));
        write(&root, "b", b"x");
        root.mkdir("b", &Attrs::root(0o755, 5)).unwrap(); // a file is replaced
        assert!(std::fs::metadata(root.path().join("b")).unwrap().is_dir());

        root.hardlink("a/link", "/a/file").unwrap();
        root.hardlink("a/link", "a/file").unwrap(); // already the same file
        let (m1, m2) = (root.path().join("a/file"), root.path().join("a/link"));
        assert_eq!(
            std::fs::metadata(m1).unwrap().ino(),
            std::fs::metadata(m2).unwrap().ino()
        );
        let err = format!("{:#}", root.hardlink("c", "missing").unwrap_err());
        assert!(err.contains("/missing does not exist"), "{err}");

        root.symlink("s", "a", &Attrs::root(0o777, 1)).unwrap();
        assert_eq!(root.list_dir("s").unwrap(), ["file", "link"]);
        assert_eq!(root.list_dir("/").unwrap(), ["a", "b", "s"]);
        assert!(root.list_dir("nope").unwrap().is_empty());
        root.remove("s").unwrap(); // the link, not its target
        assert!(!root.exists("s") && root.exists("a/file"));
        root.remove("a").unwrap();
        root.remove("a").unwrap(); // missing is fine
        root.remove("x/y/z").unwrap();
        assert!(!root.exists("a") && root.read("a/file").unwrap().is_none());
        root.symlink("dangling", "nowhere", &Attrs::root(0o777, 1))
            .unwrap();
        assert!(!root.exists("dangling") && root.is_symlink("dangling"));
        assert!(root.exists("/") && !root.is_symlink("b"));
        assert!(root.remove("/").is_err());
        assert_canary_untouched(&t);
    }

    #[test]
    fn glob_finds_kernels_through_symlinks() {
        let (_t, root) = setup();
        root.symlink("lib", "usr/lib", &Attrs::root(0o777, 1))
            .unwrap();
        for f in [
            "boot/vmlinuz-6.1.0",
            "boot/vmlinuz-6.2.0",
            "boot/.vmlinuz-hidden",
            "boot/config-6.1.0",
        ] {
            write(&root, f, b"k");
        }
        write(&root, "usr/lib/modules/6.9.1/vmlinuz", b"k");
        root.mkdir_all("usr/lib/modules/6.9.2", 1).unwrap(); // no vmlinuz
        write(&root, "usr/lib/modules/README", b"not a dir");
        assert_eq!(
            root.glob("boot/vmlinuz-*").unwrap(),
            ["/boot/vmlinuz-6.1.0", "/boot/vmlinuz-6.2.0"]
        );
        assert_eq!(
            root.glob("/lib/modules/*/vmlinuz").unwrap(),
            ["/lib/modules/6.9.1/vmlinuz"]
        );
        assert_eq!(
            root.glob("usr/lib/modules/*/vmlinuz").unwrap(),
            ["/usr/lib/modules/6.9.1/vmlinuz"]
        );
        assert!(root.glob("nothing/*").unwrap().is_empty());
        assert!(root.glob("../*").is_err());
    }

    #[test]
    fn create_refuses_a_non_empty_dir_and_clamp_lowers_mtimes() {
        let (t, root) = setup();
        let err = format!("{:#}", Root::create(&t.path().join("canary")).unwrap_err());
        assert!(err.contains("not empty"), "{err}");
        root.mkdir("etc", &Attrs::root(0o755, 5000)).unwrap();
        write(&root, "etc/new", b"x");
        root.symlink("etc/l", "new", &Attrs::root(0o777, 500))
            .unwrap();
        assert_eq!(
            std::fs::metadata(root.path().join("etc")).unwrap().mtime(),
            5000,
            "parent times are kept"
        );
        let changed = root.clamp_mtimes(2000).unwrap();
        assert!(changed >= 2, "{changed}");
        for (p, want) in [("", 2000), ("etc", 2000), ("etc/new", 1000), ("etc/l", 500)] {
            let m = std::fs::symlink_metadata(root.path().join(p)).unwrap();
            assert_eq!((m.mtime(), m.atime()), (want, want), "{p}");
        }
    }
}
