// SPDX-License-Identifier: Apache-2.0
//! The image manifest: what a build put into the image, with digests.
//!
//! `airlock build` writes it twice: `manifest.json` next to the image (with
//! the digests of the output files) and `/usr/lib/airlock/manifest.json`
//! inside the root filesystem (everything that can be known before the image
//! exists, and nothing that names the build host), so `verify` and
//! `inspect` work on a stick far from the out/ folder. This module holds
//! the shared record types, how the build collects them from the staging
//! tree, and how readers load them back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::disk::layout::DiskLayout;
use crate::fs::fat::{EspFile, EspSource};
use crate::tree::Root;

/// Where the manifest lives inside the root filesystem.
pub const IMAGE_PATH: &str = "/usr/lib/airlock/manifest.json";

/// Unit directories whose `*.wants`/`*.requires` links enable units.
const UNIT_LINK_DIR: &str = "etc/systemd/system";

/// One regular file airlock placed in the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Absolute path in the image, every symlink in it resolved.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky, as octal ("0750").
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One file of the EFI system partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspRecord {
    /// Path in the ESP with a leading slash (`/EFI/BOOT/BOOTX64.EFI`).
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// A unit link airlock added under /etc/systemd/system (enabling a unit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit, e.g. `airlock-demo-firstboot.service`.
    pub unit: String,
    /// The unit that pulls it in, e.g. `multi-user.target`.
    pub target: String,
    /// `wants` or `requires`.
    pub kind: String,
}

/// The manifest as `verify` and `inspect` read it. Keys this version does
/// not know (or that other parts of the build add, such as `kubernetes`)
/// are kept in `rest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskLayout>,
    #[serde(default)]
    pub files: Vec<FileRecord>,
    #[serde(default)]
    pub esp_files: Vec<EspRecord>,
    #[serde(default)]
    pub units: Vec<UnitRecord>,
    /// Digests of the output files (only in the copy beside the image).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl Manifest {
    /// Parses manifest text; `what` names it in errors.
    pub fn parse(text: &[u8], what: &str) -> Result<(Manifest, Value)> {
        let value: Value =
            serde_json::from_slice(text).with_context(|| format!("parsing {what}: not JSON"))?;
        let m = serde_json::from_value(value.clone())
            .with_context(|| format!("parsing {what}: not an airlock manifest"))?;
        Ok((m, value))
    }
}

/// The copy of a manifest that goes inside the image: without the output
/// digests (they cannot be known before the image exists) and without
/// paths of the build host, so the same inputs give the same image on any
/// machine. `verify` compares an image's embedded manifest with this view
/// of the one beside it.
pub fn for_image(manifest: &Value) -> Value {
    let mut v = manifest.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("outputs");
        if let Some(r) = obj.get_mut("recipe").and_then(Value::as_object_mut) {
            r.remove("path");
        }
        if let Some(inputs) = obj.get_mut("inputs").and_then(Value::as_array_mut) {
            for i in inputs.iter_mut().filter_map(Value::as_object_mut) {
                let local = i
                    .get("source")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !crate::recipe::is_url(s));
                if local {
                    i.remove("source");
                }
            }
        }
    }
    v
}

/// Records every regular file among `paths` (image paths as they were
/// written, symlinks not yet resolved) as it is now in the staging tree:
/// resolved inside the root, deduplicated, sorted. Paths that no longer
/// exist or are no longer regular files are left out.
pub fn record_files(root: &Root, paths: &[String]) -> Result<Vec<FileRecord>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in paths {
        let Some(path) = root.resolve(p)? else {
            continue;
        };
        if path == IMAGE_PATH || !seen.insert(path.clone()) {
            continue;
        }
        let Some(file) = root.open(&path)? else {
            continue;
        };
        let meta = file
            .metadata()
            .with_context(|| format!("reading the attributes of {path} in the staging tree"))?;
        if !meta.is_file() {
            continue;
        }
        let (sha256, size) =
            hash_reader(file).with_context(|| format!("hashing {path} in the staging tree"))?;
        out.push(FileRecord {
            path,
            sha256,
            size,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Digests of the files that go onto the ESP, from their sources.
pub fn record_esp(files: &[EspFile]) -> Result<Vec<EspRecord>> {
    let mut out = Vec::new();
    for f in files {
        let (sha256, size) = match &f.source {
            EspSource::Bytes(b) => (hex::encode(Sha256::digest(b)), b.len() as u64),
            EspSource::Host(p) => {
                let file = File::open(p).with_context(|| {
                    format!("opening {} for {} in the ESP", p.display(), f.path)
                })?;
                hash_reader(file).with_context(|| format!("hashing {}", p.display()))?
            }
        };
        out.push(EspRecord {
            path: format!("/{}", f.path.trim_start_matches('/')),
            sha256,
            size,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The unit links under /etc/systemd/system/*.wants and *.requires.
pub fn unit_links(root: &Root) -> Result<BTreeSet<UnitRecord>> {
    let mut out = BTreeSet::new();
    for dir in root.list_dir(UNIT_LINK_DIR)? {
        let Some((target, kind)) = dir.rsplit_once('.') else {
            continue;
        };
        if kind != "wants" && kind != "requires" {
            continue;
        }
        for unit in root.list_dir(&format!("{UNIT_LINK_DIR}/{dir}"))? {
            out.insert(UnitRecord {
                unit,
                target: target.to_string(),
                kind: kind.to_string(),
            });
        }
    }
    Ok(out)
}

/// The unit links present now that were not there in `before` (the base).
pub fn added_units(root: &Root, before: &BTreeSet<UnitRecord>) -> Result<Vec<UnitRecord>> {
    Ok(unit_links(root)?.difference(before).cloned().collect())
}

/// sha256 (hex) and length of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Permission bits as an octal string ("0644") in JSON.
mod octal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("mode {s:?} is not octal like \"0644\""))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Attrs;

    #[test]
    fn records_resolved_regular_files_once() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(&d.path().join("r")).unwrap();
        root.symlink("opt", "var/opt", &Attrs::root(0o777, 1))
            .unwrap();
        root.record_writes();
        let attrs = Attrs {
            mode: 0o4750,
            uid: 7,
            gid: 8,
            mtime: 1,
            xattrs: vec![],
        };
        root.write_file("/opt/tool", &mut &b"tool"[..], &attrs)
            .unwrap();
        root.write_file("/var/opt/tool", &mut &b"tool2"[..], &attrs)
            .unwrap();
        root.write_file("/etc/gone", &mut &b"x"[..], &Attrs::root(0o644, 1))
            .unwrap();
        root.remove("/etc/gone").unwrap();
        let written = root.written();
        assert_eq!(written, ["/opt/tool", "/var/opt/tool", "/etc/gone"]);
        let files = record_files(&root, &written).unwrap();
        assert_eq!(
            files,
            [FileRecord {
                path: "/var/opt/tool".into(),
                sha256: hex::encode(Sha256::digest(b"tool2")),
                size: 5,
                mode: 0o4750,
                uid: 7,
                gid: 8,
            }]
        );
        // Absolute symlinks resolve inside the root, never on the host.
        root.symlink("lib", "/usr/lib", &Attrs::root(0o777, 1))
            .unwrap();
        root.write_file("/lib/x", &mut &b"x"[..], &Attrs::root(0o644, 1))
            .unwrap();
        assert_eq!(
            root.resolve("/lib/x").unwrap().as_deref(),
            Some("/usr/lib/x")
        );
        assert_eq!(root.resolve("/lib/missing").unwrap(), None);
        assert!(root.open("/nope/x").unwrap().is_none());
        let json = serde_json::to_value(&files[0]).unwrap();
        assert_eq!(json["mode"], "4750");
        let back: FileRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, files[0]);
    }

    #[test]
    fn image_copy_drops_outputs_and_host_paths() {
        let m = serde_json::json!({
            "name": "x",
            "recipe": { "path": "/home/me/x.toml", "sha256": "aa" },
            "inputs": [
                { "what": "base", "source": "/home/me/base.tar", "sha256": "bb" },
                { "what": "file /k", "source": "https://example.com/k", "sha256": "cc" }
            ],
            "outputs": { "x.raw": "dd" }
        });
        let v = for_image(&m);
        assert_eq!(
            v,
            serde_json::json!({
                "name": "x",
                "recipe": { "sha256": "aa" },
                "inputs": [
                    { "what": "base", "sha256": "bb" },
                    { "what": "file /k", "source": "https://example.com/k", "sha256": "cc" }
                ]
            })
        );
        let (parsed, _) = Manifest::parse(m.to_string().as_bytes(), "test").unwrap();
        assert_eq!(parsed.outputs["x.raw"], "dd");
        assert!(parsed.rest.contains_key("recipe"));
    }

    #[test]
    fn added_units_are_the_difference() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(&d.path().join("r")).unwrap();
        let a = Attrs::root(0o777, 1);
        root.symlink(
            "etc/systemd/system/multi-user.target.wants/cron.service",
            "/x",
            &a,
        )
        .unwrap();
        let before = unit_links(&root).unwrap();
        root.symlink(
            "etc/systemd/system/multi-user.target.wants/a.service",
            "/y",
            &a,
        )
        .unwrap();
        root.symlink(
            "etc/systemd/system/sysinit.target.requires/b.service",
            "/z",
            &a,
        )
        .unwrap();
        root.symlink("etc/systemd/system/default.target", "/w", &a)
            .unwrap();
        let added = added_units(&root, &before).unwrap();
        let names: Vec<_> = added
            .iter()
            .map(|u| (u.unit.as_str(), u.target.as_str(), u.kind.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("a.service", "multi-user.target", "wants"),
                ("b.service", "sysinit.target", "requires")
            ]
        );
    }
}
