// SPDX-License-Identifier: Apache-2.0
//! Whiteouts of OCI image layers, applied while a layer is extracted on top
//! of the layers below it (the OCI image spec, "Representing Changes"):
//!
//! - `dir/.wh.name` deletes `dir/name` (and everything below it) from the
//!   lower layers;
//! - `dir/.wh..wh..opq` makes `dir` opaque: everything the lower layers put
//!   in it goes, while what this layer adds there stays, wherever in the
//!   layer's tar the marker appears.
//!
//! Whiteout files themselves never reach the tree, and other `.wh..wh.`
//! names (AUFS bookkeeping) are dropped.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{bail, Context, Result};
use rustix::fs::FileType;
use rustix::io::Errno;

use super::{at, Rel, Root};

const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// What one layer has put in the tree so far.
#[derive(Default)]
pub(crate) struct Layer {
    added: HashSet<OsString>,
}

impl Layer {
    /// Handles the entry at `rel` before it is extracted. Returns true for a
    /// whiteout, which has then been applied and must not be extracted.
    pub(crate) fn entry(&mut self, root: &Root, rel: &Rel) -> Result<bool> {
        let name = rel.name().as_bytes();
        if name == OPAQUE {
            self.opaque(root, &rel.parent())?;
            return Ok(true);
        }
        if name.starts_with(b".wh..wh.") {
            return Ok(true);
        }
        if let Some(target) = name.strip_prefix(PREFIX) {
            if target.is_empty() || target == b"." || target == b".." {
                bail!("whiteout {rel} names no file");
            }
            let victim = rel.parent().join_name(OsStr::from_bytes(target));
            if self.added.contains(victim.as_os()) {
                // The spec forbids this; the layer's own entry wins.
                return Ok(true);
            }
            let Some(dir) = root.parent(&victim, None)? else {
                return Ok(true); // nothing there to delete
            };
            at::keeping_times(dir.as_fd(), || at::remove_tree(dir.as_fd(), victim.name()))
                .with_context(|| format!("applying whiteout {rel}: removing {victim}"))?;
            return Ok(true);
        }
        // The entry and the directories above it belong to this layer now.
        let mut p = rel.clone();
        while !p.is_root() && self.added.insert(p.as_os().to_owned()) {
            p = p.parent();
        }
        Ok(false)
    }

    /// Empties `dir` of everything this layer did not add.
    fn opaque(&mut self, root: &Root, dir: &Rel) -> Result<()> {
        let ctx = || format!("applying opaque whiteout in {dir}");
        let fd = match at::open_in_root(root.fd(), dir.as_os(), at::DIR_FLAGS) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(e).with_context(ctx),
        };
        self.clear(fd.as_fd(), dir).with_context(ctx)?;
        self.added.insert(dir.as_os().to_owned());
        Ok(())
    }

    fn clear(&self, fd: BorrowedFd<'_>, dir: &Rel) -> rustix::io::Result<()> {
        for name in at::read_names(fd)? {
            let child = dir.join_name(&name);
            if !self.added.contains(child.as_os()) {
                at::keeping_times(fd, || at::remove_tree(fd, &name))?;
                continue;
            }
            // Added by this layer: keep it, but a directory of ours may
            // still hold lower-layer entries.
            if let Some(st) = at::lstat(fd, &name)? {
                if at::file_type(&st) == FileType::Directory {
                    let sub = at::open_subdir(fd, &name)?;
                    self.clear(sub.as_fd(), &child)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{assert_canary_untouched, setup};
    use crate::tree::Attrs;

    fn put(root: &Root, p: &str) {
        root.write_file(p, &mut &b"x"[..], &Attrs::root(0o644, 0))
            .unwrap();
    }

    fn rel(p: &str) -> Rel {
        Rel::parse(p.as_ref()).unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let (t, root) = setup();
        for p in [
            "etc/a",
            "etc/b",
            "opt/keep/old",
            "opt/keep/sub/older",
            "opt/other",
            "usr/x",
        ] {
            put(&root, p);
        }
        let mut layer = Layer::default();
        // A new file in an opaque dir before the marker stays.
        assert!(!layer.entry(&root, &rel("opt/keep/new")).unwrap());
        put(&root, "opt/keep/new");
        assert!(layer.entry(&root, &rel("etc/.wh.a")).unwrap());
        assert!(layer.entry(&root, &rel("opt/.wh..wh..opq")).unwrap());
        assert!(layer.entry(&root, &rel("usr/.wh.missing")).unwrap());
        assert!(layer.entry(&root, &rel("nodir/.wh.x")).unwrap());
        assert!(layer.entry(&root, &rel("x/.wh..wh.plnk")).unwrap());
        assert!(layer.entry(&root, &rel("etc/.wh.")).is_err());
        assert!(!root.exists("etc/a"));
        assert!(root.exists("etc/b"));
        assert!(root.exists("opt/keep/new"));
        assert!(
            !root.exists("opt/keep/old"),
            "lower content of an opaque dir goes"
        );
        assert!(!root.exists("opt/keep/sub"));
        assert!(!root.exists("opt/other"));
        assert!(root.exists("usr/x"));
        assert_canary_untouched(&t);
    }
}
