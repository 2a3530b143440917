// SPDX-License-Identifier: Apache-2.0
//! The OCI distribution API, read-only: manifests by tag or digest and
//! blobs by digest, with anonymous, Basic or Bearer-token authentication.
//! Every manifest fetched by digest and every blob is checked against its
//! digest before it is used or stored.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::auth::{token_from_json, Challenge, Credentials};
use super::manifest::{Descriptor, ACCEPT};
use super::reference::{check_digest, hex_of};
use crate::fetch::download::{self, Download};
use crate::fetch::http::{check_status, header, Attempt, Failure, Http};
use crate::inputs::Cache;

/// Manifests larger than this are refused (real ones are a few KiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// Where a registry's API is served: `https://registry.k8s.io`, or a
/// mirror such as `http://127.0.0.1:5000`. `registry` picks credentials.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub base: String,
    pub registry: String,
}

pub struct Client<'a> {
    http: &'a Http,
    creds: Credentials,
    /// Authorization header values by endpoint and repository.
    tokens: Mutex<HashMap<String, String>>,
}

/// A manifest as served, with its digest.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: String,
}

impl<'a> Client<'a> {
    pub fn new(http: &'a Http) -> Result<Client<'a>> {
        Ok(Client {
            http,
            creds: Credentials::load()?,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// One GET to `url` for `repo`, authenticating on a 401 challenge.
    fn send(
        &self,
        ep: &Endpoint,
        repo: &str,
        url: &str,
        extra: &[(&str, &str)],
    ) -> Attempt<Response<Body>> {
        let key = format!("{}|{repo}", ep.base);
        let auth = self.tokens.lock().expect("tokens").get(&key).cloned();
        let with = |auth: &Option<String>| -> Attempt<Response<Body>> {
            let mut headers: Vec<(&str, &str)> = extra.to_vec();
            if let Some(a) = auth {
                headers.push(("Authorization", a.as_str()));
            }
            self.http.get(url, &headers)
        };
        let resp = with(&auth)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = header(&resp, "www-authenticate")
            .and_then(Challenge::parse)
            .ok_or_else(|| {
                Failure::Permanent(anyhow!(
                    "{url}: 401 Unauthorized without a Basic or Bearer challenge"
                ))
            })?;
        let cred = self
            .creds
            .find(&ep.registry, repo)
            .map_err(Failure::Permanent)?;
        let value = match challenge {
            Challenge::Basic => match &cred {
                Some(c) if c.identity_token.is_some() && c.password.is_empty() => {
                    return Err(Failure::Permanent(anyhow!(
                        "{url}: the registry wants a password for {}, and the stored credential is \
                         an identity token, which only a token server accepts; {}",
                        ep.registry,
                        self.creds.hint(&ep.registry)
                    )))
                }
                Some(c) => c.basic_header(),
                None => {
                    return Err(Failure::Permanent(anyhow!(
                        "{url}: the registry wants credentials for {}: {}",
                        ep.registry,
                        self.creds.hint(&ep.registry)
                    )))
                }
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repo}:pull"));
                format!(
                    "Bearer {}",
                    self.token(ep, &realm, service.as_deref(), &scope, cred.as_ref())?
                )
            }
        };
        if auth.as_deref() == Some(value.as_str()) && cred.is_none() {
            return Err(Failure::Permanent(anyhow!(
                "{url}: access denied anonymously; {}",
                self.creds.hint(&ep.registry)
            )));
        }
        self.tokens
            .lock()
            .expect("tokens")
            .insert(key, value.clone());
        let resp = with(&Some(value))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let who = if cred.is_some() {
                "with the stored credentials"
            } else {
                "anonymously"
            };
            return Err(Failure::Permanent(anyhow!(
                "{url}: access to {repo} on {} denied {who}; {}",
                ep.registry,
                self.creds.hint(&ep.registry)
            )));
        }
        Ok(resp)
    }

    /// A Bearer token from the token server named in the challenge.
    fn token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        cred: Option<&super::auth::Credential>,
    ) -> Attempt<String> {
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { '&' } else { '?' },
            encode(scope)
        );
        if let Some(s) = service {
            url.push_str(&format!("&service={}", encode(s)));
        }
        let mut resp = match cred.and_then(|c| c.identity_token.as_deref()) {
            // An identity token is an OAuth2 refresh token: exchanged by a
            // POST to the realm, as the distribution token spec says.
            Some(refresh) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh),
                    ("client_id", "airlock"),
                    ("scope", scope),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                self.http.post_form(realm, &form)?
            }
            None => {
                let basic = cred.map(|c| c.basic_header());
                let headers: Vec<(&str, &str)> = basic
                    .iter()
                    .map(|b| ("Authorization", b.as_str()))
                    .collect();
                self.http.get(&url, &headers)?
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(Failure::Permanent(anyhow!(
                "the token server {realm} refused {} for {scope}; {}",
                if cred.is_some() {
                    "the stored credentials"
                } else {
                    "an anonymous token"
                },
                self.creds.hint(&ep.registry)
            )));
        }
        check_status(realm, &resp)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| Failure::Transient(anyhow!("reading a token from {realm}: {e}"), None))?;
        token_from_json(&body).ok_or_else(|| {
            Failure::Permanent(anyhow!("the token server {realm} answered without a token"))
        })
    }

    /// A manifest by tag or digest. By digest, the bytes must hash to it;
    /// by tag, a `Docker-Content-Digest` header must agree with them.
    pub fn manifest(&self, ep: &Endpoint, repo: &str, object: &str, what: &str) -> Result<Fetched> {
        let url = format!("{}/v2/{repo}/manifests/{object}", ep.base);
        self.http.with_retry(&format!("fetching {url}"), |_| {
            let mut resp = self.send(ep, repo, &url, &[("Accept", ACCEPT)])?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Failure::Permanent(anyhow!("{what}: {repo}:{object} is not in {} (404)", ep.base)));
            }
            check_status(&url, &resp)?;
            let content_type = header(&resp, "content-type").map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
            let said = header(&resp, "docker-content-digest").map(str::to_string);
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(MAX_MANIFEST)
                .read_to_vec()
                .map_err(|e| Failure::Transient(anyhow!("reading {url}: {e}"), None))?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if object.starts_with("sha256:") && digest != object {
                return Err(Failure::Permanent(anyhow!(
                    "{what}: the manifest {url} hashes to {digest}, not the {object} it was asked for; \
                     refusing it (a broken or tampered registry or mirror)"
                )));
            }
            if let Some(said) = said.filter(|s| s.starts_with("sha256:")) {
                if said != digest {
                    return Err(Failure::Permanent(anyhow!(
                        "{what}: {url} says its digest is {said} but its bytes hash to {digest}; refusing it"
                    )));
                }
            }
            Ok(Fetched { bytes, content_type, digest })
        })
    }

    /// Brings the blob `desc` into the cache (verified), unless it is there.
    /// Returns the bytes transferred.
    pub fn blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        desc: &Descriptor,
        cache: &Cache,
        bar: &ProgressBar,
        what: &str,
    ) -> Result<u64> {
        check_digest(&desc.digest).with_context(|| format!("{what}: a descriptor"))?;
        let url = format!("{}/v2/{repo}/blobs/{}", ep.base, desc.digest);
        let d = Download {
            size: Some(desc.size),
            blob: true,
            shared_bar: true,
            ..Download::new(
                what.to_string(),
                url,
                Some(hex_of(&desc.digest).to_string()),
                what.to_string(),
            )
        };
        let got = download::download_via(self.http, cache, &d, bar, &|url, headers| {
            let resp = self.send(ep, repo, url, headers)?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Failure::Permanent(anyhow!(
                    "the registry has no blob {} in {repo} (404): the manifest points at a missing blob",
                    desc.digest
                )));
            }
            Ok(resp)
        })?;
        let size = std::fs::metadata(cache.blob(&got.sha256))
            .map(|m| m.len())
            .unwrap_or(0);
        if size != desc.size {
            bail!(
                "{what}: blob {} is {size} bytes, its descriptor says {}",
                desc.digest,
                desc.size
            );
        }
        Ok(got.bytes)
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode("repository:library/nginx:pull"),
            "repository%3Alibrary%2Fnginx%3Apull"
        );
        assert_eq!(encode("a b~"), "a%20b~");
    }
}
