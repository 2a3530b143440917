// SPDX-License-Identifier: Apache-2.0
//! `airlock write` and the block map, end to end: fixture images built by
//! `airlock build`, written to regular files and loop devices, and checked
//! with bmaptool, sgdisk, e2fsck, fsck.fat, dumpe2fs and debugfs.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn tools() -> bool {
    is_root() && have("mke2fs") && have("sgdisk") && have("e2fsck") && have("fsck.fat")
}

/// A built fixture image: (fixture, its output folder).
fn built() -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    let recipe = fx.write_recipe(&fx.recipe_text());
    run_ok(fx.build(&recipe, "out"));
    let out = fx.path("out");
    (fx, out)
}

fn write(args: &[&str], image: &Path, target: &Path) -> Output {
    airlock()
        .arg("write")
        .arg(image)
        .arg(target)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A file of `len` bytes of 0xAA: a stick's old contents.
fn garbage_file(path: &Path, len: u64) {
    let mut f = File::create(path).unwrap();
    let block = vec![0xaau8; 1 << 20];
    for _ in 0..len >> 20 {
        f.write_all(&block).unwrap();
    }
}

fn image_size(out: &Path) -> u64 {
    fs::metadata(out.join("tiny.raw")).unwrap().len()
}

/// The standard tools' verdict on a written target: GPT, ESP and root.
fn check_target(fx: &Fixture, out: &Path, target: &Path) {
    let v = run_ok(
        Command::new("sgdisk")
            .arg("-v")
            .arg(target)
            .output()
            .unwrap(),
    );
    assert!(v.contains("No problems found"), "{v}");
    let m = manifest(out);
    let (esp_off, esp_len) = partition(&m, "esp");
    let esp = fx.path("esp.check");
    extract_range(target, esp_off, esp_len, &esp);
    run_ok(
        Command::new("fsck.fat")
            .arg("-n")
            .arg(&esp)
            .output()
            .unwrap(),
    );
    let (root_off, root_len) = partition(&m, "root");
    let root = fx.path("root.check");
    extract_range(target, root_off, root_len, &root);
    run_ok(
        Command::new("e2fsck")
            .arg("-fn")
            .arg(&root)
            .output()
            .unwrap(),
    );
}

/// Byte ranges of the root filesystem that ext4 trusts to hold what mke2fs
/// wrote (zeros, mostly): inode tables (dumpe2fs) and the journal
/// (debugfs), relative to the partition.
fn root_metadata(root_img: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let dump = run_ok(Command::new("dumpe2fs").arg(root_img).output().unwrap());
    let re = regex::Regex::new(r"Inode table at (\d+)-(\d+)").unwrap();
    for c in re.captures_iter(&dump) {
        let (a, b): (u64, u64) = (c[1].parse().unwrap(), c[2].parse().unwrap());
        out.push((a * 4096, (b + 1) * 4096));
    }
    let stat = run_ok(
        Command::new("debugfs")
            .args(["-R", "stat <8>"])
            .arg(root_img)
            .output()
            .unwrap(),
    );
    let re = regex::Regex::new(r"\(\d+(?:-\d+)?\):(\d+)(?:-(\d+))?").unwrap();
    for c in re.captures_iter(stat.split("EXTENTS").nth(1).unwrap()) {
        let a: u64 = c[1].parse().unwrap();
        let b: u64 = c.get(2).map_or(a, |m| m.as_str().parse().unwrap());
        out.push((a * 4096, (b + 1) * 4096));
    }
    assert!(out.len() >= 2, "{dump}\n{stat}");
    out
}

/// Asserts that `target` holds the image's bytes in the root's metadata
/// (where a hole-skipping writer would leave 0xAA).
fn assert_root_metadata_written(fx: &Fixture, out: &Path, target: &Path) {
    let (root_off, root_len) = partition(&manifest(out), "root");
    let root = fx.path("root.meta");
    extract_range(&out.join("tiny.raw"), root_off, root_len, &root);
    let img = File::open(out.join("tiny.raw")).unwrap();
    let tgt = File::open(target).unwrap();
    for (s, e) in root_metadata(&root) {
        let mut a = vec![0u8; (e - s) as usize];
        let mut b = vec![0u8; (e - s) as usize];
        img.read_exact_at(&mut a, root_off + s).unwrap();
        tgt.read_exact_at(&mut b, root_off + s).unwrap();
        assert!(
            a == b,
            "root bytes {s}..{e} on the target differ from the image (stale bytes kept?)"
        );
    }
}

#[test]
fn build_writes_a_bmap_bmaptool_copies_and_checks() {
    if !tools() || !have("bmaptool") {
        return;
    }
    let (fx, out) = built();
    run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(&out)
            .output()
            .unwrap(),
    );
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  tiny.bmap\n"), "{sums}");
    let b = airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap();
    assert_eq!(b.image_size, image_size(&out));
    assert!(
        b.mapped_bytes() < b.image_size / 4,
        "mapped {} of {}",
        b.mapped_bytes(),
        b.image_size
    );

    // bmaptool copies with our map and checks every range's sha256 itself
    // (it fails on a mismatch), onto a stick full of old bytes.
    let target = fx.path("bmaptool.target");
    garbage_file(&target, image_size(&out));
    let o = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(out.join("tiny.bmap"))
        .arg(out.join("tiny.raw"))
        .arg(&target)
        .output()
        .unwrap();
    let log = run_ok(o);
    assert!(
        log.contains("checksum") || log.contains("copying time"),
        "{log}"
    );
    check_target(&fx, &out, &target);
    assert_root_metadata_written(&fx, &out, &target);
    // The .raw.zst too, finding tiny.bmap beside it by itself.
    let target = fx.path("bmaptool-zst.target");
    garbage_file(&target, image_size(&out));
    let log = run_ok(
        Command::new("bmaptool")
            .arg("copy")
            .arg(out.join("tiny.raw.zst"))
            .arg(&target)
            .output()
            .unwrap(),
    );
    assert!(log.contains("tiny.bmap"), "{log}");
    check_target(&fx, &out, &target);

    // A damaged range is caught by bmaptool's own check.
    let bad = fx.path("bad.raw");
    fs::copy(out.join("tiny.raw"), &bad).unwrap();
    let r = &b.ranges[0];
    OpenOptions::new()
        .write(true)
        .open(&bad)
        .unwrap()
        .write_all_at(b"!", r.first * 4096 + 600)
        .unwrap();
    let o = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(out.join("tiny.bmap"))
        .arg(&bad)
        .arg(fx.path("bad.target"))
        .output()
        .unwrap();
    let err = run_err(o);
    assert!(err.contains("checksum mismatch"), "{err}");

    // The map is reproducible, like the image.
    let recipe = fx.path("recipe.toml");
    run_ok(fx.build(&recipe, "out2"));
    assert_eq!(
        fs::read(out.join("tiny.bmap")).unwrap(),
        fs::read(fx.path("out2/tiny.bmap")).unwrap()
    );
}

#[test]
fn writes_zst_to_a_file_twice_the_image_size() {
    if !tools() || !have("dumpe2fs") || !have("debugfs") {
        return;
    }
    let (fx, out) = built();
    let size = image_size(&out);
    let target = fx.path("stick.img");
    garbage_file(&target, 2 * size);
    let o = write(&["--yes", "--json"], &out.join("tiny.raw.zst"), &target);
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    run_ok(o);
    // stdout is the JSON summary and nothing else.
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["verified"], true, "{s}");
    assert_eq!(s["backup_gpt_moved"], true, "{s}");
    assert_eq!(s["device_size"].as_u64().unwrap(), 2 * size);
    let b = airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap();
    assert_eq!(s["mapped_bytes"].as_u64().unwrap(), b.mapped_bytes());
    let sent = s["bytes_written"].as_u64().unwrap() + s["bytes_zeroed"].as_u64().unwrap();
    assert_eq!(
        sent,
        b.mapped_bytes() + (1 << 20),
        "mapped bytes plus the device's last MiB: {s}"
    );
    assert_eq!(fs::metadata(&target).unwrap().len(), 2 * size);
    check_target(&fx, &out, &target);
    assert_root_metadata_written(&fx, &out, &target);
    // Past the image, only the device's last MiB (the backup GPT) changed.
    let f = File::open(&target).unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, size + 4096).unwrap();
    assert_eq!(byte[0], 0xaa);
    // `airlock verify` (the manifest check) accepts the written target.
    let o = airlock()
        .arg("verify")
        .arg(&target)
        .arg("--manifest")
        .arg(out.join("manifest.json"))
        .output()
        .unwrap();
    run_ok(o);
}

/// Punches a hole in every all-zero 4 KiB block, as `zstd -d` or
/// `cp --sparse=always` leave a copy.
fn sparsify(path: &Path) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        f.read_exact_at(&mut buf, off).unwrap();
        for (i, b) in buf.chunks(4096).enumerate() {
            if b.iter().all(|&x| x == 0) {
                let flags =
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
                rustix::fs::fallocate(&f, flags, off + i as u64 * 4096, 4096).unwrap();
            }
        }
        off += 1 << 20;
    }
}

#[test]
fn a_sparse_copy_without_a_map_still_overwrites_the_root_metadata() {
    if !tools() || !have("dumpe2fs") || !have("debugfs") {
        return;
    }
    let (fx, out) = built();
    let size = image_size(&out);
    // The raw image alone, with every zero block a hole: SEEK_HOLE now
    // calls the inode tables and the journal holes.
    let dir = fx.path("alone");
    fs::create_dir(&dir).unwrap();
    let raw = dir.join("tiny.raw");
    fs::copy(out.join("tiny.raw"), &raw).unwrap();
    sparsify(&raw);
    let target = fx.path("stick.img");
    garbage_file(&target, size);
    let o = write(&["--yes"], &raw, &target);
    let log = run_ok(o);
    assert!(log.contains("computing one from the image"), "{log}");
    check_target(&fx, &out, &target);
    assert_root_metadata_written(&fx, &out, &target);
    // The same map as the build's, holes or not.
    let b = airlock::bmap::create(&raw, &indicatif::ProgressBar::hidden()).unwrap();
    assert_eq!(
        b,
        airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap()
    );
}

#[test]
fn a_new_file_is_created_and_verify_only_finds_a_changed_byte() {
    if !tools() {
        return;
    }
    let (fx, out) = built();
    let target = fx.path("new.img");
    run_ok(write(&[], &out.join("tiny.raw"), &target));
    assert_eq!(fs::metadata(&target).unwrap().len(), image_size(&out));
    assert_eq!(
        sha256_file(&target),
        sha256_file(&out.join("tiny.raw")),
        "a same-size target is the image"
    );
    let names: Vec<_> = fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.to_string_lossy().starts_with(".new.img")),
        "temporary file left: {names:?}"
    );
    run_ok(write(
        &["--verify-only"],
        &out.join("tiny.raw.zst"),
        &target,
    ));

    // One byte inside the root filesystem's metadata changes.
    let (root_off, _) = partition(&manifest(&out), "root");
    let bad = root_off + 1024 + 100;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, bad).unwrap();
    f.write_all_at(&[byte[0] ^ 0x01], bad).unwrap();
    drop(f);
    for image in ["tiny.raw", "tiny.raw.zst"] {
        let err = run_err(write(&["--verify-only"], &out.join(image), &target));
        assert!(
            err.contains(&format!("the first bad byte is at offset {bad}")),
            "{image}: {err}"
        );
        assert!(err.contains("1 of "), "{err}");
    }
}

#[test]
fn refusals_without_a_device() {
    if !tools() {
        return;
    }
    let (fx, out) = built();
    // No confirmation: stdin is not a terminal.
    let target = fx.path("old.img");
    garbage_file(&target, 1 << 20);
    let err = run_err(write(&[], &out.join("tiny.raw"), &target));
    assert!(err.contains("stdin is not a terminal; pass --yes"), "{err}");
    let err = run_err(write(
        &["--yes"],
        &out.join("tiny.raw"),
        &out.join("tiny.raw"),
    ));
    assert!(err.contains("is the image itself"), "{err}");
    assert_eq!(
        fs::metadata(&target).unwrap().len(),
        1 << 20,
        "touched without confirmation"
    );

    // A .raw.zst with no block map beside it.
    let lone = fx.path("lone");
    fs::create_dir(&lone).unwrap();
    fs::copy(out.join("tiny.raw.zst"), lone.join("tiny.raw.zst")).unwrap();
    let err = run_err(write(
        &["--yes"],
        &lone.join("tiny.raw.zst"),
        &fx.path("t1"),
    ));
    assert!(
        err.contains("has no block map beside it") && err.contains("--bmap"),
        "{err}"
    );

    // A block map that is not the one built (valid XML, valid own checksum).
    let mut b = airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap();
    b.ranges[0].sha256 = "00".repeat(32);
    let forged = fx.path("forged");
    fs::create_dir(&forged).unwrap();
    for f in ["tiny.raw", "SHA256SUMS"] {
        fs::copy(out.join(f), forged.join(f)).unwrap();
    }
    fs::write(forged.join("tiny.bmap"), b.to_xml()).unwrap();
    let err = run_err(write(&["--yes"], &forged.join("tiny.raw"), &fx.path("t2")));
    assert!(err.contains("is not the one that was built"), "{err}");
    // Without SHA256SUMS, the range checksum catches it while writing.
    fs::remove_file(forged.join("SHA256SUMS")).unwrap();
    let err = run_err(write(&["--yes"], &forged.join("tiny.raw"), &fx.path("t3")));
    assert!(
        err.contains("does not match its block map: blocks 0-"),
        "{err}"
    );
    assert!(
        !fx.path("t3").exists(),
        "a failed write left a file under the final name"
    );
}

#[test]
fn pseudo_files_build_outputs_and_locked_files_are_refused() {
    if !tools() {
        return;
    }
    let (fx, out) = built();
    let image = out.join("tiny.raw");
    let err = run_err(write(&["--yes"], &image, Path::new("/proc/self/mem")));
    assert!(
        err.contains("refusing to write to /proc/self/mem: it is on a proc pseudo-filesystem"),
        "{err}"
    );
    for name in ["tiny.bmap", "manifest.json", "SHA256SUMS", "tiny.raw.zst"] {
        let before = sha256_file(&out.join(name));
        let err = run_err(write(&["--yes"], &image, &out.join(name)));
        assert!(
            err.contains(&format!(
                "it is {name}, one of the build's outputs beside {}",
                image.display()
            )),
            "{name}: {err}"
        );
        assert_eq!(sha256_file(&out.join(name)), before, "{name} was changed");
    }
    // The same refusal from a .raw.zst, for the .raw beside it.
    let err = run_err(write(&["--yes"], &out.join("tiny.raw.zst"), &image));
    assert!(
        err.contains("it is tiny.raw, one of the build's outputs"),
        "{err}"
    );

    // A file another program holds a flock on.
    let target = fx.path("held.img");
    garbage_file(&target, 1 << 20);
    if have("flock") {
        let mut holder = Command::new("flock")
            .arg("-x")
            .arg(&target)
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        // Held once a non-blocking flock of our own fails.
        for _ in 0..100 {
            let free = Command::new("flock")
                .arg("-n")
                .arg(&target)
                .arg("true")
                .status()
                .unwrap()
                .success();
            if !free {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let o = write(&["--yes"], &image, &target);
        holder.kill().unwrap();
        holder.wait().unwrap();
        let err = run_err(o);
        assert!(
            err.contains("another program holds a lock on it (flock"),
            "{err}"
        );
    }
    // A disk image a running (paused) QEMU has open: it takes fcntl (OFD)
    // locks, which /proc/locks lists with the file's inode number.
    if have("qemu-system-x86_64") {
        use std::os::unix::fs::MetadataExt;
        let spec = format!(
            "file={},format=raw,if=virtio",
            target.display().to_string().replace(',', ",,")
        );
        let mut vm = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-nodefaults", "-S"])
            .args(["-display", "none", "-monitor", "none", "-serial", "none"])
            .args(["-nic", "none", "-drive"])
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ino = format!(":{} ", fs::metadata(&target).unwrap().ino());
        let mut locked = false;
        for _ in 0..200 {
            let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
            if locks
                .lines()
                .any(|l| l.contains("OFDLCK") && l.contains(&ino))
            {
                locked = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let o = write(&["--yes"], &image, &target);
        vm.kill().unwrap();
        vm.wait().unwrap();
        assert!(locked, "QEMU never locked {}", target.display());
        let err = run_err(o);
        // (Where the filesystem emulates flock with fcntl locks, the flock
        // probe is the one that finds it.)
        assert!(
            err.contains("another program holds a lock on it ("),
            "{err}"
        );
    }
    assert!(
        fs::read(&target).unwrap().iter().all(|&b| b == 0xaa),
        "a held file was written"
    );
}

/// A tmpfs of `mib` MiB, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(at: PathBuf, mib: u64) -> Tmpfs {
        fs::create_dir_all(&at).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&at)
                .output()
                .unwrap(),
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..5 {
            if Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

#[test]
fn a_write_error_names_the_offset() {
    if !tools() {
        return;
    }
    let (fx, out) = built();
    // A filesystem with 6 MiB of room under a target that needs more:
    // the write fails (ENOSPC) part way.
    let small = Tmpfs::new(fx.path("small"), 6);
    let target = small.0.join("stick.img");
    File::create(&target)
        .unwrap()
        .set_len(image_size(&out))
        .unwrap();
    let err = run_err(write(&["--yes"], &out.join("tiny.raw.zst"), &target));
    let re = regex::Regex::new(r"writing to \S+ failed at offset (\d+)").unwrap();
    let off: u64 = re
        .captures(&err)
        .unwrap_or_else(|| panic!("no offset: {err}"))[1]
        .parse()
        .unwrap();
    assert!(off > 0 && off < image_size(&out), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("partition table was erased"), "{err}");
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, partscan: bool) -> Option<Loop> {
        let mut c = Command::new("losetup");
        c.args(["--find", "--show"]);
        if partscan {
            c.arg("--partscan");
        }
        let o = c.arg(file).output().ok()?;
        if !o.status.success() {
            return None;
        }
        let dev = String::from_utf8(o.stdout).ok()?.trim().to_string();
        if partscan && !Path::new(&format!("{dev}p2")).exists() {
            // The kernel may not have scanned yet; partx adds them now.
            let _ = Command::new("partx").arg("-a").arg(&dev).output();
            for _ in 0..20 {
                if Path::new(&format!("{dev}p2")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Some(Loop(dev))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for _ in 0..5 {
            if Command::new("losetup")
                .arg("-d")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// Loop devices, or a note (and a failure in CI) when there are none.
fn loops() -> bool {
    if !tools() || !have("losetup") {
        return false;
    }
    let ok = Path::new("/dev/loop-control").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "loop devices are required in CI"
        );
        eprintln!("skipping: no loop devices");
    }
    ok
}

#[test]
fn loop_devices_smaller_fixed_and_mounted_are_refused() {
    if !loops() || !have("mount") {
        return;
    }
    let (fx, out) = built();
    let size = image_size(&out);
    let image = out.join("tiny.raw.zst");

    let small = fx.path("small.back");
    File::create(&small).unwrap().set_len(64 << 20).unwrap();
    let Some(l) = Loop::new(&small, false) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        eprintln!("skipping: losetup failed");
        return;
    };
    let err = run_err(write(&["--yes", "--force"], &image, &l.path()));
    assert!(
        err.contains(&format!("refusing to write to {}: it holds 64.0 MiB", l.0)),
        "{err}"
    );
    assert!(err.contains("needs 160.0 MiB"), "{err}");
    drop(l);

    // A loop device holding an image, with its root partition mounted.
    let back = fx.path("stick.back");
    fs::copy(out.join("tiny.raw"), &back).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&back)
        .unwrap()
        .set_len(2 * size)
        .unwrap();
    let l = Loop::new(&back, true).unwrap();
    let p2 = format!("{}p2", l.0);
    if Path::new(&p2).exists() {
        let err = run_err(write(
            &["--yes", "--force"],
            &image,
            Path::new(&format!("{}p1", l.0)),
        ));
        assert!(
            err.contains(&format!("it is partition 1 of {}", l.0)),
            "{err}"
        );
        let mnt = fx.path("mnt");
        fs::create_dir(&mnt).unwrap();
        run_ok(
            Command::new("mount")
                .arg("-o")
                .arg("ro")
                .arg(&p2)
                .arg(&mnt)
                .output()
                .unwrap(),
        );
        let err = run_err(write(&["--yes", "--force"], &image, &l.path()));
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(
            err.contains(&format!("{p2} is mounted at {}", mnt.display())),
            "{err}"
        );
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "loop partitions are required in CI"
        );
        eprintln!("note: the kernel made no loop partitions; mounted-partition check not run");
    }

    // Loop devices are not removable: --force is needed, then it works.
    let err = run_err(write(&["--yes"], &image, &l.path()));
    assert!(
        err.contains("non-removable) disk") && err.contains("use --force"),
        "{err}"
    );
    let o = write(&["--yes", "--force", "--json"], &image, &l.path());
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    run_ok(o);
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["verified"], true);
    assert_eq!(s["backup_gpt_moved"], true);
    assert_eq!(
        s["direct_io"], true,
        "block devices are written with O_DIRECT"
    );
    let v = run_ok(
        Command::new("sgdisk")
            .arg("-v")
            .arg(l.path())
            .output()
            .unwrap(),
    );
    assert!(v.contains("No problems found"), "{v}");
    drop(l);
    check_target(&fx, &out, &back);
}

#[test]
fn the_backing_file_of_a_loop_device_is_refused() {
    if !loops() {
        return;
    }
    let (fx, out) = built();
    let back = fx.path("loop.back");
    garbage_file(&back, 2 * image_size(&out));
    let Some(l) = Loop::new(&back, false) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        eprintln!("skipping: losetup failed");
        return;
    };
    let o = write(&["--yes"], &out.join("tiny.raw"), &back);
    drop(l);
    let err = run_err(o);
    assert!(
        err.contains(&format!(
            "refusing to write to {}: it is the backing file of /dev/loop",
            back.display()
        )) && err.contains("losetup -d /dev/loop"),
        "{err}"
    );
    assert!(
        fs::read(&back).unwrap().iter().all(|&b| b == 0xaa),
        "the backing file was written"
    );
}

#[test]
fn verify_and_inspect_read_a_written_loop_device() {
    if !loops() {
        return;
    }
    let (fx, out) = built();
    // A stick larger than the image: the block device's metadata length is
    // 0, so its size must come from the device itself.
    let back = fx.path("big.back");
    File::create(&back).unwrap().set_len(512 << 20).unwrap();
    let Some(l) = Loop::new(&back, false) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        eprintln!("skipping: losetup failed");
        return;
    };
    run_ok(write(
        &["--yes", "--force"],
        &out.join("tiny.raw"),
        &l.path(),
    ));
    let v = airlock()
        .arg("verify")
        .arg(l.path())
        .arg("--manifest")
        .arg(out.join("manifest.json"))
        .output()
        .unwrap();
    let i = airlock().arg("inspect").arg(l.path()).output().unwrap();
    // Detached on drop, also when an assertion below fails.
    drop(l);
    let verified = run_ok(v);
    assert!(!verified.contains("unreadable"), "{verified}");
    let shown = run_ok(i);
    assert!(shown.contains("Boot "), "{shown}");
    assert!(!shown.contains("size the image first"), "{shown}");
}

#[test]
fn non_raw_and_non_gpt_images_are_refused() {
    if !tools() {
        return;
    }
    let fx = Fixture::new();
    let target = fx.path("target.img");
    for (name, head, want) in [
        (
            "a.qcow2",
            &b"QFI\xfb\0\0\0\x03"[..],
            "qemu-img convert -O raw",
        ),
        ("a.vmdk", &b"KDMV\x01\0\0\0"[..], "a VMDK VM disk"),
        ("a.vhdx", &b"vhdxfile"[..], "a VHDX VM disk"),
        ("empty.raw", &b""[..], "has no GPT"),
        ("noise.raw", &[0x5au8; 1 << 20][..], "has no GPT"),
    ] {
        let image = fx.path(name);
        let mut bytes = head.to_vec();
        if !bytes.is_empty() {
            bytes.resize(1 << 20, 0);
        }
        fs::write(&image, &bytes).unwrap();
        let err = run_err(write(&["--yes"], &image, &target));
        assert!(err.contains(want), "{name}: {err}");
        assert!(!target.exists(), "{name}: wrote a target");
    }
}

#[test]
fn the_image_s_own_loop_device_is_refused() {
    if !loops() {
        return;
    }
    let (fx, out) = built();
    let image = fx.path("self.raw");
    fs::copy(out.join("tiny.raw"), &image).unwrap();
    let Some(l) = Loop::new(&image, false) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        eprintln!("skipping: losetup failed");
        return;
    };
    let o = write(&["--yes", "--force"], &image, &l.path());
    let same = write(&["--yes", "--force"], &l.path(), &l.path());
    drop(l);
    let err = run_err(o);
    assert!(
        err.contains("is the backing file of") && err.contains("self.raw"),
        "{err}"
    );
    let err = run_err(same);
    assert!(err.contains("is the image itself"), "{err}");
    let v = run_ok(
        Command::new("sgdisk")
            .arg("-v")
            .arg(&image)
            .output()
            .unwrap(),
    );
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn an_io_error_on_a_loop_device_names_the_offset() {
    if !loops() {
        return;
    }
    let (fx, out) = built();
    // A loop device over a file on a tmpfs with room for 8 MiB: the
    // device's writes fail with an I/O error past that.
    let small = Tmpfs::new(fx.path("small"), 8);
    let back = small.0.join("back");
    File::create(&back)
        .unwrap()
        .set_len(2 * image_size(&out))
        .unwrap();
    let Some(l) = Loop::new(&back, false) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        return;
    };
    let err = run_err(write(
        &["--yes", "--force"],
        &out.join("tiny.raw.zst"),
        &l.path(),
    ));
    drop(l);
    // The loop device fails the write past the tmpfs's room, or (when the
    // kernel took the writes into its cache) the flush: either way the
    // message names where, and the errno the device gave.
    let re = regex::Regex::new(
        r"(writing to \S+ failed at offset (\d+) \(\d+ bytes\): (.+)|flushing \S+ failed: the writes between offsets (\d+) and (\d+) may not have reached the device: (.+))",
    )
    .unwrap();
    let c = re
        .captures(&err)
        .unwrap_or_else(|| panic!("no offset: {err}"));
    let (at, cause) = match (c.get(2), c.get(4)) {
        (Some(a), _) => (a.as_str().parse::<u64>().unwrap(), &c[3]),
        (None, Some(_)) => (c[5].parse::<u64>().unwrap(), &c[6]),
        _ => unreachable!(),
    };
    // 8 MiB of room, less what tmpfs keeps for itself: the failure is past
    // a few MiB and before the end of the image.
    assert!(
        at > (4 << 20) && at <= 2 * image_size(&out),
        "offset {at}: {err}"
    );
    assert!(
        cause.contains("Input/output error") || cause.contains("No space left on device"),
        "cause {cause:?}: {err}"
    );
    assert!(err.contains("partition table was erased"), "{err}");
}

#[test]
fn asks_on_a_terminal() {
    if !tools() || !have("script") {
        return;
    }
    let (fx, out) = built();
    let target = fx.path("old.img");
    garbage_file(&target, 1 << 20);
    // `script` gives airlock a terminal; the answer comes on it.
    let line = format!(
        "{} write {} {}",
        env!("CARGO_BIN_EXE_airlock"),
        out.join("tiny.raw").display(),
        target.display()
    );
    let ask = |answer: &str| {
        let mut c = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let o = c.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (ok, log) = ask("no\n");
    assert!(
        !ok && log.contains("Type \"yes\"") && log.contains("not confirmed"),
        "{log}"
    );
    assert_eq!(
        fs::metadata(&target).unwrap().len(),
        1 << 20,
        "written without a yes"
    );
    let (ok, log) = ask("yes\n");
    assert!(ok, "{log}");
    assert_eq!(fs::metadata(&target).unwrap().len(), image_size(&out));
}

/// The `airlock: wrote ...` summary line of a write's stderr.
fn summary_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("airlock: wrote "))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"))
        .to_string()
}

#[test]
fn the_summary_says_whether_it_read_back() {
    if !tools() {
        return;
    }
    let (fx, out) = built();
    let size = image_size(&out);
    let b = airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap();
    let target = fx.path("stick.img");
    let re = regex::Regex::new(
        r"^airlock: wrote ([\d.]+) MiB of the 160\.0 MiB image to (\S+) in ([\d.]+)s \(([\d.]+) MiB/s\)",
    )
    .unwrap();
    for (args, verified) in [
        (&["--yes", "--json", "--no-verify"][..], false),
        (&["--yes", "--json"][..], true),
    ] {
        garbage_file(&target, size);
        let o = write(args, &out.join("tiny.raw"), &target);
        let stdout = String::from_utf8(o.stdout.clone()).unwrap();
        let stderr = String::from_utf8(o.stderr.clone()).unwrap();
        run_ok(o);
        let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(s["verified"], verified, "{args:?}: {s}");
        let line = summary_line(&stderr);
        let c = re
            .captures(&line)
            .unwrap_or_else(|| panic!("summary: {line}"));
        let sent = s["bytes_written"].as_u64().unwrap() + s["bytes_zeroed"].as_u64().unwrap();
        assert_eq!(sent, b.mapped_bytes(), "{s}");
        assert_eq!(&c[1], format!("{:.1}", sent as f64 / 1048576.0), "{line}");
        assert_eq!(&c[2], target.display().to_string(), "{line}");
        let secs: f64 = c[3].parse().unwrap();
        assert!(
            (secs - s["write_seconds"].as_f64().unwrap()).abs() < 0.051,
            "{line} / {s}"
        );
        if verified {
            assert_eq!(
                s["bytes_verified"].as_u64().unwrap(),
                b.mapped_bytes(),
                "{s}"
            );
            assert!(s["verify_seconds"].as_f64().unwrap() > 0.0, "{s}");
            assert!(line.contains("; read back and verified in "), "{line}");
            assert!(!line.contains("NOT verified"), "{line}");
        } else {
            assert_eq!(s["bytes_verified"], 0, "{s}");
            assert_eq!(s["verify_seconds"], 0.0, "{s}");
            assert!(line.ends_with("; NOT verified (--no-verify)"), "{line}");
            assert!(!line.contains("read back"), "{line}");
        }
        check_target(&fx, &out, &target);
    }
}

/// The build's block map with the GPT areas (the first and last 20 KiB)
/// left out, as a map made by another tool might: sha256s recomputed.
fn map_without_the_gpt(out: &Path, at: &Path) {
    let mut b = airlock::bmap::Bmap::load(&out.join("tiny.bmap")).unwrap();
    let img = File::open(out.join("tiny.raw")).unwrap();
    let (lo, hi) = (5, b.blocks_count() - 6);
    let mut ranges = Vec::new();
    for r in &b.ranges {
        let (first, last) = (r.first.max(lo), r.last.min(hi));
        if first > last {
            continue;
        }
        let mut bytes = vec![0u8; ((last - first + 1) * 4096) as usize];
        img.read_exact_at(&mut bytes, first * 4096).unwrap();
        ranges.push(airlock::bmap::Range {
            first,
            last,
            sha256: sha256(&bytes),
        });
    }
    assert_ne!(ranges, b.ranges);
    b.ranges = ranges;
    fs::write(at, b.to_xml()).unwrap();
}

/// Sectors of `path` that start with a GPT header signature, and each
/// header's disk GUID.
fn gpt_headers(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let data = fs::read(path).unwrap();
    data.chunks(512)
        .enumerate()
        .filter(|(_, s)| s.starts_with(b"EFI PART"))
        .map(|(i, s)| (i as u64, s[56..72].to_vec()))
        .collect()
}

#[test]
fn old_partition_tables_are_gone_even_with_a_foreign_map() {
    if !tools() {
        return;
    }
    let (fx, out) = built();
    let size = image_size(&out);
    let foreign = fx.path("foreign.bmap");
    map_without_the_gpt(&out, &foreign);
    let ours = gpt_headers(&out.join("tiny.raw"));
    assert_eq!(ours.len(), 2, "the image's own primary and backup");
    let guid = ours[0].1.clone();
    for (len, map) in [
        (size, Some(&foreign)),
        (2 * size, Some(&foreign)),
        (2 * size + (3 << 20), None),
    ] {
        // The stick's previous life: a GPT of its own over the whole stick,
        // and the backup of an image of this image's size, in the middle.
        let target = fx.path("stick.img");
        garbage_file(&target, len);
        run_ok(
            Command::new("sgdisk")
                .args(["-o", "-n", "1:2048:+8M"])
                .arg(&target)
                .output()
                .unwrap(),
        );
        let old = fx.path("old.img");
        File::create(&old).unwrap().set_len(size).unwrap();
        run_ok(Command::new("sgdisk").arg("-o").arg(&old).output().unwrap());
        let tail = fs::read(&old).unwrap()[(size - 33 * 512) as usize..].to_vec();
        OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap()
            .write_all_at(&tail, size - 33 * 512)
            .unwrap();
        let before = gpt_headers(&target);
        assert!(before.len() >= 2 && before.iter().all(|(_, g)| *g != guid));

        let mut args = vec!["--yes", "--json"];
        if let Some(m) = map {
            args.push("--bmap");
            args.push(m.to_str().unwrap());
        }
        let o = write(&args, &out.join("tiny.raw"), &target);
        let stdout = String::from_utf8(o.stdout.clone()).unwrap();
        run_ok(o);
        let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(s["verified"], true, "{s}");
        // Exactly two headers: the primary and the backup at the real end,
        // both this image's.
        let after = gpt_headers(&target);
        let last = len / 512 - 1;
        assert_eq!(
            after,
            vec![(1, guid.clone()), (last, guid.clone())],
            "{len} bytes, map {map:?}"
        );
        let v = run_ok(
            Command::new("sgdisk")
                .arg("-v")
                .arg(&target)
                .output()
                .unwrap(),
        );
        assert!(v.contains("No problems found"), "{v}");
        // The GPT blocks the foreign map leaves out were read back too: a
        // copy whose backup table was changed afterwards fails verify-only.
        if let Some(m) = map {
            let f = OpenOptions::new().write(true).open(&target).unwrap();
            f.write_all_at(b"X", (last - 10) * 512 + 7).unwrap();
            drop(f);
            let err = run_err(write(
                &["--verify-only", "--bmap", m.to_str().unwrap()],
                &out.join("tiny.raw"),
                &target,
            ));
            assert!(
                err.contains(&format!(
                    "the first bad byte is at offset {}",
                    (last - 10) * 512 + 7
                )),
                "{err}"
            );
        }
    }
}

#[test]
fn a_device_held_exclusively_is_refused() {
    if !loops() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let (fx, out) = built();
    let back = fx.path("held.back");
    garbage_file(&back, 2 * image_size(&out));
    let Some(l) = Loop::new(&back, false) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        return;
    };
    // Another program (an installer, a second airlock) holds it.
    let held = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(l.path())
        .unwrap();
    let err = run_err(write(
        &["--yes", "--force"],
        &out.join("tiny.raw"),
        &l.path(),
    ));
    let name = l.0.clone();
    drop(held);
    drop(l);
    assert!(
        err.contains(&format!(
            "refusing to write to {name}: it is busy: mounted, or opened exclusively by another \
             program (a mount, an installer, another airlock write); close that first"
        )),
        "{err}"
    );
    assert!(err.contains("Device or resource busy"), "{err}");
    let mut head = [0u8; 4096];
    File::open(&back)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|&b| b == 0xaa), "written while held");
}

#[test]
fn a_device_swapped_during_the_prompt_is_not_written() {
    if !loops() || !have("script") {
        return;
    }
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let (fx, out) = built();
    let size = image_size(&out);
    let (back_a, back_b) = (fx.path("a.back"), fx.path("b.back"));
    garbage_file(&back_a, 2 * size);
    garbage_file(&back_b, 2 * size);
    let (Some(a), Some(b)) = (Loop::new(&back_a, false), Loop::new(&back_b, false)) else {
        assert!(std::env::var_os("CI").is_none(), "losetup failed in CI");
        return;
    };
    // The path the person typed, which udev (or a swapped stick) makes
    // name another disk while the prompt waits.
    let link = fx.path("stick");
    std::os::unix::fs::symlink(a.path(), &link).unwrap();
    let line = format!(
        "{} write --force {} {}",
        env!("CARGO_BIN_EXE_airlock"),
        out.join("tiny.raw").display(),
        link.display()
    );
    let mut c = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = c.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let t0 = std::time::Instant::now();
    while !seen.lock().unwrap().contains("Type \"yes\"") {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no prompt: {}",
            seen.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(b.path(), &link).unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(b"yes\n").unwrap();
    let status = c.wait().unwrap();
    reader.join().unwrap();
    drop(stdin);
    let (a_name, b_name) = (a.0.clone(), b.0.clone());
    drop(a);
    drop(b);
    let log = seen.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    // The prompt described A, and A was written; B kept its old bytes.
    let short = |n: &str| n.trim_start_matches("/dev/").to_string();
    assert!(log.contains(&format!("({})", short(&a_name))), "{log}");
    assert!(!log.contains(&format!("({})", short(&b_name))), "{log}");
    let v = run_ok(
        Command::new("sgdisk")
            .arg("-v")
            .arg(&back_a)
            .output()
            .unwrap(),
    );
    assert!(v.contains("No problems found"), "{v}");
    let f = File::open(&back_b).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for off in [0, size - (1 << 20), 2 * size - (1 << 20)] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf.iter().all(|&x| x == 0xaa),
            "the other disk was written at {off}"
        );
    }
}
