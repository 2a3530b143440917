// SPDX-License-Identifier: Apache-2.0
//! `airlock write IMAGE DEVICE`: writes an image's mapped blocks to a USB
//! stick (or a regular file), refusing any disk it should not touch, and
//! reads every written byte back.
//!
//! The order of things: find the block map (and check it against
//! SHA256SUMS), find out what DEVICE is and refuse it if it is unsafe, show
//! it and ask, erase its partition table, write the ranges (partition table
//! last, with the backup GPT moved to the device's end), flush, read back.
//! A failure after writing started erases the new partition table again, so
//! a half-written stick is never mistaken for a good one.

pub(crate) mod copy;
pub(crate) mod device;
pub(crate) mod gpt;
pub(crate) mod source;
pub(crate) mod target;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::bmap::{self, Bmap};
use crate::cmd::CommandRunExt;
use crate::progress::Progress;
use copy::{Check, Copied, Names};
use device::{human, human_exact, Host, Kind};
use gpt::Relocation;
use source::Format;
use target::{FileTarget, Target};

/// What to write where, and how carefully.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub image: PathBuf,
    pub device: PathBuf,
    /// The block map; default: found beside the image.
    pub bmap: Option<PathBuf>,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Write to a disk the kernel calls non-removable.
    pub force: bool,
    /// Read everything back after writing.
    pub verify: bool,
    /// Write nothing; only compare the device with the image.
    pub verify_only: bool,
    /// Progress on stderr.
    pub quiet: bool,
}

/// What happened, for `--json` and the summary line.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub image: PathBuf,
    pub device: PathBuf,
    /// The block map used; none when it was computed from the image.
    pub bmap: Option<PathBuf>,
    pub image_size: u64,
    pub device_size: u64,
    /// Bytes the block map lists.
    pub mapped_bytes: u64,
    /// Bytes sent to the device with write(2).
    pub bytes_written: u64,
    /// Mapped bytes that are zeros and were zeroed in place (fallocate
    /// ZERO_RANGE / BLKZEROOUT) instead of being sent.
    pub bytes_zeroed: u64,
    /// Whether the backup GPT was moved to the end of a larger device.
    pub backup_gpt_moved: bool,
    pub direct_io: bool,
    pub write_seconds: f64,
    /// Whether every written range was read back from the target and
    /// matched (false with --no-verify).
    pub verified: bool,
    /// Bytes read back and compared.
    pub bytes_verified: u64,
    pub verify_seconds: f64,
}

/// Finds, checks and loads the block map; computes one for a raw image
/// that has none.
fn load_bmap(
    o: &WriteOptions,
    format: Format,
    progress: &Progress,
) -> Result<(Bmap, Option<PathBuf>)> {
    let found = match &o.bmap {
        Some(p) => Some(p.clone()),
        None => bmap::candidates(&o.image).into_iter().find(|p| p.is_file()),
    };
    if let Some(p) = found {
        return Ok((Bmap::load_checked(&p)?.0, Some(p)));
    }
    if format == Format::Zstd {
        let tried: Vec<String> = bmap::candidates(&o.image)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        bail!(
            "{} is compressed and has no block map beside it (looked for {}); pass the .bmap \
             that was built with it with --bmap",
            o.image.display(),
            tried.join(", ")
        );
    }
    progress.note(&format!(
        "no block map beside {}; computing one from the image",
        o.image.display()
    ));
    let bar = progress.bytes(0, "block map");
    let b = bmap::create(&o.image, &bar)?;
    bar.finish_and_clear();
    Ok((b, None))
}

/// The image's first sectors, where its GPT is.
fn image_head(o: &WriteOptions, format: Format, size: u64) -> Result<Vec<u8>> {
    let mut head = vec![0u8; gpt::HEAD.min(size) as usize];
    source::open(&o.image, format)?.read_at(0, &mut head)?;
    Ok(head)
}

fn confirm(o: &WriteOptions, what: &str) -> Result<()> {
    eprint!("{what}");
    if o.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to write to {} without confirmation: stdin is not a terminal; pass --yes \
             to confirm",
            o.device.display()
        );
    }
    eprint!(
        "Everything on {} will be lost. Type \"yes\" to write {} to it: ",
        o.device.display(),
        o.image.display()
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if answer.trim() != "yes" {
        bail!(
            "not confirmed; nothing was written to {}",
            o.device.display()
        );
    }
    Ok(())
}

/// An opened target: the device or file, its size, and (for a new file)
/// the temporary file that becomes it.
struct Opened {
    target: FileTarget,
    size: u64,
    temp: Option<tempfile::TempPath>,
    block: bool,
}

fn open_target(o: &WriteOptions, host: &Host, kind: &Kind, image_size: u64) -> Result<Opened> {
    let shown = o.device.display();
    match kind {
        Kind::Block(..) => {
            // Opened first, then checked and shown: the disk the person
            // confirms is the one written, whatever the path names by then.
            let target = match FileTarget::open_device(&o.device) {
                Ok(t) => t,
                Err(e) => {
                    // Busy: say why, if the checks can tell (a mounted
                    // partition, swap, a mapping), before the bare errno.
                    if let Kind::Block(name, devno) = kind {
                        device::check(host, &o.device, name, *devno, image_size, o.force)?;
                    }
                    let why = if e.raw_os_error() == Some(libc::EBUSY) {
                        "it is busy: mounted, or opened exclusively by another program (a \
                         mount, an installer, another airlock write); close that first"
                    } else {
                        "it cannot be opened for writing"
                    };
                    bail!("refusing to write to {shown}: {why} ({e})");
                }
            };
            let (name, devno) = device::identify_fd(host, &o.device, target.file())?;
            device::check(host, &o.device, &name, devno, image_size, o.force)?;
            if let Some(why) = device::holds_image(host, &name, &o.image) {
                bail!(
                    "refusing to write {} to {shown}: {why}, so writing would destroy the image",
                    o.image.display()
                );
            }
            let gpt = device::gpt_lines(target.file());
            confirm(
                o,
                &device::describe(host, &o.device, &name, devno, gpt.as_deref()),
            )?;
            let size = target
                .file()
                .seek(SeekFrom::End(0))
                .with_context(|| format!("finding the size of {shown}"))?;
            if size < image_size {
                bail!(
                    "refusing to write to {shown}: it holds {} but the image needs {}",
                    human_exact(size),
                    human_exact(image_size)
                );
            }
            let sector = rustix::fs::ioctl_blksszget(target.file()).unwrap_or(512);
            if sector != 512 {
                bail!(
                    "refusing to write to {shown}: it has {sector}-byte logical sectors, but the \
                     image's partition table counts 512-byte sectors and would not be found"
                );
            }
            Ok(Opened {
                target,
                size,
                temp: None,
                block: true,
            })
        }
        Kind::File(len) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&o.device)
                .with_context(|| format!("opening {shown} for writing"))?;
            device::check_file_in_use(host, &o.device, &f)?;
            if *len > 0 {
                confirm(
                    o,
                    &format!(
                        "{shown}: regular file of {}; it will be overwritten\n",
                        human(*len)
                    ),
                )?;
            }
            if *len < image_size {
                f.set_len(image_size)
                    .with_context(|| format!("extending {shown} to {image_size} bytes"))?;
            }
            Ok(Opened {
                target: FileTarget::from_file(f, &o.device),
                size: (*len).max(image_size),
                temp: None,
                block: false,
            })
        }
        Kind::NewFile => {
            let dir = o
                .device
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = o.device.file_name().unwrap_or_default().to_string_lossy();
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{name}."))
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            let (f, path) = tmp.into_parts();
            f.set_len(image_size)
                .with_context(|| format!("sizing {} to {image_size} bytes", path.display()))?;
            Ok(Opened {
                target: FileTarget::from_file(f, &path),
                size: image_size,
                temp: Some(path),
                block: false,
            })
        }
    }
}

/// Writes `o.image` to `o.device` (or, with `verify_only`, compares them).
pub fn run(o: &WriteOptions) -> Result<Summary> {
    let host = Host::real();
    let progress = if o.quiet {
        Progress::quiet()
    } else {
        Progress::new()
    };
    let format = source::format_of(&o.image)?;
    let (bmap, bmap_path) = load_bmap(o, format, &progress)?;
    if format == Format::Raw {
        source::open(&o.image, format)?.check_end(bmap.image_size)?;
    }
    // A raw image's GPT was checked by format_of; this is the decompressed one.
    if format == Format::Zstd && !gpt::has_gpt(&image_head(o, format, bmap.image_size)?) {
        bail!(
            "{} has no GPT: it is not a disk image (an airlock image starts with a GPT \
             partition table)",
            o.image.display()
        );
    }
    let kind = device::identify(&host, &o.device)?;
    if same_file(&o.image, &o.device) {
        bail!(
            "refusing to write {} to {}: {} is the image itself",
            o.image.display(),
            o.device.display(),
            o.device.display()
        );
    }
    if let Some(name) = own_output(&o.image, bmap_path.as_deref(), &o.device) {
        bail!(
            "refusing to write to {}: it is {name}, one of the build's outputs beside {}; name \
             the stick (/dev/sdX) or another file",
            o.device.display(),
            o.image.display()
        );
    }
    if o.verify_only {
        return verify_only(o, &bmap, bmap_path, format, &kind, &progress);
    }
    let mut opened = open_target(o, &host, &kind, bmap.image_size)?;
    let reloc = gpt::relocate(
        &image_head(o, format, bmap.image_size)?,
        bmap.image_size,
        opened.size,
    )?;
    let names_target = o.device.display().to_string();
    let image_name = o.image.display().to_string();
    let names = Names {
        image: &image_name,
        target: &names_target,
    };

    let done = match write_and_verify(
        o,
        format,
        &bmap,
        reloc.as_ref(),
        &mut opened.target,
        &names,
        &progress,
    ) {
        Ok(d) => d,
        Err(e) => return Err(wipe(&mut opened, &names, e)),
    };
    let direct_io = opened.target.is_direct();
    let block = opened.block;
    if let Some(tmp) = opened.temp.take() {
        drop(opened.target);
        tmp.persist_noclobber(&o.device)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming the written file to {}", o.device.display()))?;
    } else {
        drop(opened.target);
    }
    if block {
        reread_partitions(&o.device, &progress);
    }
    Ok(Summary {
        image: o.image.clone(),
        device: o.device.clone(),
        bmap: bmap_path,
        image_size: bmap.image_size,
        device_size: opened.size,
        mapped_bytes: bmap.mapped_bytes(),
        bytes_written: done.copied.written,
        bytes_zeroed: done.copied.zeroed,
        backup_gpt_moved: reloc.is_some(),
        direct_io,
        write_seconds: done.write_seconds,
        verified: done.verified(),
        bytes_verified: done.bytes_verified,
        verify_seconds: done.verify_seconds,
    })
}

/// What the copy and the read-back did.
#[derive(Debug)]
struct Done {
    copied: Copied,
    write_seconds: f64,
    /// Bytes read back from the target and found equal to what was
    /// written; 0 when the read-back did not run.
    bytes_verified: u64,
    verify_seconds: f64,
}

impl Done {
    /// Whether every written range was read back and matched: the summary
    /// says "verified" only for a read-back that ran over all of it.
    fn verified(&self) -> bool {
        let written = copied_len(&self.copied);
        written > 0 && self.bytes_verified == written
    }
}

/// Copies the image to `target`, then (unless `--no-verify`) reads every
/// written range back.
fn write_and_verify(
    o: &WriteOptions,
    format: Format,
    bmap: &Bmap,
    reloc: Option<&Relocation>,
    target: &mut dyn Target,
    names: &Names,
    progress: &Progress,
) -> Result<Done> {
    progress.step(&format!(
        "writing {} of {} to {}",
        human(copy::total(bmap)),
        o.image.display(),
        o.device.display()
    ));
    let start = Instant::now();
    let bar = progress.bytes(copy::total(bmap), "writing");
    let src = source::open(&o.image, format)?;
    let copied = copy::copy(src, bmap, reloc, Some(&mut *target), names, &bar);
    bar.finish_and_clear();
    let copied = copied?;
    let write_seconds = start.elapsed().as_secs_f64();
    let mut done = Done {
        copied,
        write_seconds,
        bytes_verified: 0,
        verify_seconds: 0.0,
    };
    if !o.verify {
        return Ok(done);
    }
    progress.step(&format!(
        "reading {} back from {}",
        human(copied_len(&done.copied)),
        o.device.display()
    ));
    let start = Instant::now();
    done.bytes_verified = verify(
        o,
        format,
        reloc,
        &done.copied.checks,
        target,
        names,
        progress,
        bmap.image_size,
    )?;
    done.verify_seconds = start.elapsed().as_secs_f64();
    Ok(done)
}

/// The name of the build output beside `image` (its block map, manifest,
/// SHA256SUMS, the other of .raw and .raw.zst, or any output the manifest
/// lists) that `target` is, if it is one: writing there would destroy it.
fn own_output(image: &Path, bmap: Option<&Path>, target: &Path) -> Option<String> {
    let mut files: Vec<PathBuf> = bmap::candidates(image);
    files.extend(bmap.map(Path::to_path_buf));
    files.push(image.with_file_name("SHA256SUMS"));
    let name = image.file_name()?.to_string_lossy().into_owned();
    if let Some(stem) = name.strip_suffix(".raw.zst") {
        files.push(image.with_file_name(format!("{stem}.raw")));
    } else if let Some(stem) = name.strip_suffix(".raw") {
        files.push(image.with_file_name(format!("{stem}.raw.zst")));
    }
    let manifest = image.with_file_name("manifest.json");
    let listed =
        crate::image::read_small_file(&manifest, crate::image::SMALL_FILE_LIMIT, "manifest")
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|m| {
                m["outputs"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>())
            })
            .unwrap_or_default();
    files.extend(listed.iter().map(|n| image.with_file_name(n)));
    files.push(manifest);
    files.into_iter().find(|f| same_file(f, target)).map(|f| {
        f.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn copied_len(c: &Copied) -> u64 {
    c.checks.iter().map(|c| c.len).sum()
}

/// After a failed write: erase the partition table written so far (or drop
/// the temporary file), then return the error, saying what was done.
fn wipe(opened: &mut Opened, names: &Names, err: anyhow::Error) -> anyhow::Error {
    if opened.temp.is_some() {
        return err; // The temporary file is removed when dropped.
    }
    let zeros = target::AlignedBuf::new(gpt::HEAD as usize);
    let erased = opened
        .target
        .write_at(zeros.get(gpt::HEAD as usize), 0)
        .is_ok()
        && opened.target.sync().is_ok();
    tracing::debug!(
        "erasing the partition table of {} after a failure: {erased}",
        names.target
    );
    if erased {
        err.context(format!(
            "the write to {} did not complete; its partition table was erased so it is not mistaken \
             for a good copy",
            names.target
        ))
    } else {
        err.context(format!(
            "the write to {} did not complete, and erasing its partition table failed too: do not \
             use it",
            names.target
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn verify(
    o: &WriteOptions,
    format: Format,
    reloc: Option<&Relocation>,
    checks: &[Check],
    target: &mut dyn Target,
    names: &Names,
    progress: &Progress,
    image_size: u64,
) -> Result<u64> {
    let bar = progress.bytes(checks.iter().map(|c| c.len).sum(), "verifying");
    let m = copy::read_back(target, checks, names, &bar);
    bar.finish_and_clear();
    let (read, m) = m?;
    let Some(m) = m else { return Ok(read) };
    let c = &m.check;
    let first = if c.off >= image_size {
        let tail = reloc
            .and_then(|r| r.tail.as_ref())
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let mut expected = |off: u64, buf: &mut [u8]| -> Result<()> {
            let i = (off - c.off) as usize;
            buf.copy_from_slice(&tail[i..i + buf.len()]);
            Ok(())
        };
        copy::first_difference(target, c, &mut expected)?
    } else {
        let mut src = source::open(&o.image, format)?;
        let mut expected = |off: u64, buf: &mut [u8]| -> Result<()> {
            src.read_at(off, buf)?;
            if let Some(r) = reloc {
                r.apply(off, buf);
            }
            Ok(())
        };
        copy::first_difference(target, c, &mut expected)?
    };
    let at = match first {
        Some(off) => format!("the first bad byte is at offset {off}"),
        None => format!(
            "the bytes at offsets {} to {} read differently each time",
            c.off,
            c.off + c.len
        ),
    };
    bail!(
        "verifying {}: {} of {} ranges differ from the image; {at} ({}). The device may be \
         failing, or fake (smaller than it claims): do not use it",
        names.target,
        m.count,
        checks.len(),
        c.what
    )
}

fn verify_only(
    o: &WriteOptions,
    bmap: &Bmap,
    bmap_path: Option<PathBuf>,
    format: Format,
    kind: &Kind,
    progress: &Progress,
) -> Result<Summary> {
    if *kind == Kind::NewFile {
        bail!("{} does not exist", o.device.display());
    }
    let mut target = FileTarget::open_read(&o.device)?;
    let size = target
        .file()
        .seek(SeekFrom::End(0))
        .with_context(|| format!("finding the size of {}", o.device.display()))?;
    if size < bmap.image_size {
        bail!(
            "{} holds {} but the image is {}: it cannot hold a copy",
            o.device.display(),
            human_exact(size),
            human_exact(bmap.image_size)
        );
    }
    let reloc = gpt::relocate(
        &image_head(o, format, bmap.image_size)?,
        bmap.image_size,
        size,
    )?;
    let image_name = o.image.display().to_string();
    let names_target = o.device.display().to_string();
    let names = Names {
        image: &image_name,
        target: &names_target,
    };
    progress.step(&format!(
        "comparing {} with {}",
        o.device.display(),
        o.image.display()
    ));
    let start = Instant::now();
    // What the device must hold: the image as a write would lay it out.
    let bar = progress.bytes(copy::total(bmap), "reading the image");
    let expected = copy::copy(
        source::open(&o.image, format)?,
        bmap,
        reloc.as_ref(),
        None,
        &names,
        &bar,
    );
    bar.finish_and_clear();
    let mut checks = expected?.checks;
    if let Some((at, tail)) = reloc.as_ref().and_then(|r| r.tail.as_ref()) {
        use sha2::Digest;
        checks.push(Check {
            off: *at,
            len: tail.len() as u64,
            sha256: sha2::Sha256::digest(tail).into(),
            what: "the backup GPT at the end of the device".into(),
        });
    }
    let bytes_verified = verify(
        o,
        format,
        reloc.as_ref(),
        &checks,
        &mut target,
        &names,
        progress,
        bmap.image_size,
    )?;
    let checked: u64 = checks.iter().map(|c| c.len).sum();
    Ok(Summary {
        image: o.image.clone(),
        device: o.device.clone(),
        bmap: bmap_path,
        image_size: bmap.image_size,
        device_size: size,
        mapped_bytes: bmap.mapped_bytes(),
        bytes_written: 0,
        bytes_zeroed: 0,
        backup_gpt_moved: reloc.is_some(),
        direct_io: target.is_direct(),
        write_seconds: 0.0,
        verified: checked > 0 && bytes_verified == checked,
        bytes_verified,
        verify_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Asks the kernel to read the new partition table (best effort: udev
/// usually does it when the device is closed).
fn reread_partitions(dev: &Path, progress: &Progress) {
    if crate::cmd::which("blockdev").is_none() {
        return;
    }
    if let Err(e) = Command::new("blockdev").arg("--rereadpt").arg(dev).run() {
        progress.note(&format!(
            "the kernel did not re-read the partition table yet ({e:#}); replug the device"
        ));
    }
}

/// The human summary, for stderr.
pub fn summary_line(s: &Summary) -> String {
    let rate = if s.write_seconds > 0.0 {
        format!(
            " ({:.1} MiB/s)",
            (s.bytes_written + s.bytes_zeroed) as f64 / s.write_seconds / 1048576.0
        )
    } else {
        String::new()
    };
    let mut line = if s.write_seconds > 0.0 || s.bytes_written > 0 {
        format!(
            "wrote {} of the {} image to {} in {:.1}s{rate}",
            human(s.bytes_written + s.bytes_zeroed),
            human(s.image_size),
            s.device.display(),
            s.write_seconds
        )
    } else {
        format!("{} holds {}", s.device.display(), s.image.display())
    };
    if s.bytes_zeroed > 0 {
        line.push_str(&format!(
            "; {} of zeros were zeroed in place",
            human(s.bytes_zeroed)
        ));
    }
    if s.backup_gpt_moved {
        line.push_str(&format!(
            "; backup GPT at the end of the {} device",
            human(s.device_size)
        ));
    }
    if s.verified {
        line.push_str(&format!(
            "; read back and verified in {:.1}s",
            s.verify_seconds
        ));
    } else {
        line.push_str("; NOT verified (--no-verify)");
    }
    line
}
