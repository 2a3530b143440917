// SPDX-License-Identifier: Apache-2.0
//! `airlock fetch`: the connected side's download command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::fetch::{self, http::Retry, FetchOptions};

/// Download every input of a recipe into the input cache.
///
/// URL inputs are downloaded over HTTP(S) (TLS verified against the
/// system's CA store; proxies from HTTPS_PROXY/NO_PROXY) or copied from
/// file:// URLs, local files are copied in, and container images are pulled
/// from their registries (or the recipe's mirrors) as OCI archives.
/// Every input must be pinned, by the recipe or `airlock lock`, and is
/// checked against its pin before it enters the cache: a mismatch is
/// deleted and reported. Interrupted downloads resume where they stopped,
/// in this run (transient failures are retried with backoff) or the next.
/// Inputs already in the cache are not read again.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,

    /// Content-addressed input cache [default: out/cache].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Transfers at a time.
    #[arg(short, long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,

    /// Print what was fetched as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub retry: RetryArgs,
}

/// How transient network failures are retried.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Retries of a transfer after a transient failure (connection lost, 5xx, 429).
    #[arg(
        long,
        default_value_t = 4,
        value_name = "N",
        help_heading = "Advanced Options"
    )]
    pub retries: u32,

    /// First wait before a retry, in milliseconds; doubled for each later one (at most 30 s).
    #[arg(
        long,
        default_value_t = 500,
        value_name = "MS",
        help_heading = "Advanced Options"
    )]
    pub retry_delay: u64,
}

impl RetryArgs {
    pub fn retry(&self) -> Retry {
        Retry {
            retries: self.retries,
            base: Duration::from_millis(self.retry_delay),
            ..Retry::default()
        }
    }
}

/// The input cache: `--cache` or out/cache.
pub fn cache_dir(cache: &Option<PathBuf>) -> PathBuf {
    cache.clone().unwrap_or_else(|| PathBuf::from("out/cache"))
}

pub fn run(a: FetchArgs) -> Result<()> {
    if a.jobs == 0 {
        anyhow::bail!("--jobs must be at least 1");
    }
    let fetched = fetch::fetch(&FetchOptions {
        recipe: a.recipe.clone(),
        cache: cache_dir(&a.cache),
        jobs: a.jobs,
        retry: a.retry.retry(),
        quiet: false,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&fetched)?);
    } else {
        let moved: u64 = fetched.iter().map(|f| f.bytes).sum();
        let cached = fetched.iter().filter(|f| f.status == "cached").count();
        eprintln!(
            "airlock: {} inputs in {} ({cached} already there, {} transferred)",
            fetched.len(),
            cache_dir(&a.cache).display(),
            indicatif::HumanBytes(moved)
        );
    }
    Ok(())
}

/// Pack a recipe and everything it needs into one archive for the far side.
///
/// The archive (tar, zstd-compressed) holds the recipe, its lock file,
/// template folder, overlays and local input files, and every downloaded
/// input and pulled image from the cache (run `airlock fetch` first), with
/// a manifest of their sha256. `FILE.sha256` lists the archive (or, with
/// --split, each part FILE.000, FILE.001, ...) with its sha256:
/// `airlock build --from-bundle FILE` checks every part before unpacking,
/// and every file as it unpacks. Paths in the recipe must be relative.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,

    /// The bundle to write (FILE.sha256 is written beside it).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Cut the bundle into parts of at most SIZE (e.g. 4GiB-1 for FAT32: "4095MiB", "4300M" for a DVD).
    #[arg(long, value_name = "SIZE")]
    pub split: Option<crate::recipe::Size>,

    /// Content-addressed input cache [default: out/cache].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Print the parts and their sha256 as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The largest file FAT32 can hold.
const FAT32_MAX_FILE: u64 = (4 << 30) - 1;

pub fn bundle(a: BundleArgs) -> Result<()> {
    if let Some(s) = &a.split {
        if s.0 < 1 << 20 {
            anyhow::bail!("--split {s} is too small: parts must be at least 1MiB");
        }
        // FAT32 stores sizes in 32 bits: a part of exactly 4 GiB does not fit.
        if s.0 > FAT32_MAX_FILE {
            eprintln!(
                "airlock: warning: --split {s} makes parts larger than FAT32 can hold \
                 (4 GiB - 1 byte per file); for FAT32 sticks use --split 4095MiB"
            );
        }
    }
    let written = crate::bundle::bundle(&crate::bundle::BundleOptions {
        recipe: a.recipe,
        output: a.output,
        cache: cache_dir(&a.cache),
        split: a.split.map(|s| s.0),
        quiet: false,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        eprintln!(
            "airlock: bundled {} inputs ({} files) in {} part(s):",
            written.inputs,
            written.files,
            written.parts.len()
        );
        crate::bundle::describe(&written, &mut std::io::stderr())?;
    }
    Ok(())
}

/// Checks and unpacks a bundle for `build --from-bundle`; returns the
/// recipe to build.
pub fn unbundle(file: &std::path::Path, cache: &Option<PathBuf>) -> Result<PathBuf> {
    let stem = file
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".sha256").to_string())
        .unwrap_or_else(|| "bundle".into());
    let dest = PathBuf::from("out/from-bundle").join(stem);
    let cache = crate::inputs::Cache::new(cache_dir(cache));
    let progress = crate::progress::Progress::new();
    let u = crate::bundle::unpack(file, &cache, &dest, &progress)?;
    eprintln!(
        "airlock: bundle {} checked: {} files, {} inputs; recipe {}",
        file.display(),
        u.manifest.files.len(),
        u.manifest.inputs.len(),
        u.recipe.display()
    );
    Ok(u.recipe)
}
