// SPDX-License-Identifier: Apache-2.0
//! Command-line types (clap derive) and the handlers they dispatch to.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::pipeline;

pub mod fetch;
pub mod node;
pub mod write;
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
    #[command(
        override_usage = "airlock build [OPTIONS] <RECIPE>\n       airlock build [OPTIONS] --from-bundle <FILE>"
    )]
    Build(BuildArgs),
    Lock(LockArgs),
    Fetch(fetch::FetchArgs),
    Bundle(fetch::BundleArgs),
    Boot(BootArgs),
    Node(node::NodeArgs),
    Verify(VerifyArgs),
    Inspect(InspectArgs),
    Write(write::WriteArgs),
}

/// Prove an image is what its build made.
///
/// Reads IMAGE (a .raw, a .raw.zst, a .qcow2/.vmdk/.vhdx, or the block
/// device or file a stick was written to) as an ordinary user, without
/// mounting: checks both GPT headers and their CRCs, the partitions, and
/// the sha256, owner and mode of every file the manifest lists (the files
/// airlock placed, not the base's) in the root filesystem and on the ESP.
/// With the build's block map (--bmap, else the .bmap beside IMAGE or
/// beside the manifest) it also checks the sha256 of every mapped block,
/// which covers the base's files; without one, the output says that the
/// base's files were not checked. The manifest is --manifest, else the
/// manifest.json beside IMAGE, else the copy inside the image (weaker: who
/// can rewrite the image can rewrite that too). A .raw.zst is decompressed
/// into $TMPDIR first (holes kept). Prints each difference and exits
/// non-zero when there is any.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image, or the device it was written to.
    pub image: PathBuf,

    /// The build's manifest.json to check against [default: beside IMAGE, else inside it].
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// The build's block map (.bmap) to check every mapped block with
    /// [default: beside IMAGE, else the one the manifest lists beside it].
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Show what is inside an image.
///
/// Partitions, boot entries and kernel command line, kernel version,
/// hostname, users, the units airlock enabled, and (when the image has them)
/// Kubernetes and containerd versions, preloaded images, node role and name
/// and the secrets inside. Reads a .raw, .raw.zst, VM disk or written device
/// without mounting.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image, or the device it was written to.
    pub image: PathBuf,

    /// Print the report as JSON on stdout.
    #[arg(long, conflicts_with = "cat")]
    pub json: bool,

    /// Print this file of the root filesystem to stdout, byte for byte, instead.
    #[arg(long, value_name = "PATH")]
    pub cat: Option<String>,
}

/// Pin the inputs a recipe leaves unpinned, in `<recipe>.lock`.
///
/// Local files are hashed; a URL is pinned to the sha256 published next to
/// it (`<url>.sha256` or `.sha256sum`), else downloaded into the cache and
/// hashed; an image tag is resolved at its registry (or a mirror) to the
/// digest it names and the manifest digest of each platform. Inputs already
/// in the lock keep their digest unless --update. Review the lock file like
/// code: `airlock build` trusts it and refuses any input pinned neither
/// there nor in the recipe.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,

    /// Resolve every unpinned input again, replacing locked digests.
    #[arg(long)]
    pub update: bool,

    /// Print what was pinned as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Content-addressed input cache, for downloads hashed to pin them [default: out/cache].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    #[command(flatten)]
    pub retry: fetch::RetryArgs,
}

/// Build a disk image from a recipe.
///
/// Verifies every input against its sha256 (nothing is downloaded: url
/// inputs must already be in the cache), unpacks the base, adds files,
/// archives, templates and overlays, and writes `<name>.raw`,
/// `<name>.raw.zst` (and the recipe's other formats), `<name>.bmap`,
/// `manifest.json` and `SHA256SUMS` into the output folder, which must be
/// new, empty, or one airlock made (it holds `.airlock.lock`).
/// Output appears under its final names only when the build succeeded.
/// Needs root (file owners, device nodes and capabilities) and mke2fs.
/// Timestamps are clamped to SOURCE_DATE_EPOCH (or the recipe's epoch), so
/// the same inputs give byte-identical images.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe (TOML); relative paths in it resolve against its folder.
    #[arg(required_unless_present = "from_bundle")]
    pub recipe: Option<PathBuf>,

    /// Build from an `airlock bundle` (FILE or FILE.sha256): every part is
    /// checked, then every file as it is unpacked (the recipe tree into
    /// out/from-bundle/<FILE name>, the inputs into the cache) before the build.
    #[arg(long, value_name = "FILE", conflicts_with = "recipe")]
    pub from_bundle: Option<PathBuf>,

    /// Output folder [default: out/<name>].
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Content-addressed input cache [default: out/cache].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Output format, repeatable; replaces the recipe's [disk] formats (raw is always written).
    #[arg(long = "format", value_name = "FORMAT", value_enum)]
    pub formats: Vec<crate::output::formats::Format>,

    /// Make a new cluster CA and bootstrap token (Kubernetes recipes).
    ///
    /// They live in out/<cluster>/secrets beside the output folder and are
    /// reused by every build of the cluster; the old ones are kept in
    /// previous/. Nodes built with the old ones no longer join.
    #[arg(long)]
    pub rotate_secrets: bool,

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
    #[arg(
        long,
        default_value_t = 2048,
        value_name = "MIB",
        value_parser = clap::value_parser!(u32).range(64..),
        help_heading = "Advanced Options"
    )]
    pub memory: u32,

    /// Guest CPUs.
    #[arg(
        long,
        default_value_t = 2,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        help_heading = "Advanced Options"
    )]
    pub cpus: u32,

    /// UEFI firmware code and variables template [default: OVMF from ovmf/edk2-ovmf].
    #[arg(long, num_args = 2, value_names = ["CODE", "VARS"], help_heading = "Advanced Options")]
    pub firmware: Option<Vec<PathBuf>>,
}

pub fn build(a: BuildArgs) -> Result<()> {
    let recipe = match (a.recipe, &a.from_bundle) {
        (_, Some(b)) => fetch::unbundle(b, &a.cache)?,
        (Some(r), None) => r,
        (None, None) => anyhow::bail!("name a recipe or --from-bundle FILE"),
    };
    let report = pipeline::build(&pipeline::BuildOptions {
        recipe,
        out: a.out,
        cache: a.cache,
        formats: Some(a.formats).filter(|f| !f.is_empty()),
        rotate_secrets: a.rotate_secrets,
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
    let cache = crate::inputs::Cache::new(fetch::cache_dir(&a.cache));
    let http = crate::fetch::http::Http::new(a.retry.retry());
    let outcome = crate::recipe::lock::lock(&loaded, a.update, &cache, &http)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for o in &outcome {
            eprintln!("  {}  {} ({})", o.sha256, o.what, o.how);
        }
        eprintln!(
            "wrote {}",
            crate::recipe::lock::path_for(&a.recipe).display()
        );
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

pub fn verify(a: VerifyArgs) -> Result<()> {
    let report =
        crate::verify::verify(&a.image, a.manifest.as_deref(), a.bmap.as_deref(), !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::verify::render(&report));
    }
    match report.failures.len() {
        0 => Ok(()),
        n => anyhow::bail!(
            "{} differs from its manifest in {n} place{}",
            a.image.display(),
            if n == 1 { "" } else { "s" }
        ),
    }
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    if let Some(path) = &a.cat {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        crate::inspect::cat(&a.image, path, &mut out)?;
        return std::io::Write::flush(&mut out).context("writing to stdout");
    }
    let report = crate::inspect::inspect(&a.image, !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::inspect::text::render(&report));
    }
    match report.problems.len() {
        0 => Ok(()),
        n => anyhow::bail!(
            "{} has {n} problem{} (listed above)",
            a.image.display(),
            if n == 1 { "" } else { "s" }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn boot_refuses_zero_memory_and_cpus() {
        let parse =
            |extra: &[&str]| Cli::try_parse_from(["airlock", "boot", "x.raw"].iter().chain(extra));
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--memory", "0"]).is_err());
        assert!(parse(&["--cpus", "0"]).is_err());
        assert!(parse(&["--memory", "4096", "--cpus", "1"]).is_ok());
    }
}
