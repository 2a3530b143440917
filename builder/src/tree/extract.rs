// SPDX-License-Identifier: Apache-2.0
//! Safe extraction of tar archives (base root filesystems, release tarballs)
//! into the staging [`Root`].
//!
//! An entry may not name a path outside the extraction directory (`..`, an
//! absolute path), a relative symlink may not point above the image root, and
//! a hard link must name an earlier entry. Everything else is resolved inside
//! the root by [`Root`], so a symlink created by one entry cannot carry a
//! later entry out of it. Content is streamed: memory does not grow with file
//! size.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Cursor, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tar::EntryType;

use super::{Attrs, Existing, NodeKind, Rel, Root};

/// Opens a tar archive, decompressing gzip, zstd or xz as found by magic
/// bytes (not by file name), and checks that a tar header follows.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
    open_decompressed_reader(file, path)
}

/// [`open_decompressed`] for an already open stream (e.g. one wrapped in a
/// progress bar); `path` names it in errors.
pub fn open_decompressed_reader<R: Read + Send + 'static>(
    mut reader: R,
    path: &Path,
) -> Result<Box<dyn Read + Send>> {
    let shown = path.display();
    let mut magic = [0u8; 6];
    let n =
        read_up_to(&mut reader, &mut magic).with_context(|| format!("reading archive {shown}"))?;
    let magic = &magic[..n];
    // Give the decoder the bytes already read.
    let file = Cursor::new(magic.to_vec()).chain(reader);
    let (format, mut stream): (&str, Box<dyn Read + Send>) = if magic.starts_with(&[0x1f, 0x8b]) {
        ("gzip", Box::new(flate2::read::MultiGzDecoder::new(file)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::new(file)
            .with_context(|| format!("starting zstd decompression of {shown}"))?;
        ("zstd", Box::new(decoder))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        (
            "xz",
            Box::new(xz2::read::XzDecoder::new_multi_decoder(file)),
        )
    } else if magic.starts_with(b"BZh") {
        bail!("{shown} is bzip2-compressed, which is not supported; recompress it with zstd, gzip or xz");
    } else {
        ("uncompressed", Box::new(file))
    };
    let mut head = vec![0u8; 512];
    let n = read_up_to(&mut stream, &mut head)
        .with_context(|| format!("reading archive {shown} ({format})"))?;
    head.truncate(n);
    let ustar = n == 512 && &head[257..262] == b"ustar";
    let empty_archive = n == 512 && head.iter().all(|b| *b == 0);
    ensure!(
        ustar || empty_archive,
        "{shown} is not a tar archive ({format} data{}, no ustar header); \
         expected a tar archive, optionally compressed with gzip, zstd or xz",
        if n == 0 { ", empty" } else { "" }
    );
    Ok(Box::new(Cursor::new(head).chain(stream)))
}

/// Fills `buf` as far as the stream allows; returns the bytes read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Where and what to extract.
#[derive(Clone, Debug)]
pub struct ExtractOpts {
    /// Image directory to extract into; `"/"` for a base root filesystem.
    pub dest: String,
    /// Leading path components to drop, like `tar --strip-components`.
    /// `.` components are ignored before counting (`./bin/x` is `bin/x`).
    pub strip_components: usize,
    /// Glob patterns on the path after stripping (e.g. `bin/*`); a pattern
    /// that matches a directory takes everything below it. Empty: all. A
    /// pattern that matches nothing is an error.
    pub members: Vec<String>,
    /// Later mtimes are clamped to this (SOURCE_DATE_EPOCH).
    pub epoch: i64,
    /// Keep the archive's uid/gid; false makes everything root:root
    /// (release tarballs carry the packager's uid).
    pub keep_owner: bool,
}

/// What [`extract`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Entries extracted (after `members` and `strip_components`).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Extracts the tar stream `reader` into `root` under `opts.dest`. `what`
/// names the archive in errors, e.g. `base debian.tar.zst`.
pub fn extract(
    root: &Root,
    reader: impl Read,
    opts: &ExtractOpts,
    what: &str,
) -> Result<ExtractStats> {
    extract_with(root, reader, opts, what, None)
}

/// Extracts one OCI image layer over the layers below it, honouring
/// whiteouts (`.wh.name`, `.wh..wh..opq`; see [`super::whiteout`]); no
/// whiteout file is left in the tree.
pub fn extract_layer(
    root: &Root,
    reader: impl Read,
    opts: &ExtractOpts,
    what: &str,
) -> Result<ExtractStats> {
    extract_with(
        root,
        reader,
        opts,
        what,
        Some(&mut super::whiteout::Layer::default()),
    )
}

fn extract_with(
    root: &Root,
    reader: impl Read,
    opts: &ExtractOpts,
    what: &str,
    mut layer: Option<&mut super::whiteout::Layer>,
) -> Result<ExtractStats> {
    let dest = Rel::parse(opts.dest.as_ref())
        .with_context(|| format!("extracting {what}: bad destination {:?}", opts.dest))?;
    let members = opts
        .members
        .iter()
        .map(|m| Member::new(m))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("extracting {what}"))?;
    let mut matched = vec![false; members.len()];
    let mut stats = ExtractStats::default();
    let mut archive = tar::Archive::new(reader);
    let mut last: Option<String> = None;
    for entry in archive
        .entries()
        .with_context(|| format!("reading {what}"))?
    {
        let mut entry = entry.with_context(|| match &last {
            Some(last) => format!("reading {what}: the entry after {last:?}"),
            None => format!("reading {what}: the first entry"),
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        // A PAX global header (`git archive` writes one) is no file.
        if entry.header().entry_type() != EntryType::XGlobalHeader {
            let ctx = || format!("extracting {name:?} from {what}");
            let raw = entry.path_bytes();
            let selected = select(&raw, opts.strip_components, &members, &mut matched);
            if let Some(rel) = selected.with_context(ctx)? {
                let full = dest.join(&rel);
                let whiteout = match layer.as_deref_mut() {
                    Some(l) => l.entry(root, &full).with_context(ctx)?,
                    None => false,
                };
                if !whiteout {
                    stats.bytes +=
                        extract_entry(root, &mut entry, &full, &dest, opts).with_context(ctx)?;
                    stats.entries += 1;
                }
            }
        }
        last = Some(name);
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        bail!(
            "extracting {what}: no entry matches member pattern {:?} (after stripping {} components); \
             check the pattern against `tar tf`",
            opts.members[i],
            opts.strip_components
        );
    }
    Ok(stats)
}

fn extract_entry<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    rel: &Rel,
    dest: &Rel,
    opts: &ExtractOpts,
) -> Result<u64> {
    let mut kind = entry.header().entry_type();
    if kind == EntryType::Regular && entry.path_bytes().ends_with(b"/") {
        kind = EntryType::Directory; // pre-POSIX archives mark directories so
    }
    let attrs = entry_attrs(entry, opts)?;
    if rel.is_root() && kind != EntryType::Directory {
        bail!("a {kind:?} entry cannot replace the extraction directory {rel}");
    }
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            return root.write_file_rel(rel, entry, &attrs);
        }
        EntryType::Directory => {
            root.mkdir_rel(rel, &attrs, Existing::Update)?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .context("symlink entry without a target")?;
            check_symlink(rel, &target)?;
            root.symlink_rel(rel, OsStr::from_bytes(&target), &attrs)?;
        }
        EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .context("hard link entry without a target")?;
            let existing = link_target(&target, opts.strip_components)?;
            root.hardlink_rel(rel, &dest.join(&existing))?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let node = match kind {
                EntryType::Char => NodeKind::Char,
                EntryType::Block => NodeKind::Block,
                _ => NodeKind::Fifo,
            };
            // A FIFO has no device number: GNU tar and Python's tarfile
            // leave its fields blank, which the tar crate cannot parse.
            let (major, minor) = if node == NodeKind::Fifo {
                (0, 0)
            } else {
                let header = entry.header();
                (
                    device_field(header.device_major(), &header.as_bytes()[329..337])
                        .context("reading device major")?,
                    device_field(header.device_minor(), &header.as_bytes()[337..345])
                        .context("reading device minor")?,
                )
            };
            root.mknod_rel(rel, node, major, minor, &attrs)?;
        }
        other => bail!("unsupported tar entry type {other:?}"),
    }
    Ok(0)
}

/// A device number field of a tar header: missing or blank (all NUL or
/// spaces) is 0.
fn device_field(parsed: std::io::Result<Option<u32>>, raw: &[u8]) -> std::io::Result<u32> {
    match parsed {
        Ok(v) => Ok(v.unwrap_or(0)),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(e),
    }
}

/// The entry's path inside the extraction directory, or `None` when
/// `strip_components` removes all of it or no member pattern takes it.
/// Marks the patterns that match.
fn select(
    raw: &[u8],
    strip: usize,
    members: &[Member],
    matched: &mut [bool],
) -> Result<Option<Rel>> {
    let Some(rel) = entry_path(raw, strip)? else {
        return Ok(None);
    };
    if members.is_empty() {
        return Ok(Some(rel));
    }
    let mut hit = false;
    for (member, seen) in members.iter().zip(matched.iter_mut()) {
        if member.matches(&rel) {
            (*seen, hit) = (true, true);
        }
    }
    Ok(hit.then_some(rel))
}

/// The entry's path inside the extraction directory, or `None` when
/// `strip_components` removes all of it.
fn entry_path(raw: &[u8], strip: usize) -> Result<Option<Rel>> {
    ensure!(
        !raw.starts_with(b"/"),
        "absolute path; archive entries must be relative (refusing to write outside the extraction directory)"
    );
    let comps = clean_components(raw)?;
    if strip > 0 && comps.len() <= strip {
        return Ok(None);
    }
    Ok(Some(Rel::parse(OsStr::from_bytes(
        &comps[strip..].join(&b'/'),
    ))?))
}

/// The components of a relative archive path without `.` and empty ones;
/// `..` is refused.
fn clean_components(raw: &[u8]) -> Result<Vec<&[u8]>> {
    ensure!(!raw.contains(&0), "path contains a NUL byte");
    let comps: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    ensure!(
        !comps.iter().any(|c| *c == b".."),
        "path has a '..' component (refusing to write outside the extraction directory)"
    );
    Ok(comps)
}

/// A relative symlink target may not climb above the image root, resolved
/// from the link's own directory. Absolute targets point into the image.
fn check_symlink(link: &Rel, target: &[u8]) -> Result<()> {
    let shown = String::from_utf8_lossy(target);
    ensure!(!target.is_empty(), "symlink {link} has an empty target");
    ensure!(
        !target.contains(&0),
        "symlink target {shown:?} contains a NUL byte"
    );
    if target.starts_with(b"/") {
        return Ok(());
    }
    let mut depth = link.components().count().saturating_sub(1);
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." if depth == 0 => bail!(
                "symlink {link} -> {shown} points above the image root; \
                 use an absolute target or fewer '..'"
            ),
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// A hard link's target, stripped like entry paths, relative to the
/// extraction directory.
fn link_target(raw: &[u8], strip: usize) -> Result<Rel> {
    let shown = String::from_utf8_lossy(raw);
    ensure!(
        !raw.starts_with(b"/"),
        "hard link target {shown:?} is absolute; it must name an earlier entry"
    );
    let comps = clean_components(raw).with_context(|| format!("hard link target {shown:?}"))?;
    ensure!(
        comps.len() > strip,
        "hard link target {shown:?} is removed by strip_components = {strip}"
    );
    Rel::named(OsStr::from_bytes(&comps[strip..].join(&b'/')))
}

fn entry_attrs<R: Read>(entry: &mut tar::Entry<'_, R>, opts: &ExtractOpts) -> Result<Attrs> {
    let header = entry.header();
    let mode = header.mode().context("reading mode")? & 0o7777;
    let (uid, gid) = if opts.keep_owner {
        // The tar crate has already applied PAX uid/gid records here.
        let uid = header.uid().context("reading uid")?;
        let gid = header.gid().context("reading gid")?;
        let id = |v: u64, what: &str| -> Result<u32> {
            match u32::try_from(v) {
                // chown(2) reads -1 as "leave unchanged": the file would stay
                // root's, a setuid one becoming setuid root.
                Ok(u32::MAX) => bail!("{what} {v} (-1) is not an owner: chown would keep root"),
                Ok(id) => Ok(id),
                Err(_) => bail!("{what} {v} is out of range"),
            }
        };
        (id(uid, "uid")?, id(gid, "gid")?)
    } else {
        (0, 0)
    };
    let mut mtime = i64::try_from(header.mtime().context("reading mtime")?).unwrap_or(i64::MAX);
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions().context("reading PAX records")? {
        for ext in exts {
            let ext = ext.context("reading PAX records")?;
            let Ok(key) = ext.key() else { continue };
            if key == "mtime" {
                mtime = pax_time(ext.value_bytes())?;
            } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(Attrs {
        mode,
        uid,
        gid,
        mtime: mtime.min(opts.epoch),
        xattrs,
    })
}

/// A PAX time such as `1700000000` or `-12.5`: whole seconds, rounded down.
fn pax_time(value: &[u8]) -> Result<i64> {
    let text = std::str::from_utf8(value).ok();
    let parsed = text.and_then(|t| match t.split_once('.') {
        None => t.parse::<i64>().ok(),
        Some((secs, frac)) => {
            let secs: i64 = if secs == "-" { Ok(0) } else { secs.parse() }.ok()?;
            let negative_frac = t.starts_with('-') && frac.bytes().any(|b| b != b'0');
            Some(if negative_frac { secs - 1 } else { secs })
        }
    });
    parsed.with_context(|| format!("bad PAX mtime {:?}", String::from_utf8_lossy(value)))
}

/// One `members` pattern.
struct Member(glob::Pattern);

impl Member {
    fn new(pattern: &str) -> Result<Member> {
        let trimmed = pattern.trim_start_matches("./").trim_matches('/');
        ensure!(!trimmed.is_empty(), "empty member pattern {pattern:?}");
        let pat = glob::Pattern::new(trimmed)
            .with_context(|| format!("bad member pattern {pattern:?}"))?;
        Ok(Member(pat))
    }

    /// Whether the pattern matches `path` or one of its parent directories.
    fn matches(&self, path: &Rel) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut p = path.clone();
        while !p.is_root() {
            if self.0.matches_with(&p.as_os().to_string_lossy(), opts) {
                return true;
            }
            p = p.parent();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::{assert_canary_untouched, setup, HostProbe};
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::{Builder, Header};

    const WHAT: &str = "base test.tar";

    fn opts() -> ExtractOpts {
        ExtractOpts {
            dest: "/".into(),
            strip_components: 0,
            members: Vec::new(),
            epoch: i64::MAX,
            keep_owner: true,
        }
    }

    fn header(kind: EntryType, mode: u32, mtime: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn file(b: &mut Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32, mtime: u64) {
        let mut h = header(EntryType::Regular, mode, mtime);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn dir(b: &mut Builder<Vec<u8>>, path: &str, mtime: u64) {
        b.append_data(
            &mut header(EntryType::Directory, 0o755, mtime),
            path,
            &[][..],
        )
        .unwrap();
    }

    fn link(b: &mut Builder<Vec<u8>>, kind: EntryType, path: &str, target: &str) {
        b.append_link(&mut header(kind, 0o777, 1000), path, target)
            .unwrap();
    }

    /// An entry with raw name and link name bytes, bypassing the tar crate's
    /// own refusal to write `..` and absolute paths.
    fn raw(b: &mut Builder<Vec<u8>>, kind: EntryType, name: &str, target: &str, data: &[u8]) {
        let mut h = header(kind, 0o644, 1000);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn archive(build: impl FnOnce(&mut Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn meta(root: &Root, p: &str) -> std::fs::Metadata {
        std::fs::symlink_metadata(root.path().join(p)).unwrap()
    }

    #[test]
    fn base_symlinks_keep_later_writes_inside_root() {
        let (t, root) = setup();
        let base = archive(|b| {
            dir(b, "./", 1000);
            dir(b, "./usr/", 1000);
            link(b, EntryType::Symlink, "./opt", "var/opt"); // var/opt does not exist
            link(b, EntryType::Symlink, "./lib", "/usr/lib"); // neither does usr/lib
            link(
                b,
                EntryType::Symlink,
                "./host",
                t.path().join("canary").to_str().unwrap(),
            );
        });
        let stats = extract(&root, &base[..], &opts(), WHAT).unwrap();
        assert_eq!(stats.entries, 5);
        root.write_file("/opt/x/y", &mut &b"1"[..], &Attrs::root(0o644, 1))
            .unwrap();
        let (z, w) = (HostProbe::new("z"), HostProbe::new("w"));
        root.write_file(
            &format!("/lib/{}", z.0),
            &mut &b"2"[..],
            &Attrs::root(0o644, 1),
        )
        .unwrap();
        // A component tarball under a symlinked directory, with a `bin/`
        // entry that must not replace `lib -> /usr/lib`.
        let component = archive(|b| {
            dir(b, "lib/", 1000);
            file(b, &format!("lib/{}", w.0), b"3", 0o644, 1000);
            file(b, "host/evil", b"4", 0o644, 1000);
        });
        extract(&root, &component[..], &opts(), "archive component.tar").unwrap();
        let mut o = opts();
        o.dest = "/opt/foo".into();
        extract(
            &root,
            &archive(|b| file(b, "bin/tool", b"5", 0o755, 1000))[..],
            &o,
            "tool.tar",
        )
        .unwrap();
        let r = root.path();
        assert_eq!(std::fs::read(r.join("var/opt/x/y")).unwrap(), b"1");
        assert_eq!(std::fs::read(r.join("usr/lib").join(&z.0)).unwrap(), b"2");
        assert_eq!(std::fs::read(r.join("usr/lib").join(&w.0)).unwrap(), b"3");
        assert_eq!(std::fs::read(r.join("var/opt/foo/bin/tool")).unwrap(), b"5");
        let inside = r
            .join(t.path().strip_prefix("/").unwrap())
            .join("canary/evil");
        assert_eq!(std::fs::read(inside).unwrap(), b"4");
        assert!(root.is_symlink("lib") && root.is_symlink("opt"));
        assert_canary_untouched(&t);
    }

    #[test]
    fn hostile_entries_fail_naming_the_entry_and_write_nothing_outside() {
        type Build = Box<dyn Fn(&mut Builder<Vec<u8>>, &str)>;
        let cases: Vec<(&str, Build, &str, &str)> = vec![
            (
                "dotdot",
                Box::new(|b, _| raw(b, EntryType::Regular, "../canary/evil", "", b"x")),
                "../canary/evil",
                "'..'",
            ),
            (
                "inner dotdot",
                Box::new(|b, _| raw(b, EntryType::Regular, "a/../../canary/evil", "", b"x")),
                "a/../../canary/evil",
                "'..'",
            ),
            (
                "absolute",
                Box::new(|b, canary| {
                    raw(b, EntryType::Regular, &format!("{canary}/evil"), "", b"x")
                }),
                "canary/evil",
                "absolute",
            ),
            (
                "climbing symlink",
                Box::new(|b, _| {
                    raw(b, EntryType::Symlink, "a", "../../../etc", b"");
                    raw(
                        b,
                        EntryType::Regular,
                        "a/passwd",
                        "",
                        b"root::0:0::/:/bin/sh\n",
                    );
                }),
                "\"a\"",
                "points above the image root",
            ),
            (
                "nested climbing symlink",
                Box::new(|b, _| raw(b, EntryType::Symlink, "usr/x", "../../canary", b"")),
                "usr/x",
                "points above the image root",
            ),
            (
                "hardlink dotdot",
                Box::new(|b, _| raw(b, EntryType::Link, "h", "../canary/keep", b"")),
                "\"h\"",
                "'..'",
            ),
            (
                "hardlink absolute",
                Box::new(|b, canary| raw(b, EntryType::Link, "h", &format!("{canary}/keep"), b"")),
                "\"h\"",
                "absolute",
            ),
            (
                "hardlink missing",
                Box::new(|b, _| raw(b, EntryType::Link, "h", "nope", b"")),
                "\"h\"",
                "does not exist",
            ),
        ];
        for (case, build, entry, reason) in cases {
            let (t, root) = setup();
            let canary = t.path().join("canary");
            let tar = archive(|b| {
                file(b, "ok", b"fine", 0o644, 1000);
                build(b, canary.to_str().unwrap());
            });
            let err = format!("{:#}", extract(&root, &tar[..], &opts(), WHAT).unwrap_err());
            assert!(
                err.contains(entry) && err.contains(WHAT) && err.contains(reason),
                "{case}: {err}"
            );
            assert!(
                !root.exists("etc/passwd") && !root.exists("a/passwd"),
                "{case}"
            );
            assert_eq!(root.read("ok").unwrap().unwrap(), b"fine", "{case}");
            assert_canary_untouched(&t);
        }
    }

    #[test]
    fn owner_minus_one_is_refused_not_left_root() {
        for (key, value) in [("uid", "4294967295"), ("gid", "4294967295")] {
            let tar = archive(|b| {
                b.append_pax_extensions([(key, value.as_bytes())]).unwrap();
                file(b, "usr/bin/su", b"elf", 0o4755, 1000);
            });
            let (_t, root) = setup();
            let err = format!("{:#}", extract(&root, &tar[..], &opts(), WHAT).unwrap_err());
            assert!(
                err.contains("usr/bin/su") && err.contains(&format!("{key} 4294967295")),
                "{err}"
            );
            assert!(!root.exists("usr/bin/su"), "{key}: the file was kept");
        }
    }

    #[test]
    fn owners_modes_xattrs_and_long_names_survive() {
        // v2 file capability: cap_net_raw, effective.
        let cap: &[u8] = &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let long_gnu = format!("usr/share/{}/gnu", "d".repeat(120));
        let long_pax = format!("usr/share/{}/pax", "p".repeat(120));
        let tar = archive(|b| {
            b.append_pax_extensions([
                ("uid", &b"100000"[..]),
                ("gid", &b"3000000000"[..]),
                ("SCHILY.xattr.security.capability", cap),
                ("SCHILY.xattr.user.origin", &b"base"[..]),
            ])
            .unwrap();
            file(b, "usr/bin/ping", b"elf", 0o4755, 1000);
            let mut h = header(EntryType::Regular, 0o2755, 1000);
            h.set_uid(1234);
            h.set_gid(5678);
            h.set_size(2);
            b.append_data(&mut h, "usr/bin/wall", &b"hi"[..]).unwrap();
            b.append_data(
                &mut header(EntryType::Directory, 0o1777, 1000),
                "tmp",
                &[][..],
            )
            .unwrap();
            file(b, &long_gnu, b"g", 0o644, 1000);
            b.append_pax_extensions([("path", long_pax.as_bytes())])
                .unwrap();
            raw(b, EntryType::Regular, "truncated-name", "", b"p");
        });
        let (_t, root) = setup();
        extract(&root, &tar[..], &opts(), WHAT).unwrap();
        let m = meta(&root, "usr/bin/ping");
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o4755, 100_000, 3_000_000_000)
        );
        let ping = root.path().join("usr/bin/ping");
        assert_eq!(
            xattr::get(&ping, "security.capability").unwrap().as_deref(),
            Some(cap)
        );
        assert_eq!(
            xattr::get(&ping, "user.origin").unwrap().as_deref(),
            Some(&b"base"[..])
        );
        let m = meta(&root, "usr/bin/wall");
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2755, 1234, 5678));
        assert!(!xattr::list(root.path().join("usr/bin/wall"))
            .unwrap()
            .any(|n| n == "user.origin"));
        assert_eq!(meta(&root, "tmp").mode() & 0o7777, 0o1777);
        assert_eq!(root.read(&long_gnu).unwrap().unwrap(), b"g");
        assert_eq!(root.read(&long_pax).unwrap().unwrap(), b"p");
        assert!(!root.exists("truncated-name"));

        // Release tarballs: owner dropped, mode and capabilities kept.
        let (_t, root) = setup();
        extract(
            &root,
            &tar[..],
            &ExtractOpts {
                keep_owner: false,
                ..opts()
            },
            WHAT,
        )
        .unwrap();
        let m = meta(&root, "usr/bin/ping");
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o4755, 0, 0));
        let ping = root.path().join("usr/bin/ping");
        assert_eq!(
            xattr::get(ping, "security.capability").unwrap().as_deref(),
            Some(cap)
        );
    }

    #[test]
    fn device_nodes_and_fifos_are_created() {
        let tar = archive(|b| {
            // Not a file: skipped, not counted.
            let mut g = header(EntryType::XGlobalHeader, 0o644, 0);
            g.set_size(0);
            b.append_data(&mut g, "pax_global_header", &[][..]).unwrap();
            for (kind, path, major, minor) in [
                (EntryType::Char, "dev/null", 1, 3),
                (EntryType::Block, "dev/loop0", 7, 0),
                (EntryType::Fifo, "run/fifo", 0, 0),
            ] {
                let mut h = header(kind, 0o620, 1000);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                h.set_gid(6);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        });
        let (_t, root) = setup();
        assert_eq!(extract(&root, &tar[..], &opts(), WHAT).unwrap().entries, 3);
        let m = meta(&root, "dev/null");
        assert!(m.file_type().is_char_device());
        assert_eq!(
            (m.rdev(), m.mode() & 0o7777, m.gid(), m.mtime()),
            (rustix::fs::makedev(1, 3), 0o620, 6, 1000)
        );
        let m = meta(&root, "dev/loop0");
        assert!(m.file_type().is_block_device() && m.rdev() == rustix::fs::makedev(7, 0));
        assert!(meta(&root, "run/fifo").file_type().is_fifo());
    }

    /// GNU tar and Python's tarfile leave a FIFO's (and sometimes a
    /// device's) number fields blank.
    #[test]
    fn blank_device_fields_are_zero() {
        let tar = archive(|b| {
            for (kind, path) in [(EntryType::Fifo, "run/fifo"), (EntryType::Char, "dev/x")] {
                let mut h = header(kind, 0o644, 1000);
                h.set_path(path).unwrap();
                h.as_mut_bytes()[329..345].fill(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        });
        let (_t, root) = setup();
        assert_eq!(extract(&root, &tar[..], &opts(), WHAT).unwrap().entries, 2);
        assert!(meta(&root, "run/fifo").file_type().is_fifo());
        let m = meta(&root, "dev/x");
        assert!(m.file_type().is_char_device() && m.rdev() == 0);
    }

    #[test]
    fn strip_components_and_members() {
        let tar = archive(|b| {
            dir(b, "pkg-1.0/", 1000);
            dir(b, "pkg-1.0/bin/", 1000);
            let mut h = header(EntryType::Regular, 0o755, 1000);
            h.set_uid(1001);
            h.set_size(1);
            b.append_data(&mut h, "pkg-1.0/bin/a", &b"a"[..]).unwrap();
            file(b, "pkg-1.0/bin/b", b"b", 0o755, 1000);
            link(b, EntryType::Link, "pkg-1.0/bin/c", "pkg-1.0/bin/a");
            file(b, "pkg-1.0/doc/README", b"r", 0o644, 1000);
        });
        let (_t, root) = setup();
        let o = ExtractOpts {
            dest: "/usr/local".into(),
            strip_components: 1,
            members: vec!["bin/*".into()],
            keep_owner: false,
            ..opts()
        };
        let stats = extract(&root, &tar[..], &o, "archive pkg.tar.gz").unwrap();
        assert_eq!(
            stats,
            ExtractStats {
                entries: 3,
                bytes: 2
            }
        );
        assert_eq!(root.list_dir("usr/local").unwrap(), ["bin"]);
        assert_eq!(root.list_dir("usr/local/bin").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            meta(&root, "usr/local/bin/a").ino(),
            meta(&root, "usr/local/bin/c").ino()
        );
        assert_eq!(meta(&root, "usr/local/bin/a").uid(), 0);

        let (_t, root) = setup();
        let o = ExtractOpts {
            strip_components: 1,
            members: vec!["doc".into(), "./bin/b".into()],
            ..opts()
        };
        extract(&root, &tar[..], &o, "archive pkg.tar.gz").unwrap();
        assert!(root.exists("doc/README") && root.exists("bin/b") && !root.exists("bin/a"));

        let o = ExtractOpts {
            members: vec!["bin/a".into(), "sbin/*".into()],
            strip_components: 1,
            ..opts()
        };
        let err = format!(
            "{:#}",
            extract(&root, &tar[..], &o, "archive pkg.tar.gz").unwrap_err()
        );
        assert!(
            err.contains("\"sbin/*\"") && err.contains("pkg.tar.gz"),
            "{err}"
        );

        // CNI-style "./name" entries.
        let cni = archive(|b| {
            dir(b, "./", 1000);
            file(b, "./bridge", b"x", 0o755, 1000);
            file(b, "./loopback", b"y", 0o755, 1000);
        });
        let o = ExtractOpts {
            dest: "/opt/cni/bin".into(),
            members: vec!["bridge".into()],
            ..opts()
        };
        extract(&root, &cni[..], &o, "archive cni.tgz").unwrap();
        assert_eq!(root.list_dir("opt/cni/bin").unwrap(), ["bridge"]);
    }

    #[test]
    fn compression_is_detected_by_magic_not_name() {
        let tar = archive(|b| file(b, "etc/os-release", b"ID=test\n", 0o644, 1000));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let t = tempfile::tempdir().unwrap();
        // Every name lies about the format.
        for (name, bytes) in [
            ("a.tar.zst", &gz),
            ("b.tar.xz", &zst),
            ("c.tar.gz", &xz),
            ("d.tar.xz", &tar),
        ] {
            let path = t.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let mut out = Vec::new();
            open_decompressed(&path)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, tar, "{name}");
            let root = Root::create(&t.path().join(format!("root-{name}"))).unwrap();
            extract(&root, open_decompressed(&path).unwrap(), &opts(), name).unwrap();
            assert_eq!(
                root.read("etc/os-release").unwrap().unwrap(),
                b"ID=test\n",
                "{name}"
            );
        }
        let gz_text = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&[b'x'; 600]).unwrap();
            e.finish().unwrap()
        };
        for (name, bytes, want) in [
            (
                "notes.tar",
                &b"hello, world\n".repeat(100),
                "uncompressed data, no ustar header",
            ),
            ("kernel.tar.gz", &gz_text, "gzip data, no ustar header"),
            ("empty.tar", &Vec::new(), "empty"),
            ("old.tar.bz2", &b"BZh91AY&SY".to_vec(), "bzip2"),
        ] {
            let path = t.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = format!("{:#}", open_decompressed(&path).err().unwrap());
            assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn mtimes_are_clamped_and_directories_keep_theirs() {
        let tar = archive(|b| {
            dir(b, "d/", 100);
            file(b, "d/new", b"n", 0o644, 2_000_000_000);
            file(b, "d/old", b"o", 0o644, 1_000_000_000);
            b.append_pax_extensions([("mtime", &b"1500000000.75"[..])])
                .unwrap();
            file(b, "d/pax", b"p", 0o644, 1);
            link(b, EntryType::Symlink, "d/link", "new");
        });
        let (_t, root) = setup();
        extract(
            &root,
            &tar[..],
            &ExtractOpts {
                epoch: 1_700_000_000,
                ..opts()
            },
            WHAT,
        )
        .unwrap();
        for (p, want) in [
            ("d", 100),
            ("d/new", 1_700_000_000),
            ("d/old", 1_000_000_000),
            ("d/pax", 1_500_000_000),
            ("d/link", 1000),
        ] {
            let m = meta(&root, p);
            assert_eq!((m.mtime(), m.atime()), (want, want), "{p}");
        }
        assert_eq!(pax_time(b"-1.5").unwrap(), -2);
        assert!(pax_time(b"soon").is_err());
    }

    #[test]
    fn a_file_entry_replaces_a_symlink_without_writing_through_it() {
        let (t, root) = setup();
        let a = Attrs::root(0o777, 1);
        root.symlink(
            "etc/resolv.conf",
            "/run/systemd/resolve/stub-resolv.conf",
            &a,
        )
        .unwrap();
        root.symlink(
            "etc/hosts",
            t.path().join("canary/keep").to_str().unwrap(),
            &a,
        )
        .unwrap();
        write_target(&root);
        let tar = archive(|b| {
            file(b, "etc/resolv.conf", b"nameserver 10.0.0.1\n", 0o644, 1000);
            file(b, "etc/hosts", b"127.0.0.1 localhost\n", 0o644, 1000);
        });
        extract(&root, &tar[..], &opts(), WHAT).unwrap();
        assert!(!root.is_symlink("etc/resolv.conf") && !root.is_symlink("etc/hosts"));
        assert_eq!(
            root.read("etc/resolv.conf").unwrap().unwrap(),
            b"nameserver 10.0.0.1\n"
        );
        assert_eq!(
            root.read("run/systemd/resolve/stub-resolv.conf")
                .unwrap()
                .unwrap(),
            b"stub"
        );
        assert_canary_untouched(&t);
    }

    fn write_target(root: &Root) {
        let a = Attrs::root(0o644, 1);
        root.write_file(
            "run/systemd/resolve/stub-resolv.conf",
            &mut &b"stub"[..],
            &a,
        )
        .unwrap();
    }

    #[test]
    fn large_files_are_streamed() {
        const SIZE: u64 = 24 << 20;
        let mut h = header(EntryType::Regular, 0o644, 1000);
        h.set_path("big.img").unwrap();
        h.set_size(SIZE);
        h.set_cksum();
        // Header, generated content, end-of-archive: never all in memory.
        let stream = Cursor::new(h.as_bytes().to_vec())
            .chain(std::io::repeat(0xa5).take(SIZE))
            .chain(std::io::repeat(0).take(1024));
        let (_t, root) = setup();
        let stats = extract(&root, stream, &opts(), WHAT).unwrap();
        assert_eq!(
            stats,
            ExtractStats {
                entries: 1,
                bytes: SIZE
            }
        );
        assert_eq!(meta(&root, "big.img").len(), SIZE);
    }
}
