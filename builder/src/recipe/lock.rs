// SPDX-License-Identifier: Apache-2.0
//! The lock file (`<recipe>.lock`): the sha256 of every input the recipe
//! does not pin itself, written by `airlock lock` on the connected side and
//! reviewed like code. `build` refuses an input pinned by neither.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    #[serde(default, rename = "input")]
    pub inputs: Vec<LockedInput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockedInput {
    pub what: String,
    pub source: String,
    pub sha256: String,
    /// Images: the manifest digest of each platform (`sha256` is the digest
    /// of what the tag names, an index or one manifest).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub platforms: std::collections::BTreeMap<String, String>,
}

pub fn path_for(recipe: &Path) -> PathBuf {
    let mut p = recipe.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl Lock {
    /// Reads a lock file; a missing one is an empty lock.
    pub fn load(path: &Path) -> Result<Lock> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading lock file {}", path.display()))
            }
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start];
                    format!(":{}", before.matches('\n').count() + 1)
                })
                .unwrap_or_default();
            anyhow::anyhow!("{}{at}: {}", path.display(), e.message().trim_end())
        })?;
        for i in &lock.inputs {
            if i.sha256.len() != 64 || !i.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!(
                    "{}: {} has an invalid sha256 {:?}",
                    path.display(),
                    i.what,
                    i.sha256
                );
            }
        }
        Ok(lock)
    }

    /// The locked digest of an input, matched by description and source so
    /// that editing the source in the recipe invalidates the pin.
    pub fn get(&self, what: &str, source: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|i| i.what == what && i.source == source)
            .map(|i| i.sha256.as_str())
    }

    pub fn to_toml(&self) -> Result<String> {
        let mut sorted = self.clone();
        sorted
            .inputs
            .sort_by(|a, b| (&a.what, &a.source).cmp(&(&b.what, &b.source)));
        Ok(format!(
            "# Written by `airlock lock`: sha256 of each input the recipe does not pin.\n\
             # Review changes to this file like code; `airlock build` trusts it.\n\n{}",
            toml::to_string(&sorted)?
        ))
    }
}

/// What `airlock lock` did for one input.
#[derive(Debug, Serialize)]
pub struct LockOutcome {
    pub what: String,
    pub sha256: String,
    /// "recipe" (pinned there), "kept" (already locked), "hashed",
    /// "published" (the .sha256 next to a download), "downloaded" (hashed
    /// while downloading into the cache) or "resolved" (an image tag).
    pub how: &'static str,
}

/// Pins every input the recipe leaves unpinned and writes the lock file.
/// Local files are hashed; a URL is pinned by the `.sha256` published next
/// to it, else downloaded into `cache` and hashed; an image tag is resolved
/// to its digest (and each platform's) at its registry or a mirror.
pub fn lock(
    loaded: &super::Loaded,
    update: bool,
    cache: &crate::inputs::Cache,
    http: &crate::fetch::http::Http,
) -> Result<Vec<LockOutcome>> {
    use crate::inputs::Source;
    let mut new = Lock::default();
    let mut out = Vec::new();
    for i in loaded.inputs() {
        if let Some(s) = &i.sha256 {
            out.push(LockOutcome {
                what: i.what,
                sha256: s.clone(),
                how: "recipe",
            });
            continue;
        }
        let mut platforms = std::collections::BTreeMap::new();
        let old = loaded
            .lock
            .inputs
            .iter()
            .find(|l| l.what == i.what && l.source == i.source);
        let same_platforms = |l: &LockedInput| match &i.resolved {
            Source::Image(img) => l.platforms.keys().eq(img.platforms.iter()),
            _ => true,
        };
        let (sha256, how) = match (old.filter(|l| same_platforms(l)), &i.resolved) {
            (Some(l), _) if !update => {
                platforms = l.platforms.clone();
                (l.sha256.clone(), "kept")
            }
            (_, Source::Path(p)) => {
                let bar = crate::progress::Progress::new()
                    .bytes(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0), &i.what);
                let s = crate::inputs::hash_file(p, &bar)
                    .with_context(|| format!("{}: locking {}", i.at, i.what))?;
                bar.finish_and_clear();
                (s, "hashed")
            }
            (_, Source::Url(u)) => crate::fetch::pin_url(http, cache, &i.what, u, &i.at)?,
            (_, Source::Image(img)) => {
                let l = crate::registry::resolve(http, &loaded.recipe.mirrors, cache, img, &i.what)
                    .with_context(|| format!("{}: locking {}", i.at, i.what))?;
                platforms = l.platforms;
                (
                    crate::registry::reference::hex_of(&l.digest).to_string(),
                    "resolved",
                )
            }
        };
        new.inputs.push(LockedInput {
            what: i.what.clone(),
            source: i.source.clone(),
            sha256: sha256.clone(),
            platforms,
        });
        out.push(LockOutcome {
            what: i.what,
            sha256,
            how,
        });
    }
    let path = path_for(&loaded.path);
    crate::inputs::write_atomic(&path, new.to_toml()?.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sorted_and_keyed_by_source() {
        let lock = Lock {
            inputs: vec![
                LockedInput {
                    what: "file /b".into(),
                    source: "b".into(),
                    sha256: "b".repeat(64),
                    platforms: Default::default(),
                },
                LockedInput {
                    what: "base".into(),
                    source: "x.tar".into(),
                    sha256: "a".repeat(64),
                    platforms: Default::default(),
                },
            ],
        };
        let text = lock.to_toml().unwrap();
        assert!(
            text.find("base").unwrap() < text.find("file /b").unwrap(),
            "{text}"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.toml.lock");
        std::fs::write(&p, &text).unwrap();
        let back = Lock::load(&p).unwrap();
        assert_eq!(back.get("base", "x.tar"), Some("a".repeat(64).as_str()));
        assert_eq!(
            back.get("base", "other.tar"),
            None,
            "a changed source is not pinned"
        );
        std::fs::write(&p, text.replace(&"a".repeat(64), "zz")).unwrap();
        assert!(Lock::load(&p)
            .unwrap_err()
            .to_string()
            .contains("invalid sha256"));
        assert_eq!(Lock::load(&d.path().join("none")).unwrap(), Lock::default());
    }
}
