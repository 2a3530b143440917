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
    let ext = root_fs(&raw, &m);
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

/// What a recipe sets by hand wins over what airlock derives: the disk GUID,
/// the root filesystem UUID and a password hash; the manifest records the
/// airlock version and both PARTUUIDs, and file capabilities keep their
/// exact bytes.
#[test]
fn recipe_set_identities_password_and_manifest() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let disk_guid = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let fs_uuid = "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9";
    let hash = "$y$j9T$abcdefghijklmnopqrstu.$ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg";
    let text = fx
        .recipe_text()
        .replace(
            "esp_size = \"40MiB\"\n",
            &format!(
                "esp_size = \"40MiB\"\ndisk_guid = \"{disk_guid}\"\nroot_fs_uuid = \"{fs_uuid}\"\n"
            ),
        )
        .replace(
            "name = \"ops\"\n",
            &format!("name = \"ops\"\npassword_hash = \"{hash}\"\n"),
        );
    let recipe = fx.write_recipe(&text);
    run_ok(fx.build(&recipe, "out"));
    let out = fx.path("out");
    let raw = out.join("tiny.raw");
    let m = manifest(&out);

    let p = run_ok(Command::new("sgdisk").arg("-p").arg(&raw).output().unwrap());
    assert!(
        p.contains(&format!(
            "Disk identifier (GUID): {}",
            disk_guid.to_uppercase()
        )),
        "{p}"
    );
    assert_eq!(m["root_fs"]["uuid"], fs_uuid);
    let ext = root_fs(&raw, &m);
    assert_eq!(ext.uuid().to_string(), fs_uuid);
    assert!(ext
        .read_to_string("/etc/fstab")
        .unwrap()
        .contains(&format!("UUID={fs_uuid} /")));
    let shadow = ext.read_to_string("/etc/shadow").unwrap();
    assert!(shadow.contains(&format!("ops:{hash}:")), "{shadow}");

    assert_eq!(m["airlock_version"], env!("CARGO_PKG_VERSION"));
    for (n, part) in [(1, "esp"), (2, "root")] {
        let info = run_ok(
            Command::new("sgdisk")
                .args(["-i", &n.to_string()])
                .arg(&raw)
                .output()
                .unwrap(),
        );
        let uuid = m["disk"][part]["uuid"].as_str().unwrap().to_uppercase();
        assert!(
            info.contains(&format!("Partition unique GUID: {uuid}")),
            "{part}: {info}"
        );
    }

    // The capability's value, not just its name, as the tar header had it.
    let rootimg = fx.path("root.img");
    let (off, len) = partition(&m, "root");
    extract_range(&raw, off, len, &rootimg);
    let cap = fx.path("cap.bin");
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!(
                "ea_get -f {} /usr/bin/ping security.capability",
                cap.display()
            ))
            .arg(&rootimg)
            .output()
            .unwrap(),
    );
    assert_eq!(fs::read(&cap).unwrap(), CAP_NET_BIND);
}

/// SOURCE_DATE_EPOCH from the environment wins over the recipe's epoch, and
/// two builds with the same value are byte-identical.
#[test]
fn same_source_date_epoch_same_bytes() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    let build = |out: &str| {
        run_ok(
            airlock()
                .env("SOURCE_DATE_EPOCH", "1650000000")
                .arg("build")
                .arg(&recipe)
                .arg("--out")
                .arg(fx.path(out))
                .arg("--cache")
                .arg(fx.path(out).with_extension("cache"))
                .output()
                .unwrap(),
        );
        sha256_file(&fx.path(out).join("tiny.raw"))
    };
    let a = build("a");
    let b = build("b");
    assert_eq!(a, b, "same inputs and SOURCE_DATE_EPOCH, different images");
    // Timestamps are clamped to the epoch: the base's files (1600000000)
    // keep theirs, what airlock writes gets the epoch.
    let m = manifest(&fx.path("a"));
    let (off, len) = partition(&m, "root");
    let rootimg = fx.path("root.img");
    extract_range(&fx.path("a/tiny.raw"), off, len, &rootimg);
    let mtime = |path: &str| {
        let st = run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat {path}"))
                .arg(&rootimg)
                .output()
                .unwrap(),
        );
        let hex = st
            .split("mtime: 0x")
            .nth(1)
            .unwrap_or_else(|| panic!("{st}"))
            .split([':', ' '])
            .next()
            .unwrap()
            .to_string();
        i64::from_str_radix(&hex, 16).unwrap()
    };
    assert_eq!(mtime("/etc/motd"), 1650000000, "written by airlock");
    assert_eq!(mtime("/usr/bin/setuid-tool"), 1600000000, "from the base");
}

/// An absolute symlink in the base that names a folder of the build host
/// is followed inside the image: the recipe's file lands in the image, and
/// the host folder stays untouched.
#[test]
fn absolute_base_symlink_to_a_host_folder_stays_in_the_image() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let host = fx.path("host-srv");
    fs::create_dir_all(&host).unwrap();
    let host_str = host.to_str().unwrap().to_string();
    let text = with_base(
        &fx,
        vec![Entry::Symlink(
            "srv",
            Box::leak(host_str.clone().into_boxed_str()),
        )],
    )
    .replace("path = \"/opt/tool/bin/tool\"", "path = \"/srv/tool\"");
    let recipe = fx.write_recipe(&text);
    run_ok(fx.build(&recipe, "out"));
    assert_eq!(
        fs::read_dir(&host).unwrap().count(),
        0,
        "the build wrote into the host's {host_str}"
    );
    let ext = root_fs(&fx.path("out/tiny.raw"), &manifest(&fx.path("out")));
    assert_eq!(
        ext.read(format!("{host_str}/tool").as_str()).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    assert_eq!(
        ext.read_link("/srv").unwrap().to_str().unwrap(),
        host_str,
        "the base's link itself is kept"
    );
}

/// A build host without mke2fs: the error names the package to install and
/// nothing is left behind. mke2fs is hidden in a private mount namespace.
#[test]
fn missing_mke2fs_names_e2fsprogs() {
    if !tools() || !have("unshare") {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    let script = format!(
        "for p in /usr/sbin/mke2fs /sbin/mke2fs /usr/bin/mke2fs /bin/mke2fs; do \
           [ -e \"$p\" ] && mount --bind /dev/null \"$p\"; \
         done; exec {} build {} --out {} --cache {}",
        env!("CARGO_BIN_EXE_airlock"),
        recipe.display(),
        fx.path("out").display(),
        fx.path("cache").display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = run_err(o);
    assert!(
        err.contains("mke2fs") && err.contains("install e2fsprogs"),
        "{err}"
    );
    assert!(!fx.path("out").exists(), "output left behind");
}

/// Ctrl-C during a build: the programs airlock started are killed, the exit
/// status is 130, no file has a final name, and the next build removes the
/// temporary folder the interrupted one left.
#[test]
fn interrupted_build_leaves_no_final_names() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    // A stand-in mke2fs on PATH that records its pid and hangs, so the
    // signal arrives at a known point of the build.
    let bin = fx.path("slowbin");
    fs::create_dir_all(&bin).unwrap();
    let mark = fx.path("mke2fs.pid");
    fs::write(
        bin.join("mke2fs"),
        format!("#!/bin/sh\necho $$ > {}\nexec sleep 120\n", mark.display()),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(bin.join("mke2fs"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = fx.path("out");
    let child = airlock()
        .env("PATH", path)
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(fx.path("cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let pid = loop {
        if let Some(p) = fs::read_to_string(&mark)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break p;
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "the build never reached mke2fs"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    // The hung mke2fs was killed with airlock (a zombie is gone too once
    // reaped by init; a live one would still have a cmdline).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let alive = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
    assert!(!alive, "mke2fs ({pid}) outlived the interrupted build");
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with('.')),
        "final names after an interrupt: {names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with(".airlock-tmp-")));

    run_ok(fx.build(&recipe, "out"));
    let left: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".airlock-tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary folders pile up: {left:?}");
    assert!(out.join("tiny.raw").exists());
}

// --- Recipe validation (hostile-input trial): refused at load, before any
// input is read, with the position of the offending value.

#[test]
fn hostile_recipe_values_are_refused_before_any_input_is_read() {
    let fx = Fixture::new();
    let good = fx.recipe_text();
    let long_name = format!("name = \"{}\"", "n".repeat(300));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            good.replace("mode = \"0750\"", "mode = 750"),
            vec!["recipe.toml:17:8", "decimal", "mode = \"0750\""],
        ),
        (
            good.replace(
                "name = \"ops\"\n",
                "name = \"ops\"\npassword_hash = \"hunter2\"\n",
            ),
            vec!["recipe.toml:43:17", "user ops", "mkpasswd -m yescrypt"],
        ),
        (
            good.replace("path = \"/etc/motd\"", "path = \"/etc/hostname\""),
            vec!["recipe.toml:29:8", "[node] hostname"],
        ),
        (
            good.replace(
                "[node]",
                "[[user]]\nname = \"ops\"\npassword_hash = \"$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0\"\n\n[node]",
            ),
            vec!["recipe.toml:46:8", "already defined at", "recipe.toml:42:8"],
        ),
        (
            good.replace("source = \"tool\"", "source = \"ftp://mirror/tool\""),
            vec!["recipe.toml:14:10", "file.source", "https://, http://, file://"],
        ),
        (
            good.replace("name = \"tiny\"", &long_name),
            vec!["recipe.toml:1:8", "at most 64"],
        ),
        (
            good.replace("epoch = 1700000000", "epoch = 5000000000"),
            vec!["recipe.toml:4:9", "2106"],
        ),
        (
            good.replace("esp_size = \"40MiB\"", "esp_size = \"160MiB\""),
            vec!["recipe.toml:35:8", "disk.size", "too small"],
        ),
        (
            good.replace("cmdline = [\"quiet\"]", "cmdline = [\"quiet\", \"root=/dev/sda2\"]"),
            vec!["recipe.toml:39:21", "root=PARTUUID"],
        ),
    ];
    for (text, words) in cases {
        refused(&fx, &text, &words);
        assert!(
            !fx.path("cache").exists(),
            "an input was read before the recipe was refused: {words:?}"
        );
    }
}

#[test]
fn unit_and_kernel_missing_from_the_image_name_the_recipe_line() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let good = fx.recipe_text();
    refused(
        &fx,
        &good.replace(
            "enable = [\"hello.service\"]",
            "enable = [\"nope.service\"]",
        ),
        &["recipe.toml:32:11", "nope.service", "not in the image"],
    );
    refused(
        &fx,
        &good.replace("[boot]\n", "[boot]\nkernel = \"9.9.9-nope\"\n"),
        &["recipe.toml:39:10", "boot.kernel", "9.9.9-nope"],
    );
}
