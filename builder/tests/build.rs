// SPDX-License-Identifier: Apache-2.0
//! `airlock build` end to end on small inputs made here, with the image
//! read back by independent tools (sgdisk, e2fsck, fsck.fat, debugfs) and
//! by ext4-view.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::*;

fn tools() -> bool {
    is_root()
        && have("mke2fs")
        && have("sgdisk")
        && have("e2fsck")
        && have("fsck.fat")
        && have("debugfs")
}

#[test]
fn builds_a_checkable_reproducible_image() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    let log = run_ok(fx.build(&recipe, "out1"));
    assert!(
        log.contains("booting the newest, 6.1.0-28-amd64"),
        "kernel choice is said: {log}"
    );
    let out = fx.path("out1");
    // Hidden: the lock that keeps two builds out of one folder.
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".airlock.lock")
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "manifest.json",
            "tiny.bmap",
            "tiny.raw",
            "tiny.raw.zst"
        ]
    );

    // SHA256SUMS is what sha256sum -c checks.
    let st = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&out)
        .output()
        .unwrap();
    run_ok(st);

    // The raw image is sparse: far fewer blocks than its size.
    let raw = out.join("tiny.raw");
    let meta = fs::metadata(&raw).unwrap();
    assert_eq!(meta.len(), 160 << 20);
    assert!(
        meta.blocks() * 512 < meta.len() / 2,
        "raw image is not sparse"
    );

    // GPT: valid for sgdisk, types from the Discoverable Partitions Spec,
    // PARTUUIDs as the manifest says.
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&raw).output().unwrap());
    assert!(v.contains("No problems found"), "{v}");
    let m = manifest(&out);
    let p = run_ok(
        Command::new("sgdisk")
            .args(["-i", "2"])
            .arg(&raw)
            .output()
            .unwrap(),
    );
    assert!(p.contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"), "{p}");
    let root_partuuid = m["disk"]["root"]["uuid"].as_str().unwrap().to_uppercase();
    assert!(p.contains(&root_partuuid), "{p}");
    let p1 = run_ok(
        Command::new("sgdisk")
            .args(["-i", "1"])
            .arg(&raw)
            .output()
            .unwrap(),
    );
    assert!(p1.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "{p1}");

    // ESP: clean for fsck.fat, systemd-boot at the removable path, an entry
    // booting root=PARTUUID with the recipe's arguments.
    let (esp_off, esp_len) = partition(&m, "esp");
    assert_eq!(esp_off, 1 << 20, "1 MiB aligned");
    let esp = fx.path("esp.img");
    extract_range(&raw, esp_off, esp_len, &esp);
    run_ok(
        Command::new("fsck.fat")
            .arg("-n")
            .arg(&esp)
            .output()
            .unwrap(),
    );
    let f = fs::File::open(&raw).unwrap();
    let read = |p: &str| airlock::fs::fat::read_file(&f, esp_off, esp_len, p).unwrap();
    assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ fake systemd-boot");
    assert_eq!(read("airlock/6.1.0-28-amd64/linux"), b"MZ fake kernel");
    assert_eq!(read("airlock/6.1.0-28-amd64/initrd"), b"fake initramfs");
    let entry = String::from_utf8(read("loader/entries/tiny-6.1.0-28-amd64.conf")).unwrap();
    let want = format!(
        "options root=PARTUUID={} rw console=tty0 console=ttyS0,115200 quiet",
        root_partuuid.to_lowercase()
    );
    assert!(entry.contains(&want), "{entry}");
    assert!(String::from_utf8(read("loader/loader.conf"))
        .unwrap()
        .contains("default tiny-6.1.0-28-amd64.conf"));

    // Root: clean for e2fsck, UUID as in fstab and the manifest.
    let (root_off, root_len) = partition(&m, "root");
    let rootimg = fx.path("root.img");
    extract_range(&raw, root_off, root_len, &rootimg);
    run_ok(
        Command::new("e2fsck")
            .arg("-fn")
            .arg(&rootimg)
            .output()
            .unwrap(),
    );
    let fs_uuid = m["root_fs"]["uuid"].as_str().unwrap();
    let ext = ext4_view::Ext4::load(Box::new(PartReader {
        file: fs::File::open(&raw).unwrap(),
        offset: root_off,
    }))
    .unwrap();
    let fstab = ext.read_to_string("/etc/fstab").unwrap();
    assert!(fstab.contains(&format!("UUID={fs_uuid} / ext4")), "{fstab}");
    assert_eq!(ext.uuid().to_string(), fs_uuid);

    // The recipe's file went through the base's /opt -> var/opt link, with
    // owner and mode resolved from the image's own accounts.
    let tool = ext.metadata("/var/opt/tool/bin/tool").unwrap();
    assert_eq!(
        (tool.uid(), tool.gid(), tool.mode() & 0o7777),
        (100000, 10, 0o750)
    );
    assert_eq!(
        ext.read("/var/opt/tool/bin/tool").unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    // Archive members, stripped and filtered, root-owned.
    assert_eq!(
        ext.read("/var/opt/cni/bin/bridge").unwrap(),
        b"bridge plugin"
    );
    assert!(!ext.exists("/var/opt/cni/bin/README.md").unwrap());
    assert_eq!(ext.metadata("/var/opt/cni/bin/loopback").unwrap().uid(), 0);
    // Base attributes survive: high uid, setuid, hard link, device node.
    let etcd = ext.metadata("/var/lib/etcd/data").unwrap();
    assert_eq!(
        (etcd.uid(), etcd.gid(), etcd.mode() & 0o7777),
        (100000, 100000, 0o600)
    );
    assert_eq!(
        ext.metadata("/usr/bin/setuid-tool").unwrap().mode() & 0o7777,
        0o4755
    );
    let ls = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg("stat /usr/bin/setuid-alias")
            .arg(&rootimg)
            .output()
            .unwrap(),
    );
    assert!(ls.contains("Links: 2"), "hard link lost: {ls}");
    let dev = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg("stat /dev/null")
            .arg(&rootimg)
            .output()
            .unwrap(),
    );
    assert!(
        dev.contains("Type: character special") && dev.contains("Device major/minor number: 01:03"),
        "{dev}"
    );
    let ea = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg("ea_list /usr/bin/ping")
            .arg(&rootimg)
            .output()
            .unwrap(),
    );
    assert!(ea.contains("security.capability"), "capability lost: {ea}");
    // Template, overlay, enabled unit, hostname.
    assert_eq!(
        ext.read_to_string("/etc/motd").unwrap(),
        "Welcome to node-7 (ship-7)\n"
    );
    assert_eq!(
        ext.read_to_string("/etc/airlock/overlay.txt").unwrap(),
        "from the overlay\n"
    );
    assert_eq!(ext.read_to_string("/etc/hostname").unwrap(), "node-7\n");
    assert_eq!(
        ext.read_link("/etc/systemd/system/multi-user.target.wants/hello.service")
            .unwrap()
            .to_str()
            .unwrap(),
        "/usr/lib/systemd/system/hello.service"
    );
    // No machine identity baked in.
    assert_eq!(
        ext.read_to_string("/etc/machine-id").unwrap(),
        "uninitialized\n"
    );
    assert!(!ext.exists("/etc/ssh/ssh_host_ed25519_key").unwrap());
    // The administrator.
    assert!(ext
        .read_to_string("/etc/passwd")
        .unwrap()
        .contains("ops:x:1000:1000:ops:/home/ops:/bin/sh"));
    let keys = ext.metadata("/home/ops/.ssh/authorized_keys").unwrap();
    assert_eq!((keys.uid(), keys.mode() & 0o777), (1000, 0o600));
    assert!(ext
        .read_to_string("/etc/group")
        .unwrap()
        .contains("wheel:x:10:ops"));

    // Manifest: recipe digest, inputs with digests and destinations, kernel.
    assert_eq!(
        m["recipe"]["sha256"].as_str().unwrap(),
        sha256(fs::read(&recipe).unwrap().as_slice())
    );
    assert_eq!(m["kernel"]["version"], "6.1.0-28-amd64");
    let inputs = m["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 3);
    assert_eq!(inputs[1]["dest"], "/opt/tool/bin/tool");
    assert_eq!(
        inputs[1]["sha256"].as_str().unwrap(),
        sha256_file(&fx.path("tool"))
    );

    // The .zst decompresses to the .raw.
    let z = zstd::decode_all(fs::File::open(out.join("tiny.raw.zst")).unwrap()).unwrap();
    assert_eq!(sha256(&z), sha256_file(&raw));

    // Same inputs, second build: byte-identical raw image (cache hit too).
    run_ok(fx.build(&recipe, "out2"));
    assert_eq!(
        sha256_file(&raw),
        sha256_file(&fx.path("out2/tiny.raw")),
        "builds are not reproducible"
    );

    // A different SOURCE_DATE_EPOCH gives a different image.
    let o = airlock()
        .env("SOURCE_DATE_EPOCH", "1600000000")
        .args(["build", "--json", "--out"])
        .arg(fx.path("out3"))
        .arg("--cache")
        .arg(fx.path("cache"))
        .arg(&recipe)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_ne!(
        json["files"][0]["sha256"].as_str().unwrap(),
        sha256_file(&raw)
    );
}

/// Each hostile input: a clear error and no output folder at all.
fn refused(fx: &Fixture, text: &str, words: &[&str]) {
    let recipe = fx.write_recipe(text);
    let err = run_err(fx.build(&recipe, "bad-out"));
    for w in words {
        assert!(err.contains(w), "error lacks {w:?}: {err}");
    }
    assert!(
        !fx.path("bad-out").exists(),
        "a failed build left output behind"
    );
}

#[test]
fn wrong_sha256_names_file_expected_actual() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let good = sha256_file(&fx.path("tool"));
    let bad = "1".repeat(64);
    let text = fx.recipe_text().replace(&good, &bad);
    refused(&fx, &text, &["recipe.toml:15:10", &bad, &good, "tool"]);
}

#[test]
fn unknown_key_and_missing_template_variable() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    refused(
        &fx,
        &fx.recipe_text()
            .replace("[node]\n", "[node]\nflavor = \"x\"\n"),
        &["recipe.toml:46:1", "flavor"],
    );
    fs::write(
        fx.path("templates/motd.j2"),
        "Welcome\n{{ vars.missing }}\n",
    )
    .unwrap();
    refused(&fx, &fx.recipe_text(), &["motd.j2:2", "undefined"]);
}

fn with_base(fx: &Fixture, extra: Vec<Entry>) -> String {
    let mut entries = base_entries();
    entries.extend(extra);
    tarball(&fx.path("evil.tar"), &entries);
    let good_base = sha256_file(&fx.path("base.tar.gz"));
    fx.recipe_text()
        .replace("base.tar.gz", "evil.tar")
        .replace(&good_base, &sha256_file(&fx.path("evil.tar")))
}

#[test]
fn hostile_tar_entries_fail_naming_the_entry() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let outside = fx.path("outside");
    fs::create_dir_all(&outside).unwrap();
    // The tar crate refuses to write ".." and absolute names itself, so
    // those headers are patched by hand below.
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "symlink escaping",
            vec![Entry::Symlink("etc/escape", "../../../../../../tmp")],
            "etc/escape",
        ),
        (
            "hard link outside",
            vec![Entry::Hardlink("etc/hl", "../outside/x")],
            "etc/hl",
        ),
    ];
    for (case, entries, name) in cases {
        let text = with_base(&fx, entries);
        let recipe = fx.write_recipe(&text);
        let err = run_err(fx.build(&recipe, "bad-out"));
        assert!(err.contains(name), "{case}: {err}");
        assert!(!fx.path("bad-out").exists(), "{case}: output left behind");
    }
    for (case, evil_name) in [
        ("dot-dot", "x/../../../outside/pwned"),
        ("absolute", "/tmp/airlock-pwned"),
    ] {
        let text = with_base(
            &fx,
            vec![Entry::File(
                "PLACEHOLDER-NAME-FOR-PATCHING-XXXXXXXXX",
                b"pwned",
                0o644,
                0,
                0,
            )],
        );
        let mut bytes = fs::read(fx.path("evil.tar")).unwrap();
        patch_name(
            &mut bytes,
            "PLACEHOLDER-NAME-FOR-PATCHING-XXXXXXXXX",
            evil_name,
        );
        fs::write(fx.path("evil.tar"), &bytes).unwrap();
        let text = text.replace(
            &text[text.find("sha256 = \"").unwrap() + 10..][..64].to_string(),
            &sha256(&bytes),
        );
        let recipe = fx.write_recipe(&text);
        let err = run_err(fx.build(&recipe, "bad-out"));
        assert!(
            err.contains(evil_name.trim_start_matches('/')) || err.contains(evil_name),
            "{case}: {err}"
        );
        assert!(
            !outside.join("pwned").exists() && !std::path::Path::new("/tmp/airlock-pwned").exists(),
            "{case}: wrote outside"
        );
    }
}

/// Renames a tar member in place and fixes the header checksum.
fn patch_name(tar: &mut [u8], from: &str, to: &str) {
    let pos = tar
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap();
    let hdr = pos - pos % 512;
    tar[hdr..hdr + 100].fill(0);
    tar[hdr..hdr + to.len()].copy_from_slice(to.as_bytes());
    tar[hdr + 148..hdr + 156].fill(b' ');
    let sum: u32 = tar[hdr..hdr + 512].iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    tar[hdr + 148..hdr + 156].copy_from_slice(s.as_bytes());
}

#[test]
fn base_without_kernel_is_refused() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let entries: Vec<Entry> = base_entries()
        .into_iter()
        .filter(|e| !matches!(e, Entry::File(p, ..) if p.starts_with("boot/")))
        .collect();
    tarball(&fx.path("nokernel.tar"), &entries);
    let text = fx
        .recipe_text()
        .replace("base.tar.gz", "nokernel.tar")
        .replace(
            &sha256_file(&fx.path("base.tar.gz")),
            &sha256_file(&fx.path("nokernel.tar")),
        );
    refused(&fx, &text, &["no kernel", "/boot/vmlinuz"]);
}

#[test]
fn unpinned_input_uses_the_lock() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let base_sha = sha256_file(&fx.path("base.tar.gz"));
    let text = fx
        .recipe_text()
        .replace(&format!("sha256 = \"{base_sha}\"\n"), "");
    refused(&fx, &text, &["base", "not pinned", "airlock lock"]);
    let recipe = fx.write_recipe(&text);
    run_ok(airlock().arg("lock").arg(&recipe).output().unwrap());
    let lock = fs::read_to_string(fx.path("recipe.toml.lock")).unwrap();
    assert!(lock.contains(&base_sha), "{lock}");
    run_ok(fx.build(&recipe, "out"));
}

#[test]
fn building_without_root_says_so() {
    if !is_root() || !have("setpriv") {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    // The fixture folder must be readable by the unprivileged user.
    Command::new("chmod")
        .arg("755")
        .arg(fx.dir.path())
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_airlock"))
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg("/nonexistent/out")
        .output()
        .unwrap();
    let err = run_err(out);
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
}

#[test]
fn an_overlay_holding_the_output_folder_is_refused() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let text = fx
        .recipe_text()
        .replace("overlays = [\"overlay\"]", "overlays = [\".\"]");
    refused(
        &fx,
        &text,
        &["contains the", "point the overlay at a folder of its own"],
    );
}
