// SPDX-License-Identifier: Apache-2.0
//! `airlock verify`: proves an image (a `.raw`, a `.raw.zst`, or the stick
//! it was written to) is what the build made, without mounting anything.
//!
//! The image is checked against a manifest: `--manifest FILE`, else the
//! `manifest.json` beside the image when it names the image, else the copy
//! inside the image. The first two are the strong checks: an attacker who
//! changes the image can change its embedded manifest too, but not the copy
//! that stayed with the build (and verify then also checks that the
//! embedded copy matches it). Every check is
//! `anyhow::Result<Result<(), Failure>>`: the outer error means the checker
//! could not do its job, the inner one that the image differs. Every
//! difference is reported and counted.

mod checks;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

use crate::disk::gpt::GptInfo;
use crate::image::{self, Image, Range};
use crate::manifest::{self, Manifest};

/// One way the image differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What differs: a path (`/usr/bin/x`, `ESP /EFI/BOOT/BOOTX64.EFI`), or
    /// a part of the disk (`GPT`, `partition 2`).
    pub subject: String,
    /// How it differs, and what was expected.
    pub problem: String,
}

impl Failure {
    fn new(subject: impl Into<String>, problem: impl Into<String>) -> Failure {
        Failure {
            subject: subject.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.problem)
    }
}

/// Outer error: the checker broke. Inner error: the image is bad.
pub type CheckResult = Result<Result<(), Failure>>;

/// Which manifest the image was checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ManifestSource {
    /// Given with --manifest.
    File { path: PathBuf },
    /// The manifest.json beside the image.
    Beside { path: PathBuf },
    /// The copy inside the image's root filesystem.
    Embedded,
}

impl fmt::Display for ManifestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestSource::File { path } => write!(f, "{} (--manifest)", path.display()),
            ManifestSource::Beside { path } => write!(f, "{} (beside the image)", path.display()),
            ManifestSource::Embedded => write!(
                f,
                "{} inside the image (weaker: pass --manifest with the build's manifest.json to \
                 detect a rewritten image)",
                manifest::IMAGE_PATH
            ),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub image: PathBuf,
    pub kind: image::Kind,
    pub manifest: ManifestSource,
    /// The block map whose ranges were checked: --bmap, else beside the
    /// image, else the one the manifest lists beside it.
    pub bmap: Option<PathBuf>,
    /// How much of the image was checked.
    pub coverage: Coverage,
    /// What is worth knowing but not a difference (a backup GPT left in
    /// the middle of a larger stick by dd).
    pub notes: Vec<String>,
    /// Checks that passed.
    pub passed: Vec<Passed>,
    pub failures: Vec<Failure>,
}

/// How much of the image the checks covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coverage {
    /// Every block the block map lists (the base's files included), plus
    /// the files the manifest lists.
    AllMappedBlocks,
    /// Only the partition table and the files airlock placed: without a
    /// block map the base's own files are not checked.
    PlacedFilesOnly,
}

impl Coverage {
    /// What was and was not checked, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Coverage::AllMappedBlocks => {
                "every mapped block of the image (the base's files included) and every file the \
                 manifest lists"
            }
            Coverage::PlacedFilesOnly => {
                "only the partition table and the files airlock placed; the base's own files \
                 were NOT checked (no block map: pass --bmap with the build's .bmap)"
            }
        }
    }
}

/// A check that passed, and how many times (once per file for files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Passed {
    /// `GPT`, `partitions`, `embedded manifest`, `image sha256`, `ESP files`, `root files`.
    pub check: String,
    pub count: usize,
}

/// Verifies `path` against `manifest` (or the one beside or inside it),
/// and every mapped block against `bmap` (or the block map found beside
/// the image or the manifest).
pub fn verify(
    path: &Path,
    manifest: Option<&Path>,
    bmap: Option<&Path>,
    progress: bool,
) -> Result<Report> {
    let external = external_manifest(path, manifest)?;
    let img = Image::open(path, progress)?;
    if let Some(why) = image::not_a_disk(&img)? {
        bail!("{why}");
    }
    let mut v = Verifier {
        passed: Vec::new(),
        failures: Vec::new(),
    };

    let mut notes = Vec::new();
    let gpt = v.one("GPT", || check_gpt(&img, &mut notes))?;
    for o in gpt.iter().flat_map(image::overlaps) {
        v.failures.push(Failure::new("partition table", o));
    }
    let bmap = block_map(
        &img,
        bmap,
        external.as_ref().map(|(m, _, s)| (m, s)),
        gpt.as_ref(),
        &mut v,
    )?;
    let layout = external.as_ref().and_then(|(m, _, _)| m.disk.clone());
    let (esp, root) = locate(gpt.as_ref(), layout.as_ref());

    let fs = match root {
        Some(r) => match img.ext4(r.start) {
            Ok(fs) => Some(fs),
            Err(e) => {
                v.failures
                    .push(Failure::new("root filesystem", format!("{e:#}")));
                None
            }
        },
        None => {
            v.failures.push(Failure::new(
                "root filesystem",
                "no root partition in the partition table or the manifest",
            ));
            None
        }
    };
    let embedded = match fs
        .as_ref()
        .map(|fs| image::read_ext4_file(fs, manifest::IMAGE_PATH))
    {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            v.failures.push(Failure::new(
                format!("manifest {}", manifest::IMAGE_PATH),
                format!("{e:#}"),
            ));
            None
        }
        None => None,
    };

    let (m, source) = match external {
        Some((m, value, source)) => {
            v.record(
                "embedded manifest",
                checks::embedded_matches(embedded.as_deref(), &value, &source)?,
            );
            (m, source)
        }
        None => match &embedded {
            Some(bytes) => (
                Manifest::parse(bytes, manifest::IMAGE_PATH)?.0,
                ManifestSource::Embedded,
            ),
            None => bail!(
                "{} has no readable manifest inside ({}) and none was found beside it: pass \
                 --manifest with the manifest.json of its build{}",
                path.display(),
                manifest::IMAGE_PATH,
                found(&v.failures)
            ),
        },
    };

    if let (Some(g), Some(d)) = (&gpt, &m.disk) {
        v.record("partitions", checks::partitions(g, d)?);
    }
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        if let Some(want) = m.outputs.get(name) {
            if let Some(r) = checks::image_digest(&img, name, want)? {
                v.record("image sha256", r);
            }
        }
    }
    match (esp, m.esp_files.is_empty()) {
        (_, true) => {}
        (Some(esp), false) => {
            for rec in &m.esp_files {
                v.record("ESP files", checks::esp_file(&img, esp, rec)?);
            }
        }
        (None, false) => v
            .failures
            .push(Failure::new("ESP", "no EFI system partition found")),
    }
    if let Some(fs) = &fs {
        for rec in &m.files {
            v.record("root files", checks::root_file(fs, rec)?);
        }
    }
    Ok(Report {
        image: path.to_path_buf(),
        kind: img.kind,
        manifest: source,
        coverage: if bmap.is_some() {
            Coverage::AllMappedBlocks
        } else {
            Coverage::PlacedFilesOnly
        },
        bmap,
        notes,
        passed: v.passed,
        failures: v.failures,
    })
}

struct Verifier {
    passed: Vec<Passed>,
    failures: Vec<Failure>,
}

impl Verifier {
    fn record(&mut self, name: &str, r: Result<(), Failure>) {
        match r {
            Ok(()) => match self.passed.iter_mut().find(|p| p.check == name) {
                Some(p) => p.count += 1,
                None => self.passed.push(Passed {
                    check: name.to_string(),
                    count: 1,
                }),
            },
            Err(f) => self.failures.push(f),
        }
    }

    /// Runs a check that also yields a value when it passes.
    fn one<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<Result<T, Failure>>,
    ) -> Result<Option<T>> {
        Ok(match f()? {
            Ok(t) => {
                self.record(name, Ok(()));
                Some(t)
            }
            Err(e) => {
                self.failures.push(e);
                None
            }
        })
    }
}

/// " (found: ...)" listing failures so far, for an error that ends the run.
fn found(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let all: Vec<String> = failures.iter().map(Failure::to_string).collect();
    format!(" (found: {})", all.join("; "))
}

fn check_gpt(img: &Image, notes: &mut Vec<String>) -> Result<Result<GptInfo, Failure>> {
    Ok(match image::read_gpt(img) {
        Ok((g, note)) => {
            notes.extend(note);
            Ok(g)
        }
        Err(e) => Err(Failure::new(
            "GPT",
            format!("{e:#} (a stick written with dd keeps the backup GPT at the image's end; `sgdisk -e` moves it)"),
        )),
    })
}

/// Finds the block map and checks every mapped range of the image with
/// it; returns the map's path. The map is `given` (--bmap), else one beside
/// the image (found as `write` and bmaptool find it), else the one the
/// external manifest lists among its outputs, in the manifest's folder. A
/// map is refused when a SHA256SUMS beside it disagrees, or when the
/// external manifest lists block maps and this one is none of them.
fn block_map(
    img: &Image,
    given: Option<&Path>,
    external: Option<(&Manifest, &ManifestSource)>,
    gpt: Option<&GptInfo>,
    v: &mut Verifier,
) -> Result<Option<PathBuf>> {
    let listed: Vec<(&String, &String)> = external
        .map(|(m, _)| {
            m.outputs
                .iter()
                .filter(|(name, _)| name.ends_with(".bmap"))
                .collect()
        })
        .unwrap_or_default();
    let manifest_dir = external.and_then(|(_, s)| match s {
        ManifestSource::File { path } | ManifestSource::Beside { path } => {
            Some(path.parent().unwrap_or(Path::new("")).to_path_buf())
        }
        ManifestSource::Embedded => None,
    });
    let found = match given {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let beside_image = if img.kind == image::Kind::Device {
                Vec::new()
            } else {
                crate::bmap::candidates(&img.path)
            };
            let beside_manifest = manifest_dir
                .iter()
                .flat_map(|d| listed.iter().map(move |(name, _)| d.join(name)));
            beside_image
                .into_iter()
                .chain(beside_manifest)
                .find(|p| p.is_file())
        }
    };
    let Some(p) = found else {
        return Ok(None);
    };
    let shown = p.display().to_string();
    let loaded = crate::bmap::Bmap::load_checked(&p).and_then(|(map, sha256)| {
        vouched(&sha256, &listed, external.map(|(_, s)| s))?;
        Ok(map)
    });
    match loaded {
        Ok(map) => v.record(
            "block map",
            checks::block_map(img, &map, &shown, gpt.map(|g| g.partitions.as_slice()))?,
        ),
        Err(e) => v
            .failures
            .push(Failure::new(format!("block map {shown}"), format!("{e:#}"))),
    }
    Ok(Some(p))
}

/// The block map with sha256 `got` is one the manifest lists, when the
/// manifest lists any: a map that is not could have been made to fit a
/// changed image.
fn vouched(
    got: &str,
    listed: &[(&String, &String)],
    source: Option<&ManifestSource>,
) -> Result<()> {
    let Some(source) = source else {
        return Ok(());
    };
    if listed.is_empty() {
        return Ok(());
    }
    if listed.iter().any(|(_, want)| **want == got) {
        return Ok(());
    }
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    bail!(
        "has sha256 {got}, which is not that of the block map {source} lists ({}): it is not \
         the block map of this build",
        names.join(", ")
    )
}

/// The ESP and root ranges: from the partition table, else the manifest.
fn locate(
    gpt: Option<&GptInfo>,
    layout: Option<&crate::disk::layout::DiskLayout>,
) -> (Option<Range>, Option<Range>) {
    let (mut esp, mut root) = gpt.map(image::find_partitions).unwrap_or((None, None));
    if let Some(d) = layout {
        esp = esp.or(Some(Range {
            start: d.esp.start,
            size: d.esp.size,
        }));
        root = root.or(Some(Range {
            start: d.root.start,
            size: d.root.size,
        }));
    }
    (esp, root)
}

/// The manifest given with --manifest, or the manifest.json beside the
/// image when it lists the image among its outputs.
fn external_manifest(
    image: &Path,
    given: Option<&Path>,
) -> Result<Option<(Manifest, Value, ManifestSource)>> {
    if let Some(p) = given {
        let text = image::read_small_file(p, image::SMALL_FILE_LIMIT, "manifest")?;
        let (m, v) = Manifest::parse(&text, &p.display().to_string())?;
        return Ok(Some((
            m,
            v,
            ManifestSource::File {
                path: p.to_path_buf(),
            },
        )));
    }
    let beside = image.with_file_name("manifest.json");
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !beside.is_file() {
        return Ok(None);
    }
    let text = image::read_small_file(&beside, image::SMALL_FILE_LIMIT, "manifest")?;
    let (m, v) = Manifest::parse(&text, &beside.display().to_string())?;
    if !m.outputs.contains_key(name) {
        tracing::info!("{} does not list {name}; not using it", beside.display());
        return Ok(None);
    }
    Ok(Some((m, v, ManifestSource::Beside { path: beside })))
}

/// Human-readable report (stdout).
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "image:    {} ({})\n",
        r.image.display(),
        kind_name(r.kind)
    ));
    s.push_str(&format!("manifest: {}\n", r.manifest));
    if let Some(b) = &r.bmap {
        s.push_str(&format!("bmap:     {}\n", b.display()));
    }
    s.push_str(&format!("checked:  {}\n", r.coverage.describe()));
    for n in &r.notes {
        s.push_str(&format!("note:     {n}\n"));
    }
    for p in &r.passed {
        if p.count == 1 {
            s.push_str(&format!("ok       {}\n", p.check));
        } else {
            s.push_str(&format!("ok       {} ({})\n", p.check, p.count));
        }
    }
    for f in &r.failures {
        s.push_str(&format!("FAILED   {f}\n"));
    }
    match r.failures.len() {
        0 => s.push_str(match r.coverage {
            Coverage::AllMappedBlocks => {
                "verified: every mapped block and every listed file match the build\n"
            }
            Coverage::PlacedFilesOnly => {
                "verified: the partition table and the files airlock placed match the manifest; \
                 the base's own files were not checked (no block map)\n"
            }
        }),
        n => s.push_str(&format!(
            "{n} difference{}\n",
            if n == 1 { "" } else { "s" }
        )),
    }
    s
}

fn kind_name(k: image::Kind) -> &'static str {
    match k {
        image::Kind::Raw => "raw image",
        image::Kind::RawZst => "zstd-compressed raw image, decompressed to a temporary file",
        image::Kind::Device => "block device",
        image::Kind::Vm(_) => "VM disk, converted to a temporary raw file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_report() {
        let r = Report {
            image: "stick.img".into(),
            kind: image::Kind::Raw,
            manifest: ManifestSource::File {
                path: "out/tiny/manifest.json".into(),
            },
            bmap: None,
            coverage: Coverage::PlacedFilesOnly,
            notes: vec![],
            passed: vec![
                Passed {
                    check: "GPT".into(),
                    count: 1,
                },
                Passed {
                    check: "root files".into(),
                    count: 13,
                },
            ],
            failures: vec![
                Failure::new("/usr/bin/kubelet", "sha256 is 00, manifest says 11"),
                Failure::new(
                    "ESP /EFI/BOOT/BOOTX64.EFI",
                    "size is 2 bytes, manifest says 1",
                ),
            ],
        };
        let want = "\
image:    stick.img (raw image)
manifest: out/tiny/manifest.json (--manifest)
checked:  only the partition table and the files airlock placed; the base's own files were NOT checked (no block map: pass --bmap with the build's .bmap)
ok       GPT
ok       root files (13)
FAILED   /usr/bin/kubelet: sha256 is 00, manifest says 11
FAILED   ESP /EFI/BOOT/BOOTX64.EFI: size is 2 bytes, manifest says 1
2 differences
";
        similar_asserts::assert_eq!(render(&r), want);
    }

    #[test]
    fn layout_falls_back_to_the_manifest() {
        let ids = crate::disk::layout::DiskIds {
            disk: uuid::Uuid::from_u128(1),
            esp: uuid::Uuid::from_u128(2),
            root: uuid::Uuid::from_u128(3),
        };
        let l = crate::disk::layout::plan(200 << 20, 40 << 20, &ids).unwrap();
        let (esp, root) = locate(None, Some(&l));
        assert_eq!(
            esp,
            Some(Range {
                start: l.esp.start,
                size: l.esp.size
            })
        );
        assert_eq!(
            root,
            Some(Range {
                start: l.root.start,
                size: l.root.size
            })
        );
        assert_eq!(locate(None, None), (None, None));
    }
}
