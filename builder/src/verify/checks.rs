// SPDX-License-Identifier: Apache-2.0
//! The individual checks of `airlock verify`.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result};
use ext4_view::{Ext4, Ext4Error};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{CheckResult, Failure, ManifestSource};
use crate::disk::gpt::{GptInfo, PartitionInfo};
use crate::disk::layout::{DiskLayout, PartitionPlan};
use crate::image::{self, CopyError, Image, Range};
use crate::manifest::{self, EspRecord, FileRecord};

/// The manifest inside the image says what the one beside it says (less
/// the output digests and host paths, which it never holds).
pub(super) fn embedded_matches(
    embedded: Option<&[u8]>,
    external: &Value,
    source: &ManifestSource,
) -> CheckResult {
    let subject = format!("manifest {}", manifest::IMAGE_PATH);
    let Some(bytes) = embedded else {
        return Ok(Err(Failure::new(subject, "missing from the image")));
    };
    let inside: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Ok(Err(Failure::new(subject, format!("is not JSON: {e}")))),
    };
    let want = manifest::for_image(external);
    if inside == want {
        return Ok(Ok(()));
    }
    let keys = differing_keys(&inside, &want);
    Ok(Err(Failure::new(
        subject,
        format!("differs from {source} in {}", keys.join(", ")),
    )))
}

/// Top-level keys whose values differ between two JSON objects.
fn differing_keys(a: &Value, b: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        keys.push("its layout".into());
    }
    keys
}

/// The partition table describes the disk the manifest planned.
pub(super) fn partitions(gpt: &GptInfo, want: &DiskLayout) -> CheckResult {
    let mut problems = Vec::new();
    if gpt.disk_guid != want.disk_guid {
        problems.push(format!(
            "disk GUID is {}, manifest says {}",
            gpt.disk_guid, want.disk_guid
        ));
    }
    for plan in [&want.esp, &want.root] {
        match gpt.partitions.iter().find(|p| p.number == plan.number) {
            None => problems.push(format!(
                "partition {} ({}) is missing",
                plan.number, plan.label
            )),
            Some(p) => {
                let got = PartitionPlan {
                    number: p.number,
                    label: p.label.clone(),
                    type_guid: p.type_guid,
                    uuid: p.uuid,
                    start: p.start,
                    size: p.size,
                };
                if &got != plan {
                    problems.push(format!(
                        "partition {} is {} at byte {} with {} bytes, PARTUUID {}, type {}; manifest says {} at byte {} \
                         with {} bytes, PARTUUID {}, type {}",
                        p.number, got.label, got.start, got.size, got.uuid, got.type_guid, plan.label, plan.start,
                        plan.size, plan.uuid, plan.type_guid
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(Ok(()))
    } else {
        Ok(Err(Failure::new("partition table", problems.join("; "))))
    }
}

/// The digest of the whole image file, as the build wrote it (known for a
/// `.raw.zst` from decompressing it; other files are read once more).
/// `None` for a device, which is larger than the image.
pub(super) fn image_digest(
    img: &Image,
    name: &str,
    want: &str,
) -> Result<Option<Result<(), Failure>>> {
    let got = match (img.kind, &img.file_sha256) {
        (image::Kind::RawZst, Some(s)) => s.clone(),
        (image::Kind::Raw, _) => {
            let mut f = img.file();
            f.seek(SeekFrom::Start(0))
                .context("seeking to the start of the image")?;
            hash_all(f).with_context(|| format!("reading {}", img.path.display()))?
        }
        (image::Kind::Vm(_), _) => {
            let f = std::fs::File::open(&img.path)
                .with_context(|| format!("opening {}", img.path.display()))?;
            hash_all(f).with_context(|| format!("reading {}", img.path.display()))?
        }
        _ => return Ok(None),
    };
    if got == want {
        Ok(Some(Ok(())))
    } else {
        Ok(Some(Err(Failure::new(
            name,
            format!("sha256 is {got}, manifest says {want}"),
        ))))
    }
}

fn hash_all(r: impl Read) -> std::io::Result<String> {
    manifest::hash_reader(r).map(|(h, _)| h)
}

/// One file of the ESP has the recorded content.
pub(super) fn esp_file(img: &Image, esp: Range, rec: &EspRecord) -> CheckResult {
    let subject = format!("ESP {}", rec.path);
    let bytes = match crate::fs::fat::read_file(img.file(), esp.start, esp.size, &rec.path) {
        Ok(b) => b,
        // fatfs reports damage and absence alike as I/O errors.
        Err(e) => return Ok(Err(Failure::new(subject, format!("cannot be read: {e:#}")))),
    };
    Ok(compare_content(
        subject,
        &hex::encode(Sha256::digest(&bytes)),
        bytes.len() as u64,
        &rec.sha256,
        rec.size,
    ))
}

fn compare_content(
    subject: String,
    sha: &str,
    size: u64,
    want_sha: &str,
    want_size: u64,
) -> Result<(), Failure> {
    let mut problems = Vec::new();
    if size != want_size {
        problems.push(format!("size is {size} bytes, manifest says {want_size}"));
    }
    if sha != want_sha {
        problems.push(format!("sha256 is {sha}, manifest says {want_sha}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(subject, problems.join("; ")))
    }
}

/// One file of the root filesystem has the recorded content, owner and mode.
pub(super) fn root_file(fs: &Ext4, rec: &FileRecord) -> CheckResult {
    let subject = rec.path.clone();
    let meta = match fs.symlink_metadata(rec.path.as_str()) {
        Ok(m) => m,
        Err(Ext4Error::NotFound) => return Ok(Err(Failure::new(subject, "missing"))),
        Err(e @ Ext4Error::Io(_)) => {
            return Err(e).with_context(|| format!("reading {} from the image", rec.path))
        }
        Err(e) => return Ok(Err(Failure::new(subject, format!("cannot be read: {e}")))),
    };
    if !meta.file_type().is_regular_file() {
        return Ok(Err(Failure::new(
            subject,
            format!("is a {:?}, not a regular file", meta.file_type()),
        )));
    }
    let mut problems = Vec::new();
    let mode = u32::from(meta.mode());
    if mode != rec.mode {
        problems.push(format!(
            "mode is {mode:04o}, manifest says {:04o}",
            rec.mode
        ));
    }
    if (meta.uid(), meta.gid()) != (rec.uid, rec.gid) {
        problems.push(format!(
            "owner is {}:{}, manifest says {}:{}",
            meta.uid(),
            meta.gid(),
            rec.uid,
            rec.gid
        ));
    }
    let mut h = Sha256::new();
    let size = match image::copy_ext4_file(fs, &rec.path, &mut h) {
        Ok(n) => n,
        Err(CopyError::Ext4(e @ Ext4Error::Io(_))) => {
            return Err(e).with_context(|| format!("reading {} from the image", rec.path))
        }
        Err(CopyError::Ext4(e)) => {
            return Ok(Err(Failure::new(subject, format!("cannot be read: {e}"))))
        }
        Err(CopyError::Write(e)) => return Err(e).context("hashing"),
    };
    if let Err(f) = compare_content(
        subject.clone(),
        &hex::encode(h.finalize()),
        size,
        &rec.sha256,
        rec.size,
    ) {
        problems.push(f.problem);
    }
    if problems.is_empty() {
        Ok(Ok(()))
    } else {
        Ok(Err(Failure::new(subject, problems.join("; "))))
    }
}

/// Every range of the block map `map` (read from `shown`) against the
/// image's bytes: the ranges a writer copies are the ones the map vouches
/// for, the base's files among them. On a device larger than the image
/// whose GPT `write` moved to its end, the image's own GPT is put back in
/// memory before hashing. Bad ranges are named with the partition they lie
/// in (of `parts`), the first few in full.
pub(super) fn block_map(
    img: &Image,
    map: &crate::bmap::Bmap,
    shown: &str,
    parts: Option<&[PartitionInfo]>,
) -> CheckResult {
    use std::os::unix::fs::FileExt;
    let subject = format!("block map {shown}");
    let size = img.size()?;
    if size < map.image_size {
        return Ok(Err(Failure::new(
            subject,
            format!(
                "describes an image of {} bytes, but {} has only {size}",
                map.image_size,
                img.path.display()
            ),
        )));
    }
    let f = img.file();
    let restore = if size > map.image_size {
        let mut head = vec![0u8; crate::write::gpt::HEAD as usize];
        f.read_exact_at(&mut head, 0)
            .with_context(|| format!("reading the start of {}", img.path.display()))?;
        // A GPT that cannot be planned back is left as it is: its ranges
        // then differ and are reported.
        crate::write::gpt::restore(&head, map.image_size, size).unwrap_or(None)
    } else {
        None
    };
    let mut buf = vec![0u8; 4 << 20];
    let mut bad: Vec<String> = Vec::new();
    for r in &map.ranges {
        let (start, len) = map.bytes(r);
        let mut h = Sha256::new();
        let mut off = start;
        while off < start + len {
            let n = ((start + len - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {} at offset {off}", img.path.display()))?;
            if let Some(rel) = &restore {
                rel.apply(off, &mut buf[..n]);
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        let got = hex::encode(h.finalize());
        if got != r.sha256 {
            bad.push(format!(
                "blocks {}-{} (bytes {start} to {}{}) have sha256 {got}, the map says {}",
                r.first,
                r.last,
                start + len,
                place(parts, start, len),
                r.sha256
            ));
        }
    }
    const SHOWN: usize = 5;
    let hint = "the image was changed, or the device was booted or altered since it was written";
    match bad.len() {
        0 => Ok(Ok(())),
        1 => Ok(Err(Failure::new(
            subject,
            format!("{}; {hint}", bad.remove(0)),
        ))),
        n => {
            let more = if n > SHOWN {
                format!("; and {} more", n - SHOWN)
            } else {
                String::new()
            };
            bad.truncate(SHOWN);
            Ok(Err(Failure::new(
                subject,
                format!(
                    "{n} of {} ranges differ: {}{more}; {hint}",
                    map.ranges.len(),
                    bad.join("; ")
                ),
            )))
        }
    }
}

/// Where a byte range lies: ", in the partition table and partition N
/// (label)", or nothing when outside the table and every partition.
fn place(parts: Option<&[PartitionInfo]>, start: u64, len: u64) -> String {
    let end = start + len;
    let mut inside: Vec<String> = Vec::new();
    if start < crate::write::gpt::HEAD {
        inside.push("the partition table".into());
    }
    inside.extend(
        parts
            .unwrap_or_default()
            .iter()
            .filter(|p| p.start < end && start < p.start + p.size)
            .map(|p| format!("partition {} ({})", p.number, p.label)),
    );
    if inside.is_empty() {
        return String::new();
    }
    format!(", in {}", inside.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedded_manifest_is_compared_without_outputs_and_host_paths() {
        let ext = json!({ "name": "x", "recipe": { "path": "/h/x.toml", "sha256": "aa" }, "outputs": { "x.raw": "d" } });
        let src = ManifestSource::Embedded;
        let same = json!({ "name": "x", "recipe": { "sha256": "aa" } }).to_string();
        assert_eq!(
            embedded_matches(Some(same.as_bytes()), &ext, &src).unwrap(),
            Ok(())
        );
        let other = json!({ "name": "y", "recipe": { "sha256": "aa" } }).to_string();
        let f = embedded_matches(Some(other.as_bytes()), &ext, &src)
            .unwrap()
            .unwrap_err();
        assert!(f.problem.contains("in name"), "{f}");
        let f = embedded_matches(None, &ext, &src).unwrap().unwrap_err();
        assert_eq!(
            f.to_string(),
            "manifest /usr/lib/airlock/manifest.json: missing from the image"
        );
    }

    #[test]
    fn content_differences_are_all_named() {
        assert_eq!(compare_content("x".into(), "a", 1, "a", 1), Ok(()));
        let f = compare_content("/x".into(), "a", 2, "b", 1).unwrap_err();
        assert_eq!(
            f.to_string(),
            "/x: size is 2 bytes, manifest says 1; sha256 is a, manifest says b"
        );
    }
}
