// SPDX-License-Identifier: Apache-2.0
//! The far side: check every part, unpack into a staging folder checking
//! every file against the bundle's manifest, and only then move the inputs
//! into the cache and the recipe tree into place.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::{check_name, parts, Manifest, MANIFEST};
use crate::inputs::Cache;

/// A bundle unpacked and checked.
#[derive(Debug)]
pub struct Unpacked {
    /// The recipe, in the unpacked tree.
    pub recipe: PathBuf,
    /// Where the recipe tree was put.
    pub tree: PathBuf,
    pub manifest: Manifest,
}

/// Checks and unpacks the bundle `file` (or its `.sha256` file): the
/// recipe tree goes to `dest` (replacing what an earlier unpack left
/// there), the inputs into `cache`.
pub fn unpack(
    file: &Path,
    cache: &Cache,
    dest: &Path,
    progress: &crate::progress::Progress,
) -> Result<Unpacked> {
    let sums = if file.extension().is_some_and(|e| e == "sha256") {
        file.to_path_buf()
    } else {
        parts::sums_path(file)
    };
    if !sums.is_file() {
        bail!(
            "{} is missing: `airlock bundle` writes it beside the bundle, and every part is checked against it; copy it too",
            sums.display()
        );
    }
    progress.step("checking the bundle parts");
    let bar = progress.bytes(0, "checking parts");
    let parts = parts::check_parts(&sums, &bar)?;
    bar.finish_and_clear();

    progress.step("unpacking the bundle");
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".airlock-unbundle-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging folder in {}", parent.display()))?;
    let total: u64 = parts
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = progress.bytes(total, "unpacking");
    let stream = zstd::stream::read::Decoder::new(bar.wrap_read(parts::Chain::new(parts)))
        .context("starting zstd decompression of the bundle")?;
    let (got, manifest) = extract(stream, staging.path())?;
    bar.finish_and_clear();
    let manifest = manifest.context(
        "the bundle has no airlock-bundle.json: it is truncated or not an airlock bundle",
    )?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest).context("parsing the bundle's airlock-bundle.json")?;
    if manifest.format != 1 {
        bail!(
            "the bundle has format {}, this airlock reads format 1: use the airlock that made it",
            manifest.format
        );
    }
    compare(&manifest.files, &got, &labels(&manifest, staging.path()))?;
    // A blob whose bytes are not its name (a bundle made from a damaged
    // cache) is refused even when the manifest agrees with the bytes.
    for (name, sha) in &got {
        if let Some(hex) = name.strip_prefix("cache/sha256/") {
            if hex != sha {
                bail!("the bundle's {name} hashes to {sha}: the bundle was made from a damaged cache (nothing was used)");
            }
        }
    }
    check_name(&manifest.recipe)?;
    let recipe_rel = manifest
        .recipe
        .strip_prefix("tree/")
        .context("the bundle's recipe is not under tree/")?
        .to_string();

    // Everything checked: the inputs into the cache, the tree into place.
    let blobs = staging.path().join("cache/sha256");
    if blobs.is_dir() {
        let dir = cache.root().join("sha256");
        fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
        for e in fs::read_dir(&blobs).with_context(|| format!("reading {}", blobs.display()))? {
            let e = e?;
            let to = dir.join(e.file_name());
            if !to.is_file() {
                fs::rename(e.path(), &to)
                    .with_context(|| format!("moving {} into the cache", to.display()))?;
            }
        }
    }
    let records = staging.path().join("cache/oci");
    if records.is_dir() {
        for e in fs::read_dir(&records).with_context(|| format!("reading {}", records.display()))? {
            let e = e?;
            let bytes =
                fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
            crate::inputs::write_atomic(&cache.root().join("oci").join(e.file_name()), &bytes)?;
        }
    }
    if dest.exists() {
        fs::remove_dir_all(dest)
            .with_context(|| format!("removing the earlier unpacked bundle {}", dest.display()))?;
    }
    fs::rename(staging.path().join("tree"), dest)
        .with_context(|| format!("moving the recipe tree to {}", dest.display()))?;
    Ok(Unpacked {
        recipe: dest.join(recipe_rel),
        tree: dest.to_path_buf(),
        manifest,
    })
}

/// Which input each cache file of the bundle belongs to, for messages:
/// a download by its digest, an image archive through the record that
/// names it (records are only read for this, never trusted).
fn labels(manifest: &Manifest, staging: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let by_digest: BTreeMap<&str, String> = manifest
        .inputs
        .iter()
        .map(|i| (i.sha256.as_str(), format!("{} ({})", i.what, i.source)))
        .collect();
    for i in &manifest.inputs {
        out.insert(
            format!("cache/sha256/{}", i.sha256),
            format!("{} ({})", i.what, i.source),
        );
    }
    let records = staging.join("cache/oci");
    for e in fs::read_dir(&records).into_iter().flatten().flatten() {
        let Ok(bytes) = fs::read(e.path()) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<crate::registry::ArchiveRecord>(&bytes) else {
            continue;
        };
        let pinned = rec.digest.trim_start_matches("sha256:");
        if let Some(label) = by_digest.get(pinned) {
            out.insert(format!("cache/sha256/{}", rec.archive), label.clone());
        }
    }
    out
}

/// Every file the manifest lists arrived with its sha256, and no other.
/// `labels` names the input a file belongs to.
fn compare(
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let mut problems = Vec::new();
    for (name, sha) in want {
        let of = labels
            .get(name)
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        match got.get(name) {
            None => problems.push(format!("{name}{of} is missing")),
            Some(g) if g != sha => problems.push(format!(
                "{name}{of} has sha256 {g}, the manifest says {sha}"
            )),
            _ => {}
        }
    }
    for name in got.keys().filter(|n| !want.contains_key(*n)) {
        problems.push(format!("{name} is not in the manifest"));
    }
    if !problems.is_empty() {
        bail!(
            "the bundle does not match its manifest (nothing was used):\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// Unpacks the archive into `dir`: regular files (hashed as written),
/// folders and, in tree/, symlinks; nothing is ever written through a
/// symlink. Returns each file's sha256 and the manifest's bytes.
/// What [`extract`] found: each file's sha256, and the manifest's bytes.
type Extracted = (BTreeMap<String, String>, Option<Vec<u8>>);

fn extract(stream: impl Read, dir: &Path) -> Result<Extracted> {
    let mut got = BTreeMap::new();
    let mut manifest = None;
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().context("reading the bundle")? {
        let mut entry = entry.context("reading the bundle (is a part missing or out of order?)")?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .context("the bundle has an entry whose name is not UTF-8")?;
        let name = name.trim_end_matches('/').to_string();
        check_name(&name)?;
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let ctx = || format!("unpacking {name} from the bundle");
        if name == MANIFEST {
            let mut b = Vec::new();
            (&mut entry)
                .take(64 << 20)
                .read_to_end(&mut b)
                .with_context(ctx)?;
            manifest = Some(b);
            continue;
        }
        let path = dir.join(&name);
        safe_parents(dir, &path).with_context(ctx)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = if name.starts_with("tree/") {
                    mode
                } else {
                    0o644
                };
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .with_context(ctx)?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = entry.read(&mut buf).with_context(ctx)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    io::Write::write_all(&mut f, &buf[..n]).with_context(ctx)?;
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).with_context(ctx)?;
                // Checked against the manifest (and blob names) once all is in.
                got.insert(name, hex::encode(h.finalize()));
            }
            tar::EntryType::Directory => match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("{}: the bundle has {name} twice", ctx()),
                Err(_) => {
                    fs::create_dir(&path).with_context(ctx)?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700))
                        .with_context(ctx)?;
                }
            },
            tar::EntryType::Symlink if name.starts_with("tree/") => {
                let target = entry
                    .link_name()
                    .with_context(ctx)?
                    .context("a symlink without a target")?;
                std::os::unix::fs::symlink(&target, &path).with_context(ctx)?;
            }
            other => bail!(
                "{}: a {other:?} entry has no place in a bundle: refusing the bundle",
                ctx()
            ),
        }
    }
    Ok((got, manifest))
}

/// Creates the missing folders above `path` inside `dir`; an existing
/// component that is not a real folder (a symlink) is refused.
fn safe_parents(dir: &Path, path: &Path) -> Result<()> {
    let rel = path
        .parent()
        .and_then(|p| p.strip_prefix(dir).ok())
        .context("a path outside the staging folder")?;
    let mut cur = dir.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} is not a folder (a symlink?): refusing to write below it",
                cur.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).with_context(|| format!("creating {}", cur.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", cur.display())),
        }
    }
    if let Ok(m) = fs::symlink_metadata(path) {
        if !m.is_dir() {
            bail!("{} comes twice in the bundle", path.display());
        }
    }
    Ok(())
}
