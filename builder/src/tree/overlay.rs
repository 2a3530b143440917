// SPDX-License-Identifier: Apache-2.0
//! Copying a directory tree from the build host (a recipe's overlay) into the
//! staging [`Root`].

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::{Attrs, Existing, Rel, Root};

/// Copies the contents of host directory `src` to image directory `dest`,
/// in sorted order. Regular files, directories and symlinks are copied as
/// root:root with the source's permission bits and mtime `epoch`; any other
/// file type is an error. Existing image directories (or symlinks to them,
/// such as `/opt -> var/opt`) are kept as they are: owner, mode and times.
/// Returns the bytes of file content copied.
pub fn copy_dir(root: &Root, src: &Path, dest: &str, epoch: i64) -> Result<u64> {
    let ctx = || format!("copying overlay {} to {dest}", src.display());
    let dest = Rel::parse(dest.as_ref()).with_context(ctx)?;
    let meta = fs::metadata(src)
        .with_context(|| format!("reading overlay directory {}", src.display()))?;
    ensure!(
        meta.is_dir(),
        "overlay {} is not a directory",
        src.display()
    );
    root.mkdir_all_rel(&dest, epoch).with_context(ctx)?;
    copy_tree(root, src, &dest, epoch).with_context(ctx)
}

fn copy_tree(root: &Root, src: &Path, dest: &Rel, epoch: i64) -> Result<u64> {
    let mut entries = fs::read_dir(src)
        .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("reading overlay directory {}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    let mut bytes = 0;
    for entry in entries {
        let path = entry.path();
        let to = dest.join_name(&entry.file_name());
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("reading overlay file {}", path.display()))?;
        // Files become root's: a setuid/setgid bit that meant "run as the
        // checkout's owner" must not turn into "run as root". A recipe that
        // wants one says so with a [[file]] mode.
        let attrs = Attrs::root(meta.permissions().mode() & 0o1777, epoch);
        let ft = meta.file_type();
        if ft.is_dir() {
            root.mkdir_rel(&to, &attrs, Existing::Keep)?;
            bytes += copy_tree(root, &path, &to, epoch)?;
        } else if ft.is_file() {
            let mut file = File::open(&path)
                .with_context(|| format!("opening overlay file {}", path.display()))?;
            bytes += root
                .write_file_rel(&to, &mut file, &attrs)
                .with_context(|| format!("copying overlay file {}", path.display()))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("reading overlay symlink {}", path.display()))?;
            root.symlink_rel(&to, target.as_os_str(), &attrs)?;
        } else {
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device node"
            };
            bail!(
                "overlay entry {} is a {kind}; overlays may only hold regular files, directories and symlinks",
                path.display()
            );
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{assert_canary_untouched, setup};
    use std::os::unix::fs::{symlink, MetadataExt};

    fn mode(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn copies_files_dirs_and_symlinks_as_root() {
        let (t, root) = setup();
        root.mkdir("etc", &Attrs::root(0o755, 1)).unwrap();
        root.symlink("opt", "var/opt", &Attrs::root(0o777, 1))
            .unwrap();
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("etc/kubernetes")).unwrap();
        mode(&s.join("etc"), 0o775); // a loose checkout must not loosen /etc
        mode(&s.join("etc/kubernetes"), 0o750);
        fs::write(s.join("etc/motd"), b"hello\n").unwrap();
        mode(&s.join("etc/motd"), 0o640);
        std::os::unix::fs::chown(s.join("etc/motd"), Some(1234), Some(1234)).unwrap();
        fs::create_dir_all(s.join("opt/tool/bin")).unwrap();
        fs::write(s.join("opt/tool/bin/x"), b"#!/bin/sh\n").unwrap();
        mode(&s.join("opt/tool/bin/x"), 0o4755);
        symlink("etc/motd", s.join("motd-link")).unwrap();

        let bytes = copy_dir(&root, s, "/", 777).unwrap();
        assert_eq!(bytes, 6 + 10);
        let m = |p: &str| fs::symlink_metadata(root.path().join(p)).unwrap();
        assert_eq!(m("etc").mode() & 0o7777, 0o755);
        assert_eq!(m("etc/kubernetes").mode() & 0o7777, 0o750);
        let motd = m("etc/motd");
        assert_eq!(
            (motd.mode() & 0o7777, motd.uid(), motd.gid(), motd.mtime()),
            (0o640, 0, 0, 777)
        );
        assert_eq!(
            m("var/opt/tool/bin/x").mode() & 0o7777,
            0o755,
            "setuid root from a checkout"
        );
        assert!(root.is_symlink("opt") && root.is_symlink("motd-link"));
        assert_eq!(root.read("motd-link").unwrap().unwrap(), b"hello\n");
        for (p, want) in [
            ("etc", 1),
            ("etc/kubernetes", 777),
            ("motd-link", 777),
            ("var/opt/tool", 777),
        ] {
            assert_eq!(m(p).mtime(), want, "{p}");
        }
        assert_canary_untouched(&t);
    }

    #[test]
    fn special_files_are_refused_by_name() {
        let (_t, root) = setup();
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("run")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.path().join("run/pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = format!("{:#}", copy_dir(&root, src.path(), "/srv", 1).unwrap_err());
        assert!(err.contains("run/pipe is a fifo"), "{err}");
        let err = format!(
            "{:#}",
            copy_dir(&root, &src.path().join("missing"), "/", 1).unwrap_err()
        );
        assert!(err.contains("missing"), "{err}");
    }
}
