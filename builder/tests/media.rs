// SPDX-License-Identifier: Apache-2.0
//! `airlock verify`, `airlock inspect` and the VM output formats, on the
//! small fixture image: build → inspect → verify, then damage the image and
//! see every difference named.

mod common;
#[path = "common/oci.rs"]
mod oci;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn tools() -> bool {
    is_root() && have("mke2fs") && have("debugfs")
}

fn inspect(args: &[&str], image: &Path) -> Output {
    airlock()
        .arg("inspect")
        .arg(image)
        .args(args)
        .output()
        .unwrap()
}

fn verify(image: &Path, manifest: Option<&Path>) -> Output {
    let mut c = airlock();
    c.arg("verify").arg(image);
    if let Some(m) = manifest {
        c.arg("--manifest").arg(m);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds the fixture recipe (with `edit` applied) into `out`.
fn build(fx: &Fixture, edit: impl Fn(String) -> String, out: &str, extra: &[&str]) -> PathBuf {
    let recipe = fx.write_recipe(&edit(fx.recipe_text()));
    let o = airlock()
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(fx.path(out))
        .arg("--cache")
        .arg(fx.path("cache"))
        .args(extra)
        .output()
        .unwrap();
    run_ok(o);
    fx.path(out)
}

/// The one offset where `needle` occurs in `[start, start + len)` of `file`.
fn find_once(file: &Path, start: u64, len: u64, needle: &[u8]) -> u64 {
    let f = fs::File::open(file).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, start).unwrap();
    let hits: Vec<usize> = buf
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{:?} found {} times",
        String::from_utf8_lossy(needle),
        hits.len()
    );
    start + hits[0] as u64
}

fn flip(file: &Path, at: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

#[test]
fn build_inspect_verify_round_trip_and_damage_is_named() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let out = build(&fx, |t| t, "out", &[]);
    let raw = out.join("tiny.raw");
    let m = manifest(&out);

    // The manifest lists what airlock placed, resolved in the image, and
    // none of the base's own files.
    let files = m["files"].as_array().unwrap();
    let file = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p} not in {files:#?}"))
    };
    let tool = file("/var/opt/tool/bin/tool");
    assert_eq!(
        (
            tool["mode"].as_str(),
            tool["uid"].as_u64(),
            tool["gid"].as_u64()
        ),
        (Some("0750"), Some(100000), Some(10))
    );
    assert_eq!(
        tool["sha256"].as_str().unwrap(),
        sha256_file(&fx.path("tool"))
    );
    assert_eq!(tool["size"], 20);
    for p in [
        "/var/opt/cni/bin/bridge",
        "/var/opt/cni/bin/loopback",
        "/etc/motd",
        "/etc/airlock/overlay.txt",
        "/etc/hostname",
        "/etc/fstab",
        "/etc/machine-id",
        "/etc/passwd",
        "/home/ops/.ssh/authorized_keys",
    ] {
        file(p);
    }
    assert_eq!(file("/home/ops/.ssh/authorized_keys")["mode"], "0600");
    for p in [
        "/usr/bin/ping",
        "/opt/tool/bin/tool",
        "/var/opt/cni/README.md",
        "/usr/lib/airlock/manifest.json",
    ] {
        assert!(!files.iter().any(|f| f["path"] == p), "{p} is listed");
    }
    let esp: Vec<&str> = m["esp_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        esp,
        [
            "/EFI/BOOT/BOOTX64.EFI",
            "/EFI/systemd/systemd-bootx64.efi",
            "/airlock/6.1.0-28-amd64/initrd",
            "/airlock/6.1.0-28-amd64/linux",
            "/loader/entries/tiny-6.1.0-28-amd64.conf",
            "/loader/loader.conf"
        ]
    );
    assert_eq!(
        m["units"],
        serde_json::json!([{ "unit": "hello.service", "target": "multi-user.target", "kind": "wants" }])
    );
    assert_eq!(
        m["outputs"]["tiny.raw"].as_str().unwrap(),
        sha256_file(&raw)
    );

    // inspect --json says what the recipe said.
    let o = inspect(&["--json"], &raw);
    let j: serde_json::Value = serde_json::from_str(&run_ok_stdout(o)).unwrap();
    assert_eq!(j["name"], "tiny");
    assert_eq!(j["hostname"], "node-7");
    assert_eq!(j["users"], serde_json::json!(["ops"]));
    assert_eq!(j["kernel"], "6.1.0-28-amd64");
    assert_eq!(j["size"], 160 << 20);
    assert_eq!(j["epoch"], 1_700_000_000);
    assert_eq!(j["units"][0]["unit"], "hello.service");
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["uuid"], m["disk"]["esp"]["uuid"]);
    assert_eq!(parts[1]["uuid"], m["disk"]["root"]["uuid"]);
    assert_eq!(parts[1]["start"], m["disk"]["root"]["start"]);
    assert_eq!(j["boot"]["default"], "tiny-6.1.0-28-amd64.conf");
    let options = j["boot"]["entries"][0]["options"].as_str().unwrap();
    assert_eq!(options, m["kernel"]["cmdline"].as_str().unwrap());
    assert!(options.ends_with(" quiet"), "{options}");
    assert!(
        j.get("kubernetes").is_none(),
        "absent keys are left out: {j}"
    );
    assert_eq!(j["problems"], serde_json::json!([]));

    // A corrupt root superblock is reported, and inspect fails.
    let bad = raw.with_file_name("bad-super.raw");
    std::fs::copy(&raw, &bad).unwrap();
    let root_start = m["disk"]["root"]["start"].as_u64().unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&bad).unwrap(),
        &[0, 0],
        root_start + 1024 + 0x38,
    )
    .unwrap();
    let o = inspect(&[], &bad);
    let shown = stdout(&o);
    std::fs::remove_file(&bad).unwrap();
    assert!(shown.contains("Problems"), "{shown}");
    assert!(
        !o.status.success(),
        "inspect exited 0 with problems:\n{shown}"
    );

    // --cat prints one file, byte for byte, following symlinks in the image.
    assert_eq!(
        inspect(&["--cat", "/etc/hostname"], &raw).stdout,
        b"node-7\n"
    );
    assert_eq!(
        inspect(&["--cat", "/opt/tool/bin/tool"], &raw).stdout,
        fs::read(fx.path("tool")).unwrap()
    );
    let err = run_err(inspect(&["--cat", "/etc/nope"], &raw));
    assert!(
        err.contains("/etc/nope does not exist in the root filesystem"),
        "{err}"
    );

    // verify passes: with the manifest beside the image, on the .raw.zst,
    // against --manifest, and on a copy elsewhere with the embedded one.
    let o = verify(&raw, None);
    let text = run_ok_stdout(o);
    assert!(text.contains("manifest.json (beside the image)"), "{text}");
    assert!(text.contains("ok       image sha256"), "{text}");
    assert!(text.contains("ok       embedded manifest"), "{text}");
    assert!(
        text.contains(&format!("ok       root files ({})", files.len())),
        "{text}"
    );
    assert!(text.contains("ok       ESP files (6)"), "{text}");
    let text = run_ok_stdout(verify(&out.join("tiny.raw.zst"), None));
    assert!(
        text.contains("ok       image sha256") && text.contains("zstd"),
        "{text}"
    );
    let stick = fx.path("stick.img");
    fs::copy(&raw, &stick).unwrap();
    let text = run_ok_stdout(verify(&stick, None));
    assert!(text.contains("inside the image (weaker"), "{text}");
    let text = run_ok_stdout(verify(&stick, Some(&out.join("manifest.json"))));
    assert!(
        text.contains("(--manifest)") && text.contains("verified"),
        "{text}"
    );
    let o = airlock()
        .args(["verify", "--json"])
        .arg(&stick)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&run_ok_stdout(o)).unwrap();
    assert_eq!(j["failures"], serde_json::json!([]));
    assert_eq!(j["manifest"]["kind"], "embedded");

    // One byte of a baked binary and one of the kernel on the ESP.
    let (root_off, root_len) = partition(&m, "root");
    let (esp_off, esp_len) = partition(&m, "esp");
    flip(
        &stick,
        find_once(&stick, root_off, root_len, b"#!/bin/sh\necho tool\n") + 12,
    );
    flip(
        &stick,
        find_once(&stick, esp_off, esp_len, b"MZ fake kernel") + 3,
    );
    let o = verify(&stick, Some(&out.join("manifest.json")));
    let text = stdout(&o);
    let err = run_err(o);
    assert!(
        text.contains("FAILED   /var/opt/tool/bin/tool: sha256 is "),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "manifest says {}",
            tool["sha256"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(
        text.contains("FAILED   ESP /airlock/6.1.0-28-amd64/linux: sha256 is "),
        "{text}"
    );
    // The block map beside the manifest sees both bytes too.
    assert!(
        text.contains("FAILED   block map ") && text.contains("2 of 3 ranges differ"),
        "{text}"
    );
    assert!(text.contains("\n3 differences\n"), "{text}");
    assert!(
        err.contains("stick.img differs from its manifest in 3 places"),
        "{err}"
    );

    // Owner and mode changed in the root filesystem (with debugfs on a
    // copy of the partition, written back).
    let part = fx.path("root.img");
    extract_range(&raw, root_off, root_len, &part);
    for req in ["sif /etc/motd mode 0100600", "sif /etc/motd uid 1000"] {
        run_ok(
            Command::new("debugfs")
                .args(["-w", "-R", req])
                .arg(&part)
                .output()
                .unwrap(),
        );
    }
    let changed = fx.path("changed.raw");
    fs::copy(&raw, &changed).unwrap();
    let bytes = fs::read(&part).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&changed)
        .unwrap()
        .write_all_at(&bytes, root_off)
        .unwrap();
    let o = verify(&changed, Some(&out.join("manifest.json")));
    let text = stdout(&o);
    run_err(o);
    assert!(text.contains("FAILED   /etc/motd: mode is 0600, manifest says 0644; owner is 1000:0, manifest says 0:0"), "{text}");
    assert!(
        text.contains("FAILED   block map ") && text.contains("partition 2 (root)"),
        "{text}"
    );
    assert!(text.contains("\n2 differences\n"), "{text}");

    // A damaged GPT is named, and the files are still checked.
    flip(&changed, 512 + 60);
    let text = stdout(&verify(&changed, Some(&out.join("manifest.json"))));
    assert!(
        text.contains("FAILED   GPT: reading the primary GPT"),
        "{text}"
    );
    assert!(text.contains("FAILED   /etc/motd"), "{text}");
}

/// The files of an output folder, sorted, without the block map (which
/// another part of the build adds to every output).
fn outputs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".bmap") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn run_ok_stdout(o: Output) -> String {
    let s = stdout(&o);
    run_ok(o);
    s
}

#[test]
fn inspect_text_is_golden() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let out = build(&fx, |t| t, "out", &[]);
    let o = airlock()
        .args(["inspect", "tiny.raw"])
        .current_dir(&out)
        .output()
        .unwrap();
    let got = run_ok_stdout(o);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inspect-tiny.txt");
    if std::env::var_os("AIRLOCK_RECORD").is_some() {
        fs::create_dir_all(golden.parent().unwrap()).unwrap();
        fs::write(&golden, &got).unwrap();
    }
    let want = fs::read_to_string(&golden).unwrap_or_default();
    similar_asserts::assert_eq!(
        got,
        want,
        "rerun with AIRLOCK_RECORD=1 to accept a deliberate change"
    );
}

#[test]
fn vm_formats_are_converted_checked_and_summed() {
    if !(tools() && have("qemu-img")) {
        return;
    }
    let fx = Fixture::new();
    let all = |t: String| {
        t.replace(
            "[disk]\n",
            "[disk]\nformats = [\"raw.zst\", \"qcow2\", \"vmdk\", \"vhdx\"]\n",
        )
    };
    let out = build(&fx, all, "out", &[]);
    let names = outputs(&out);
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "manifest.json",
            "tiny.qcow2",
            "tiny.raw",
            "tiny.raw.zst",
            "tiny.vhdx",
            "tiny.vmdk"
        ]
    );
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&out)
            .output()
            .unwrap(),
    );
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for f in &names[1..] {
        assert!(sums.contains(&format!("  {f}\n")), "{f} not in {sums}");
    }
    for (file, format) in [
        ("tiny.qcow2", "qcow2"),
        ("tiny.vmdk", "vmdk"),
        ("tiny.vhdx", "vhdx"),
    ] {
        let info = run_ok_stdout(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(out.join(file))
                .output()
                .unwrap(),
        );
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], format, "{file}");
        assert_eq!(info["virtual-size"], 160u64 << 20, "{file}");
        if format == "vmdk" {
            assert_eq!(
                info["format-specific"]["data"]["create-type"],
                "streamOptimized"
            );
        }
        // The converted disk holds the same bytes.
        let text = run_ok_stdout(verify(&out.join(file), Some(&out.join("manifest.json"))));
        assert!(
            text.contains("VM disk") && text.contains("verified"),
            "{text}"
        );
    }
    let m = manifest(&out);
    assert_eq!(
        m["outputs"]["tiny.vmdk"].as_str().unwrap(),
        sha256_file(&out.join("tiny.vmdk"))
    );

    // --format replaces the recipe's list; raw is always kept. The same
    // inputs give the same qcow2 and VMDK.
    let again = build(&fx, all, "out2", &["--format", "qcow2", "--format", "vmdk"]);
    let names = outputs(&again);
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "manifest.json",
            "tiny.qcow2",
            "tiny.raw",
            "tiny.vmdk"
        ]
    );
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&again)
            .output()
            .unwrap(),
    );
    for f in ["tiny.raw", "tiny.qcow2", "tiny.vmdk"] {
        assert_eq!(
            sha256_file(&out.join(f)),
            sha256_file(&again.join(f)),
            "{f} is not reproducible"
        );
    }
}

#[test]
fn missing_qemu_img_names_the_package_before_building() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    let o = airlock()
        .env("PATH", "/nonexistent")
        .arg("build")
        .arg(&recipe)
        .args(["--format", "vhdx", "--out"])
        .arg(fx.path("out"))
        .output()
        .unwrap();
    let err = run_err(o);
    assert!(
        err.contains("qemu-img was not found")
            && err.contains("qemu-utils (Debian) or qemu-img (Fedora)"),
        "{err}"
    );
    assert!(!fx.path("out").exists());
    let bad = fx.write_recipe(
        &fx.recipe_text()
            .replace("[disk]\n", "[disk]\nformats = [\"vdi\"]\n"),
    );
    let err = run_err(fx.build(&bad, "out"));
    assert!(err.contains("recipe.toml:") && err.contains("vdi"), "{err}");
}

#[test]
fn verify_checks_the_block_map_beside_the_image() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let out = build(&fx, |t| t, "out", &[]);
    let map = airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap();
    for image in ["tiny.raw", "tiny.raw.zst"] {
        let o = airlock()
            .args(["verify", "--json"])
            .arg(out.join(image))
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_str(&run_ok_stdout(o)).unwrap();
        assert_eq!(
            j["bmap"].as_str().unwrap(),
            out.join("tiny.bmap").to_str().unwrap(),
            "{image}: {j}"
        );
        assert!(
            j["passed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["check"] == "block map"),
            "{image}: {j}"
        );
    }

    // A copy with its map, one byte changed inside a mapped range that no
    // file covers (the zeros after the partition table).
    let copy = fx.path("copy");
    fs::create_dir(&copy).unwrap();
    fs::copy(out.join("tiny.raw"), copy.join("tiny.raw")).unwrap();
    fs::copy(out.join("tiny.bmap"), copy.join("tiny.bmap")).unwrap();
    let at = 600 * 1024 + 5;
    let bad = map
        .ranges
        .iter()
        .find(|r| {
            let (s, l) = map.bytes(r);
            s <= at && at < s + l
        })
        .expect("a mapped byte");
    flip(&copy.join("tiny.raw"), at);
    let o = verify(&copy.join("tiny.raw"), Some(&out.join("manifest.json")));
    let text = stdout(&o);
    run_err(o);
    let (s, l) = map.bytes(bad);
    assert!(
        text.contains(&format!(
            "FAILED   block map {}: blocks {}-{} (bytes {s} to {}, in the partition table and \
             partition 1 (ESP)) have sha256 ",
            copy.join("tiny.bmap").display(),
            bad.first,
            bad.last,
            s + l
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("the map says {}", bad.sha256)),
        "{text}"
    );
    // Files are still checked, and pass: only the map saw this byte (and
    // the image's digest).
    assert!(text.contains("ok       root files"), "{text}");
    assert!(text.contains("\n2 differences\n"), "{text}");
}

/// `verify --json` of `image` with extra arguments: (exit ok, stdout JSON).
fn verify_json(image: &Path, args: &[&std::ffi::OsStr]) -> (bool, serde_json::Value) {
    let o = airlock()
        .args(["verify", "--json"])
        .arg(image)
        .args(args)
        .output()
        .unwrap();
    let j = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.success(), j)
}

#[test]
fn a_planted_base_file_on_a_written_stick_is_caught_by_the_map_beside_the_manifest() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let out = build(&fx, |t| t, "out", &[]);
    let m = manifest(&out);
    let (root_off, root_len) = partition(&m, "root");
    let manifest_json = out.join("manifest.json");
    // A stick twice the image's size: `write` moves the backup GPT to its end.
    let stick = fx.path("stick.img");
    fs::File::create(&stick)
        .unwrap()
        .set_len(2 * fs::metadata(out.join("tiny.raw")).unwrap().len())
        .unwrap();
    run_ok(
        airlock()
            .arg("write")
            .arg(out.join("tiny.raw"))
            .arg(&stick)
            .arg("--yes")
            .output()
            .unwrap(),
    );
    let with_manifest = [
        std::ffi::OsStr::new("--manifest"),
        manifest_json.as_os_str(),
    ];
    let (ok, j) = verify_json(&stick, &with_manifest);
    assert!(ok, "{j}");
    assert_eq!(j["bmap"].as_str(), out.join("tiny.bmap").to_str(), "{j}");
    assert_eq!(j["coverage"], "all-mapped-blocks", "{j}");

    // A base file (not one airlock placed) rewritten in place.
    let at = find_once(&stick, root_off, root_len, b"\x7fELF ping");
    flip(&stick, at + 1);
    let o = verify(&stick, Some(&manifest_json));
    let text = stdout(&o);
    run_err(o);
    assert!(text.contains("FAILED   block map "), "{text}");
    assert!(text.contains(" partition 2 (root)) have sha256"), "{text}");
    assert!(
        text.contains("the device was booted or altered since it was written"),
        "{text}"
    );
    assert!(text.contains("ok       root files"), "{text}");
    flip(&stick, at + 1);
    assert!(verify_json(&stick, &with_manifest).0);

    // A new file planted in the root filesystem with debugfs.
    let part = fx.path("root.img");
    extract_range(&stick, root_off, root_len, &part);
    let payload = fx.path("payload");
    fs::write(&payload, "* * * * * root /bin/sh -c evil\n").unwrap();
    run_ok(
        Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} /etc/backdoor", payload.display()))
            .arg(&part)
            .output()
            .unwrap(),
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&stick)
        .unwrap()
        .write_all_at(&fs::read(&part).unwrap(), root_off)
        .unwrap();
    let (ok, j) = verify_json(&stick, &with_manifest);
    assert!(!ok, "{j}");
    assert!(
        j["failures"][0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("block map "),
        "{j}"
    );

    // Without a block map the check is weaker, and says so.
    let alone = fx.path("alone");
    fs::create_dir(&alone).unwrap();
    fs::copy(&manifest_json, alone.join("manifest.json")).unwrap();
    let o = verify(&stick, Some(&alone.join("manifest.json")));
    let text = stdout(&o);
    run_ok(o);
    assert!(
        text.contains("the base's own files were NOT checked"),
        "{text}"
    );
    assert!(!text.contains("the image matches its manifest"), "{text}");
    let alone_manifest = alone.join("manifest.json");
    let (ok, j) = verify_json(
        &stick,
        &[
            std::ffi::OsStr::new("--manifest"),
            alone_manifest.as_os_str(),
        ],
    );
    assert!(ok && j["bmap"].is_null(), "{j}");
    assert_eq!(j["coverage"], "placed-files-only", "{j}");
    // --bmap names the map; one the manifest does not list is refused.
    let map = out.join("tiny.bmap");
    let (ok, _) = verify_json(
        &stick,
        &[
            std::ffi::OsStr::new("--manifest"),
            alone_manifest.as_os_str(),
            std::ffi::OsStr::new("--bmap"),
            map.as_os_str(),
        ],
    );
    assert!(!ok);
    let forged = fx.path("forged.bmap");
    let bar = indicatif::ProgressBar::hidden();
    fs::write(
        &forged,
        airlock::bmap::create(&stick, &bar).unwrap().to_xml(),
    )
    .unwrap();
    let (ok, j) = verify_json(
        &stick,
        &[
            std::ffi::OsStr::new("--manifest"),
            alone_manifest.as_os_str(),
            std::ffi::OsStr::new("--bmap"),
            forged.as_os_str(),
        ],
    );
    assert!(!ok, "{j}");
    assert!(
        j.to_string()
            .contains("it is not the block map of this build"),
        "{j}"
    );
}

#[test]
fn a_dd_written_stick_is_read_and_junk_is_named_as_not_a_disk() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let out = build(&fx, |t| t, "out", &[]);
    // Plain dd onto a stick twice the image's size: the backup GPT stays
    // in the middle.
    let stick = fx.path("dd.img");
    fs::copy(out.join("tiny.raw"), &stick).unwrap();
    let size = fs::metadata(&stick).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&stick)
        .unwrap()
        .set_len(2 * size)
        .unwrap();
    let text = run_ok_stdout(inspect(&[], &stick));
    assert!(text.contains("Boot "), "{text}");
    assert!(
        text.contains("the image was written with plain dd onto a larger disk")
            && text.contains("sgdisk -e"),
        "{text}"
    );
    let o = verify(&stick, Some(&out.join("manifest.json")));
    let text = stdout(&o);
    run_ok(o);
    assert!(
        text.contains("note:     the backup GPT is at sector"),
        "{text}"
    );
    assert!(text.contains("ok       block map"), "{text}");

    // An empty file and one of random bytes are not disk images.
    let empty = fx.path("empty.raw");
    fs::write(&empty, b"").unwrap();
    let junk = fx.path("junk.raw");
    let bytes: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&junk, &bytes).unwrap();
    for (file, why) in [
        (&empty, "it is empty"),
        (&junk, "it has neither a protective MBR nor a GPT header"),
    ] {
        let want = format!("{} is not a disk image: {why}", file.display());
        let err = run_err(verify(file, None));
        assert!(err.contains(&want), "{err}");
        assert!(!err.contains("no readable manifest"), "{err}");
        let err = run_err(inspect(&[], file));
        assert!(err.contains(&want), "{err}");
    }
}

#[test]
fn overlapping_partitions_fail_verify_and_warn_in_inspect() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let out = build(&fx, |t| t, "out", &[]);
    let crafted = fx.path("overlap.raw");
    fs::copy(out.join("tiny.raw"), &crafted).unwrap();
    // The root partition now starts 8 sectors inside the ESP, in both
    // copies of the table, with their CRCs made right again (gptman and
    // sgdisk refuse to write this).
    let esp_end = {
        let (s, l) = partition(&manifest(&out), "esp");
        s + l
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&crafted)
        .unwrap();
    let last = fs::metadata(&crafted).unwrap().len() / 512 - 1;
    for header_lba in [1, last] {
        let mut h = [0u8; 92];
        f.read_exact_at(&mut h, header_lba * 512).unwrap();
        let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
        let count = u32::from_le_bytes(h[80..84].try_into().unwrap()) as usize;
        let mut e = vec![0u8; count * 128];
        f.read_exact_at(&mut e, entries_lba * 512).unwrap();
        e[128 + 32..128 + 40].copy_from_slice(&(esp_end / 512 - 8).to_le_bytes());
        f.write_all_at(&e, entries_lba * 512).unwrap();
        h[88..92].copy_from_slice(&crc32fast::hash(&e).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&h, header_lba * 512).unwrap();
    }
    drop(f);
    let o = verify(&crafted, Some(&out.join("manifest.json")));
    let text = stdout(&o);
    run_err(o);
    let want = format!(
        "partitions 1 (ESP) and 2 (root) overlap in bytes {} to {esp_end}",
        esp_end - 8 * 512
    );
    assert!(
        text.contains(&format!("FAILED   partition table: {want}")),
        "{text}"
    );
    let o = inspect(&[], &crafted);
    let text = stdout(&o);
    assert!(text.contains(&format!("WARNING: {want}")), "{text}");
}

/// A control-plane node image built from small made-up inputs (the
/// minimal recipe of builder/tests/kube.rs, every image in one OCI
/// archive): (fixture, output folder).
fn node_image() -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    let p = |s: &str| fx.path(s);
    let mut base = base_entries();
    for (path, body, mode) in [
        ("usr/sbin/iptables", &b"#!/bin/sh\n"[..], 0o755),
        ("usr/sbin/modprobe", b"#!/bin/sh\n", 0o755),
        ("usr/sbin/conntrack", b"#!/bin/sh\n", 0o755),
        ("usr/bin/mount", b"#!/bin/sh\n", 0o755),
        (
            "usr/lib/modules/6.1.0-28-amd64/modules.builtin",
            b"kernel/fs/overlayfs/overlay.ko\n",
            0o644,
        ),
        (
            "usr/lib/modules/6.1.0-28-amd64/kernel/net/bridge/br_netfilter.ko",
            b"\x7fELF module",
            0o644,
        ),
    ] {
        base.push(Entry::File(path, body, mode, 0, 0));
    }
    tarball(&p("node-base.tar"), &base);
    for b in ["kubeadm", "kubelet", "kubectl"] {
        fs::write(p(b), format!("#!/bin/sh\necho {b} stand-in\n")).unwrap();
    }
    let gz = |name: &str, entries: &[Entry]| {
        let plain = p(&format!("{name}.plain"));
        tarball(&plain, entries);
        fs::write(p(name), oci::gzip(&fs::read(&plain).unwrap())).unwrap();
    };
    gz(
        "containerd.tar.gz",
        &[
            Entry::Dir("bin", 0o755),
            Entry::File("bin/containerd", b"containerd", 0o755, 0, 0),
            Entry::File("bin/containerd-shim-runc-v2", b"shim", 0o755, 0, 0),
            Entry::File("bin/ctr", b"ctr", 0o755, 0, 0),
        ],
    );
    fs::write(p("runc.amd64"), b"runc").unwrap();
    gz(
        "crictl.tar.gz",
        &[Entry::File("crictl", b"crictl", 0o755, 0, 0)],
    );
    gz(
        "cni-plugins.tgz",
        &[
            Entry::Dir("./", 0o755),
            Entry::File("./loopback", b"loopback", 0o755, 0, 0),
            Entry::File("./bridge", b"bridge", 0o755, 0, 0),
            Entry::File("./portmap", b"portmap", 0o755, 0, 0),
        ],
    );
    fs::write(
        p("kube-flannel.yml"),
        r#"---
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  net-conf.json: |
    { "Network": "10.244.0.0/16", "Backend": { "Type": "vxlan" } }
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
spec:
  template:
    spec:
      initContainers:
      - name: install-cni-plugin
        image: ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3
      containers:
      - name: kube-flannel
        image: ghcr.io/flannel-io/flannel:v0.28.9
"#,
    )
    .unwrap();
    fs::write(
        p("images.tar.gz"),
        oci::gzip(&oci::oci_layout(NODE_IMAGES, "linux/amd64")),
    )
    .unwrap();
    let pin = |f: &str| {
        format!(
            "{{ source = \"{f}\", sha256 = \"{}\" }}",
            sha256_file(&p(f))
        )
    };
    let recipe = format!(
        r#"name = "cp"
epoch = 1700000000

[base]
path = "node-base.tar"
sha256 = "{base}"

[kubernetes]
version = "1.34.11"
kubeadm = {kubeadm}
kubelet = {kubelet}
kubectl = {kubectl}

[containerd]
version = "2.1.9"
release = {containerd}
runc = {runc}
crictl = {crictl}
cni_plugins = {cni_plugins}

[cni]
manifest = {manifest}

[[image]]
source = "images.tar.gz"
sha256 = "{images}"

[cluster]
name = "prod"
control_plane_endpoint = "10.0.0.10:6443"

[host]
ntp = []

[disk]
size = "512MiB"
esp_size = "40MiB"

[node]
hostname = "cp-1"
advertise_address = "10.0.0.10"
"#,
        base = sha256_file(&p("node-base.tar")),
        kubeadm = pin("kubeadm"),
        kubelet = pin("kubelet"),
        kubectl = pin("kubectl"),
        containerd = pin("containerd.tar.gz"),
        runc = pin("runc.amd64"),
        crictl = pin("crictl.tar.gz"),
        cni_plugins = pin("cni-plugins.tgz"),
        manifest = pin("kube-flannel.yml"),
        images = sha256_file(&p("images.tar.gz")),
    );
    let recipe = fx.write_recipe(&recipe);
    let out = fx.path("out");
    run_ok(
        airlock()
            .arg("build")
            .arg(&recipe)
            .arg("--out")
            .arg(&out)
            .arg("--cache")
            .arg(fx.path("cache"))
            .args(["--format", "raw.zst"])
            .output()
            .unwrap(),
    );
    (fx, out)
}

/// Every image the control plane and flannel need, for 1.34.11.
const NODE_IMAGES: &[&str] = &[
    "registry.k8s.io/kube-apiserver:v1.34.11",
    "registry.k8s.io/kube-controller-manager:v1.34.11",
    "registry.k8s.io/kube-scheduler:v1.34.11",
    "registry.k8s.io/kube-proxy:v1.34.11",
    "registry.k8s.io/coredns/coredns:v1.12.1",
    "registry.k8s.io/pause:3.10.1",
    "registry.k8s.io/etcd:3.6.5-0",
    "ghcr.io/flannel-io/flannel:v0.28.9",
    "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
];

/// Asserts that `inspect` (text and JSON) says what the node recipe put in.
fn assert_node_inspect(text: &str, j: &serde_json::Value) {
    for want in [
        "Hostname    cp-1\n",
        "Kubernetes  version: 1.34.11\n",
        "            kubeadm_api: kubeadm.k8s.io/v1beta4\n",
        "Containerd  version: 2.1.9\n",
        "            source: release\n",
        "Node        name: cp-1\n",
        "            role: init (the first control plane: kubeadm init)\n",
        "            control_plane_endpoint: 10.0.0.10:6443\n",
        "Secrets     bootstrap-token\n            ca.crt\n            ca.key\n",
        "airlock-images.service (wanted by multi-user.target)\n",
        "airlock-kubeadm.service (wanted by multi-user.target)\n",
        "kernel 6.1.0-28-amd64",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let mut images: Vec<&str> = NODE_IMAGES.to_vec();
    images.sort();
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Images "))
        .take(images.len())
        .map(|l| l.trim_start_matches("Images").trim())
        .collect();
    assert_eq!(listed, images, "{text}");

    assert_eq!(j["kubernetes"]["version"], "1.34.11", "{j}");
    assert_eq!(j["containerd"]["version"], "2.1.9", "{j}");
    assert_eq!(j["images"], serde_json::json!(images), "{j}");
    assert_eq!(j["node"]["role"], "init", "{j}");
    assert_eq!(j["node"]["name"], "cp-1", "{j}");
    assert_eq!(
        j["secrets"],
        serde_json::json!(["bootstrap-token", "ca.crt", "ca.key"]),
        "{j}"
    );
    let units: Vec<&str> = j["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    for u in [
        "airlock-images.service",
        "airlock-kubeadm.service",
        "kubelet.service",
    ] {
        assert!(units.contains(&u), "{u} not in {units:?}");
    }
    assert_eq!(j["problems"], serde_json::json!([]), "{j}");
}

#[test]
fn inspect_and_verify_a_node_image_as_an_ordinary_user() {
    if !tools() || !have("setpriv") {
        return;
    }
    let (_fx, out) = node_image();
    // World-readable copies, where nobody (uid 65534) can read them.
    let shared = tempfile::Builder::new()
        .prefix("airlock-media-")
        .tempdir_in("/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for f in [
        "cp.raw",
        "cp.raw.zst",
        "cp.bmap",
        "manifest.json",
        "SHA256SUMS",
    ] {
        let to = shared.path().join(f);
        fs::copy(out.join(f), &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let nobody = |args: &[&str], image: &str| {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .arg(shared.path().join(image))
            .env("TMPDIR", "/tmp")
            .current_dir("/")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            o.status.success(),
            "airlock {args:?} {image} as nobody: {stderr}\n{stdout}"
        );
        stdout
    };
    for image in ["cp.raw", "cp.raw.zst"] {
        let text = nobody(&["inspect"], image);
        let j: serde_json::Value =
            serde_json::from_str(&nobody(&["inspect", "--json"], image)).unwrap();
        assert_node_inspect(&text, &j);
        let v = nobody(&["verify"], image);
        assert!(v.contains("(beside the image)"), "{image}: {v}");
        assert!(v.contains("ok       image sha256"), "{image}: {v}");
        assert!(v.contains("ok       block map"), "{image}: {v}");
        assert!(
            v.contains("verified: every mapped block and every listed file match the build"),
            "{image}: {v}"
        );
        // One file of the image, read without mounting it.
        let hostname = nobody(&["inspect", "--cat", "/etc/hostname"], image);
        assert_eq!(hostname.trim(), "cp-1");
    }
}

/// A `qemu-img` first on PATH that logs its arguments to `log` and hands
/// them to the real one, except that `check` fails when `fail_check`.
fn qemu_img_wrapper(fx: &Fixture, fail_check: bool) -> (PathBuf, PathBuf) {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v qemu-img"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let dir = fx.path(if fail_check { "bin-fail" } else { "bin" });
    fs::create_dir_all(&dir).unwrap();
    let log = dir.join("qemu-img.log");
    let fail = if fail_check {
        "if [ \"$1\" = check ]; then echo 'Leaked cluster 9 refcount=1 reference=0' >&2; exit 3; fi\n"
    } else {
        ""
    };
    let script = dir.join("qemu-img");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\n{fail}exec '{real}' \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    (PathBuf::from(path), log)
}

#[test]
fn every_converted_disk_is_checked_by_qemu_img() {
    if !(tools() && have("qemu-img")) {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    let build = |path: &Path, out: &str| {
        airlock()
            .env("PATH", path)
            .arg("build")
            .arg(&recipe)
            .args(["--format", "qcow2", "--format", "vmdk", "--format", "vhdx"])
            .arg("--out")
            .arg(fx.path(out))
            .arg("--cache")
            .arg(fx.path("cache"))
            .output()
            .unwrap()
    };
    let (path, log) = qemu_img_wrapper(&fx, false);
    run_ok(build(&path, "out"));
    let calls = fs::read_to_string(&log).unwrap();
    for (format, file) in [
        ("qcow2", "tiny.qcow2"),
        ("vmdk", "tiny.vmdk"),
        ("vhdx", "tiny.vhdx"),
    ] {
        let checked: Vec<&str> = calls
            .lines()
            .filter(|l| l.starts_with(&format!("check -q -f {format} ")))
            .collect();
        assert_eq!(checked.len(), 1, "{format}: {calls}");
        // The file checked is the one that was converted (and then renamed
        // to its final name).
        let converted = calls
            .lines()
            .find(|l| l.starts_with("convert ") && l.contains(&format!("-O {format} ")))
            .unwrap_or_else(|| panic!("{format} not converted: {calls}"));
        let target = converted.rsplit(' ').next().unwrap();
        assert!(checked[0].ends_with(&format!(" {target}")), "{calls}");
        assert!(fx.path("out").join(file).is_file());
    }

    // A check that fails stops the build, says which file and why, and
    // leaves no output folder behind.
    let (path, _) = qemu_img_wrapper(&fx, true);
    let err = run_err(build(&path, "bad"));
    assert!(
        err.contains("with qemu-img check") && err.contains("tiny.qcow2"),
        "{err}"
    );
    assert!(err.contains("Leaked cluster 9"), "{err}");
    assert!(
        !fx.path("bad").exists(),
        "a failed build left {:?}",
        fs::read_dir(fx.path("bad")).map(|d| d.count())
    );
}

/// The demo image written by `airlock write` to a stick twice its size
/// that held another disk's partition table: the stick's GPT is whole and
/// the stick boots to the demo's first-boot report.
#[test]
fn a_written_demo_image_boots_from_a_stick_twice_its_size() {
    if !(tools() && have("qemu-system-x86_64") && have("sgdisk")) {
        return;
    }
    let Some(base) = debian_base() else { return };
    let dir = tempfile::tempdir_in(repo().join("out")).unwrap();
    let d = dir.path();
    let out = d.join("demo");
    run_ok(
        airlock()
            .arg("build")
            .arg(demo_recipe(d, &base))
            .args(["--format", "raw", "--out"])
            .arg(&out)
            .arg("--cache")
            .arg(repo().join("out/cache"))
            .output()
            .unwrap(),
    );
    let raw = out.join("demo.raw");
    let size = fs::metadata(&raw).unwrap().len();
    let stick = d.join("stick.img");
    fs::File::create(&stick).unwrap().set_len(2 * size).unwrap();
    run_ok(
        Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+64M"])
            .arg(&stick)
            .output()
            .unwrap(),
    );
    let o = airlock()
        .args(["write", "--yes", "--json"])
        .arg(&raw)
        .arg(&stick)
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&run_ok_stdout(o)).unwrap();
    assert_eq!(s["verified"], true, "{s}");
    assert_eq!(s["backup_gpt_moved"], true, "{s}");
    assert_eq!(s["device_size"], 2 * size, "{s}");
    let v = run_ok(
        Command::new("sgdisk")
            .arg("-v")
            .arg(&stick)
            .output()
            .unwrap(),
    );
    assert!(v.contains("No problems found"), "{v}");

    let log = d.join("stick.log");
    let o = airlock()
        .arg("boot")
        .arg(&stick)
        .args([
            "--timeout",
            "900",
            "--until",
            "AIRLOCK-DEMO-FIRSTBOOT-OK",
            "--log",
        ])
        .arg(&log)
        .output()
        .unwrap();
    let console = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        o.status.success(),
        "boot failed: {}\n--- console ---\n{console}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(console.contains("AIRLOCK-DEMO-FIRSTBOOT-OK"), "{console}");
}
