// SPDX-License-Identifier: Apache-2.0
//! Registries for the tests: Debian's `docker-registry` (the Distribution
//! registry) on 127.0.0.1 with storage in a temporary directory, pushed to
//! over its API; and a fake registry on the test HTTP server that serves
//! whatever blobs and manifests a test wants, broken ones included.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{Route, Server};
use super::oci::{Blob, Image};

const BINARY: &str = "/usr/bin/docker-registry";

/// A running `docker-registry serve`, stopped on drop.
pub struct DockerRegistry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Starts one, or returns None (after a note) when the package is
    /// missing; with CI set, a missing registry fails the test.
    pub fn start() -> Option<DockerRegistry> {
        if !Path::new(BINARY).is_file() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{BINARY} is required in CI: scripts/install-deps installs docker-registry"
            );
            eprintln!("skipping: {BINARY} is not installed (apt-get install docker-registry)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: airlock-tests\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let reg = DockerRegistry {
            host: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = ureq::get(&format!("http://{}/v2/", reg.host)).call() {
                if r.status() == 200 {
                    return Some(reg);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not start on {}",
                reg.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn push_blob(&self, repo: &str, blob: &Blob) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let r = agent
            .post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.host))
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 202, "starting an upload to {repo}");
        let loc = r
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.host)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = agent
            .put(&format!("{loc}{sep}digest={}", blob.digest))
            .header("Content-Type", "application/octet-stream")
            .send(&blob.bytes[..])
            .unwrap();
        assert_eq!(r.status(), 201, "uploading {} to {repo}", blob.digest);
    }

    pub fn push_manifest(&self, repo: &str, reference: &str, m: &Blob) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .put(&format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host
            ))
            .header("Content-Type", &m.media_type)
            .send(&m.bytes[..])
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            201,
            "pushing {repo}:{reference}: {}",
            r.body_mut().read_to_string().unwrap_or_default()
        );
    }

    /// Pushes an image's blobs and manifest (by digest, and by `tag` if given).
    pub fn push_image(&self, repo: &str, tag: Option<&str>, img: &Image) {
        for b in img.blobs() {
            self.push_blob(repo, b);
        }
        self.push_manifest(repo, &img.manifest.digest, &img.manifest);
        if let Some(t) = tag {
            self.push_manifest(repo, t, &img.manifest);
        }
    }

    /// Pushes every image, then the index over them as `tag`.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[&Image], index: &Blob) {
        for i in images {
            self.push_image(repo, None, i);
        }
        self.push_manifest(repo, tag, index);
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves a blob from the fake registry (`bytes` may differ from what
/// the digest says, to test verification).
pub fn serve_blob(s: &Server, repo: &str, digest: &str, bytes: &[u8]) -> String {
    let path = format!("/v2/{repo}/blobs/{digest}");
    s.route(
        &path,
        Route::file(bytes).with_header("Docker-Content-Digest", digest),
    );
    path
}

/// Serves a manifest by digest and, if given, by tag.
pub fn serve_manifest(s: &Server, repo: &str, tag: Option<&str>, m: &Blob) -> String {
    let mut route = Route::file(&m.bytes).with_header("Content-Type", &m.media_type);
    route.ranges = false;
    let path = format!("/v2/{repo}/manifests/{}", m.digest);
    s.route(
        &path,
        route
            .clone()
            .with_header("Docker-Content-Digest", &m.digest),
    );
    if let Some(t) = tag {
        s.route(
            &format!("/v2/{repo}/manifests/{t}"),
            route.with_header("Docker-Content-Digest", &m.digest),
        );
    }
    path
}

/// Serves a whole image (blobs and manifest).
pub fn serve_image(s: &Server, repo: &str, tag: Option<&str>, img: &Image) {
    for b in img.blobs() {
        serve_blob(s, repo, &b.digest, &b.bytes);
    }
    serve_manifest(s, repo, tag, &img.manifest);
}
