// SPDX-License-Identifier: Apache-2.0
//! `airlock bundle` on the connected side and `airlock build --from-bundle`
//! on the far side: the fixture recipe plus a downloaded input, split into
//! parts, carried to a fresh folder (no recipe, no cache, no server) and
//! built there; and a bundle with one damaged part refused before anything
//! is unpacked.

mod common;
mod servers;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use servers::http::{Route, Server};
use servers::oci::{layer, Image, E};
use servers::registry::serve_image;

/// Bytes zstd cannot shrink, so the bundle needs several parts.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The fixture recipe with a 3 MiB download added, fetched and bundled
/// into `dir/carry` with 1 MiB parts. Returns the bundle path there.
fn bundle_into(fx: &Fixture, carry: &Path) -> (PathBuf, Vec<u8>) {
    let srv = Server::start();
    let payload = noise(3 << 20);
    srv.route("/payload.bin", Route::file(&payload));
    let text = fx.recipe_text()
        + &format!(
            "\n[[file]]\nsource = \"{}\"\nsha256 = \"{}\"\npath = \"/opt/payload.bin\"\n",
            srv.url("/payload.bin"),
            sha256(&payload)
        );
    let recipe = fx.write_recipe(&text);
    run_ok(
        airlock()
            .arg("fetch")
            .arg(&recipe)
            .arg("--cache")
            .arg(fx.path("cache"))
            .output()
            .unwrap(),
    );
    fs::create_dir_all(carry).unwrap();
    let file = carry.join("tiny.bundle");
    let out = airlock()
        .arg("bundle")
        .arg(&recipe)
        .arg("-o")
        .arg(&file)
        .arg("--split")
        .arg("1MiB")
        .arg("--cache")
        .arg(fx.path("cache"))
        .arg("--json")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    run_ok(out);
    let parts = json["parts"].as_array().unwrap();
    assert!(parts.len() >= 3, "{json}");
    assert!(
        parts.iter().all(|p| p["size"].as_u64().unwrap() <= 1 << 20),
        "{json}"
    );
    // sha256sum checks the parts too.
    run_ok(
        std::process::Command::new("sha256sum")
            .arg("-c")
            .arg("tiny.bundle.sha256")
            .current_dir(carry)
            .output()
            .unwrap(),
    );
    (file, payload)
}

#[test]
fn a_bundle_builds_on_the_far_side_without_the_recipe_cache_or_network() {
    let fx = Fixture::new();
    let far = tempfile::tempdir().unwrap();
    let (file, payload) = bundle_into(&fx, far.path());
    // Nothing of the connected side is left: no recipe folder, no cache.
    drop(fx);
    if !(is_root() && have("mke2fs")) {
        return;
    }
    let out = airlock()
        .current_dir(far.path())
        .arg("build")
        .arg("--from-bundle")
        .arg(&file)
        .arg("--cache")
        .arg(far.path().join("cache"))
        .arg("--out")
        .arg(far.path().join("image"))
        .output()
        .unwrap();
    let log = run_ok(out);
    assert!(log.contains("checked"), "{log}");
    assert!(far
        .path()
        .join("out/from-bundle/tiny.bundle/recipe.toml")
        .is_file());
    assert!(far
        .path()
        .join("cache/sha256")
        .join(sha256(&payload))
        .is_file());
    let m = manifest(&far.path().join("image"));
    let (root_off, _) = partition(&m, "root");
    let ext = ext4_view::Ext4::load(Box::new(PartReader {
        file: fs::File::open(far.path().join("image/tiny.raw")).unwrap(),
        offset: root_off,
    }))
    .unwrap();
    assert_eq!(
        ext.read("/var/opt/payload.bin").unwrap(),
        payload,
        "the download arrived"
    );
    assert_eq!(
        ext.read_to_string("/etc/motd").unwrap(),
        "Welcome to node-7 (ship-7)\n",
        "templates came along"
    );
    assert_eq!(
        ext.read_to_string("/etc/airlock/overlay.txt").unwrap(),
        "from the overlay\n",
        "overlays came along"
    );
}

#[test]
fn a_damaged_part_is_named_before_anything_is_unpacked() {
    let fx = Fixture::new();
    let far = tempfile::tempdir().unwrap();
    let (file, _) = bundle_into(&fx, far.path());
    let part = far.path().join("tiny.bundle.001");
    let mut bytes = fs::read(&part).unwrap();
    bytes[4096] ^= 0x40;
    fs::write(&part, bytes).unwrap();
    let out = airlock()
        .current_dir(far.path())
        .arg("build")
        .arg("--from-bundle")
        .arg(&file)
        .arg("--cache")
        .arg(far.path().join("cache"))
        .output()
        .unwrap();
    let err = run_err(out);
    assert!(
        err.contains("part")
            && err.contains("tiny.bundle.001 is damaged")
            && err.contains("nothing was unpacked"),
        "{err}"
    );
    assert!(!err.contains("tiny.bundle.000 is damaged"), "{err}");
    assert!(!far.path().join("out").exists(), "something was unpacked");
    assert!(
        !far.path().join("cache").exists(),
        "something entered the cache"
    );

    // A missing checksum file is named too.
    fs::remove_file(far.path().join("tiny.bundle.sha256")).unwrap();
    let err = run_err(
        airlock()
            .current_dir(far.path())
            .arg("build")
            .arg("--from-bundle")
            .arg(&file)
            .output()
            .unwrap(),
    );
    assert!(err.contains("tiny.bundle.sha256 is missing"), "{err}");
}

#[test]
fn bundle_refuses_inputs_not_in_the_cache() {
    let fx = Fixture::new();
    let srv = Server::start();
    srv.route("/x", Route::file(b"x"));
    let text = fx.recipe_text()
        + &format!(
            "\n[[file]]\nsource = \"{}\"\nsha256 = \"{}\"\npath = \"/opt/x\"\n",
            srv.url("/x"),
            sha256(b"x")
        );
    let recipe = fx.write_recipe(&text);
    let out = airlock()
        .arg("bundle")
        .arg(&recipe)
        .arg("-o")
        .arg(fx.path("b"))
        .arg("--cache")
        .arg(fx.path("cache"))
        .output()
        .unwrap();
    let err = run_err(out);
    assert!(
        err.contains("is not in the cache") && err.contains("airlock fetch"),
        "{err}"
    );
    assert!(!fx.path("b").exists() && !fx.path("b.sha256").exists());
    assert!(srv.requests().is_empty(), "bundle never downloads");

    // In the cache under its digest, but with other bytes: refused here
    // rather than on the far side.
    let blob = fx.path("cache/sha256").join(sha256(b"x"));
    fs::create_dir_all(blob.parent().unwrap()).unwrap();
    fs::write(&blob, b"y").unwrap();
    let err = run_err(
        airlock()
            .arg("bundle")
            .arg(&recipe)
            .arg("-o")
            .arg(fx.path("b"))
            .arg("--cache")
            .arg(fx.path("cache"))
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&blob.display().to_string())
            && err.contains(&format!("hashes to {}", sha256(b"y")))
            && err.contains("the cache is damaged"),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(fx.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n == "b" || n == "b.sha256" || n.starts_with(".airlock-bundle"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `cmd` in a network namespace of its own (only a loopback that is down):
/// nothing can be reached.
fn offline(cmd: std::process::Command) -> std::process::Command {
    let mut c = std::process::Command::new("unshare");
    c.args(["--net", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// The connected side of a site whose base is an OCI image named by tag
/// (pinned by `lock`, pulled by `fetch` from a registry on 127.0.0.1),
/// plus a download: bundled, unsplit, into `carry/site.bundle`. Returns
/// the bundle, the base image, the payload and the cache archive that
/// holds the base.
fn oci_bundle(site: &Path, carry: &Path) -> (PathBuf, Image, Vec<u8>, String) {
    let base = site.join("base-layer.tar");
    tarball(&base, &base_entries());
    let img = Image::new(
        "linux/amd64",
        &[
            fs::read(&base).unwrap(),
            layer(&[
                E::File("etc/from-the-image", b"layer two\n"),
                E::File("boot/.wh.initrd.img-6.1.0-9-amd64", b""),
            ]),
        ],
    );
    let srv = Server::start();
    serve_image(&srv, "site/base", Some("43"), &img);
    let payload = noise(300_000);
    srv.route("/payload.bin", Route::file(&payload));
    let recipe = site.join("recipe.toml");
    fs::write(
        &recipe,
        format!(
            "name = \"t\"\n\n[base]\nimage = \"{}/site/base:43\"\n\n[[file]]\nsource = \"{}\"\n\
             sha256 = \"{}\"\npath = \"/opt/payload.bin\"\n\n[node]\nhostname = \"n1\"\n\n\
             [disk]\nsize = \"160MiB\"\nesp_size = \"40MiB\"\n",
            srv.addr,
            srv.url("/payload.bin"),
            sha256(&payload)
        ),
    )
    .unwrap();
    let cache = site.join("cache");
    let run = |verb: &str, extra: &[&str]| {
        run_ok(
            airlock()
                .arg(verb)
                .arg(&recipe)
                .arg("--cache")
                .arg(&cache)
                .args(extra)
                .env("HOME", site)
                .env_remove("REGISTRY_AUTH_FILE")
                .env_remove("DOCKER_CONFIG")
                .env_remove("XDG_RUNTIME_DIR")
                .output()
                .unwrap(),
        )
    };
    run("lock", &[]);
    let lock = fs::read_to_string(site.join("recipe.toml.lock")).unwrap();
    assert!(lock.contains(img.manifest.hex()), "{lock}");
    run("fetch", &[]);
    fs::create_dir_all(carry).unwrap();
    let file = carry.join("site.bundle");
    run("bundle", &["-o", file.to_str().unwrap()]);
    let record = fs::read_dir(cache.join("oci"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let record: serde_json::Value = serde_json::from_slice(&fs::read(record).unwrap()).unwrap();
    (
        file,
        img,
        payload,
        record["archive"].as_str().unwrap().to_string(),
    )
}

/// Lock, pulled OCI base, download: across the gap and built there from a
/// fresh cache, with no network at all.
#[test]
fn a_bundle_with_a_lock_and_a_pulled_base_builds_offline() {
    if !(is_root() && have("mke2fs") && have("unshare")) {
        return;
    }
    let site = tempfile::tempdir().unwrap();
    let far = tempfile::tempdir().unwrap();
    let (file, img, payload, _) = oci_bundle(site.path(), far.path());
    drop(site);
    let mut build = airlock();
    build
        .current_dir(far.path())
        .arg("build")
        .arg("--from-bundle")
        .arg(&file)
        .arg("--cache")
        .arg(far.path().join("cache"))
        .arg("--out")
        .arg(far.path().join("image"));
    let log = run_ok(offline(build).output().unwrap());
    assert!(
        log.contains(&format!("image {}, 2 layers", img.manifest.digest)),
        "{log}"
    );
    assert!(far
        .path()
        .join("out/from-bundle/site.bundle/recipe.toml.lock")
        .is_file());
    let m = manifest(&far.path().join("image"));
    let (root_off, _) = partition(&m, "root");
    let ext = ext4_view::Ext4::load(Box::new(PartReader {
        file: fs::File::open(far.path().join("image/t.raw")).unwrap(),
        offset: root_off,
    }))
    .unwrap();
    assert_eq!(
        ext.read_to_string("/etc/from-the-image").unwrap(),
        "layer two\n"
    );
    assert!(!ext.exists("/boot/initrd.img-6.1.0-9-amd64").unwrap());
    assert_eq!(ext.read("/var/opt/payload.bin").unwrap(), payload);
}

/// An input inside the bundle whose bytes differ from the bundle's
/// manifest (the parts' own checksums recomputed to match, as a tamperer
/// would) is named, with the input it belongs to, before anything is
/// unpacked into the cache or built.
#[test]
fn a_corrupted_input_inside_the_bundle_is_named_before_the_build() {
    let site = tempfile::tempdir().unwrap();
    let far = tempfile::tempdir().unwrap();
    let (file, img, _, archive) = oci_bundle(site.path(), far.path());
    let target = format!("cache/sha256/{archive}");
    let plain = zstd::decode_all(&fs::read(&file).unwrap()[..]).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut found = false;
    for e in tar::Archive::new(&plain[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if name == target {
            let n = data.len();
            data[n - 2000] ^= 0x20;
            found = true;
        }
        let mut h = e.header().clone();
        out.append_data(&mut h, &name, &data[..]).unwrap();
    }
    assert!(found, "{target} is in the bundle");
    let bytes = zstd::encode_all(&out.into_inner().unwrap()[..], 3).unwrap();
    fs::write(&file, &bytes).unwrap();
    fs::write(
        far.path().join("site.bundle.sha256"),
        format!("{}  site.bundle\n", sha256(&bytes)),
    )
    .unwrap();
    let err = run_err(
        airlock()
            .current_dir(far.path())
            .arg("build")
            .arg("--from-bundle")
            .arg(&file)
            .arg("--cache")
            .arg(far.path().join("cache"))
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&format!("{target} (base ("))
            && err.contains("/site/base:43")
            && err.contains(&format!("the manifest says {archive}"))
            && err.contains("nothing was used"),
        "{err}"
    );
    let _ = img;
    // The staging folder is gone; at most the empty folder it was made in
    // stays.
    let mut left = Vec::new();
    let mut stack = vec![far.path().join("out")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                left.push(p);
            }
        }
    }
    assert!(left.is_empty(), "something was unpacked: {left:?}");
    assert!(
        !far.path().join("cache").exists(),
        "something entered the cache"
    );
}

/// FAT32 holds files up to 4 GiB - 1 byte: `--split 4GiB` is warned about
/// (with the size that fits), `--split 4095MiB` is not.
#[test]
fn a_split_size_too_big_for_fat32_is_warned_about() {
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    let bundle = |split: &str| {
        run_ok(
            airlock()
                .arg("bundle")
                .arg(&recipe)
                .arg("-o")
                .arg(fx.path("b"))
                .arg("--split")
                .arg(split)
                .arg("--cache")
                .arg(fx.path("cache"))
                .output()
                .unwrap(),
        )
    };
    let log = bundle("4GiB");
    assert!(
        log.contains("warning: --split 4GiB makes parts larger than FAT32 can hold")
            && log.contains("use --split 4095MiB"),
        "{log}"
    );
    assert!(fx.path("b.000").is_file(), "still written");
    let log = bundle("4095MiB");
    assert!(!log.contains("warning"), "{log}");
}
