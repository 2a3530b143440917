// SPDX-License-Identifier: Apache-2.0
//! Images from registries: `lock` resolving tags per platform and `fetch`
//! pulling by digest into OCI archives, against Debian's docker-registry
//! and a fake registry on 127.0.0.1 that misbehaves on demand (a blob that
//! does not match its digest, a manifest pointing at a missing blob, 500s,
//! token authentication, a mirror).

mod common;
mod servers;

use std::fs;
use std::path::{Path, PathBuf};

use common::{airlock, run_err, run_ok, sha256};
use servers::http::{Fault, Reply, Route, Server};
use servers::oci::{archive, gzip, index, layer, Blob, Image, E};
use servers::registry::{serve_blob, serve_image, serve_manifest, DockerRegistry};

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

    /// A recipe whose base is `image`, with extra TOML appended.
    fn recipe(&self, image: &str, extra: &str) -> PathBuf {
        let p = self.path("recipe.toml");
        fs::write(
            &p,
            format!(
                "name = \"t\"\n\n[base]\nimage = \"{image}\"\n\n[node]\nhostname = \"n1\"\n{extra}"
            ),
        )
        .unwrap();
        p
    }

    fn run(&self, verb: &str, recipe: &Path, extra: &[&str]) -> std::process::Output {
        airlock()
            .arg(verb)
            .arg(recipe)
            .arg("--cache")
            .arg(self.cache())
            .args(["--retry-delay", "20"])
            .args(extra)
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.path("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
    }

    fn lock_file(&self) -> toml::Table {
        toml::from_str(&fs::read_to_string(self.path("recipe.toml.lock")).unwrap()).unwrap()
    }

    /// The OCI archive records `fetch` wrote.
    fn records(&self) -> Vec<serde_json::Value> {
        fs::read_dir(self.cache().join("oci"))
            .map(|d| {
                d.map(|e| serde_json::from_slice(&fs::read(e.unwrap().path()).unwrap()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn store_has(&self, digest: &str) -> bool {
        self.cache().join("sha256").join(&digest[7..]).is_file()
    }

    /// The sections a recipe with `[[image]]` entries needs, naming small
    /// local files (enough for fetch and bundle, not for a node).
    fn kube_inputs(&self) -> String {
        let pin = |f: &str| {
            fs::write(self.path(f), format!("{f} stand-in\n")).unwrap();
            format!(
                "{{ source = \"{f}\", sha256 = \"{}\" }}",
                common::sha256_file(&self.path(f))
            )
        };
        format!(
            "\n[kubernetes]\nversion = \"1.34.11\"\nkubeadm = {}\nkubelet = {}\nkubectl = {}\n\n\
             [containerd]\npackaged = true\nversion = \"2.1.9\"\n\n[cni]\nmanifest = {}\n\n\
             [cluster]\ncontrol_plane_endpoint = \"10.0.0.10:6443\"\n",
            pin("kubeadm"),
            pin("kubelet"),
            pin("kubectl"),
            pin("cni.yml")
        )
    }

    /// `airlock build` into `out/`, with no network at all.
    fn build_offline(&self, recipe: &Path) -> std::process::Output {
        offline(airlock())
            .arg("build")
            .arg(recipe)
            .arg("--cache")
            .arg(self.cache())
            .arg("--out")
            .arg(self.path("out"))
            .output()
            .unwrap()
    }

    /// The root filesystem of the image built into `out/`.
    fn root_fs(&self) -> ext4_view::Ext4 {
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(self.path("out/manifest.json")).unwrap()).unwrap();
        ext4_view::Ext4::load(Box::new(common::PartReader {
            file: fs::File::open(self.path("out/t.raw")).unwrap(),
            offset: m["disk"]["root"]["start"].as_u64().unwrap(),
        }))
        .unwrap()
    }
}

/// `cmd` run by `unshare --net`: in a new network namespace whose only
/// interface is a loopback that is down, so nothing can be reached.
fn offline(cmd: std::process::Command) -> std::process::Command {
    assert!(common::have("unshare"), "unshare (util-linux) is needed");
    let mut c = std::process::Command::new("unshare");
    c.args(["--net", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// The entries of a tar archive: name → bytes.
fn tar_entries(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(fs::File::open(path).unwrap());
    let mut out = std::collections::BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut b).unwrap();
        out.insert(name, b);
    }
    out
}

#[test]
fn lock_resolves_tags_per_platform_and_fetch_pulls_an_oci_archive() {
    let Some(reg) = DockerRegistry::start() else {
        return;
    };
    let amd = Image::hello("base", "linux/amd64");
    let arm = Image::hello("base", "linux/arm64/v8");
    let idx = index(&[&amd, &arm]);
    reg.push_index("test/base", "1.0", &[&amd, &arm], &idx);
    let single = Image::hello("single", "linux/amd64");
    reg.push_image("test/single", Some("2"), &single);

    let site = Site::new();
    let image = format!("{}/test/base:1.0", reg.host);
    let recipe = site.recipe(&image, "");
    run_ok(site.run("lock", &recipe, &[]));
    let lock = site.lock_file();
    let entry = &lock["input"].as_array().unwrap()[0];
    assert_eq!(entry["what"].as_str(), Some("base"));
    assert_eq!(entry["source"].as_str(), Some(image.as_str()));
    assert_eq!(
        entry["sha256"].as_str(),
        Some(idx.hex()),
        "the tag is pinned to the index digest"
    );
    assert_eq!(
        entry["platforms"]["linux/amd64"].as_str(),
        Some(amd.manifest.digest.as_str())
    );

    let out = site.run("fetch", &recipe, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    run_ok(out);
    assert_eq!(report[0]["status"], "pulled", "{report}");
    // Every blob of the amd64 image is in the store, the arm64 one's not.
    for b in amd.blobs().into_iter().chain([&amd.manifest, &idx]) {
        assert!(site.store_has(&b.digest), "{} missing", b.digest);
    }
    assert!(!site.store_has(&arm.layers[0].digest));
    // The archive: an OCI layout naming the image, with exactly those blobs.
    let rec = &site.records()[0];
    assert_eq!(rec["name"], image);
    let archive = site
        .cache()
        .join("sha256")
        .join(rec["archive"].as_str().unwrap());
    assert_eq!(
        sha256(&fs::read(&archive).unwrap()),
        rec["archive"].as_str().unwrap()
    );
    let entries = tar_entries(&archive);
    let index_json: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
    assert_eq!(index_json["manifests"][0]["digest"], idx.digest);
    assert_eq!(
        index_json["manifests"][0]["annotations"]["io.containerd.image.name"],
        image
    );
    assert_eq!(
        index_json["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1.0"
    );
    let blobs: Vec<&String> = entries
        .keys()
        .filter(|k| k.starts_with("blobs/sha256/") && k.len() > 13)
        .collect();
    assert_eq!(
        blobs.len(),
        4,
        "index, amd64 manifest, config, layer: {blobs:?}"
    );
    for (name, bytes) in &entries {
        if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(sha256(bytes), hex, "{name}");
        }
    }

    // A second fetch is a cache hit.
    let out = site.run("fetch", &recipe, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["status"], "cached", "{report}");

    // A single-platform image: pinned to its manifest; a platform it does
    // not have is refused at lock time.
    let image = format!("{}/test/single:2", reg.host);
    let recipe = site.recipe(&image, "");
    run_ok(site.run("lock", &recipe, &["--update"]));
    assert_eq!(
        site.lock_file()["input"][0]["sha256"].as_str(),
        Some(single.manifest.hex())
    );
    let recipe = site.recipe(&image, "").to_path_buf();
    fs::write(
        &recipe,
        fs::read_to_string(&recipe)
            .unwrap()
            .replace("[node]", "platform = \"linux/arm64\"\n\n[node]"),
    )
    .unwrap();
    let err = run_err(site.run("lock", &recipe, &["--update"]));
    assert!(
        err.contains("is a single linux/amd64 image, not linux/arm64"),
        "{err}"
    );

    // A tag that does not exist.
    let recipe = site.recipe(&format!("{}/test/base:9.9", reg.host), "");
    let err = run_err(site.run("lock", &recipe, &[]));
    assert!(
        err.contains("test/base:9.9") && err.contains("404"),
        "{err}"
    );
}

/// A fake registry serving `repo`'s image `img` under `tag`.
fn fake(repo: &str, tag: &str, img: &Image) -> Server {
    let srv = Server::start();
    serve_image(&srv, repo, Some(tag), img);
    srv
}

fn pinned(srv: &Server, repo: &str, img: &Image) -> String {
    format!("{}/{repo}@{}", srv.addr, img.manifest.digest)
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let img = Image::hello("x", "linux/amd64");
    let srv = fake("t/x", "1", &img);
    serve_blob(&srv, "t/x", &img.layers[0].digest, b"not the layer");
    let site = Site::new();
    let recipe = site.recipe(&pinned(&srv, "t/x", &img), "");
    let err = run_err(site.run("fetch", &recipe, &[]));
    assert!(
        err.contains(&img.layers[0].digest[7..]) && err.contains("the download was deleted"),
        "{err}"
    );
    assert!(err.contains("tampered registry or mirror"), "{err}");
    assert!(!site.store_has(&img.layers[0].digest));
    assert!(site.records().is_empty(), "no archive for a broken image");
    assert_eq!(
        srv.hits(&format!("/v2/t/x/blobs/{}", img.layers[0].digest))
            .len(),
        1,
        "a bad digest is not retried"
    );

    // A manifest whose bytes do not hash to the digest asked for.
    let other = Image::hello("y", "linux/amd64");
    let srv = Server::start();
    let mut route =
        Route::file(&other.manifest.bytes).with_header("Content-Type", &other.manifest.media_type);
    route.ranges = false;
    srv.route(&format!("/v2/t/x/manifests/{}", img.manifest.digest), route);
    let recipe = site.recipe(&pinned(&srv, "t/x", &img), "");
    let err = run_err(site.run("fetch", &recipe, &[]));
    assert!(
        err.contains(&format!("hashes to {}", other.manifest.digest)),
        "{err}"
    );
}

#[test]
fn a_manifest_pointing_at_a_missing_blob_is_refused() {
    let img = Image::new(
        "linux/amd64",
        &[layer(&[E::File("a", b"1")]), layer(&[E::File("b", b"2")])],
    );
    let srv = Server::start();
    serve_manifest(&srv, "t/x", Some("1"), &img.manifest);
    serve_blob(&srv, "t/x", &img.config.digest, &img.config.bytes);
    serve_blob(&srv, "t/x", &img.layers[0].digest, &img.layers[0].bytes);
    let site = Site::new();
    let recipe = site.recipe(&pinned(&srv, "t/x", &img), "");
    let err = run_err(site.run("fetch", &recipe, &[]));
    assert!(
        err.contains(&format!("no blob {}", img.layers[1].digest)) && err.contains("missing blob"),
        "{err}"
    );
    assert!(site.records().is_empty());
}

#[test]
fn registry_errors_are_retried() {
    let img = Image::hello("x", "linux/amd64");
    let srv = fake("t/x", "1", &img);
    srv.add_faults(
        &format!("/v2/t/x/manifests/{}", img.manifest.digest),
        &[Fault::Status(500)],
    );
    srv.add_faults(
        &format!("/v2/t/x/blobs/{}", img.layers[0].digest),
        &[Fault::Status(503), Fault::CutAfter(10)],
    );
    let site = Site::new();
    let recipe = site.recipe(&pinned(&srv, "t/x", &img), "");
    run_ok(site.run("fetch", &recipe, &[]));
    assert!(site.store_has(&img.layers[0].digest));
    assert_eq!(
        srv.hits(&format!("/v2/t/x/manifests/{}", img.manifest.digest))
            .len(),
        2
    );
    let layer_hits = srv.hits(&format!("/v2/t/x/blobs/{}", img.layers[0].digest));
    assert_eq!(
        layer_hits.len(),
        3,
        "503, cut after 10 bytes, then the rest"
    );
    assert_eq!(layer_hits[2].header("range"), Some("bytes=10-"));
    assert_eq!(site.records().len(), 1);
}

/// Makes every path of `img` (and tag `tag`) in `repo` on `srv` want a
/// Bearer token from `srv`'s /token, which hands one out when `grant`
/// says so.
fn protect(
    srv: &Server,
    repo: &str,
    tag: &str,
    img: &Image,
    grant: impl Fn(&servers::http::Request) -> bool + Send + Sync + 'static,
) {
    let realm = srv.url("/token");
    let challenge =
        format!("Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:{repo}:pull\"");
    let paths = [
        format!("/v2/{repo}/manifests/{}", img.manifest.digest),
        format!("/v2/{repo}/manifests/{tag}"),
    ]
    .into_iter()
    .chain(
        img.blobs()
            .into_iter()
            .map(|b| format!("/v2/{repo}/blobs/{}", b.digest)),
    )
    .collect::<Vec<String>>();
    for p in paths {
        srv.update(&p, |r| {
            r.auth = Some(("Bearer tok-123".into(), challenge.clone()))
        });
    }
    srv.route(
        "/token",
        Route::handler(move |req| {
            if grant(req) {
                Reply {
                    status: 200,
                    headers: vec![],
                    body: br#"{"token":"tok-123"}"#.to_vec(),
                }
            } else {
                Reply {
                    status: 401,
                    headers: vec![],
                    body: b"{}".to_vec(),
                }
            }
        }),
    );
}

#[test]
fn token_auth_with_credentials_from_the_auth_file() {
    let img = Image::hello("private", "linux/amd64");
    let srv = fake("team/app", "1", &img);
    // The token server wants Basic credentials (user:secret) and the scope
    // and service of the challenge.
    protect(&srv, "team/app", "1", &img, |req| {
        req.method == "GET"
            && req.header("authorization") == Some("Basic dXNlcjpzZWNyZXQ=")
            && req.query.contains("scope=repository%3Ateam%2Fapp%3Apull")
            && req.query.contains("service=fake")
    });
    let site = Site::new();
    let recipe = site.recipe(&format!("{}/team/app:1", srv.addr), "");
    // No credentials: the error says how to log in.
    let err = run_err(site.run("lock", &recipe, &[]));
    assert!(
        err.contains("refused an anonymous token") && err.contains("REGISTRY_AUTH_FILE"),
        "{err}"
    );
    fs::write(
        site.path("auth.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"dXNlcjpzZWNyZXQ="}}}}}}"#,
            srv.addr
        ),
    )
    .unwrap();
    // One token per run, reused for every request after it.
    let authorized = |srv: &Server| {
        srv.requests()
            .iter()
            .filter(|r| {
                r.path.starts_with("/v2/") && r.header("authorization") == Some("Bearer tok-123")
            })
            .count()
    };
    srv.clear_log();
    run_ok(site.run("lock", &recipe, &[]));
    assert_eq!(srv.hits("/token").len(), 1);
    srv.clear_log();
    run_ok(site.run("fetch", &recipe, &[]));
    assert_eq!(site.records().len(), 1);
    assert_eq!(srv.hits("/token").len(), 1, "one token for the whole pull");
    assert!(
        authorized(&srv) >= 2,
        "the manifest and the layer were fetched with it: {:?}",
        srv.requests()
    );
}

/// Credentials are looked up in `REGISTRY_AUTH_FILE`, then
/// `$DOCKER_CONFIG/config.json` (or, without DOCKER_CONFIG,
/// `~/.docker/config.json`); the first file with an entry for the registry
/// wins. An `identitytoken` (what `docker login` stores for registries with
/// OAuth2) is a refresh token: exchanged by a POST to the token server.
#[test]
fn credentials_come_from_the_usual_files_and_identity_tokens_are_exchanged() {
    let img = Image::hello("private", "linux/amd64");
    let srv = fake("team/app", "1", &img);
    protect(&srv, "team/app", "1", &img, |req| {
        let form = String::from_utf8_lossy(&req.body).into_owned();
        let fields: Vec<&str> = form.split('&').collect();
        match req.method.as_str() {
            "GET" => req.header("authorization") == Some("Basic cmlnaHQ6cHc="),
            "POST" => {
                req.header("authorization").is_none()
                    && [
                        "grant_type=refresh_token",
                        "refresh_token=idt-1",
                        "service=fake",
                    ]
                    .iter()
                    .all(|f| fields.contains(f))
                    && fields.contains(&"scope=repository%3Ateam%2Fapp%3Apull")
            }
            _ => false,
        }
    });
    let site = Site::new();
    let recipe = site.recipe(&pinned(&srv, "team/app", &img), "");
    let file = |path: &str, entry: &str| -> PathBuf {
        let p = site.path(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!(r#"{{"auths":{{"{}":{entry}}}}}"#, srv.addr)).unwrap();
        p
    };
    let right = r#"{"auth":"cmlnaHQ6cHc="}"#;
    let wrong = r#"{"auth":"d3Jvbmc6cHc="}"#;
    let runs = std::cell::Cell::new(0);
    let fetch = |auth_file: Option<&Path>, docker_config: Option<&Path>| {
        runs.set(runs.get() + 1);
        let mut c = airlock();
        c.arg("fetch")
            .arg(&recipe)
            .arg("--cache")
            .arg(site.path(&format!("cache-{}", runs.get())))
            .args(["--retries", "0"])
            .env("HOME", site.path("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG");
        if let Some(f) = auth_file {
            c.env("REGISTRY_AUTH_FILE", f);
        }
        if let Some(d) = docker_config {
            c.env("DOCKER_CONFIG", d);
        }
        c.output().unwrap()
    };
    // ~/.docker/config.json
    file("home/.docker/config.json", right);
    run_ok(fetch(None, None));
    // $DOCKER_CONFIG/config.json instead of ~/.docker.
    file("home/.docker/config.json", wrong);
    file("docker/config.json", right);
    run_ok(fetch(None, Some(&site.path("docker"))));
    let err = run_err(fetch(None, None));
    assert!(err.contains("refused the stored credentials"), "{err}");
    // REGISTRY_AUTH_FILE before both.
    let auth = file("auth.json", right);
    file("docker/config.json", wrong);
    run_ok(fetch(Some(&auth), Some(&site.path("docker"))));
    file("auth.json", wrong);
    file("docker/config.json", right);
    let err = run_err(fetch(Some(&auth), Some(&site.path("docker"))));
    assert!(err.contains("refused the stored credentials"), "{err}");

    // An identity token, with no password stored.
    file("auth.json", r#"{"auth":"","identitytoken":"idt-1"}"#);
    srv.clear_log();
    let log = run_ok(fetch(Some(&auth), None));
    let tokens = srv.hits("/token");
    assert_eq!(tokens.len(), 1, "{log}");
    assert_eq!(tokens[0].method, "POST");
    assert!(!String::from_utf8_lossy(&tokens[0].body).contains("cmlnaHQ"));
}

#[test]
fn mirrors_are_tried_first_and_the_upstream_after_them() {
    let img = Image::hello("m", "linux/amd64");
    let mirror = fake("library/app", "1", &img);
    let dead = Server::start(); // a mirror that knows nothing (404s)
    let site = Site::new();
    // The upstream is a loopback port nothing listens on: only the mirror
    // can serve the image.
    let upstream = "127.0.0.1:9";
    let mirrors = format!(
        "\n[[mirror]]\nregistry = \"{upstream}\"\nendpoint = \"{}\"\n\n[[mirror]]\nregistry = \"{upstream}\"\nendpoint = \"{}\"\n",
        dead.url(""),
        mirror.url("")
    );
    let recipe = site.recipe(&format!("{upstream}/library/app:1"), &mirrors);
    run_ok(site.run("lock", &recipe, &[]));
    assert_eq!(
        site.lock_file()["input"][0]["sha256"].as_str(),
        Some(img.manifest.hex())
    );
    run_ok(site.run("fetch", &recipe, &[]));
    assert_eq!(
        site.records()[0]["name"],
        format!("{upstream}/library/app:1"),
        "named as the recipe says, not as the mirror"
    );
    assert!(!dead.requests().is_empty(), "the first mirror was tried");

    // All down: each endpoint's failure is listed.
    let recipe = site.recipe(&format!("{upstream}/library/other:1"), &mirrors);
    let err = run_err(site.run("lock", &recipe, &[]));
    assert!(
        err.contains(&dead.url(""))
            && err.contains(&mirror.url(""))
            && err.contains("http://127.0.0.1:9"),
        "{err}"
    );
}

/// The small bootable base of the build tests as one layer.
fn base_layer(dir: &Path) -> Vec<u8> {
    let p = dir.join("base-layer.tar");
    common::tarball(&p, &common::base_entries());
    fs::read(&p).unwrap()
}

#[test]
fn build_flattens_a_pulled_base_image_offline() {
    if !(common::is_root() && common::have("mke2fs")) {
        return;
    }
    let Some(reg) = DockerRegistry::start() else {
        return;
    };
    let site = Site::new();
    let l1 = base_layer(site.dir.path());
    let l2 = layer(&[
        E::Dir("srv/data"),
        E::File("srv/data/old1", b"lower"),
        E::File("srv/data/sub/old2", b"lower"),
        E::File("etc/gone.conf", b"lower"),
        E::File("etc/kept.conf", b"lower"),
    ]);
    let l3 = layer(&[
        E::File("srv/data/new", b"upper"),
        E::File("srv/data/.wh..wh..opq", b""),
        E::File("etc/.wh.gone.conf", b""),
        E::File("etc/kept.conf", b"upper"),
    ]);
    let amd = Image::new("linux/amd64", &[l1, l2, l3]);
    let arm = Image::hello("base", "linux/arm64");
    reg.push_index("fedora/bootc", "43", &[&amd, &arm], &index(&[&amd, &arm]));
    let recipe = site.recipe(&format!("{}/fedora/bootc:43", reg.host), SMALL_DISK);
    run_ok(site.run("lock", &recipe, &[]));
    run_ok(site.run("fetch", &recipe, &[]));
    // In a network namespace of its own nothing is reachable, not even the
    // registry on this machine's loopback...
    let err = run_err(
        offline(airlock())
            .arg("fetch")
            .arg(&recipe)
            .arg("--cache")
            .arg(site.path("other-cache"))
            .args(["--retries", "0"])
            .output()
            .unwrap(),
    );
    assert!(err.contains(&reg.host), "{err}");
    // ...and the build runs there, with the registry still up.
    let log = run_ok(site.build_offline(&recipe));
    drop(reg);
    assert!(log.contains("3 layers"), "{log}");
    let ext = site.root_fs();
    assert_eq!(ext.read_to_string("/etc/kept.conf").unwrap(), "upper");
    assert!(!ext.exists("/etc/gone.conf").unwrap(), "whiteout applied");
    assert_eq!(
        names(&ext, "/srv/data"),
        ["new"],
        "opaque directory: only the upper layer's entries"
    );
    assert_eq!(
        ext.read("/boot/vmlinuz-6.1.0-28-amd64").unwrap(),
        b"MZ fake kernel"
    );
    assert_no_whiteouts(&ext);
}

/// No whiteout file anywhere in the image.
fn assert_no_whiteouts(ext: &ext4_view::Ext4) {
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        for e in ext.read_dir(dir.as_str()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().as_str().unwrap().to_string();
            if name == "." || name == ".." {
                continue;
            }
            assert!(!name.starts_with(".wh."), "{dir}/{name} left in the image");
            if e.file_type().unwrap().is_dir() {
                stack.push(format!("{}/{name}", dir.trim_end_matches('/')));
            }
        }
    }
}

/// The names in a folder of the image, sorted.
fn names(ext: &ext4_view::Ext4, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = ext
        .read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

const SMALL_DISK: &str = "\n[disk]\nsize = \"160MiB\"\nesp_size = \"40MiB\"\n";

/// A base from an OCI archive FILE (zstd-compressed, as `skopeo copy
/// oci-archive:` output often is): a two-platform index whose amd64 image
/// deletes across layers with whiteouts and opaque folders. And an archive
/// holding only an arm64 image is refused for an amd64 build, naming the
/// platform.
#[test]
fn build_flattens_a_compressed_oci_archive_file() {
    if !(common::is_root() && common::have("mke2fs")) {
        return;
    }
    let site = Site::new();
    let l1 = base_layer(site.dir.path());
    let l2 = layer(&[
        E::Dir("srv/cache"),
        E::File("srv/cache/lower-a", b"lower"),
        E::File("srv/cache/deep/lower-b", b"lower"),
        E::File("srv/olddir/file", b"lower"),
        E::File("etc/removed.conf", b"lower"),
        E::File("etc/readded.conf", b"lower"),
    ]);
    let l3 = layer(&[
        E::File("srv/cache/.wh..wh..opq", b""),
        E::File("srv/cache/upper", b"upper"),
        E::File("srv/.wh.olddir", b""),
        E::File("etc/.wh.removed.conf", b""),
        E::File("etc/.wh.readded.conf", b""),
    ]);
    let l4 = layer(&[E::File("etc/readded.conf", b"top")]);
    let amd = Image::new("linux/amd64", &[l1.clone(), l2, l3, l4]);
    let arm = Image::hello("base", "linux/arm64");
    let idx = index(&[&amd, &arm]);
    let mut blobs: Vec<&Blob> = vec![&amd.manifest, &arm.manifest];
    blobs.extend(amd.blobs());
    blobs.extend(arm.blobs());
    let file = zstd::encode_all(&archive(&idx, "example.org/base:1", &blobs)[..], 3).unwrap();
    fs::write(site.path("base.oci.tar.zst"), &file).unwrap();
    let recipe = site.path("recipe.toml");
    let write = |file: &str, sha: &str| {
        fs::write(
            &recipe,
            format!("name = \"t\"\n\n[base]\npath = \"{file}\"\nsha256 = \"{sha}\"\n\n[node]\nhostname = \"n1\"\n{SMALL_DISK}"),
        )
        .unwrap();
    };
    write("base.oci.tar.zst", &sha256(&file));
    let log = run_ok(site.build_offline(&recipe));
    assert!(
        log.contains(&format!(
            "linux/amd64 image {}, 4 layers",
            amd.manifest.digest
        )),
        "{log}"
    );
    let ext = site.root_fs();
    assert_eq!(names(&ext, "/srv/cache"), ["upper"], "opaque folder");
    assert!(!ext.exists("/srv/olddir").unwrap(), "a whited-out folder");
    assert!(
        !ext.exists("/etc/removed.conf").unwrap(),
        "a whited-out file"
    );
    assert_eq!(
        ext.read_to_string("/etc/readded.conf").unwrap(),
        "top",
        "deleted, then added again by a later layer"
    );
    assert_eq!(
        ext.read("/boot/vmlinuz-6.1.0-28-amd64").unwrap(),
        b"MZ fake kernel"
    );
    assert_no_whiteouts(&ext);

    // One arm64 image, no index and no platform label: its config says
    // what it is.
    let only_arm = Image::new("linux/arm64", &[l1]);
    let file = gzip(&archive(
        &only_arm.manifest,
        "example.org/base:arm",
        &only_arm.blobs(),
    ));
    fs::write(site.path("arm.oci.tar.gz"), &file).unwrap();
    write("arm.oci.tar.gz", &sha256(&file));
    fs::remove_dir_all(site.path("out")).unwrap();
    let err = run_err(site.build_offline(&recipe));
    assert!(
        err.contains("base") && err.contains("is a linux/arm64 image, not linux/amd64"),
        "{err}"
    );
    assert!(!site.path("out").exists(), "a refused base left output");
}

/// A pulled base whose cached archive changed, or was swapped for another
/// image's, is refused by `build`, naming the base.
#[test]
fn build_refuses_a_cached_base_that_is_not_the_pinned_image() {
    if !(common::is_root() && common::have("mke2fs")) {
        return;
    }
    let site = Site::new();
    let img = Image::new("linux/amd64", &[base_layer(site.dir.path())]);
    let other = Image::new(
        "linux/amd64",
        &[
            base_layer(site.dir.path()),
            layer(&[E::File("etc/other", b"not the reviewed image")]),
        ],
    );
    let srv = Server::start();
    serve_image(&srv, "t/base", Some("1"), &img);
    serve_image(&srv, "t/other", Some("1"), &other);
    let other_recipe = site.recipe(&pinned(&srv, "t/other", &other), SMALL_DISK);
    run_ok(site.run("fetch", &other_recipe, &[]));
    let recipe = site.recipe(&pinned(&srv, "t/base", &img), SMALL_DISK);
    run_ok(site.run("fetch", &recipe, &[]));
    let record = |digest: &str| -> (PathBuf, serde_json::Value) {
        fs::read_dir(site.cache().join("oci"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
                (p, v)
            })
            .find(|(_, v)| v["digest"] == digest)
            .unwrap()
    };
    let (rec_path, rec) = record(&img.manifest.digest);
    let (_, other_rec) = record(&other.manifest.digest);
    let archive_path = site
        .cache()
        .join("sha256")
        .join(rec["archive"].as_str().unwrap());
    let good = fs::read(&archive_path).unwrap();

    // A byte of the layer changed in the cache (same size, every record
    // untouched).
    let at = good
        .windows(img.layers[0].bytes.len())
        .position(|w| w == &img.layers[0].bytes[..])
        .unwrap();
    let mut bad = good.clone();
    bad[at + img.layers[0].bytes.len() / 2] ^= 0x01;
    fs::write(&archive_path, &bad).unwrap();
    let err = run_err(site.build_offline(&recipe));
    assert!(
        err.contains("the cached copy of base") && err.contains("the cache was changed"),
        "{err}"
    );
    assert!(!site.path("out").exists());

    // The archive replaced by the other image's (and the record's size
    // made to match, as a careless copy or a tamperer would).
    let other_archive = fs::read(
        site.cache()
            .join("sha256")
            .join(other_rec["archive"].as_str().unwrap()),
    )
    .unwrap();
    fs::write(&archive_path, &other_archive).unwrap();
    let mut forged = rec.clone();
    forged["size"] = other_archive.len().into();
    fs::write(&rec_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = run_err(site.build_offline(&recipe));
    assert!(
        err.contains("base")
            && err.contains(&format!(
                "holds {}, not the pinned {}",
                other.manifest.digest, img.manifest.digest
            )),
        "{err}"
    );
    assert!(!site.path("out").exists());

    // The record pointing at the other image's archive.
    fs::write(&archive_path, &good).unwrap();
    let mut forged = rec.clone();
    forged["archive"] = other_rec["archive"].clone();
    forged["size"] = other_rec["size"].clone();
    fs::write(&rec_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = run_err(site.build_offline(&recipe));
    assert!(
        err.contains(&format!("not the pinned {}", img.manifest.digest)),
        "{err}"
    );

    // Put right, the same cache builds.
    fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    run_ok(site.build_offline(&recipe));
}

#[test]
fn build_refuses_a_base_layer_escaping_the_root() {
    if !(common::is_root() && common::have("mke2fs")) {
        return;
    }
    let site = Site::new();
    let evil = layer(&[
        E::File("etc/ok", b"fine"),
        E::RawPath(b"../../../../../tmp/airlock-escaped", b"pwned"),
    ]);
    let img = Image::new("linux/amd64", &[base_layer(site.dir.path()), evil]);
    let srv = fake("evil/base", "1", &img);
    let recipe = site.recipe(
        &pinned(&srv, "evil/base", &img),
        "\n[disk]\nsize = \"160MiB\"\nesp_size = \"40MiB\"\n",
    );
    run_ok(site.run("fetch", &recipe, &[]));
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
    assert!(
        err.contains("layer 2 of 2") && err.contains("airlock-escaped") && err.contains("'..'"),
        "{err}"
    );
    assert!(!Path::new("/tmp/airlock-escaped").exists());
    assert!(
        !site.path("out").exists(),
        "a failed build left output behind"
    );
}

/// Two references (other repositories, other tags) to one digest: the
/// image is pulled once, and each reference gets an archive naming it, as
/// the node imports it under each name.
#[test]
fn two_names_for_one_digest_each_get_an_archive() {
    let img = Image::hello("shared", "linux/amd64");
    let srv = Server::start();
    serve_image(&srv, "team/a", Some("1"), &img);
    serve_image(&srv, "mirror/b", Some("2"), &img);
    let site = Site::new();
    let a = pinned(&srv, "team/a", &img);
    let b = format!("{}/mirror/b:2@{}", srv.addr, img.manifest.digest);
    let recipe = site.recipe(
        &a,
        &format!("{}\n[[image]]\nref = \"{b}\"\n", site.kube_inputs()),
    );
    run_ok(site.run("fetch", &recipe, &[]));
    let mut names: Vec<String> = site
        .records()
        .iter()
        .map(|r| {
            assert_eq!(r["digest"], img.manifest.digest);
            let archive = site
                .cache()
                .join("sha256")
                .join(r["archive"].as_str().unwrap());
            let index: serde_json::Value =
                serde_json::from_slice(&tar_entries(&archive)["index.json"]).unwrap();
            let name = r["name"].as_str().unwrap().to_string();
            assert_eq!(
                index["manifests"][0]["annotations"]["io.containerd.image.name"],
                name.as_str(),
                "the archive names its own reference"
            );
            name
        })
        .collect();
    names.sort();
    let mut want = vec![format!("{}/mirror/b:2", srv.addr), a.clone()];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        srv.hits(&format!("/v2/team/a/blobs/{}", img.layers[0].digest))
            .len()
            + srv
                .hits(&format!("/v2/mirror/b/blobs/{}", img.layers[0].digest))
                .len(),
        1,
        "the layer is pulled once"
    );
    // Both resolve from the cache: a second fetch transfers nothing, and a
    // bundle (which takes every input from the cache) finds both.
    srv.clear_log();
    let out = site.run("fetch", &recipe, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    run_ok(out);
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "cached"),
        "{report}"
    );
    assert!(srv.requests().is_empty());
    run_ok(
        airlock()
            .arg("bundle")
            .arg(&recipe)
            .arg("-o")
            .arg(site.path("b.bundle"))
            .arg("--cache")
            .arg(site.cache())
            .output()
            .unwrap(),
    );
}
