// SPDX-License-Identifier: Apache-2.0
//! The one HTTP client: TLS verified against the system's trust store,
//! proxies from the environment, and a retry policy that tells transient
//! failures (connection lost, 5xx, 429) from permanent ones (404, 403).

use std::time::Duration;

use anyhow::{anyhow, Error};
use ureq::http::{Response, StatusCode};
use ureq::Body;

/// How often and how patiently to retry transient failures.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Attempts after the first one.
    pub retries: u32,
    /// Wait before the first retry; doubled for each later one.
    pub base: Duration,
    /// Longest wait between attempts (a server's Retry-After is capped too).
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            retries: 4,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The wait before retry number `n` (1-based).
    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base.saturating_mul(1 << (n.saturating_sub(1)).min(16));
        retry_after.unwrap_or(backoff).min(self.max)
    }
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt (with the server's Retry-After, if it sent one).
    Transient(Error, Option<Duration>),
    /// Another attempt would fail the same way.
    Permanent(Error),
}

impl Failure {
    pub fn into_error(self) -> Error {
        match self {
            Failure::Transient(e, _) | Failure::Permanent(e) => e,
        }
    }
}

impl From<std::io::Error> for Failure {
    /// A local I/O error (disk full, permissions): retrying will not help.
    fn from(e: std::io::Error) -> Failure {
        Failure::Permanent(e.into())
    }
}

pub type Attempt<T> = std::result::Result<T, Failure>;

/// A blocking HTTP(S) client shared by every transfer of a run.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    pub retry: Retry,
}

impl Http {
    pub fn new(retry: Retry) -> Http {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            // Downloads must arrive byte for byte as published.
            .accept_encoding("identity")
            .max_idle_connections_per_host(16)
            .build();
        Http {
            agent: config.into(),
            retry,
        }
    }

    /// Sends a GET with `headers`; any HTTP status is a response, only a
    /// failure to talk to the server is an error (always transient).
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Attempt<Response<Body>> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call().map_err(|e| transport(url, e))
    }

    /// Sends a POST of an `application/x-www-form-urlencoded` form (an
    /// OAuth2 token request); errors as for [`Http::get`].
    pub fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Attempt<Response<Body>> {
        self.agent
            .post(url)
            .send_form(form.iter().copied())
            .map_err(|e| transport(url, e))
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retries
    /// are used up; `what` names the transfer in the log.
    pub fn with_retry<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut(u32) -> Attempt<T>,
    ) -> anyhow::Result<T> {
        let mut n = 0;
        loop {
            match attempt(n) {
                Ok(v) => return Ok(v),
                Err(Failure::Permanent(e)) => return Err(e),
                Err(Failure::Transient(e, after)) => {
                    if n >= self.retry.retries {
                        let tries = n + 1;
                        return Err(
                            e.context(format!("giving up on {what} after {tries} attempts"))
                        );
                    }
                    n += 1;
                    let wait = self.retry.delay(n, after);
                    tracing::warn!(
                        "{what}: {e:#}; retrying in {:.1}s ({n}/{})",
                        wait.as_secs_f64(),
                        self.retry.retries
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

fn transport(url: &str, e: ureq::Error) -> Failure {
    let msg = match &e {
        ureq::Error::HostNotFound => {
            format!("looking up the host of {url}: not found (check the URL and DNS)")
        }
        ureq::Error::ConnectionFailed => format!("connecting to {url}: connection failed"),
        _ => format!("requesting {url}: {e}"),
    };
    // rustls reports a certificate it cannot verify as an I/O error of the
    // handshake, so that is recognised by its message.
    let bad_certificate = match &e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::InvalidData && io.to_string().contains("certificate")
        }
        _ => false,
    };
    if bad_certificate {
        // A certificate that is not trusted now will not be on a retry.
        return Failure::Permanent(anyhow!(
            "{msg}; TLS verification failed. airlock trusts the system's CA store: add a private \
             CA there (/usr/local/share/ca-certificates, then update-ca-certificates), or set \
             SSL_CERT_FILE to a PEM file of the CAs to trust (it replaces the system store)"
        ));
    }
    match e {
        ureq::Error::BadUri(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::InvalidProxyUrl => Failure::Permanent(anyhow!(msg)),
        _ => Failure::Transient(anyhow!(msg), None),
    }
}

/// Turns a non-success status into a failure that says what to do.
pub fn check_status(url: &str, resp: &Response<Body>) -> Attempt<()> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let after = retry_after(resp);
    let e = match status {
        StatusCode::NOT_FOUND => {
            anyhow!("{url}: 404 Not Found; check the URL (is the version or file name right?)")
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            anyhow!("{url}: {status}; the server wants credentials this request did not have")
        }
        _ => anyhow!("{url}: server answered {status}"),
    };
    if is_transient(status) {
        Err(Failure::Transient(e, after))
    } else {
        Err(Failure::Permanent(e))
    }
}

/// Statuses a later attempt may not see again.
pub fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A header's value as text, if present and printable.
pub fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = Retry {
            retries: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(r.delay(1, None), Duration::from_millis(100));
        assert_eq!(r.delay(2, None), Duration::from_millis(200));
        assert_eq!(r.delay(4, None), Duration::from_millis(800));
        assert_eq!(r.delay(9, None), Duration::from_secs(1));
        assert_eq!(
            r.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(1),
            "Retry-After is capped"
        );
    }

    #[test]
    fn transient_statuses() {
        for (code, want) in [
            (500, true),
            (502, true),
            (503, true),
            (429, true),
            (408, true),
            (404, false),
            (403, false),
            (400, false),
        ] {
            assert_eq!(
                is_transient(StatusCode::from_u16(code).unwrap()),
                want,
                "{code}"
            );
        }
    }

    #[test]
    fn retry_stops_on_permanent_and_after_the_budget() {
        let http = Http::new(Retry {
            retries: 2,
            base: Duration::from_millis(1),
            max: Duration::from_millis(1),
        });
        let mut calls = 0;
        let err = http
            .with_retry("x", |_| -> Attempt<()> {
                calls += 1;
                Err(Failure::Transient(anyhow!("flaky"), None))
            })
            .unwrap_err();
        assert_eq!(calls, 3);
        assert!(format!("{err:#}").contains("after 3 attempts"), "{err:#}");
        let mut calls = 0;
        http.with_retry("x", |_| -> Attempt<()> {
            calls += 1;
            Err(Failure::Permanent(anyhow!("gone")))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        let got = http.with_retry("x", |n| {
            if n < 2 {
                Err(Failure::Transient(anyhow!("flaky"), None))
            } else {
                Ok(n)
            }
        });
        assert_eq!(got.unwrap(), 2);
    }
}
