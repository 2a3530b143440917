// SPDX-License-Identifier: Apache-2.0
//! Command-line types (clap derive) and the handlers they dispatch to.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::pipeline;
use crate::vm::{self, Net};

/// Build bootable disk images for air-gapped Kubernetes nodes.
///
/// A recipe (TOML) pins a root filesystem and every file, archive and
/// template that goes into the image by sha256. `airlock build` verifies
/// them, lays out the root tree and writes a UEFI-bootable GPT disk image;
/// `airlock boot` smoke-tests it in a VM before it is carried across the gap.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, help_expected = true, max_term_width = 100)]
pub struct Cli {
    /// Log every external command and more (repeat for trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    Build(BuildArgs),
    Lock(LockArgs),
    Boot(BootArgs),
}

/// Pin the inputs a recipe leaves unpinned, in `<recipe>.lock`.
///
/// Local files are hashed; inputs already in the lock keep their digest
/// unless --update. Review the lock file like code: `airlock build` trusts
/// it and refuses any input pinned neither there nor in the recipe.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,

    /// Hash every unpinned input again, replacing locked digests.
    #[arg(long)]
    pub update: bool,

    /// Print what was pinned as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Build a disk image from a recipe.
///
/// Verifies every input against its sha256 (nothing is downloaded: url
/// inputs must already be in the cache), unpacks the base, adds files,
/// archives, templates and overlays, and writes `<name>.raw`,
/// `<name>.raw.zst`, `manifest.json` and `SHA256SUMS` into the output folder.
/// Output appears under its final names only when the build succeeded.
/// Needs root (file owners, device nodes and capabilities) and mke2fs.
/// Timestamps are clamped to SOURCE_DATE_EPOCH (or the recipe's epoch), so
/// the same inputs give byte-identical images.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe (TOML); relative paths in it resolve against its folder.
    pub recipe: PathBuf,

    /// Output folder [default: out/<name>].
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Content-addressed input cache [default: out/cache].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Print a JSON report (outputs and their sha256) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Boot an image in QEMU (UEFI, software emulation) to check it.
///
/// Uses a fresh copy of the firmware variables each run, so the image must
/// boot from the removable-media path as it will on a new machine. The serial
/// console is copied to stdout. Succeeds when the console prints a line
/// matching --until, or, without --until, when the guest powers off.
/// The guest gets no network unless --net restricted, which gives it an
/// interface and a default route that reach nothing.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// The disk image (.raw or .qcow2).
    pub image: PathBuf,

    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,

    /// Stop with success when a console line matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub until: Option<regex::Regex>,

    /// Network for the guest.
    #[arg(long, value_enum, default_value_t = Net::None)]
    pub net: Net,

    /// Also write the console to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Discard the guest's writes to the image.
    #[arg(long)]
    pub snapshot: bool,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB", help_heading = "Advanced Options")]
    pub memory: u32,

    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_name = "N", help_heading = "Advanced Options")]
    pub cpus: u32,

    /// UEFI firmware code and variables template [default: OVMF from ovmf/edk2-ovmf].
    #[arg(long, num_args = 2, value_names = ["CODE", "VARS"], help_heading = "Advanced Options")]
    pub firmware: Option<Vec<PathBuf>>,
}

pub fn build(a: BuildArgs) -> Result<()> {
    let report = pipeline::build(&pipeline::BuildOptions {
        recipe: a.recipe,
        out: a.out,
        cache: a.cache,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.files {
            eprintln!("  {}  {}", f.sha256, report.out_dir.join(&f.name).display());
        }
    }
    Ok(())
}

pub fn lock(a: LockArgs) -> Result<()> {
    let loaded = crate::recipe::load(&a.recipe)?;
    let outcome = crate::recipe::lock::lock(&loaded, a.update)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for o in &outcome {
            eprintln!("  {}  {} ({})", o.sha256, o.what, o.how);
        }
        eprintln!("wrote {}", crate::recipe::lock::path_for(&a.recipe).display());
    }
    Ok(())
}

pub fn boot(a: BootArgs) -> Result<()> {
    let opts = vm::VmOpts {
        image: a.image,
        timeout: Duration::from_secs(a.timeout),
        until: a.until,
        net: a.net,
        memory_mib: a.memory,
        cpus: a.cpus,
        snapshot: a.snapshot,
        log: a.log,
        firmware: a.firmware.map(|v| (v[0].clone(), v[1].clone())),
        echo: true,
    };
    match vm::run(&opts).context("booting the image")? {
        vm::Outcome::Matched(line) => eprintln!("\nairlock: console matched: {line}"),
        vm::Outcome::PoweredOff => eprintln!("\nairlock: the guest powered off"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
