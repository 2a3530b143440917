// SPDX-License-Identifier: Apache-2.0
//! `airlock fetch` and `airlock lock` for URL inputs, against an HTTP
//! server these tests start on 127.0.0.1: parallel downloads, cache hits
//! without I/O, a wrong digest deleted and reported, a 404, 500s retried,
//! and an interrupted download resumed with a Range request.

mod common;
mod servers;

use std::fs;
use std::path::{Path, PathBuf};

use common::{airlock, run_err, run_ok, sha256};
use servers::http::{Fault, Route, Server};

/// A recipe folder whose inputs are URLs on `srv`.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// A recipe with the base and files at these URLs (sha256 pins, or
    /// None to leave them to the lock).
    fn recipe(&self, base: (&str, Option<&str>), files: &[(&str, Option<&str>)]) -> PathBuf {
        let pin = |s: Option<&str>| s.map(|s| format!("sha256 = \"{s}\"\n")).unwrap_or_default();
        let mut text = format!(
            "name = \"t\"\n\n[base]\nurl = \"{}\"\n{}\n",
            base.0,
            pin(base.1)
        );
        for (i, (url, sha)) in files.iter().enumerate() {
            text.push_str(&format!(
                "[[file]]\nsource = \"{url}\"\n{}path = \"/opt/f{i}\"\n\n",
                pin(*sha)
            ));
        }
        text.push_str("[node]\nhostname = \"n1\"\n");
        let p = self.path("recipe.toml");
        fs::write(&p, text).unwrap();
        p
    }

    fn fetch(&self, recipe: &Path, extra: &[&str]) -> std::process::Output {
        airlock()
            .arg("fetch")
            .arg(recipe)
            .arg("--cache")
            .arg(self.cache())
            .args(["--retry-delay", "20"])
            .args(extra)
            .output()
            .unwrap()
    }

    fn lock(&self, recipe: &Path, extra: &[&str]) -> std::process::Output {
        airlock()
            .arg("lock")
            .arg(recipe)
            .arg("--cache")
            .arg(self.cache())
            .args(["--retry-delay", "20"])
            .args(extra)
            .output()
            .unwrap()
    }

    fn cached(&self, sha: &str) -> bool {
        self.cache().join("sha256").join(sha).is_file()
    }

    /// Names in the cache's store (nothing unverified may be there).
    fn store(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.cache().join("sha256"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn data(tag: &str, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag.len() as u8))
        .chain(tag.bytes())
        .collect()
}

#[test]
fn fetch_downloads_in_parallel_verifies_and_then_hits_the_cache() {
    let srv = Server::start();
    let site = Site::new();
    let files: Vec<Vec<u8>> = (0..5)
        .map(|i| data(&format!("file{i}"), 200_000 + i * 1000))
        .collect();
    for (i, f) in files.iter().enumerate() {
        srv.route(&format!("/f{i}"), Route::file(f));
    }
    srv.route("/base.tar", Route::file(b"base bytes"));
    let shas: Vec<String> = files.iter().map(|f| sha256(f)).collect();
    let urls: Vec<String> = (0..5).map(|i| srv.url(&format!("/f{i}"))).collect();
    let recipe = site.recipe(
        (&srv.url("/base.tar"), Some(&sha256(b"base bytes"))),
        &urls
            .iter()
            .zip(&shas)
            .map(|(u, s)| (u.as_str(), Some(s.as_str())))
            .collect::<Vec<_>>(),
    );
    let report = json_ok(site.fetch(&recipe, &["-j", "3", "--json"]));
    assert_eq!(report.as_array().unwrap().len(), 6, "{report}");
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "downloaded"),
        "{report}"
    );
    for (s, f) in shas.iter().zip(&files) {
        assert_eq!(&fs::read(site.cache().join("sha256").join(s)).unwrap(), f);
    }
    assert!(!site.path("cache/partial").read_dir().unwrap().any(|e| e
        .unwrap()
        .path()
        .extension()
        .is_some_and(|x| x == "part")));

    // Second run: every input is a cache hit; the server sees nothing.
    srv.clear_log();
    let log = run_ok(site.fetch(&recipe, &["-j", "3"]));
    assert!(
        log.contains("6 inputs") && log.contains("6 already there"),
        "{log}"
    );
    assert!(
        srv.requests().is_empty(),
        "cache hits must not touch the network: {:?}",
        srv.requests()
    );
}

/// stdout of a successful `--json` run.
fn json_ok(out: std::process::Output) -> serde_json::Value {
    let stdout = out.stdout.clone();
    run_ok(out);
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn a_wrong_digest_is_deleted_and_reported_and_a_404_named() {
    let srv = Server::start();
    let site = Site::new();
    srv.route("/base.tar", Route::file(b"base"));
    srv.route("/kubeadm", Route::file(b"evil bytes"));
    let want = sha256(b"good bytes");
    let recipe = site.recipe(
        (&srv.url("/base.tar"), Some(&sha256(b"base"))),
        &[
            (&srv.url("/kubeadm"), Some(&want)),
            (&srv.url("/missing"), Some(&sha256(b"x"))),
        ],
    );
    let err = run_err(site.fetch(&recipe, &[]));
    assert!(err.contains("2 of 3 inputs could not be fetched"), "{err}");
    assert!(
        err.contains(&format!("is {}, expected {want}", sha256(b"evil bytes"))),
        "{err}"
    );
    assert!(
        err.contains(&srv.url("/kubeadm")) && err.contains("the download was deleted"),
        "{err}"
    );
    assert!(
        err.contains("recipe.toml:9:"),
        "the pin's position is named: {err}"
    );
    assert!(
        err.contains(&srv.url("/missing")) && err.contains("404"),
        "{err}"
    );
    // The good input is cached; nothing unverified is.
    assert_eq!(site.store(), vec![sha256(b"base")]);
    assert!(!site.cached(&sha256(b"evil bytes")));
    let partial: Vec<_> = fs::read_dir(site.cache().join("partial"))
        .unwrap()
        .collect();
    assert!(
        partial.is_empty(),
        "the mismatched download was left behind: {partial:?}"
    );
    // A 404 is not retried.
    assert_eq!(srv.hits("/missing").len(), 1);
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let srv = Server::start();
    let site = Site::new();
    let body = data("flaky", 50_000);
    srv.route(
        "/base.tar",
        Route::file(&body).with_faults(&[Fault::Status(500), Fault::Status(503)]),
    );
    let recipe = site.recipe((&srv.url("/base.tar"), Some(&sha256(&body))), &[]);
    run_ok(site.fetch(&recipe, &[]));
    assert!(site.cached(&sha256(&body)));
    assert_eq!(srv.hits("/base.tar").len(), 3, "two failures, then success");

    // With no retries left, the error says how often it tried.
    let srv2 = Server::start();
    let site2 = Site::new();
    srv2.route(
        "/base.tar",
        Route::file(&body).with_faults(&[
            Fault::Status(500),
            Fault::Status(500),
            Fault::Status(500),
        ]),
    );
    let recipe = site2.recipe((&srv2.url("/base.tar"), Some(&sha256(&body))), &[]);
    let err = run_err(site2.fetch(&recipe, &["--retries", "1"]));
    assert!(
        err.contains("after 2 attempts") && err.contains("500"),
        "{err}"
    );
    assert!(site2.store().is_empty());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let srv = Server::start();
    let site = Site::new();
    let body = data("resume", 1_000_000);
    let half = body.len() / 2;
    srv.route(
        "/base.tar",
        Route::file(&body).with_faults(&[Fault::CutAfter(half)]),
    );
    let recipe = site.recipe((&srv.url("/base.tar"), Some(&sha256(&body))), &[]);
    let report = json_ok(site.fetch(&recipe, &["--json"]));
    assert_eq!(report[0]["status"], "resumed", "{report}");
    let hits = srv.hits("/base.tar");
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].header("range"), None);
    assert_eq!(
        hits[1].header("range"),
        Some(format!("bytes={half}-").as_str())
    );
    assert!(
        hits[1].header("if-range").is_some(),
        "the resume is tied to the ETag"
    );
    assert_eq!(
        fs::read(site.cache().join("sha256").join(sha256(&body))).unwrap(),
        body
    );

    // Across runs: the first run gives up with half the file kept, the
    // next one continues from there.
    let srv = Server::start();
    let site = Site::new();
    srv.route(
        "/base.tar",
        Route::file(&body).with_faults(&[Fault::CutAfter(half)]),
    );
    let recipe = site.recipe((&srv.url("/base.tar"), Some(&sha256(&body))), &[]);
    let err = run_err(site.fetch(&recipe, &["--retries", "0"]));
    assert!(err.contains("the next fetch resumes"), "{err}");
    assert!(site.store().is_empty(), "half a file is not in the store");
    run_ok(site.fetch(&recipe, &[]));
    let hits = srv.hits("/base.tar");
    assert_eq!(
        hits.last().unwrap().header("range"),
        Some(format!("bytes={half}-").as_str())
    );
    assert!(site.cached(&sha256(&body)));

    // A file republished between the runs (new ETag) starts over instead
    // of being spliced.
    let srv = Server::start();
    let site = Site::new();
    let old = data("old", 400_000);
    srv.route(
        "/base.tar",
        Route::file(&old).with_faults(&[Fault::CutAfter(100_000)]),
    );
    let recipe = site.recipe((&srv.url("/base.tar"), Some(&sha256(&body))), &[]);
    run_err(site.fetch(&recipe, &["--retries", "0"]));
    srv.replace("/base.tar", &body);
    run_ok(site.fetch(&recipe, &[]));
    let last = srv.hits("/base.tar").pop().unwrap();
    assert_eq!(last.header("range"), Some("bytes=100000-"));
    assert!(site.cached(&sha256(&body)), "the full new file arrived");
}

#[test]
fn file_urls_are_copied_and_verified() {
    let site = Site::new();
    fs::write(site.path("base with space.tar"), b"local base").unwrap();
    let url = format!("file://{}", site.path("base%20with%20space.tar").display());
    let recipe = site.recipe((&url, Some(&sha256(b"local base"))), &[]);
    run_ok(site.fetch(&recipe, &[]));
    assert!(site.cached(&sha256(b"local base")));
    let recipe = site.recipe((&url, Some(&sha256(b"other"))), &[]);
    let err = run_err(site.fetch(&recipe, &[]));
    assert!(
        err.contains(&sha256(b"local base")) && err.contains("nothing was cached"),
        "{err}"
    );
}

#[test]
fn fetch_refuses_unpinned_inputs_and_build_names_fetch() {
    let srv = Server::start();
    let site = Site::new();
    srv.route("/base.tar", Route::file(b"b"));
    let recipe = site.recipe((&srv.url("/base.tar"), None), &[]);
    let err = run_err(site.fetch(&recipe, &[]));
    assert!(
        err.contains("is not pinned") && err.contains("airlock lock"),
        "{err}"
    );
    assert!(srv.requests().is_empty());

    // build, offline, names the fetch command for a pinned URL input that
    // is not in the cache.
    let recipe = site.recipe((&srv.url("/base.tar"), Some(&sha256(b"b"))), &[]);
    let out = airlock()
        .arg("build")
        .arg(&recipe)
        .arg("--cache")
        .arg(site.cache())
        .arg("--out")
        .arg(site.path("out"))
        .output()
        .unwrap();
    let err = run_err(out);
    if err.contains("needs root") {
        return;
    }
    assert!(
        err.contains("airlock fetch") && err.contains("recipe.toml"),
        "{err}"
    );
    assert!(srv.requests().is_empty(), "build used the network");
}

#[test]
fn lock_pins_urls_by_published_sums_or_by_downloading() {
    let srv = Server::start();
    let site = Site::new();
    let kubeadm = data("kubeadm", 30_000);
    let runc = data("runc", 20_000);
    let base = data("base", 10_000);
    srv.route("/v1/kubeadm", Route::file(&kubeadm));
    srv.route(
        "/v1/kubeadm.sha256",
        Route::file(format!("{}\n", sha256(&kubeadm)).as_bytes()),
    );
    srv.route("/runc.amd64", Route::file(&runc));
    srv.route(
        "/runc.amd64.sha256sum",
        Route::file(
            format!(
                "{}  runc.arm64\n{}  runc.amd64\n",
                sha256(b"x"),
                sha256(&runc)
            )
            .as_bytes(),
        ),
    );
    srv.route("/base.tar", Route::file(&base));
    let recipe = site.recipe(
        (&srv.url("/base.tar"), None),
        &[
            (&srv.url("/v1/kubeadm"), None),
            (&srv.url("/runc.amd64"), None),
        ],
    );
    let json = json_ok(site.lock(&recipe, &["--json"]));
    let how: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["what"].as_str().unwrap(), o["how"].as_str().unwrap()))
        .collect();
    assert_eq!(
        how,
        [
            ("base", "downloaded"),
            ("file /opt/f0", "published"),
            ("file /opt/f1", "published")
        ]
    );
    // Published sums are trusted without downloading the file...
    assert!(srv.hits("/v1/kubeadm").is_empty());
    assert!(srv.hits("/runc.amd64").is_empty());
    // ...and a file without one was downloaded once, into the cache.
    assert!(site.cached(&sha256(&base)));
    let lock = fs::read_to_string(site.path("recipe.toml.lock")).unwrap();
    for s in [sha256(&kubeadm), sha256(&runc), sha256(&base)] {
        assert!(lock.contains(&s), "{lock}");
    }

    // fetch then verifies the published sums against the files.
    srv.clear_log();
    run_ok(site.fetch(&recipe, &[]));
    assert!(srv.hits("/base.tar").is_empty(), "already in the cache");
    assert!(site.cached(&sha256(&kubeadm)) && site.cached(&sha256(&runc)));

    // Republished upstream: the lock keeps its pins until --update.
    let kubeadm2 = data("kubeadm v2", 30_000);
    srv.replace("/v1/kubeadm", &kubeadm2);
    srv.replace(
        "/v1/kubeadm.sha256",
        format!("{}\n", sha256(&kubeadm2)).as_bytes(),
    );
    let out = run_ok(site.lock(&recipe, &["--json"]));
    assert!(out.contains("\"kept\""), "{out}");
    assert!(fs::read_to_string(site.path("recipe.toml.lock"))
        .unwrap()
        .contains(&sha256(&kubeadm)));
    run_ok(site.lock(&recipe, &["--update"]));
    let lock = fs::read_to_string(site.path("recipe.toml.lock")).unwrap();
    assert!(
        lock.contains(&sha256(&kubeadm2)) && !lock.contains(&sha256(&kubeadm)),
        "{lock}"
    );

    // A published sum that does not match the file: fetch catches it.
    srv.replace(
        "/v1/kubeadm.sha256",
        format!("{}\n", sha256(b"tampered")).as_bytes(),
    );
    run_ok(site.lock(&recipe, &["--update"]));
    let err = run_err(site.fetch(&recipe, &[]));
    assert!(
        err.contains(&format!("expected {}", sha256(b"tampered"))),
        "{err}"
    );
}

/// An HTTPS file server on 127.0.0.1 (Python's http.server behind TLS)
/// whose certificate is signed by a private CA made here; stopped on drop.
struct Https {
    port: u16,
    child: std::process::Child,
}

impl Drop for Https {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Makes `dir/ca.pem` and a certificate for IP 127.0.0.1 signed by it,
/// and serves `dir/www` over HTTPS with it.
fn https_server(dir: &Path) -> Https {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", "/CN=airlock test CA"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &key,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "srv.ext",
    ]);
    let script = "import http.server, os, ssl, sys\n\
        os.chdir(sys.argv[1])\n\
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n\
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
        print(srv.server_address[1], flush=True)\n\
        srv.serve_forever()\n";
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join("www"))
        .arg(dir.join("srv.pem"))
        .arg(dir.join("srv.key"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    Https {
        port: line.trim().parse().expect("the HTTPS server's port"),
        child,
    }
}

/// TLS is verified: a server whose CA the system does not trust is refused
/// with a certificate error (and nothing enters the cache), and trusting
/// the CA the documented way (SSL_CERT_FILE) lets the same fetch through.
#[test]
fn https_certificates_are_verified_and_a_private_ca_can_be_trusted() {
    if !(common::have("openssl") && common::have("python3")) {
        return;
    }
    let site = Site::new();
    let tls = site.path("tls");
    fs::create_dir_all(tls.join("www")).unwrap();
    let payload = data("over tls", 100_000);
    fs::write(tls.join("www/base.tar"), &payload).unwrap();
    let srv = https_server(&tls);
    let url = format!("https://127.0.0.1:{}/base.tar", srv.port);
    let recipe = site.recipe((&url, Some(&sha256(&payload))), &[]);
    let fetch = |ca: Option<&Path>| {
        let mut c = airlock();
        c.arg("fetch")
            .arg(&recipe)
            .arg("--cache")
            .arg(site.cache())
            .args(["--retry-delay", "20"])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            c.env("SSL_CERT_FILE", ca);
        }
        c.output().unwrap()
    };
    let err = run_err(fetch(None));
    assert!(
        err.contains(&url)
            && err.contains("TLS verification failed")
            && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(
        err.contains("SSL_CERT_FILE"),
        "says how to trust a CA: {err}"
    );
    assert!(site.store().is_empty(), "{:?}", site.store());
    run_ok(fetch(Some(&tls.join("ca.pem"))));
    assert!(site.cached(&sha256(&payload)));
}
