// SPDX-License-Identifier: Apache-2.0
//! `airlock node images`: imports the preload archives listed in
//! images.json into containerd's `k8s.io` namespace (where kubelet looks),
//! checks every reference is listed, pins them against kubelet's image
//! garbage collection and records the imported archives.
//!
//! `ctr images import` reads plain tar only, so compressed archives are
//! decompressed here (by magic bytes, not by name) and streamed into its
//! stdin. Each archive's sha256 is checked before import: a corrupt archive
//! fails the unit and is not recorded.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::record::{self, Action, Record};
use super::settings;
use super::{paths, say, write_atomic, NodeRoot};
use crate::cli::node::ImagesArgs;
use crate::cmd::CommandRunExt;
use crate::kube::images::ArchiveEntry as ImageArchive;

/// The containerd namespace the CRI plugin (and so kubelet) uses.
pub const NAMESPACE: &str = "k8s.io";
/// The label that keeps kubelet's image garbage collection off an image.
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned=pinned";

pub fn run(root: &NodeRoot, _args: &ImagesArgs) -> Result<()> {
    let list = settings::load_images(&root.path(paths::IMAGES_JSON))?;
    let wanted = settings::references(&list);
    say(format!(
        "{} image archives with {} references in {}",
        list.archives.len(),
        wanted.len(),
        paths::IMAGES_JSON
    ));
    let record_path = root.path(paths::IMAGES_IMPORTED);
    let mut record = Record::load(&record_path)?;
    let mut listed = listed_references()?;
    let mut imported = 0;
    for (archive, action) in record::plan(&list.archives, &record, &listed) {
        match action {
            Action::Skip => {
                say(format!(
                    "already imported: {} (sha256 {})",
                    archive.file,
                    short(&archive.sha256)
                ));
                continue;
            }
            Action::Import => {}
            Action::Reimport(missing) => say(format!(
                "imported before, but containerd no longer lists {}: importing {} again",
                missing.join(", "),
                archive.file
            )),
        }
        import(root, archive)?;
        let before = std::mem::replace(&mut listed, listed_references()?);
        let missing: Vec<&str> = archive
            .references
            .iter()
            .map(String::as_str)
            .filter(|r| !listed.contains(*r))
            .collect();
        if !missing.is_empty() {
            let brought: Vec<&str> = listed.difference(&before).map(String::as_str).collect();
            bail!(
                "archive {} was imported, but containerd does not list {} (new names it brought: {}): \
                 {} does not match what the archive carries",
                archive.file,
                missing.join(", "),
                if brought.is_empty() { "none".to_string() } else { brought.join(", ") },
                paths::IMAGES_JSON
            );
        }
        record.retain(&list.archives);
        record.add(&archive.sha256, &archive.file);
        write_atomic(&record_path, record.to_text().as_bytes())
            .context("recording the imported archive")?;
        imported += 1;
    }

    let listed = listed_references()?;
    // The CRI plugin also lists each image by its ID (sha256:<config>).
    let (ids, names): (Vec<&String>, Vec<&String>) =
        listed.iter().partition(|r| r.starts_with("sha256:"));
    let ids = match ids.len() {
        0 => String::new(),
        n => format!(" (and {n} image IDs the CRI plugin adds)"),
    };
    say(format!(
        "ctr -n {NAMESPACE} images ls -q lists {} references{ids}:",
        names.len()
    ));
    for r in names {
        say(format!("  {r}"));
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|r| !listed.contains(*r))
        .collect();
    if !missing.is_empty() {
        bail!(
            "containerd does not list {} of the {} preloaded references after the import: {}; \
             the archives in {} do not carry them under these names (check images.json against \
             the archives' index.json/manifest.json)",
            missing.len(),
            wanted.len(),
            missing.join(", "),
            paths::IMAGES_JSON
        );
    }
    for r in &wanted {
        ctr()
            .args(["images", "label", r, PINNED_LABEL])
            .run()
            .with_context(|| format!("pinning image {r}"))?;
    }
    say(format!(
        "images ready: {imported} archives imported this boot, all {} references listed and pinned ({PINNED_LABEL})",
        wanted.len()
    ));
    Ok(())
}

fn ctr() -> Command {
    let mut c = Command::new("ctr");
    c.args(["-n", NAMESPACE]);
    c
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// The references containerd lists in the `k8s.io` namespace.
fn listed_references() -> Result<BTreeSet<String>> {
    let out = ctr()
        .args(["images", "ls", "-q"])
        .run_get_string()
        .context(
            "listing containerd's images: is containerd running (systemctl status containerd)?",
        )?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The compression found by magic bytes, for the log.
fn compression(head: &[u8]) -> &'static str {
    match head {
        [0x1f, 0x8b, ..] => "gzip",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        _ => "uncompressed",
    }
}

fn import(root: &NodeRoot, a: &ImageArchive) -> Result<()> {
    let path = root.path(&a.file);
    let (sha, size, head) = hash_file(&path)?;
    if !sha.eq_ignore_ascii_case(&a.sha256) {
        bail!(
            "archive {} is corrupt: its sha256 is {sha}, {} says {}; write the disk image again \
             (or put the archive back from the build's output)",
            a.file,
            paths::IMAGES_JSON,
            a.sha256
        );
    }
    say(format!(
        "importing {} ({}, {} MiB, {}) into containerd namespace {NAMESPACE}: {}",
        a.file,
        compression(&head),
        size >> 20,
        a.platform,
        a.references.join(", ")
    ));
    let mut tar = crate::tree::extract::open_decompressed(&path)?;
    let mut c = ctr();
    c.args(["images", "import", "--platform", &a.platform, "-"]);
    c.run_streaming(Some(&mut *tar), &mut |line| say(format!("ctr: {line}")))
        .with_context(|| format!("importing image archive {}", a.file))?;
    Ok(())
}

/// sha256, size and first bytes of a file.
fn hash_file(path: &std::path::Path) -> Result<(String, u64, Vec<u8>)> {
    let mut f =
        File::open(path).with_context(|| format!("opening image archive {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading image archive {}", path.display()))?;
        if n == 0 {
            break;
        }
        if head.len() < 8 {
            head.extend_from_slice(&buf[..n.min(8 - head.len())]);
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size, head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_by_magic() {
        assert_eq!(compression(&[0x1f, 0x8b, 8]), "gzip");
        assert_eq!(compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]), "zstd");
        assert_eq!(compression(b"\xfd7zXZ\0"), "xz");
        assert_eq!(compression(b"oci-layout"), "uncompressed");
    }

    #[test]
    fn corrupt_archive_is_refused_before_ctr_runs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("img")).unwrap();
        std::fs::write(d.path().join("img/a.tar"), b"not what was pinned").unwrap();
        let a = ImageArchive {
            file: "/img/a.tar".into(),
            sha256: "0".repeat(64),
            platform: "linux/amd64".into(),
            references: vec!["r/a:1".into()],
        };
        let err = format!("{:#}", import(&NodeRoot::new(d.path()), &a).unwrap_err());
        assert!(
            err.contains("is corrupt") && err.contains(&"0".repeat(64)),
            "{err}"
        );
    }
}
