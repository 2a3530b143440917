// SPDX-License-Identifier: Apache-2.0
//! `airlock bundle` and `airlock build --from-bundle`: everything a build
//! needs, carried across the gap in one archive (tar, zstd-compressed).
//!
//! The archive holds `tree/` — the recipe, its lock, its template folder,
//! overlays and local input files, at their places relative to each other —
//! and `cache/` — the downloaded inputs and pulled image archives from the
//! content-addressed cache, with the records that name the images — and
//! ends with `airlock-bundle.json`, the sha256 of every file in it.
//! `--split` cuts the archive into parts; `<FILE>.sha256` lists every part
//! with its sha256. On the far side every part is checked before anything
//! is unpacked, every file against the manifest as it is unpacked (into a
//! staging folder), and only then does anything enter the cache.

pub mod parts;
mod unpack;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::inputs::{Cache, Source};
use crate::recipe::{self, Loaded};
pub use unpack::{unpack, Unpacked};

/// Name of the manifest, the archive's last entry.
pub const MANIFEST: &str = "airlock-bundle.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub airlock_version: String,
    pub name: String,
    /// The recipe, as a path in the archive (`tree/…`).
    pub recipe: String,
    /// Every input, as pinned.
    pub inputs: Vec<InputEntry>,
    /// Every regular file in the archive but this manifest: path → sha256.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEntry {
    pub what: String,
    pub source: String,
    pub sha256: String,
}

pub struct BundleOptions {
    pub recipe: PathBuf,
    pub output: PathBuf,
    pub cache: PathBuf,
    /// Largest part, in bytes.
    pub split: Option<u64>,
    pub quiet: bool,
}

/// What `bundle` wrote.
#[derive(Debug, Serialize)]
pub struct Written {
    pub parts: Vec<Part>,
    pub sums: PathBuf,
    pub inputs: usize,
    pub files: usize,
}

#[derive(Debug, Serialize)]
pub struct Part {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// One thing to put in the archive.
enum Item {
    File { src: PathBuf, name: String },
    Dir { name: String, mode: u32 },
    Symlink { name: String, target: PathBuf },
}

pub fn bundle(opts: &BundleOptions) -> Result<Written> {
    let loaded = recipe::load(&opts.recipe)?;
    let cache = Cache::new(&opts.cache);
    let Collected {
        items,
        inputs,
        recipe: recipe_name,
        checks,
    } = collect(&loaded, &cache)?;
    let total: u64 = items
        .iter()
        .map(|i| match i {
            Item::File { src, .. } => fs::metadata(src).map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum();
    let progress = if opts.quiet {
        crate::progress::Progress::quiet()
    } else {
        crate::progress::Progress::new()
    };
    let bar = progress.bytes(total, "bundle");
    let mut split = parts::SplitWriter::new(&opts.output, opts.split);
    let mut files = BTreeMap::new();
    {
        let mut zst = zstd::stream::write::Encoder::new(&mut split, 10).context("starting zstd")?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        zst.multithread(threads).ok();
        let mut tar = tar::Builder::new(&mut zst);
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        for item in &items {
            match item {
                Item::File { src, name } => {
                    let f = fs::File::open(src)
                        .with_context(|| format!("opening {}", src.display()))?;
                    let meta = f
                        .metadata()
                        .with_context(|| format!("reading {}", src.display()))?;
                    let mut h = tar::Header::new_gnu();
                    h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
                    let mut reader = Hashing {
                        inner: bar.wrap_read(f),
                        hasher: Sha256::new(),
                    };
                    tar.append_data(&mut h, name, &mut reader)
                        .with_context(|| format!("adding {} to the bundle", src.display()))?;
                    files.insert(name.clone(), hex::encode(reader.hasher.finalize()));
                }
                Item::Dir { name, mode } => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    h.set_mtime(0);
                    tar.append_data(&mut h, name, io::empty())
                        .with_context(|| format!("adding {name} to the bundle"))?;
                }
                Item::Symlink { name, target } => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    h.set_mtime(0);
                    tar.append_link(&mut h, name, target)
                        .with_context(|| format!("adding {name} to the bundle"))?;
                }
            }
        }
        // A cache blob must still be what its name says, or the far side
        // would refuse the bundle: say so here, where fetch can mend it.
        for (name, got) in &files {
            if let Some(hex) = name.strip_prefix("cache/sha256/") {
                if hex != got {
                    bail!(
                        "{}: the cached file hashes to {got}, not its name: the cache is damaged; \
                         delete it and run `airlock fetch` again (nothing was written)",
                        cache.blob(hex).display()
                    );
                }
            }
        }
        for (name, want, what) in &checks {
            let got = files.get(name).map(String::as_str).unwrap_or("nothing");
            if got != want {
                bail!("{what}: sha256 is {got}, expected {want}; the file changed since it was pinned (nothing was written)");
            }
        }
        let manifest = Manifest {
            format: 1,
            airlock_version: env!("CARGO_PKG_VERSION").into(),
            name: loaded.recipe.name.get_ref().clone(),
            recipe: recipe_name,
            inputs,
            files: files.clone(),
        };
        let text = serde_json::to_vec_pretty(&manifest)?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(text.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, MANIFEST, &text[..])
            .context("adding the bundle manifest")?;
        tar.finish().context("finishing the bundle archive")?;
        drop(tar);
        zst.finish().context("finishing zstd compression")?;
    }
    bar.finish_and_clear();
    let written = split.finish()?;
    Ok(Written {
        sums: parts::sums_path(&opts.output),
        parts: written
            .into_iter()
            .map(|(path, sha256, size)| Part { path, sha256, size })
            .collect(),
        inputs: loaded.inputs().len(),
        files: files.len(),
    })
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Everything the recipe needs, with names in the archive.
fn collect(l: &Loaded, cache: &Cache) -> Result<Collected> {
    let r = &l.recipe;
    let recipe_path =
        fs::canonicalize(&l.path).with_context(|| format!("reading {}", l.path.display()))?;
    // Local things, each at its place relative to the others.
    let mut local: Vec<(PathBuf, String)> = vec![(recipe_path.clone(), "recipe".into())];
    let lock = recipe::lock::path_for(&recipe_path);
    if lock.is_file() {
        local.push((lock, "lock file".into()));
    }
    let mut relative = |p: &Path, what: &str, at: String| -> Result<()> {
        if p.is_absolute() {
            bail!("{at}: {what} {} is an absolute path: make it relative to the recipe so the bundle can carry it", p.display());
        }
        let abs = fs::canonicalize(l.resolve(p))
            .with_context(|| format!("{at}: {what} {}", p.display()))?;
        local.push((abs, what.to_string()));
        Ok(())
    };
    if let Some(t) = &r.template_dir {
        relative(t.get_ref(), "template_dir", l.at(t))?;
    }
    for o in &r.overlays {
        relative(o.get_ref(), "overlay", l.at(o))?;
    }
    let mut items = Vec::new();
    let mut inputs = Vec::new();
    let mut blobs = std::collections::BTreeSet::new();
    let mut pinned_local = Vec::new();
    for i in l.inputs() {
        let sha256 = l.pinned(&i)?;
        let fetch_hint = || format!("run `airlock fetch {}` first", l.path.display());
        match &i.resolved {
            Source::Path(p) => {
                relative(Path::new(&i.source), &i.what, i.at.clone())?;
                let abs =
                    fs::canonicalize(p).with_context(|| format!("{}: {}", i.at, p.display()))?;
                pinned_local.push((
                    abs,
                    sha256.clone(),
                    format!("{}: {} ({})", i.at, i.what, p.display()),
                ));
            }
            Source::Url(u) => {
                if !cache.blob(&sha256).is_file() {
                    bail!(
                        "{}: {} ({u}) is not in the cache {}: {}",
                        i.at,
                        i.what,
                        cache.root().display(),
                        fetch_hint()
                    );
                }
                blobs.insert(sha256.clone());
            }
            Source::Image(img) => {
                let Some((record, rec)) = crate::registry::cached_archive(cache, img, &sha256)?
                else {
                    bail!(
                        "{}: {} ({}) is not in the cache {}: {}",
                        i.at,
                        i.what,
                        img.reference,
                        cache.root().display(),
                        fetch_hint()
                    );
                };
                let name = record
                    .file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned();
                items.push(Item::File {
                    src: record,
                    name: format!("cache/oci/{name}"),
                });
                blobs.insert(rec.archive);
            }
        }
        inputs.push(InputEntry {
            what: i.what,
            source: i.source,
            sha256,
        });
    }
    // The common folder of everything local is the archive's tree/.
    let top = local
        .iter()
        .map(|(p, _)| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent().unwrap_or(Path::new("/")).to_path_buf()
            }
        })
        .reduce(|a, b| common_ancestor(&a, &b))
        .expect("the recipe is there");
    let name_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&top).expect("under the common folder");
        format!("tree/{}", rel.display())
    };
    let mut seen = std::collections::BTreeSet::new();
    for (p, what) in &local {
        if p.is_dir() {
            walk(p, &name_of, &mut items, &mut seen)
                .with_context(|| format!("reading {what} {}", p.display()))?;
        } else if seen.insert(p.clone()) {
            items.push(Item::File {
                src: p.clone(),
                name: name_of(p),
            });
        }
    }
    for sha in blobs {
        items.push(Item::File {
            src: cache.blob(&sha),
            name: format!("cache/sha256/{sha}"),
        });
    }
    let checks = pinned_local
        .into_iter()
        .map(|(p, sha, what)| (name_of(&p), sha, what))
        .collect();
    Ok(Collected {
        items,
        inputs,
        recipe: name_of(&recipe_path),
        checks,
    })
}

struct Collected {
    items: Vec<Item>,
    inputs: Vec<InputEntry>,
    /// The recipe's name in the archive.
    recipe: String,
    /// Local inputs: (name in the archive, pinned sha256, what for errors),
    /// checked against what was written.
    checks: Vec<(String, String, String)>,
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x);
    }
    if out.as_os_str().is_empty() {
        out.push("/");
    }
    out
}

/// A directory tree, sorted, without following symlinks.
fn walk(
    dir: &Path,
    name_of: &dyn Fn(&Path) -> String,
    items: &mut Vec<Item>,
    seen: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !seen.insert(dir.to_path_buf()) {
        return Ok(());
    }
    let meta = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    items.push(Item::Dir {
        name: name_of(dir),
        mode: meta.permissions().mode() & 0o7777,
    });
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    for p in entries {
        let m = fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if m.file_type().is_symlink() {
            let target = fs::read_link(&p).with_context(|| format!("reading {}", p.display()))?;
            items.push(Item::Symlink {
                name: name_of(&p),
                target,
            });
        } else if m.is_dir() {
            walk(&p, name_of, items, seen)?;
        } else if m.is_file() {
            if seen.insert(p.clone()) {
                items.push(Item::File {
                    src: p.clone(),
                    name: name_of(&p),
                });
            }
        } else {
            bail!(
                "{} is neither a file, a folder nor a symlink: a bundle cannot carry it",
                p.display()
            );
        }
    }
    Ok(())
}

/// A path inside the archive: relative, no `..`, under tree/ or cache/.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let p = Path::new(name);
    let ok = !name.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && (name == MANIFEST
            || name.starts_with("tree/")
            || name.starts_with("cache/sha256/")
            || name.starts_with("cache/oci/"));
    if !ok {
        bail!("the bundle has an entry {name:?} outside tree/ and cache/ (or with '..'): refusing the bundle");
    }
    Ok(())
}

/// Writes text to `w` — used by the CLI to print a part list.
pub fn describe(w: &Written, out: &mut dyn Write) -> io::Result<()> {
    for p in &w.parts {
        writeln!(
            out,
            "  {}  {} ({})",
            p.sha256,
            p.path.display(),
            indicatif::HumanBytes(p.size)
        )?;
    }
    writeln!(out, "  checksums: {}", w.sums.display())
}
