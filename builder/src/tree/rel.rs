// SPDX-License-Identifier: Apache-2.0
//! [`Rel`]: a cleaned path inside the image.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use anyhow::{bail, ensure, Result};

/// A cleaned path inside the image: no leading `/`, no `.`, `..` or empty
/// components. The empty path is the root itself. Displays as `/a/b`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rel(OsString);

impl Rel {
    /// Cleans `p`; the root (`""`, `"/"`, `"./"`) is allowed.
    pub(crate) fn parse(p: &OsStr) -> Result<Rel> {
        let bytes = p.as_bytes();
        ensure!(!bytes.contains(&0), "path {p:?} contains a NUL byte");
        let mut out = Vec::with_capacity(bytes.len());
        for comp in bytes.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => bail!(
                    "path {p:?} has a '..' component; paths are inside the image root, write them without '..'"
                ),
                _ => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(comp);
                }
            }
        }
        Ok(Rel(OsString::from_vec(out)))
    }

    /// Like [`Rel::parse`], but the path must name something below the root.
    pub(crate) fn named(p: &OsStr) -> Result<Rel> {
        let rel = Rel::parse(p)?;
        ensure!(
            !rel.is_root(),
            "empty path {p:?}: name a file or directory inside the image, such as /etc/hostname"
        );
        Ok(rel)
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_os(&self) -> &OsStr {
        &self.0
    }

    pub(crate) fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0
            .as_bytes()
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .map(OsStr::from_bytes)
    }

    /// The parent; the root's parent is the root.
    pub(crate) fn parent(&self) -> Rel {
        let bytes = self.0.as_bytes();
        match bytes.iter().rposition(|b| *b == b'/') {
            Some(i) => Rel(OsStr::from_bytes(&bytes[..i]).to_owned()),
            None => Rel::default(),
        }
    }

    /// The last component; empty for the root.
    pub(crate) fn name(&self) -> &OsStr {
        let bytes = self.0.as_bytes();
        match bytes.iter().rposition(|b| *b == b'/') {
            Some(i) => OsStr::from_bytes(&bytes[i + 1..]),
            None => &self.0,
        }
    }

    pub(crate) fn join(&self, other: &Rel) -> Rel {
        match (self.is_root(), other.is_root()) {
            (true, _) => other.clone(),
            (_, true) => self.clone(),
            _ => self.join_name(&other.0),
        }
    }

    /// Appends `name`, which must already be clean (one or more components).
    pub(crate) fn join_name(&self, name: &OsStr) -> Rel {
        let mut s = self.0.clone();
        if !s.is_empty() {
            s.push("/");
        }
        s.push(name);
        Rel(s)
    }
}

impl fmt::Display for Rel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0.to_string_lossy())
    }
}
