// SPDX-License-Identifier: Apache-2.0
//! `/var/lib/airlock/images.imported`: which archives are in containerd.
//!
//! One line per imported archive, `<sha256>  <file>` as sha256sum writes
//! it, so an operator can read it (and delete a line to force an import).
//! The decision what to import is a pure function of the image list, the
//! record and the references containerd lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};

use crate::kube::images::ArchiveEntry as ImageArchive;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// sha256 → file, as recorded.
    entries: BTreeMap<String, String>,
}

impl Record {
    /// Reads the record; a missing file is an empty record. Lines that are
    /// not `<sha256>  <file>` are dropped (their archives are imported again).
    pub fn load(path: &Path) -> Result<Record> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the import record {}", path.display()))
            }
        };
        Ok(Record::parse(&text))
    }

    pub fn parse(text: &str) -> Record {
        let entries = text
            .lines()
            .filter_map(|l| {
                let (sha, file) = l.split_once("  ")?;
                let ok = sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit());
                ok.then(|| (sha.to_ascii_lowercase(), file.trim().to_string()))
            })
            .collect();
        Record { entries }
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.entries.contains_key(&sha256.to_ascii_lowercase())
    }

    pub fn add(&mut self, sha256: &str, file: &str) {
        self.entries
            .insert(sha256.to_ascii_lowercase(), file.to_string());
    }

    /// Forgets archives no longer in the image list.
    pub fn retain(&mut self, archives: &[ImageArchive]) {
        self.entries
            .retain(|sha, _| archives.iter().any(|a| a.sha256.eq_ignore_ascii_case(sha)));
    }

    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(s, f)| format!("{s}  {f}\n"))
            .collect()
    }
}

/// What to do with one archive this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Recorded as imported and every reference is listed.
    Skip,
    /// Not recorded: new, or changed since the last import.
    Import,
    /// Recorded, but containerd no longer lists these references.
    Reimport(Vec<String>),
}

/// Decides, for each archive in order, whether to import it.
pub fn plan<'a>(
    archives: &'a [ImageArchive],
    record: &Record,
    listed: &BTreeSet<String>,
) -> Vec<(&'a ImageArchive, Action)> {
    archives
        .iter()
        .map(|a| {
            if !record.contains(&a.sha256) {
                return (a, Action::Import);
            }
            let missing: Vec<String> = a
                .references
                .iter()
                .filter(|r| !listed.contains(*r))
                .cloned()
                .collect();
            if missing.is_empty() {
                (a, Action::Skip)
            } else {
                (a, Action::Reimport(missing))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(sha: char, refs: &[&str]) -> ImageArchive {
        ImageArchive {
            file: format!("/var/lib/airlock/images/{sha}.tar"),
            sha256: sha.to_string().repeat(64),
            platform: "linux/amd64".into(),
            references: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn round_trips_and_ignores_garbage() {
        let mut r = Record::default();
        r.add(&"A".repeat(64), "/x/a.tar.gz");
        r.add(&"b".repeat(64), "/x/b.tar");
        let text = r.to_text();
        assert_eq!(
            text,
            format!(
                "{}  /x/a.tar.gz\n{}  /x/b.tar\n",
                "a".repeat(64),
                "b".repeat(64)
            )
        );
        let parsed = Record::parse(&format!("{text}garbage\nshort  /x/c.tar\n"));
        assert_eq!(parsed, r);
        assert!(parsed.contains(&"a".repeat(64)));
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            Record::load(&d.path().join("none")).unwrap(),
            Record::default()
        );
    }

    #[test]
    fn plan_imports_new_and_changed_and_heals_missing() {
        let archives = [
            archive('a', &["r/a:1"]),
            archive('b', &["r/b:1", "r/b:2"]),
            archive('c', &["r/c:1"]),
        ];
        let mut record = Record::default();
        record.add(&"a".repeat(64), "/var/lib/airlock/images/a.tar");
        record.add(&"b".repeat(64), "/var/lib/airlock/images/b.tar");
        // An archive that was imported before under another digest ("changed").
        record.add(&"d".repeat(64), "/var/lib/airlock/images/c-old.tar");
        let listed: BTreeSet<String> = ["r/a:1", "r/b:1"].iter().map(|s| s.to_string()).collect();
        let got: Vec<Action> = plan(&archives, &record, &listed)
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        assert_eq!(
            got,
            [
                Action::Skip,
                Action::Reimport(vec!["r/b:2".into()]),
                Action::Import
            ]
        );

        record.retain(&archives);
        assert!(!record.contains(&"d".repeat(64)) && record.contains(&"a".repeat(64)));

        let empty = plan(&archives, &Record::default(), &BTreeSet::new());
        assert!(empty.iter().all(|(_, a)| *a == Action::Import));
    }
}
