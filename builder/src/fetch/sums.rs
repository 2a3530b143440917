// SPDX-License-Identifier: Apache-2.0
//! Published checksums: the `.sha256` (or `.sha256sum`) file that release
//! sites put next to a download (dl.k8s.io, containerd, runc, CNI plugins).

use std::path::Path;

use anyhow::{Context, Result};
use ureq::http::StatusCode;

use super::download::file_url_path;
use super::http::{check_status, Http};

/// Suffixes tried, in order.
const SUFFIXES: [&str; 2] = [".sha256", ".sha256sum"];

/// The published sha256 of `url`, when a checksum file sits next to it.
/// Returns the digest and the checksum file's URL.
pub fn published_sha256(http: &Http, url: &str) -> Result<Option<(String, String)>> {
    let name = basename(url);
    for suffix in SUFFIXES {
        let sum_url = format!("{url}{suffix}");
        let text = if let Some(p) = file_url_path(&sum_url)? {
            match std::fs::read_to_string(&p) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
            }
        } else {
            http.with_retry(&format!("fetching {sum_url}"), |_| {
                let mut resp = http.get(&sum_url, &[])?;
                // Absent (or hidden behind a login): no published sum.
                if [
                    StatusCode::NOT_FOUND,
                    StatusCode::FORBIDDEN,
                    StatusCode::UNAUTHORIZED,
                    StatusCode::GONE,
                ]
                .contains(&resp.status())
                {
                    return Ok(None);
                }
                check_status(&sum_url, &resp)?;
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_string()
                    .map_err(|e| {
                        super::http::Failure::Transient(
                            anyhow::anyhow!("reading {sum_url}: {e}"),
                            None,
                        )
                    })?;
                Ok(Some(text))
            })?
        };
        let Some(text) = text else { continue };
        let sha = parse_sums(&text, &name).with_context(|| {
            format!(
                "{sum_url} does not hold a sha256 for {name} (expected `<64 hex digits>  {name}`)"
            )
        })?;
        return Ok(Some((sha, sum_url)));
    }
    Ok(None)
}

fn basename(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Finds the digest for `name` in a checksum file: a bare digest, one
/// `digest  name` line, or `sha256sum` output listing several files.
pub fn parse_sums(text: &str, name: &str) -> Option<String> {
    let is_sha = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect();
    let mut only = None;
    for words in &lines {
        let Some(sha) = words.first().filter(|w| is_sha(w)) else {
            continue;
        };
        match words.get(1) {
            None => only = Some(sha.to_ascii_lowercase()),
            Some(file) => {
                let file = file.trim_start_matches('*');
                let file = file.rsplit('/').next().unwrap_or(file);
                if file == name {
                    return Some(sha.to_ascii_lowercase());
                }
                if lines.len() == 1 {
                    only = Some(sha.to_ascii_lowercase());
                }
            }
        }
    }
    only
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_file_shapes() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let cases = [
            ("bare digest", format!("{a}\n"), Some(a.clone())),
            ("sha256sum line", format!("{a}  kubeadm\n"), Some(a.clone())),
            ("binary mode", format!("{a} *kubeadm\n"), Some(a.clone())),
            (
                "several files",
                format!("{b}  other\n{a}  bin/kubeadm\n"),
                Some(a.clone()),
            ),
            (
                "several, none ours",
                format!("{b}  other\n{a}  another\n"),
                None,
            ),
            (
                "single other name",
                format!("{b}  renamed-on-release\n"),
                Some(b.to_lowercase()),
            ),
            ("not a digest", "hello\n".to_string(), None),
        ];
        for (name, text, want) in cases {
            assert_eq!(parse_sums(&text, "kubeadm"), want, "{name}");
        }
    }

    #[test]
    fn basenames() {
        assert_eq!(
            basename("https://dl.k8s.io/v1.34.1/bin/linux/amd64/kubeadm"),
            "kubeadm"
        );
        assert_eq!(basename("https://x/y/z.tar.gz?sig=1"), "z.tar.gz");
    }
}
