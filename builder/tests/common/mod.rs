// SPDX-License-Identifier: Apache-2.0
//! Shared helpers of the integration tests: tiny inputs made here, the
//! airlock binary, and the independent tools that check its output.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub fn airlock() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A tool the test needs: missing means skip locally, fail in CI.
pub fn have(tool: &str) -> bool {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required in CI: run .ci/run"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

pub fn is_root() -> bool {
    let ok = rustix::process::geteuid().is_root();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "the build tests need root in CI"
        );
        eprintln!("skipping: needs root");
    }
    ok
}

pub fn run_ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "command failed: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

pub fn run_err(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded: {stderr}"
    );
    stderr
}

/// One entry of a test tarball.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32, u32, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Xattr(&'a str, &'a [u8], &'a [(&'a str, &'a [u8])]),
    Char(&'a str, u32, u32),
}

/// Writes a tar archive (plain), with PAX xattr records where asked.
pub fn tarball(path: &Path, entries: &[Entry]) {
    let mut b = tar::Builder::new(File::create(path).unwrap());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::File(p, data, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                h.set_mode(0o644);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::Xattr(p, data, attrs) => {
                let pax: Vec<(String, &[u8])> = attrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Char(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap().flush().unwrap();
}

/// A cap_net_bind_service=ep capability, as setcap writes it (v2).
pub const CAP_NET_BIND: &[u8] = &[
    0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

/// A small but complete base: accounts, a (fake) kernel and initramfs,
/// systemd-boot, the Fedora-style /opt -> var/opt link, a file with a
/// capability, a high uid, a device node and a hard link.
pub fn base_entries() -> Vec<Entry<'static>> {
    vec![
        Entry::Dir("etc", 0o755),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\netcd:x:100000:100000::/var/lib/etcd:/bin/false\n",
            0o644,
            0,
            0,
        ),
        Entry::File(
            "etc/group",
            b"root:x:0:\nshadow:x:42:\nwheel:x:10:\netcd:x:100000:\n",
            0o644,
            0,
            0,
        ),
        Entry::File("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640, 0, 42),
        Entry::File(
            "etc/machine-id",
            b"0123456789abcdef0123456789abcdef\n",
            0o444,
            0,
            0,
        ),
        Entry::File("etc/ssh/ssh_host_ed25519_key", b"PRIVATE", 0o600, 0, 0),
        Entry::Dir("boot", 0o755),
        Entry::File("boot/vmlinuz-6.1.0-9-amd64", b"old kernel", 0o644, 0, 0),
        Entry::File("boot/initrd.img-6.1.0-9-amd64", b"old initrd", 0o644, 0, 0),
        Entry::File(
            "boot/vmlinuz-6.1.0-28-amd64",
            b"MZ fake kernel",
            0o644,
            0,
            0,
        ),
        Entry::File(
            "boot/initrd.img-6.1.0-28-amd64",
            b"fake initramfs",
            0o644,
            0,
            0,
        ),
        Entry::File(
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            b"MZ fake systemd-boot",
            0o644,
            0,
            0,
        ),
        Entry::Dir("var/opt", 0o755),
        Entry::Symlink("opt", "var/opt"),
        Entry::Symlink("lib", "usr/lib"),
        Entry::Xattr(
            "usr/bin/ping",
            b"\x7fELF ping",
            &[("security.capability", CAP_NET_BIND)],
        ),
        Entry::File("var/lib/etcd/data", b"etcd data", 0o600, 100000, 100000),
        Entry::File("usr/bin/setuid-tool", b"suid", 0o4755, 0, 0),
        Entry::Hardlink("usr/bin/setuid-alias", "usr/bin/setuid-tool"),
        Entry::Char("dev/null", 1, 3),
        Entry::File(
            "usr/lib/systemd/system/hello.service",
            b"[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
            0,
            0,
        ),
    ]
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A recipe folder with the small base, a tool file, a CNI-like
    /// archive, a template folder and an overlay.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tarball(&d.join("base.tar"), &base_entries());
        // Compressed with zstd but named .tar.gz: the magic bytes decide.
        let plain = fs::read(d.join("base.tar")).unwrap();
        fs::write(
            d.join("base.tar.gz"),
            zstd::encode_all(&plain[..], 3).unwrap(),
        )
        .unwrap();
        fs::write(d.join("tool"), b"#!/bin/sh\necho tool\n").unwrap();
        tarball(
            &d.join("cni.tgz.tmp"),
            &[
                Entry::Dir("cni-plugins", 0o755),
                Entry::File(
                    "cni-plugins/bin/bridge",
                    b"bridge plugin",
                    0o755,
                    1001,
                    1001,
                ),
                Entry::File(
                    "cni-plugins/bin/loopback",
                    b"loopback plugin",
                    0o755,
                    1001,
                    1001,
                ),
                Entry::File("cni-plugins/README.md", b"docs", 0o644, 1001, 1001),
            ],
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&fs::read(d.join("cni.tgz.tmp")).unwrap())
            .unwrap();
        fs::write(d.join("cni.tgz"), gz.finish().unwrap()).unwrap();
        fs::remove_file(d.join("cni.tgz.tmp")).unwrap();
        fs::create_dir_all(d.join("templates")).unwrap();
        fs::write(
            d.join("templates/motd.j2"),
            "Welcome to {{ node.hostname }} ({{ vars.site }})\n",
        )
        .unwrap();
        fs::create_dir_all(d.join("overlay/etc/airlock")).unwrap();
        fs::write(
            d.join("overlay/etc/airlock/overlay.txt"),
            "from the overlay\n",
        )
        .unwrap();
        Fixture { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn recipe_text(&self) -> String {
        let d = self.dir.path();
        format!(
            r#"name = "tiny"
template_dir = "templates"
overlays = ["overlay"]
epoch = 1700000000

[vars]
site = "ship-7"

[base]
path = "base.tar.gz"
sha256 = "{base}"

[[file]]
source = "tool"
sha256 = "{tool}"
path = "/opt/tool/bin/tool"
mode = "0750"
owner = "etcd:wheel"

[[archive]]
source = "cni.tgz"
sha256 = "{cni}"
dest = "/opt/cni"
members = ["bin/*"]
strip_components = 1

[[template]]
src = "motd.j2"
path = "/etc/motd"

[systemd]
enable = ["hello.service"]

[disk]
size = "160MiB"
esp_size = "40MiB"

[boot]
cmdline = ["quiet"]

[[user]]
name = "ops"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey ops@site"]

[node]
hostname = "node-7"
"#,
            base = sha256_file(&d.join("base.tar.gz")),
            tool = sha256_file(&d.join("tool")),
            cni = sha256_file(&d.join("cni.tgz")),
        )
    }

    pub fn write_recipe(&self, text: &str) -> PathBuf {
        let p = self.path("recipe.toml");
        fs::write(&p, text).unwrap();
        p
    }

    pub fn build(&self, recipe: &Path, out: &str) -> Output {
        airlock()
            .arg("build")
            .arg(recipe)
            .arg("--out")
            .arg(self.path(out))
            .arg("--cache")
            .arg(self.path("cache"))
            .output()
            .unwrap()
    }
}

/// Reads a byte range of a file into a new file (for fsck tools that take
/// a whole device).
pub fn extract_range(src: &Path, offset: u64, len: u64, dst: &Path) {
    let mut f = File::open(src).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = File::create(dst).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

/// ext4-view over a partition of a disk image.
pub struct PartReader {
    pub file: File,
    pub offset: u64,
}

impl ext4_view::Ext4Read for PartReader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(dst, self.offset + start)?;
        Ok(())
    }
}

pub fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

pub fn partition(m: &serde_json::Value, which: &str) -> (u64, u64) {
    let p = &m["disk"][which];
    (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

/// The root filesystem of a built image, read with ext4-view.
#[allow(dead_code)]
pub fn root_fs(raw: &Path, m: &serde_json::Value) -> ext4_view::Ext4 {
    let (offset, _) = partition(m, "root");
    ext4_view::Ext4::load(Box::new(PartReader {
        file: File::open(raw).unwrap(),
        offset,
    }))
    .unwrap()
}

#[allow(dead_code)]
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cached Debian bookworm base (tests/fixtures/debian-base.sh), or
/// None (skip; a failure in CI) when it cannot be had.
#[allow(dead_code)]
pub fn debian_base() -> Option<PathBuf> {
    let out = Command::new(repo().join("tests/fixtures/debian-base.sh"))
        .output()
        .unwrap();
    if !out.status.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Debian base is required in CI: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "skipping: no Debian base ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .trim(),
    ))
}

/// The demo recipe, with its relative paths made absolute and the base
/// pinned by digest (the repo's copy is pinned by its lock file).
#[allow(dead_code)]
pub fn demo_recipe(dir: &Path, base: &Path) -> PathBuf {
    let text = fs::read_to_string(repo().join("recipes/demo.toml")).unwrap();
    let r = repo();
    let text = text
        .replace(
            "template_dir = \"templates\"",
            &format!("template_dir = \"{}/recipes/templates\"", r.display()),
        )
        .replace(
            "\"../overlays/demo\"",
            &format!("\"{}/overlays/demo\"", r.display()),
        )
        .replace(
            "path = \"../out/fixtures/debian-bookworm.tar.zst\"",
            &format!(
                "path = \"{}\"\nsha256 = \"{}\"",
                base.display(),
                sha256_file(base)
            ),
        );
    // Test-only unit, ordered after the first-boot unit on every boot: its
    // line on the console means the first-boot unit has had its chance to
    // run (or was skipped), so a second boot can stop there and be judged.
    let settled = dir.join("airlock-test-settled.service");
    fs::write(
        &settled,
        "[Unit]\nAfter=airlock-demo-firstboot.service multi-user.target\n\
         [Service]\nType=oneshot\nExecStart=/bin/echo AIRLOCK-TEST-BOOT-SETTLED\n\
         StandardOutput=journal+console\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let text = text.replace(
        "enable = [\"airlock-demo-firstboot.service\"]",
        "enable = [\"airlock-demo-firstboot.service\", \"airlock-test-settled.service\"]",
    ) + &format!(
        "\n[[file]]\nsource = \"{}\"\nsha256 = \"{}\"\npath = \"/etc/systemd/system/airlock-test-settled.service\"\nmode = \"0644\"\n",
        settled.display(),
        sha256_file(&settled)
    );
    assert!(
        text.contains("airlock-test-settled.service\"]"),
        "demo recipe changed shape"
    );
    let p = dir.join("demo.toml");
    fs::write(&p, text).unwrap();
    p
}
