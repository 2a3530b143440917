// SPDX-License-Identifier: Apache-2.0
//! One download into the content-addressed cache.
//!
//! Bytes arrive in `<cache>/partial/<digest>.part`, outside the store, and
//! are hashed on the way. Only a file whose sha256 equals the pin is renamed
//! to `<cache>/sha256/<digest>`; a mismatch is deleted. An interrupted
//! transfer keeps its partial file and continues with a `Range` request,
//! in the same run (retries) or the next one; `If-Range` with the server's
//! ETag makes a changed file start over instead of being spliced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::http::{check_status, header, Attempt, Failure, Http};
use crate::inputs::Cache;

/// What to download.
#[derive(Clone, Debug)]
pub struct Download {
    /// What it is, for messages: "file /usr/bin/kubeadm".
    pub what: String,
    pub url: String,
    /// The pinned digest; `None` hashes what arrives (lock, when no
    /// published sum exists) and stores it under that digest.
    pub sha256: Option<String>,
    /// Where the pin is (`recipe.toml:14:9`), for a mismatch.
    pub at: String,
    /// The size the publisher states (a registry's descriptor): more bytes
    /// than this are refused as they arrive.
    pub size: Option<u64>,
    /// A blob the registry addresses by this digest: a mismatch is the
    /// server's fault, not the pin's.
    pub blob: bool,
    /// Only add to the bar (one bar for many blobs of an image).
    pub shared_bar: bool,
}

impl Download {
    pub fn new(what: String, url: String, sha256: Option<String>, at: String) -> Download {
        Download {
            what,
            url,
            sha256,
            at,
            size: None,
            blob: false,
            shared_bar: false,
        }
    }
}

/// Sends one GET with extra headers (authentication is the getter's job).
pub type Getter<'a> = dyn Fn(&str, &[(&str, &str)]) -> Attempt<Response<Body>> + Sync + 'a;

/// What a download did.
#[derive(Clone, Debug, Serialize)]
pub struct Got {
    pub sha256: String,
    /// Bytes transferred in this run (0 for a cache hit).
    pub bytes: u64,
    /// Bytes a previous attempt had left, continued with a Range request.
    pub resumed_from: u64,
    /// Already in the cache: nothing was read but the file's metadata.
    pub cached: bool,
}

/// What the partial file's sidecar remembers between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PartMeta {
    url: String,
    /// ETag (or Last-Modified) of the response the bytes came from.
    validator: Option<String>,
}

/// Downloads `d` into `cache` unless it is there already.
pub fn download(http: &Http, cache: &Cache, d: &Download, bar: &ProgressBar) -> Result<Got> {
    download_via(http, cache, d, bar, &|url, headers| http.get(url, headers))
}

/// [`download`] with requests sent by `get` (a registry adds its token).
pub fn download_via(
    http: &Http,
    cache: &Cache,
    d: &Download,
    bar: &ProgressBar,
    get: &Getter,
) -> Result<Got> {
    if let Some(sha) = &d.sha256 {
        if cache.blob(sha).is_file() {
            return Ok(Got {
                sha256: sha.clone(),
                bytes: 0,
                resumed_from: 0,
                cached: true,
            });
        }
    }
    if let Some(path) = file_url_path(&d.url)? {
        return copy_local(cache, d, &path, bar);
    }
    if !(d.url.starts_with("https://") || d.url.starts_with("http://")) {
        bail!(
            "{}: {} has an unsupported URL {} (use https://, http:// or file://)",
            d.at,
            d.what,
            d.url
        );
    }
    let dir = cache.root().join("partial");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = match &d.sha256 {
        Some(s) => s.clone(),
        None => format!(
            "url-{}",
            &hex::encode(Sha256::digest(d.url.as_bytes()))[..32]
        ),
    };
    let part_path = dir.join(format!("{key}.part"));
    let meta_path = dir.join(format!("{key}.json"));
    let mut part = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part_path)
        .with_context(|| format!("opening {}", part_path.display()))?;
    lock_exclusive(&part, &part_path, &d.url)?;
    let mut meta: PartMeta = fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if meta.url != d.url {
        // Same digest from another URL (a mirror): the bytes may still be
        // good, the validator is not.
        meta = PartMeta {
            url: d.url.clone(),
            validator: None,
        };
    }
    let mut moved = Moved::default();
    let sha256 = http.with_retry(&format!("downloading {}", d.url), |_| {
        attempt(
            get, d, &mut part, &part_path, &meta_path, &mut meta, bar, &mut moved,
        )
    });
    let sha256 = match sha256 {
        Ok(s) => s,
        Err(e) => {
            if part.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
                drop(part);
                fs::remove_file(&part_path).ok();
                fs::remove_file(&meta_path).ok();
            }
            return Err(e.context(format!(
                "{}: downloading {} from {}{}",
                d.at,
                d.what,
                d.url,
                partial_note(&part_path)
            )));
        }
    };
    if let Some(want) = &d.sha256 {
        if &sha256 != want {
            drop(part);
            fs::remove_file(&part_path).ok();
            fs::remove_file(&meta_path).ok();
            if d.blob {
                bail!(
                    "{}: {} from {} has sha256 {sha256}, but the registry addresses it as sha256:{want}; \
                     the download was deleted (a broken or tampered registry or mirror: try another)",
                    d.at,
                    d.what,
                    d.url
                );
            }
            bail!(
                "{}: sha256 of {} downloaded from {} is {sha256}, expected {want}; the download was \
                 deleted. Check the URL and the pinned digest (`airlock lock --update` re-pins a \
                 republished file after you review it)",
                d.at,
                d.what,
                d.url
            );
        }
    }
    part.sync_all()
        .with_context(|| format!("writing {}", part_path.display()))?;
    store(cache, &part_path, &sha256)?;
    fs::remove_file(&meta_path).ok();
    Ok(Got {
        sha256,
        bytes: moved.transferred,
        resumed_from: moved.resumed_from,
        cached: false,
    })
}

/// Bytes moved by the attempts of one download.
#[derive(Default)]
struct Moved {
    transferred: u64,
    /// Offset of the last continuation with a Range request (0: none).
    resumed_from: u64,
}

fn partial_note(part: &Path) -> String {
    match fs::metadata(part) {
        Ok(m) if m.len() > 0 => format!(
            " ({} bytes kept in {}: the next fetch resumes)",
            m.len(),
            part.display()
        ),
        _ => String::new(),
    }
}

/// One request: continue (or restart) the partial file, and return the
/// digest of the whole file when the body arrived complete.
#[allow(clippy::too_many_arguments)]
fn attempt(
    get: &Getter,
    d: &Download,
    part: &mut File,
    part_path: &Path,
    meta_path: &Path,
    meta: &mut PartMeta,
    bar: &ProgressBar,
    moved: &mut Moved,
) -> Attempt<String> {
    let mut have = part.metadata()?.len();
    let range = format!("bytes={have}-");
    let mut headers = Vec::new();
    if have > 0 {
        headers.push(("Range", range.as_str()));
        if let Some(v) = &meta.validator {
            headers.push(("If-Range", v.as_str()));
        }
    }
    let resp = get(&d.url, &headers)?;
    let status = resp.status();
    let total = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => {
            let (start, len) = content_range(header(&resp, "content-range")).ok_or_else(|| {
                Failure::Transient(
                    anyhow!("{}: 206 without a usable Content-Range", d.url),
                    None,
                )
            })?;
            if start != have {
                restart(part)?;
                return Err(Failure::Transient(
                    anyhow!(
                        "{}: asked for bytes from {have}, got bytes from {start}; starting over",
                        d.url
                    ),
                    None,
                ));
            }
            moved.resumed_from = have;
            len
        }
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
            // Nothing past what we have: complete if the sizes agree.
            let size = header(&resp, "content-range")
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if size != Some(have) {
                restart(part)?;
                return Err(Failure::Transient(
                    anyhow!(
                        "{}: the partial download no longer fits the file; starting over",
                        d.url
                    ),
                    None,
                ));
            }
            return hash_file(part, part_path);
        }
        _ => {
            check_status(&d.url, &resp)?;
            if have > 0 {
                // The server ignored the range, or the file changed.
                restart(part)?;
                have = 0;
            }
            resp.body().content_length()
        }
    };
    meta.validator = header(&resp, "etag")
        .filter(|v| !v.starts_with("W/"))
        .or_else(|| header(&resp, "last-modified"))
        .map(str::to_string);
    if let Ok(text) = serde_json::to_vec(meta) {
        fs::write(meta_path, text).ok();
    }
    if !d.shared_bar {
        bar.set_length(total.map(|t| t.max(have)).unwrap_or(0));
        bar.set_position(have);
    }
    // The hash covers the bytes already on disk, then the new ones.
    let mut hasher = Sha256::new();
    part.seek(SeekFrom::Start(0))?;
    io::copy(&mut (&mut *part).take(have), &mut hasher)?;
    part.seek(SeekFrom::Start(have))?;
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let got = part.stream_position().unwrap_or(0);
                return Err(Failure::Transient(
                    anyhow!("reading {} (connection lost after {got} bytes): {e}", d.url),
                    None,
                ));
            }
        };
        if let Some(limit) = d.size {
            if part.stream_position()? + n as u64 > limit {
                drop(body);
                restart(part)?;
                return Err(Failure::Permanent(anyhow!(
                    "{} sends more than the {limit} bytes its descriptor states; refusing it",
                    d.url
                )));
            }
        }
        part.write_all(&buf[..n])
            .map_err(|e| Failure::Permanent(anyhow!("writing {}: {e}", part_path.display())))?;
        hasher.update(&buf[..n]);
        moved.transferred += n as u64;
        bar.inc(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn restart(part: &mut File) -> io::Result<()> {
    part.set_len(0)?;
    part.seek(SeekFrom::Start(0)).map(|_| ())
}

fn hash_file(part: &mut File, path: &Path) -> Attempt<String> {
    let mut hasher = Sha256::new();
    part.seek(SeekFrom::Start(0))?;
    io::copy(part, &mut hasher)
        .map_err(|e| Failure::Permanent(anyhow!("reading {}: {e}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn content_range(v: Option<&str>) -> Option<(u64, Option<u64>)> {
    let rest = v?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Renames a verified file to its digest name in the store.
pub(crate) fn store(cache: &Cache, file: &Path, sha256: &str) -> Result<PathBuf> {
    let blob = cache.blob(sha256);
    let dir = blob.parent().expect("blob has a directory");
    fs::create_dir_all(dir).with_context(|| format!("creating cache {}", dir.display()))?;
    if blob.is_file() {
        fs::remove_file(file).ok();
    } else {
        fs::rename(file, &blob)
            .with_context(|| format!("storing {} as {}", file.display(), blob.display()))?;
    }
    Ok(blob)
}

fn lock_exclusive(f: &File, path: &Path, url: &str) -> Result<()> {
    use rustix::fs::{flock, FlockOperation};
    match flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!(
            "another airlock is downloading {url} into {}; wait for it to finish",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// The local path of a `file://` URL (percent-decoded), or `None`.
pub fn file_url_path(url: &str) -> Result<Option<PathBuf>> {
    let Some(rest) = url.strip_prefix("file://") else {
        return Ok(None);
    };
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        bail!("{url}: a file:// URL needs an absolute path, like file:///srv/mirror/kubeadm");
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hexpair = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hexpair.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(out))))
}

/// A `file://` source: hashed while copied into a temporary file in the
/// store, renamed only when it matches.
fn copy_local(cache: &Cache, d: &Download, path: &Path, bar: &ProgressBar) -> Result<Got> {
    let src = File::open(path)
        .with_context(|| format!("{}: opening {} ({})", d.at, path.display(), d.what))?;
    let len = src.metadata().map(|m| m.len()).unwrap_or(0);
    bar.set_length(len);
    let dir = cache.root().join("sha256");
    fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut hasher = Sha256::new();
    let mut reader = bar.wrap_read(src);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .with_context(|| format!("copying {} into the cache", path.display()))?;
        bytes += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(want) = &d.sha256 {
        if &actual != want {
            bail!(
                "{}: sha256 of {} ({}) is {actual}, expected {want}; nothing was cached. Check the \
                 file and the pinned digest",
                d.at,
                d.what,
                path.display()
            );
        }
    }
    tmp.as_file().sync_all().ok();
    let blob = cache.blob(&actual);
    if !blob.is_file() {
        tmp.persist(&blob)
            .with_context(|| format!("storing {} in the cache", path.display()))?;
    }
    Ok(Got {
        sha256: actual,
        bytes,
        resumed_from: 0,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(
            content_range(Some("bytes 100-199/200")),
            Some((100, Some(200)))
        );
        assert_eq!(content_range(Some("bytes 5-9/*")), Some((5, None)));
        assert_eq!(content_range(Some("items 1-2/3")), None);
        assert_eq!(content_range(None), None);
    }

    #[test]
    fn file_urls() {
        assert_eq!(
            file_url_path("file:///srv/a%20b.tar").unwrap(),
            Some(PathBuf::from("/srv/a b.tar"))
        );
        assert_eq!(
            file_url_path("file://localhost/x").unwrap(),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(file_url_path("https://x/y").unwrap(), None);
        assert!(file_url_path("file://host/x").is_err());
        assert_eq!(
            file_url_path("file:///odd%zz%").unwrap(),
            Some(PathBuf::from("/odd%zz%"))
        );
    }

    #[test]
    fn file_url_mismatch_caches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("in");
        fs::write(&src, b"payload").unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let good = hex::encode(Sha256::digest(b"payload"));
        let mut dl = Download::new(
            "file /x".into(),
            format!("file://{}", src.display()),
            Some("0".repeat(64)),
            "r.toml:1:1".into(),
        );
        let http = Http::new(Default::default());
        let err = download(&http, &cache, &dl, &ProgressBar::hidden()).unwrap_err();
        assert!(format!("{err:#}").contains(&good), "{err:#}");
        assert_eq!(
            fs::read_dir(d.path().join("cache/sha256")).unwrap().count(),
            0
        );
        dl.sha256 = Some(good.clone());
        let got = download(&http, &cache, &dl, &ProgressBar::hidden()).unwrap();
        assert_eq!((got.bytes, got.cached), (7, false));
        assert_eq!(fs::read(cache.blob(&good)).unwrap(), b"payload");
        assert!(
            download(&http, &cache, &dl, &ProgressBar::hidden())
                .unwrap()
                .cached
        );
    }
}
