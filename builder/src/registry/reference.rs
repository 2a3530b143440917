// SPDX-License-Identifier: Apache-2.0
//! Image references as people write them (`nginx`, `registry.k8s.io/pause:3.10`,
//! `quay.io/fedora/fedora-bootc:43@sha256:…`), normalised the way Docker
//! and containerd do: `docker.io` is the default registry and its
//! single-name repositories live under `library/`.

use std::fmt;

use anyhow::{bail, Result};

/// A parsed reference. `tag` and `digest` may both be set
/// (`name:tag@sha256:…`): the digest decides what is pulled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), e.g. `registry.k8s.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`, `coredns/coredns`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| anyhow::anyhow!("image reference {s:?} {why}");
        if s.is_empty() || s.contains(char::is_whitespace) || s.contains("://") {
            return Err(bad("must look like registry.example/repo/name:tag or name@sha256:… (no scheme, no spaces)"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        if let Some(d) = &digest {
            check_digest(d).map_err(|e| bad(&e.to_string()))?;
        }
        // The tag is after the last ':' of the last path component.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(&format!("has an invalid tag {t:?}")));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
                    && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            });
        if !repo_ok {
            return Err(bad(&format!(
                "has an invalid repository {repository:?} (lowercase letters, digits, '.', '_', '-' and '/')"
            )));
        }
        if tag.is_none() && digest.is_none() {
            bail!(
                "image reference {s:?} names neither a tag nor a digest: add one, e.g. {s}:1.2.3"
            );
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The name to record in archives and to import under: registry,
    /// repository and tag (or the digest when there is no tag).
    pub fn name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{t}", self.registry, self.repository),
            (None, Some(d)) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, None) => format!("{}/{}", self.registry, self.repository),
        }
    }

    /// What to ask the registry for: the digest when known, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same image pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The host that serves the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// `https://host` — or `http://` for a registry on this machine
    /// (localhost, 127.0.0.0/8, ::1), as Docker and containerd allow.
    pub fn default_endpoint(&self) -> String {
        let host = self.api_host();
        let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let loopback = bare == "localhost" || bare.starts_with("127.") || bare == "[::1]";
        format!("{}://{host}", if loopback { "http" } else { "https" })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let (Some(_), Some(d)) = (&self.tag, &self.digest) {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks `sha256:<64 lowercase hex>`.
pub fn check_digest(d: &str) -> Result<()> {
    match d.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => bail!("digest {d:?} is not sha256:<64 lowercase hex digits>"),
    }
}

/// The hex part of a `sha256:` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let d = format!("sha256:{}", "a".repeat(64));
        type Case<'a> = (String, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "nginx:1.27".into(),
                "docker.io",
                "library/nginx",
                Some("1.27"),
                None,
            ),
            (
                "index.docker.io/library/nginx:1".into(),
                "docker.io",
                "library/nginx",
                Some("1"),
                None,
            ),
            (
                "flannel/flannel:v0.26.1".into(),
                "docker.io",
                "flannel/flannel",
                Some("v0.26.1"),
                None,
            ),
            (
                "registry.k8s.io/pause:3.10".into(),
                "registry.k8s.io",
                "pause",
                Some("3.10"),
                None,
            ),
            (
                "registry.k8s.io/coredns/coredns:v1.11.3".into(),
                "registry.k8s.io",
                "coredns/coredns",
                Some("v1.11.3"),
                None,
            ),
            (
                "127.0.0.1:5000/t/base:1".into(),
                "127.0.0.1:5000",
                "t/base",
                Some("1"),
                None,
            ),
            (
                "localhost/x@".to_string() + &d,
                "localhost",
                "x",
                None,
                Some(d.as_str()),
            ),
            (
                format!("quay.io/fedora/fedora-bootc:43@{d}"),
                "quay.io",
                "fedora/fedora-bootc",
                Some("43"),
                Some(d.as_str()),
            ),
        ];
        for (s, reg, repo, tag, digest) in cases {
            let r = Reference::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.as_deref()
                ),
                (reg, repo, tag, digest),
                "{s}"
            );
        }
    }

    #[test]
    fn refuses_bad_references() {
        for s in [
            "",
            "https://registry.k8s.io/pause:3.10",
            "Registry.K8s.io/Pause:3.10",
            "nginx",
            "nginx:",
            "nginx@sha256:abc",
            "nginx:bad tag",
            "a//b:1",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} was accepted");
        }
    }

    #[test]
    fn names_and_endpoints() {
        let r = Reference::parse("nginx:1.27").unwrap();
        assert_eq!(r.name(), "docker.io/library/nginx:1.27");
        assert_eq!(r.default_endpoint(), "https://registry-1.docker.io");
        assert_eq!(
            Reference::parse("127.0.0.1:5000/a:1")
                .unwrap()
                .default_endpoint(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            Reference::parse("localhost:5000/a:1")
                .unwrap()
                .default_endpoint(),
            "http://localhost:5000"
        );
        assert_eq!(
            Reference::parse("registry.k8s.io/pause:3.10")
                .unwrap()
                .object(),
            "3.10"
        );
        let d = format!("sha256:{}", "b".repeat(64));
        let pinned = Reference::parse("registry.k8s.io/pause:3.10")
            .unwrap()
            .with_digest(&d);
        assert_eq!(pinned.object(), d);
        assert_eq!(
            pinned.to_string(),
            format!("registry.k8s.io/pause:3.10@{d}")
        );
    }
}
