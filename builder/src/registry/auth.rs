// SPDX-License-Identifier: Apache-2.0
//! Registry authentication: credentials from the files Docker, Podman and
//! skopeo use, and the `WWW-Authenticate` challenge (Bearer token or Basic).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;
use serde::Deserialize;

/// A user name and password for one registry, or the identity token
/// `docker login` stores for registries that issue one.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token: exchanged at the token server
    /// (`grant_type=refresh_token`), never sent to the registry itself.
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credential({}, <redacted>{})",
            self.username,
            if self.identity_token.is_some() {
                ", identity token"
            } else {
                ""
            }
        )
    }
}

impl Credential {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// Every credential file found, in the order they are consulted:
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
#[derive(Debug, Default)]
pub struct Credentials {
    files: Vec<(PathBuf, AuthFile)>,
}

impl Credentials {
    pub fn load() -> Result<Credentials> {
        let mut paths = Vec::new();
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
            paths.push(PathBuf::from(p));
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            paths.push(PathBuf::from(d).join("containers/auth.json"));
        }
        match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => paths.push(PathBuf::from(d).join("config.json")),
            None => {
                if let Some(h) = std::env::var_os("HOME") {
                    paths.push(PathBuf::from(h).join(".docker/config.json"));
                }
            }
        }
        let mut files = Vec::new();
        for p in paths {
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading registry credentials {}", p.display()))
                }
            };
            let f: AuthFile = serde_json::from_str(&text).with_context(|| {
                format!(
                    "parsing registry credentials {} (expected Docker's config.json format)",
                    p.display()
                )
            })?;
            files.push((p, f));
        }
        Ok(Credentials { files })
    }

    /// The credential for a registry host (and repository, for per-namespace
    /// entries as Podman writes them); the most specific key wins.
    pub fn find(&self, registry: &str, repository: &str) -> Result<Option<Credential>> {
        let wanted = aliases(registry);
        for (path, f) in &self.files {
            let mut best: Option<(usize, &AuthEntry)> = None;
            for (key, entry) in &f.auths {
                let k = normalize_key(key);
                let (host, ns) = k
                    .split_once('/')
                    .map(|(h, n)| (h, Some(n)))
                    .unwrap_or((k.as_str(), None));
                if !wanted.iter().any(|w| w == host) {
                    continue;
                }
                let specificity = match ns {
                    None => 0,
                    Some(ns) if repository == ns || repository.starts_with(&format!("{ns}/")) => {
                        ns.len()
                    }
                    Some(_) => continue,
                };
                if best.map_or(true, |(s, _)| specificity > s) {
                    best = Some((specificity, entry));
                }
            }
            if let Some((_, e)) = best {
                return decode(e).with_context(|| {
                    format!(
                        "reading the credential for {registry} in {}",
                        path.display()
                    )
                });
            }
        }
        Ok(None)
    }

    /// A hint for a 401 when no credential was found.
    pub fn hint(&self, registry: &str) -> String {
        for (path, f) in &self.files {
            let helper = aliases(registry)
                .iter()
                .find_map(|a| f.cred_helpers.get(a.as_str()))
                .or(f.creds_store.as_ref());
            if let Some(h) = helper {
                return format!(
                    "{} keeps credentials in the docker-credential-{h} helper, which airlock does not run: \
                     write them to a file named by REGISTRY_AUTH_FILE (`podman login --authfile FILE {registry}`)",
                    path.display()
                );
            }
        }
        format!(
            "log in with `docker login {registry}` or `podman login --authfile FILE {registry}` and set REGISTRY_AUTH_FILE=FILE"
        )
    }
}

fn decode(e: &AuthEntry) -> Result<Option<Credential>> {
    let identity_token = e.identity_token.clone().filter(|t| !t.is_empty());
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Some(Credential {
            username: u.clone(),
            password: p.clone(),
            identity_token,
        }));
    }
    let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) else {
        // `docker login` to a registry that issues identity tokens stores
        // the token and a user name only.
        return Ok(identity_token.map(|t| Credential {
            username: String::new(),
            password: String::new(),
            identity_token: Some(t),
        }));
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .context("the `auth` value is not base64")?;
    let text = String::from_utf8(raw).context("the `auth` value is not UTF-8")?;
    let (u, p) = text
        .split_once(':')
        .context("the `auth` value is not base64 of user:password")?;
    Ok(Some(Credential {
        username: u.to_string(),
        password: p.to_string(),
        identity_token,
    }))
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `quay.io/ns` stays.
fn normalize_key(key: &str) -> String {
    let k = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    k.to_string()
}

fn aliases(registry: &str) -> Vec<String> {
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        vec![
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.to_string()]
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `a="x,y",b=z` → {a: "x,y", b: "z"}; keys lowercased.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => val.push(c),
                }
            }
            (val, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The token in a token server's JSON answer.
pub fn token_from_json(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct T {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let t: T = serde_json::from_slice(body).ok()?;
    t.token.or(t.access_token).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="http://127.0.0.1:1/t", scope="repository:a:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
                scope: Some("repository:a:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn credentials_from_files() {
        let d = tempfile::tempdir().unwrap();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let f: AuthFile = serde_json::from_value(serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": { "auth": enc("hub:secret") },
                "quay.io": { "auth": enc("q:all") },
                "quay.io/team": { "auth": enc("q:team") },
                "127.0.0.1:5000": { "username": "u", "password": "p" },
            },
            "credHelpers": { "gcr.io": "gcloud" }
        }))
        .unwrap();
        let c = Credentials {
            files: vec![(d.path().join("config.json"), f)],
        };
        let user = |r: &str, repo: &str| {
            c.find(r, repo)
                .unwrap()
                .map(|c| format!("{}:{}", c.username, c.password))
        };
        assert_eq!(
            user("docker.io", "library/nginx").as_deref(),
            Some("hub:secret")
        );
        assert_eq!(user("quay.io", "team/app").as_deref(), Some("q:team"));
        assert_eq!(user("quay.io", "other/app").as_deref(), Some("q:all"));
        assert_eq!(user("127.0.0.1:5000", "x").as_deref(), Some("u:p"));
        assert_eq!(user("ghcr.io", "x"), None);
        assert!(c.hint("gcr.io").contains("docker-credential-gcloud"));
        let cred = Credential {
            username: "a".into(),
            password: "b".into(),
            identity_token: None,
        };
        assert_eq!(cred.basic_header(), "Basic YTpi");
        assert!(
            !format!("{cred:?}").contains('b'),
            "passwords are not printed"
        );
    }

    #[test]
    fn tokens() {
        assert_eq!(token_from_json(br#"{"token":"t1"}"#).as_deref(), Some("t1"));
        assert_eq!(
            token_from_json(br#"{"access_token":"t2"}"#).as_deref(),
            Some("t2")
        );
        assert_eq!(token_from_json(br#"{"nope":1}"#), None);
    }
}
