// SPDX-License-Identifier: Apache-2.0
//! `airlock fetch`: brings every input a recipe names into the
//! content-addressed cache, on the connected side, so that `build` (which
//! never uses the network) and `bundle` find them there.
//!
//! URL inputs are downloaded (HTTP(S) with TLS verification, resumable,
//! retried with backoff, `-j` in parallel; `file://` copied), local files
//! are copied in, and container images are pulled from their registries.
//! Everything is checked against its pin on the way in: nothing unverified
//! is ever stored under a digest name.

pub mod download;
pub mod http;
pub(crate) mod pool;
pub mod sums;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::inputs::{Cache, Source, Wanted};
use crate::recipe::{self, Loaded};
use download::Download;
use http::{Http, Retry};

pub struct FetchOptions {
    pub recipe: PathBuf,
    pub cache: PathBuf,
    /// Transfers at once.
    pub jobs: usize,
    pub retry: Retry,
    /// No progress output (library use, tests).
    pub quiet: bool,
}

/// What `fetch` did for one input, for `--json` and the summary.
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub what: String,
    pub source: String,
    pub sha256: String,
    /// "cached" (already there; only metadata was read), "downloaded",
    /// "resumed", "copied" (local file) or "pulled" (image).
    pub status: String,
    /// Bytes transferred in this run.
    pub bytes: u64,
}

/// One unit of work for the pool.
pub(crate) enum Job {
    Url(Download),
    Local(Wanted),
    Image(crate::registry::PullJob),
}

impl Job {
    fn what(&self) -> &str {
        match self {
            Job::Url(d) => &d.what,
            Job::Local(w) => &w.what,
            Job::Image(p) => &p.what,
        }
    }
}

/// Fetches every input of the recipe into the cache.
pub fn fetch(opts: &FetchOptions) -> Result<Vec<Fetched>> {
    let loaded = recipe::load(&opts.recipe)?;
    let cache = Cache::new(&opts.cache);
    let http = Http::new(opts.retry.clone());
    let jobs = plan(&loaded)?;
    run_jobs(&http, &cache, jobs, opts.jobs, opts.quiet)
}

/// The jobs for a recipe: every input must be pinned (by the recipe or
/// its lock) before anything is transferred.
pub(crate) fn plan(loaded: &Loaded) -> Result<Vec<Job>> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for i in loaded.inputs() {
        let sha256 = loaded.pinned(&i)?;
        // The same bytes named twice are fetched once. An image is keyed by
        // its platforms too (they decide which blobs are pulled).
        let key = match &i.resolved {
            Source::Image(img) => format!("{sha256} {}", img.platforms.join(",")),
            _ => sha256.clone(),
        };
        if let Some(&at) = seen.get(&key) {
            // Under another name, an image still needs an archive naming it
            // (the node imports it under that name): pulled once, written
            // for each name.
            if let (Job::Image(job), Source::Image(img)) = (&mut jobs[at], &i.resolved) {
                if !std::iter::once(&job.source)
                    .chain(&job.aliases)
                    .any(|s| s.reference == img.reference)
                {
                    crate::registry::pull_job(loaded, &i.what, &i.at, img, &sha256)?;
                    job.aliases.push(img.clone());
                }
            }
            continue;
        }
        seen.insert(key, jobs.len());
        jobs.push(match i.resolved {
            Source::Url(url) => Job::Url(Download::new(i.what, url, Some(sha256), i.at)),
            Source::Path(p) => Job::Local(Wanted {
                what: i.what,
                at: i.at,
                source: Source::Path(p),
                sha256,
            }),
            Source::Image(img) => Job::Image(crate::registry::pull_job(
                loaded, &i.what, &i.at, &img, &sha256,
            )?),
        });
    }
    Ok(jobs)
}

/// The sha256 to pin a URL input to: the one published next to it
/// (`.sha256`, `.sha256sum`), else the digest of the file itself,
/// downloaded into the cache on the way.
pub fn pin_url(
    http: &Http,
    cache: &Cache,
    what: &str,
    url: &str,
    at: &str,
) -> Result<(String, &'static str)> {
    let ctx = || format!("{at}: locking {what} ({url})");
    if let Some((sha, sum_url)) = sums::published_sha256(http, url).with_context(ctx)? {
        tracing::info!("{what}: sha256 {sha} from {sum_url}");
        return Ok((sha, "published"));
    }
    let bar = crate::progress::Progress::new().bytes(0, what);
    let got = download::download(
        http,
        cache,
        &Download::new(what.into(), url.into(), None, at.into()),
        &bar,
    );
    bar.finish_and_clear();
    Ok((got.with_context(ctx)?.sha256, "downloaded"))
}

pub(crate) fn run_jobs(
    http: &Http,
    cache: &Cache,
    jobs: Vec<Job>,
    parallel: usize,
    quiet: bool,
) -> Result<Vec<Fetched>> {
    let total = jobs.len();
    let results = pool::run(
        parallel,
        quiet,
        jobs,
        |j| j.what().to_string(),
        |j, bar| run_one(http, cache, j, bar),
        |r| match r {
            Ok(f) if f.status == "cached" => Some("in the cache".into()),
            Ok(f) => Some(format!("{} {}", f.status, pool::human(f.bytes))),
            Err(_) => None,
        },
    );
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(f) => ok.push(f),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        let others = if ok.is_empty() {
            String::new()
        } else {
            format!(
                " (the other {} are in {})",
                ok.len(),
                cache.root().display()
            )
        };
        bail!(
            "{} of {total} inputs could not be fetched{others}:\n  - {}",
            failed.len(),
            failed.join("\n  - ")
        );
    }
    Ok(ok)
}

fn run_one(http: &Http, cache: &Cache, job: &Job, bar: &ProgressBar) -> Result<Fetched> {
    match job {
        Job::Url(d) => {
            let got = download::download(http, cache, d, bar)?;
            let status = match (got.cached, got.resumed_from) {
                (true, _) => "cached",
                (false, 0) => "downloaded",
                (false, _) => "resumed",
            };
            Ok(Fetched {
                what: d.what.clone(),
                source: d.url.clone(),
                sha256: got.sha256,
                status: status.into(),
                bytes: got.bytes,
            })
        }
        Job::Local(w) => {
            let r = cache.resolve(w, bar)?;
            Ok(Fetched {
                what: w.what.clone(),
                source: r.source,
                sha256: r.sha256,
                status: if r.metadata_hit { "cached" } else { "copied" }.into(),
                bytes: if r.metadata_hit { 0 } else { r.size },
            })
        }
        Job::Image(p) => crate::registry::pull(http, cache, p, bar),
    }
}
