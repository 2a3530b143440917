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
}
