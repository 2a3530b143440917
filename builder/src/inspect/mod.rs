// SPDX-License-Identifier: Apache-2.0
//! `airlock inspect`: what is inside an image (a `.raw`, a `.raw.zst` or a
//! written stick), read with no mounting: the partition table, the boot
//! entries on the ESP, and the root filesystem with the manifest airlock
//! stored in it. [`Report`] is the typed result; [`text::render`] turns it
//! into the human-readable form and `--json` prints it as is.

pub mod text;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::disk::gpt::PartitionInfo;
use crate::image::{self, Image};
use crate::manifest::{self, Manifest, UnitRecord};

/// Everything `inspect` reports. Fields are empty or absent when the image
/// does not say (an unreadable partition, a manifest without that key).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub image: String,
    pub kind: Option<image::Kind>,
    /// Size of the disk in bytes.
    pub size: u64,
    pub name: Option<String>,
    pub airlock_version: Option<String>,
    pub epoch: Option<i64>,
    pub disk_guid: Option<uuid::Uuid>,
    pub partitions: Vec<PartitionInfo>,
    pub boot: Boot,
    pub kernel: Option<String>,
    pub hostname: Option<String>,
    pub users: Vec<String>,
    /// Units airlock enabled (links it added under /etc/systemd/system).
    pub units: Vec<UnitRecord>,
    /// Files the manifest lists: in the root filesystem and on the ESP.
    pub files: usize,
    pub esp_files: usize,
    /// From the Kubernetes part of the build, as the manifest holds them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containerd: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Value>,
    /// What could not be read, in words.
    pub problems: Vec<String>,
    /// What is worth knowing but not a problem, in words.
    pub notes: Vec<String>,
}

/// systemd-boot's configuration on the ESP.
#[derive(Debug, Default, Serialize)]
pub struct Boot {
    /// `default` from loader/loader.conf.
    pub default: Option<String>,
    /// `timeout` from loader/loader.conf.
    pub timeout: Option<String>,
    pub entries: Vec<BootEntry>,
}

/// One Boot Loader Specification entry (loader/entries/*.conf).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct BootEntry {
    /// File name in loader/entries.
    pub file: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub linux: Option<String>,
    pub initrd: Option<String>,
    /// The kernel command line.
    pub options: Option<String>,
}

/// Reads everything the report needs from the image at `path`.
pub fn inspect(path: &Path, progress: bool) -> Result<Report> {
    let img = Image::open(path, progress)?;
    let mut r = Report {
        image: path.display().to_string(),
        kind: Some(img.kind),
        size: img.size()?,
        ..Report::default()
    };
    if let Some(why) = image::not_a_disk(&img)? {
        bail!("{why}");
    }
    let gpt = match image::read_gpt(&img) {
        Ok((g, note)) => {
            r.notes.extend(note);
            g
        }
        Err(e) => bail!(
            "reading the partition table of {}: {e:#} (a stick written with dd keeps the \
             backup GPT at the image's end; `sgdisk -e` moves it)",
            path.display()
        ),
    };
    r.notes.extend(
        image::overlaps(&gpt)
            .into_iter()
            .map(|o| format!("WARNING: {o}")),
    );
    r.disk_guid = Some(gpt.disk_guid);
    r.partitions = gpt.partitions.clone();
    let (esp, root) = image::find_partitions(&gpt);

    match esp {
        Some(esp) => match read_boot(&img, esp) {
            Ok(b) => r.boot = b,
            Err(e) => r.problems.push(format!("ESP: {e:#}")),
        },
        None => r.problems.push("no EFI system partition".into()),
    }
    let Some(root) = root else {
        r.problems
            .push("no root partition (type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709)".into());
        return Ok(r);
    };
    let fs = match img.ext4(root.start) {
        Ok(fs) => fs,
        Err(e) => {
            r.problems.push(format!("{e:#}"));
            return Ok(r);
        }
    };
    match image::read_ext4_file(&fs, "/etc/hostname") {
        Ok(h) => {
            r.hostname = h
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .filter(|h| !h.is_empty())
        }
        Err(e) => r.problems.push(format!("{e:#}")),
    }
    let parsed = image::read_ext4_file(&fs, manifest::IMAGE_PATH).and_then(|b| {
        b.map(|b| Manifest::parse(&b, manifest::IMAGE_PATH))
            .transpose()
    });
    match parsed {
        Ok(Some((m, _))) => from_manifest(&mut r, m),
        Ok(None) => r.problems.push(format!(
            "no manifest at {} (not built by this airlock?)",
            manifest::IMAGE_PATH
        )),
        Err(e) => r.problems.push(format!("{e:#}")),
    }
    // The entry systemd-boot boots says which kernel it is; else the manifest.
    let default = r.boot.default.as_deref();
    let booted = r
        .boot
        .entries
        .iter()
        .find(|e| Some(e.file.as_str()) == default)
        .or(r.boot.entries.first());
    if let Some(v) = booted.and_then(|e| e.version.clone()) {
        r.kernel = Some(v);
    }
    Ok(r)
}

fn from_manifest(r: &mut Report, mut m: Manifest) {
    let take_str =
        |m: &mut Manifest, k: &str| m.rest.remove(k).and_then(|v| v.as_str().map(String::from));
    r.name = Some(m.name.clone()).filter(|n| !n.is_empty());
    r.airlock_version = take_str(&mut m, "airlock_version");
    r.epoch = m.rest.get("epoch").and_then(Value::as_i64);
    r.kernel = m
        .rest
        .get("kernel")
        .and_then(|k| k["version"].as_str())
        .map(String::from);
    r.users = m
        .rest
        .get("users")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if r.hostname.is_none() {
        r.hostname = take_str(&mut m, "hostname");
    }
    r.units = m.units;
    r.files = m.files.len();
    r.esp_files = m.esp_files.len();
    let mut take = |k: &str| m.rest.remove(k).filter(|v| !v.is_null());
    r.kubernetes = take("kubernetes");
    r.containerd = take("containerd");
    r.images = take("images");
    r.node = take("node");
    r.secrets = take("secrets");
}

/// loader.conf and the entries in loader/entries.
fn read_boot(img: &Image, esp: image::Range) -> Result<Boot> {
    let files = crate::fs::fat::list(img.file(), esp.start, esp.size)?;
    let read = |p: &str| -> Result<String> {
        let b = crate::fs::fat::read_file(img.file(), esp.start, esp.size, p)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    };
    let mut boot = Boot::default();
    if files
        .iter()
        .any(|(p, _)| p.eq_ignore_ascii_case("loader/loader.conf"))
    {
        for (k, v) in pairs(&read("loader/loader.conf")?) {
            match k {
                "default" => boot.default = Some(v.to_string()),
                "timeout" => boot.timeout = Some(v.to_string()),
                _ => {}
            }
        }
    }
    for (p, _) in &files {
        let Some(name) = p
            .strip_prefix("loader/entries/")
            .filter(|n| n.ends_with(".conf"))
        else {
            continue;
        };
        boot.entries.push(parse_entry(name, &read(p)?));
    }
    Ok(boot)
}

/// `key value` lines, comments and blank lines skipped.
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (k, v.trim())
        })
}

fn parse_entry(file: &str, text: &str) -> BootEntry {
    let mut e = BootEntry {
        file: file.to_string(),
        ..BootEntry::default()
    };
    for (k, v) in pairs(text) {
        let slot = match k {
            "title" => &mut e.title,
            "version" => &mut e.version,
            "linux" => &mut e.linux,
            "initrd" => &mut e.initrd,
            "options" => &mut e.options,
            _ => continue,
        };
        // Repeated `options` lines are joined, as systemd-boot does.
        *slot = Some(match slot.take() {
            Some(prev) if k == "options" => format!("{prev} {v}"),
            _ => v.to_string(),
        });
    }
    e
}

/// Copies one file of the root filesystem to `out` (symlinks followed).
pub fn cat(path: &Path, file: &str, out: &mut dyn Write) -> Result<()> {
    let img = Image::open(path, false)?;
    if let Some(why) = image::not_a_disk(&img)? {
        bail!("{why}");
    }
    let (gpt, _) = image::read_gpt(&img)
        .with_context(|| format!("reading the partition table of {}", path.display()))?;
    let (_, root) = image::find_partitions(&gpt);
    let root = root.with_context(|| format!("{} has no root partition", path.display()))?;
    let fs = img.ext4(root.start)?;
    match image::copy_ext4_file(&fs, file, out) {
        Ok(_) => Ok(()),
        Err(image::CopyError::Ext4(ext4_view::Ext4Error::NotFound)) => {
            bail!(
                "{file} does not exist in the root filesystem of {}",
                path.display()
            )
        }
        Err(image::CopyError::Ext4(ext4_view::Ext4Error::IsADirectory)) => {
            bail!(
                "{file} is a directory in the root filesystem of {}",
                path.display()
            )
        }
        Err(image::CopyError::Ext4(e)) => Err(e).with_context(|| {
            format!(
                "reading {file} from the root filesystem of {}",
                path.display()
            )
        }),
        Err(image::CopyError::Write(e)) => Err(e).context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bls_entries() {
        let e = parse_entry(
            "a.conf",
            "# comment\ntitle  Node (kernel 6.1)\nversion 6.1.0\nlinux /a/linux\noptions root=x rw\noptions quiet\n",
        );
        assert_eq!(e.title.as_deref(), Some("Node (kernel 6.1)"));
        assert_eq!(e.options.as_deref(), Some("root=x rw quiet"));
        assert_eq!(e.initrd, None);
    }
}
