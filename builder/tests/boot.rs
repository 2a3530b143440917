// SPDX-License-Identifier: Apache-2.0
//! Boot tests: the demo recipe on a real Debian bookworm base (kernel,
//! systemd, udev, containerd from Debian packages) built by
//! tests/fixtures/debian-base.sh, turned into an image by `airlock build`
//! and booted by `airlock boot` under QEMU with OVMF, no network.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn boot_tools() -> bool {
    is_root()
        && have("mke2fs")
        && have("qemu-system-x86_64")
        && have("mmdebstrap")
        && have("qemu-img")
        && have("sgdisk")
        && have("fsck.fat")
        && have("e2fsck")
}

/// The real Debian image passes the tools that would be used on it by
/// hand: sgdisk for the GPT, fsck.fat for the ESP, e2fsck for the root.
fn check_with_independent_tools(raw: &Path, m: &serde_json::Value, scratch: &Path) {
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(raw).output().unwrap());
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    for (part, tool, args) in [
        ("esp", "fsck.fat", &["-n"][..]),
        ("root", "e2fsck", &["-fn"][..]),
    ] {
        let (off, len) = partition(m, part);
        let img = scratch.join(format!("{part}.img"));
        extract_range(raw, off, len, &img);
        let o = Command::new(tool).args(args).arg(&img).output().unwrap();
        assert!(
            o.status.success(),
            "{tool} on the {part} partition: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        fs::remove_file(&img).unwrap();
    }
}

/// Boots an image; returns the console text.
fn boot(image: &Path, until: Option<&str>, log: &Path) -> String {
    let mut c = airlock();
    c.arg("boot")
        .arg(image)
        .args(["--timeout", "900", "--log"])
        .arg(log);
    if let Some(u) = until {
        c.args(["--until", u]);
    }
    let out = c.output().unwrap();
    let console = fs::read_to_string(log).unwrap_or_default();
    assert!(
        out.status.success(),
        "boot failed: {}\n--- console ---\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    console
}

/// The `airlock-demo: key=value ...` lines of the first-boot report.
fn report(console: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in console.lines() {
        if let Some(rest) = line.trim_end_matches('\r').split("airlock-demo: ").nth(1) {
            // root-uuid=.. fstab-root=.. share a line
            for kv in rest.split(' ') {
                if let Some((k, v)) = kv.split_once('=') {
                    m.insert(k.to_string(), v.to_string());
                }
            }
            if let Some(v) = rest.strip_prefix("failed-units=") {
                m.insert("failed-units".into(), v.trim().to_string());
            }
        }
    }
    m
}

#[test]
fn demo_image_boots_with_fresh_identity_and_grows() {
    if !boot_tools() {
        return;
    }
    let Some(base) = debian_base() else { return };
    let dir = tempfile::tempdir_in(repo().join("out")).unwrap();
    let d = dir.path();
    let recipe = demo_recipe(d, &base);
    let out = d.join("demo");
    let cache = repo().join("out/cache");
    run_ok(
        airlock()
            .arg("build")
            .arg(&recipe)
            .arg("--out")
            .arg(&out)
            .arg("--cache")
            .arg(&cache)
            .output()
            .unwrap(),
    );
    let m = manifest(&out);
    let fs_uuid = m["root_fs"]["uuid"].as_str().unwrap().to_string();
    let raw = out.join("demo.raw");
    let image_size = fs::metadata(&raw).unwrap().len();
    check_with_independent_tools(&raw, &m, d);

    // Two machines from one build; the second disk is twice as large.
    let a = d.join("a.raw");
    let b = d.join("b.raw");
    for copy in [&a, &b] {
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&raw)
                .arg(copy)
                .output()
                .unwrap(),
        );
    }
    run_ok(
        Command::new("qemu-img")
            .args(["resize", "-f", "raw"])
            .arg(&b)
            .arg((image_size * 2).to_string())
            .output()
            .unwrap(),
    );

    // First boot of A: UEFI with empty variables, the first-boot unit runs,
    // reports and powers the machine off by itself.
    let console_a = boot(&a, None, &d.join("a1.log"));
    assert!(
        console_a.contains("AIRLOCK-DEMO-FIRSTBOOT-OK"),
        "no first-boot marker:\n{console_a}"
    );
    let ra = report(&console_a);
    assert_eq!(ra["uefi"], "yes");
    assert_eq!(ra["hostname"], "airlock-demo");
    assert_eq!(
        ra["root-uuid"], fs_uuid,
        "root not mounted from the image's filesystem"
    );
    assert_eq!(ra["fstab-root"], format!("UUID={fs_uuid}"));
    let mid_a = ra["machine-id"].clone();
    assert!(
        mid_a.len() == 32 && mid_a.chars().all(|c| c.is_ascii_hexdigit()),
        "machine-id {mid_a:?}"
    );
    assert_eq!(
        ra["ssh-host-key"], "yes",
        "SSH host keys are made on first boot"
    );
    assert_eq!(
        ra.get("failed-units").map(String::as_str).unwrap_or(""),
        "",
        "failed units on first boot"
    );

    // First boot of B: its own machine-id, and the root grew into the
    // larger disk (partition by systemd-repart, filesystem by growfs).
    let console_b = boot(&b, None, &d.join("b1.log"));
    let rb = report(&console_b);
    assert_ne!(
        rb["machine-id"], mid_a,
        "two machines from one image share a machine-id"
    );
    let size_a: u64 = ra["root-size"].parse().unwrap();
    let size_b: u64 = rb["root-size"].parse().unwrap();
    assert!(size_a < image_size, "A: {size_a}");
    assert!(
        size_b > image_size,
        "root did not grow: {size_b} on a disk of {}",
        image_size * 2
    );

    // Second boot of A: the first-boot unit does not run again (judged once
    // the unit ordered after it has printed).
    let console_a2 = boot(&a, Some("AIRLOCK-TEST-BOOT-SETTLED"), &d.join("a2.log"));
    assert!(
        !console_a2.contains("AIRLOCK-DEMO-FIRSTBOOT-OK"),
        "first-boot unit ran twice:\n{console_a2}"
    );
    assert!(
        !console_a2.contains("airlock-demo: machine-id"),
        "report ran twice"
    );
}

/// The qcow2 output boots as the raw one does (one boot, guest writes
/// discarded), and the demo image passes verify and inspect.
#[test]
fn demo_qcow2_boots_and_verifies() {
    if !boot_tools() {
        return;
    }
    let Some(base) = debian_base() else { return };
    let dir = tempfile::tempdir_in(repo().join("out")).unwrap();
    let d = dir.path();
    let recipe = demo_recipe(d, &base);
    let out = d.join("demo");
    let cache = repo().join("out/cache");
    run_ok(
        airlock()
            .arg("build")
            .arg(&recipe)
            .args(["--format", "qcow2", "--out"])
            .arg(&out)
            .arg("--cache")
            .arg(&cache)
            .output()
            .unwrap(),
    );
    let qcow2 = out.join("demo.qcow2");
    assert!(
        !out.join("demo.raw.zst").exists(),
        "--format replaces the recipe's formats"
    );

    let verified = run_ok(
        airlock()
            .arg("verify")
            .arg(out.join("demo.raw"))
            .output()
            .unwrap(),
    );
    assert!(
        verified.contains("verified: every mapped block and every listed file match the build"),
        "{verified}"
    );
    let o = airlock()
        .args(["inspect", "--json"])
        .arg(out.join("demo.raw"))
        .output()
        .unwrap();
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", run_ok(o)));
    assert_eq!(j["hostname"], "airlock-demo");
    assert_eq!(j["users"], serde_json::json!(["admin"]));
    let units: Vec<&str> = j["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert!(
        units.contains(&"airlock-demo-firstboot.service"),
        "{units:?}"
    );

    let log = d.join("qcow2.log");
    let o = airlock()
        .arg("boot")
        .arg(&qcow2)
        .args([
            "--snapshot",
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
    // --snapshot: the guest's writes went nowhere.
    assert_eq!(
        sha256_file(&qcow2),
        manifest(&out)["outputs"]["demo.qcow2"].as_str().unwrap()
    );
}
