// SPDX-License-Identifier: Apache-2.0
//! `airlock write`: the USB writer.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::write::{self, WriteOptions};

/// Write an image to a USB stick (or a file), and read it back.
///
/// Writes only the blocks the image's block map lists (IMAGE.bmap or
/// NAME.bmap beside it, checked against SHA256SUMS when that lists it; for a
/// .raw without one, the map is computed), streaming a .raw.zst without
/// decompressing it to disk. The backup GPT moves to the end of a larger
/// device. Refuses a partition, a disk with anything mounted or in use, the
/// disk holding / or /boot, a device smaller than the image, and (unless
/// --force) a disk the kernel calls non-removable; shows the device's
/// model, serial, size and partitions and asks before erasing it. Every
/// written byte is then read back, past the page cache, and compared by
/// sha256. DEVICE may be a regular file (a VM disk); it is created or
/// extended to the image size.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The image: a .raw or .raw.zst from `airlock build`.
    pub image: PathBuf,

    /// The whole-disk block device (/dev/sdX, /dev/disk/by-id/...) or a regular file.
    pub device: PathBuf,

    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,

    /// Write to a disk the kernel reports as non-removable (a USB disk that claims to be fixed).
    #[arg(long)]
    pub force: bool,

    /// Skip reading the written bytes back.
    #[arg(long, conflicts_with = "verify_only")]
    pub no_verify: bool,

    /// Write nothing: compare DEVICE with IMAGE, as the read-back after a write does.
    #[arg(long)]
    pub verify_only: bool,

    /// The block map [default: IMAGE.bmap, or NAME.bmap, beside IMAGE].
    #[arg(long, value_name = "FILE", help_heading = "Advanced Options")]
    pub bmap: Option<PathBuf>,

    /// Print a JSON summary (bytes written, times, verified) on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: WriteArgs) -> Result<()> {
    let summary = write::run(&WriteOptions {
        image: a.image,
        device: a.device,
        bmap: a.bmap,
        yes: a.yes,
        force: a.force,
        verify: !a.no_verify,
        verify_only: a.verify_only,
        quiet: false,
    })?;
    eprintln!("airlock: {}", write::summary_line(&summary));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}
