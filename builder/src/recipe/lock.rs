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
            Err(e) => return Err(e).with_context(|| format!("reading lock file {}", path.display())),
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
                anyhow::bail!("{}: {} has an invalid sha256 {:?}", path.display(), i.what, i.sha256);
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
        sorted.inputs.sort_by(|a, b| (&a.what, &a.source).cmp(&(&b.what, &b.source)));
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
    /// "recipe" (pinned there), "kept" (already locked), "hashed".
    pub how: &'static str,
}

/// Pins every input the recipe leaves unpinned and writes the lock file.
/// Local files are hashed; URL inputs need `airlock fetch`, which is not
/// part of this version, so they must be pinned in the recipe.
pub fn lock(loaded: &super::Loaded, update: bool) -> Result<Vec<LockOutcome>> {
    use crate::inputs::Source;
    let mut new = Lock::default();
    let mut out = Vec::new();
    for i in loaded.inputs() {
        if let Some(s) = &i.sha256 {
            out.push(LockOutcome { what: i.what, sha256: s.clone(), how: "recipe" });
            continue;
        }
        let (sha256, how) = match (loaded.lock.get(&i.what, &i.source), &i.resolved) {
            (Some(s), _) if !update => (s.to_string(), "kept"),
            (_, Source::Path(p)) => {
                let bar = crate::progress::Progress::new(1).bytes(
                    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                    &i.what,
                );
                let s = crate::inputs::hash_file(p, &bar)
                    .with_context(|| format!("{}: locking {}", i.at, i.what))?;
                bar.finish_and_clear();
                (s, "hashed")
            }
            (_, Source::Url(u)) => anyhow::bail!(
                "{}: {} comes from {u}: pin its sha256 in the recipe (the published .sha256 next to the download)",
                i.at,
                i.what
            ),
        };
        new.inputs.push(LockedInput { what: i.what.clone(), source: i.source.clone(), sha256: sha256.clone() });
        out.push(LockOutcome { what: i.what, sha256, how });
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
                LockedInput { what: "file /b".into(), source: "b".into(), sha256: "b".repeat(64) },
                LockedInput { what: "base".into(), source: "x.tar".into(), sha256: "a".repeat(64) },
            ],
        };
        let text = lock.to_toml().unwrap();
        assert!(text.find("base").unwrap() < text.find("file /b").unwrap(), "{text}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.toml.lock");
        std::fs::write(&p, &text).unwrap();
        let back = Lock::load(&p).unwrap();
        assert_eq!(back.get("base", "x.tar"), Some("a".repeat(64).as_str()));
        assert_eq!(back.get("base", "other.tar"), None, "a changed source is not pinned");
        std::fs::write(&p, text.replace(&"a".repeat(64), "zz")).unwrap();
        assert!(Lock::load(&p).unwrap_err().to_string().contains("invalid sha256"));
        assert_eq!(Lock::load(&d.path().join("none")).unwrap(), Lock::default());
    }
}
