// SPDX-License-Identifier: Apache-2.0
//! `airlock boot`: runs an image under QEMU with UEFI firmware for a smoke
//! test. Software emulation, a fresh copy of the firmware variables each run
//! (so the image must boot from the removable-media path), serial console
//! on stdout, and no network unless asked for a restricted one.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// No network device at all.
    None,
    /// A user-mode network that reaches nothing outside the guest
    /// (`-netdev user,restrict=on`): the guest gets an interface, an address
    /// and a default route, as a node in a disconnected site does.
    Restricted,
}

#[derive(Debug, Clone)]
pub struct VmOpts {
    pub image: PathBuf,
    pub timeout: Duration,
    pub until: Option<Regex>,
    pub net: Net,
    pub memory_mib: u32,
    pub cpus: u32,
    pub snapshot: bool,
    pub log: Option<PathBuf>,
    pub firmware: Option<(PathBuf, PathBuf)>,
    /// Echo the console to stdout.
    pub echo: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// Recognises the image format by its first bytes: qcow2, or a raw disk
/// with a GPT ("EFI PART" at byte 512). Anything else is refused, saying
/// what it is, rather than left to sit in the UEFI shell until the timeout.
pub fn detect_format(path: &Path) -> Result<ImageFormat> {
    let mut head = Vec::with_capacity(520);
    File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(520)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let n = head.len();
    let shown = path.display();
    if head.starts_with(b"QFI\xfb") {
        return Ok(ImageFormat::Qcow2);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        bail!("{shown} is zstd-compressed: boot the .raw next to it, or decompress it first (zstd -d)");
    }
    if head.starts_with(b"KDMV") {
        bail!("{shown} is a VMDK disk: boot the .raw or .qcow2 image, or convert it (qemu-img convert -O qcow2)");
    }
    if head.starts_with(b"vhdxfile") {
        bail!("{shown} is a VHDX disk: boot the .raw or .qcow2 image, or convert it (qemu-img convert -O qcow2)");
    }
    if n == 0 {
        bail!("{shown} is empty: not a disk image airlock can boot");
    }
    if n < 520 {
        bail!("{shown} is only {n} bytes: too small for a disk image airlock can boot");
    }
    if &head[512..520] != b"EFI PART" {
        bail!("{shown} has no GPT: not a disk image airlock can boot (expected a raw disk with a GPT, or qcow2)");
    }
    Ok(ImageFormat::Raw)
}

/// Finds UEFI firmware code and a variables template (Debian, then Fedora paths).
pub fn find_firmware() -> Result<(PathBuf, PathBuf)> {
    let pairs = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ];
    for (c, v) in pairs {
        if Path::new(c).is_file() && Path::new(v).is_file() {
            return Ok((c.into(), v.into()));
        }
    }
    bail!("no UEFI firmware found: install ovmf (Debian) or edk2-ovmf (Fedora), or pass --firmware CODE VARS")
}

/// `before` + `path` + `after` as one QEMU option string, with every comma
/// of the path doubled: QEMU splits options at single commas, so a path
/// like `/x/d,snapshot=off` would otherwise add options of its own. The
/// path's bytes are kept as they are (not made UTF-8).
fn option_with_path(before: &str, path: &Path, after: &str) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut v = before.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        v.push(b);
        if b == b',' {
            v.push(b',');
        }
    }
    v.extend_from_slice(after.as_bytes());
    OsString::from_vec(v)
}

/// The QEMU command line (pure, so it can be checked without running it).
pub fn qemu_argv(o: &VmOpts, format: ImageFormat, code: &Path, vars: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let push = |a: &mut Vec<OsString>, s: &str| a.push(s.into());
    for s in [
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-nodefaults",
        "-no-user-config",
    ] {
        push(&mut a, s);
    }
    push(&mut a, "-m");
    push(&mut a, &o.memory_mib.to_string());
    push(&mut a, "-smp");
    push(&mut a, &o.cpus.to_string());
    let fmt = match format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    };
    push(&mut a, "-drive");
    a.push(option_with_path(
        "if=pflash,format=raw,unit=0,readonly=on,file=",
        code,
        "",
    ));
    push(&mut a, "-drive");
    a.push(option_with_path(
        "if=pflash,format=raw,unit=1,file=",
        vars,
        "",
    ));
    push(&mut a, "-drive");
    a.push(option_with_path(
        "file=",
        &o.image,
        &format!(",format={fmt},if=virtio"),
    ));
    if o.snapshot {
        push(&mut a, "-snapshot");
    }
    match o.net {
        Net::None => push(&mut a, "-nic"),
        Net::Restricted => push(&mut a, "-netdev"),
    }
    match o.net {
        Net::None => push(&mut a, "none"),
        Net::Restricted => {
            push(&mut a, "user,id=n0,restrict=on");
            push(&mut a, "-device");
            push(&mut a, "virtio-net-pci,netdev=n0");
        }
    }
    for s in [
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ] {
        push(&mut a, s);
    }
    a
}

#[derive(Debug)]
pub enum Outcome {
    /// The --until pattern matched this console line.
    Matched(String),
    /// The guest powered off by itself.
    PoweredOff,
}

/// Boots the image and waits for the pattern, power-off or the timeout.
pub fn run(o: &VmOpts) -> Result<Outcome> {
    cmd::require_tool("qemu-system-x86_64")?;
    let format = detect_format(&o.image)?;
    if format == ImageFormat::Qcow2 {
        // A backing file would hand a host file to the guest.
        crate::image::refuse_other_files(&o.image, crate::image::VmFormat::Qcow2)?;
    }
    let (code, vars_template) = match &o.firmware {
        Some(p) => p.clone(),
        None => find_firmware()?,
    };
    let tmp = tempfile::tempdir().context("creating a temporary folder for firmware variables")?;
    let vars = tmp.path().join("OVMF_VARS.fd");
    std::fs::copy(&vars_template, &vars)
        .with_context(|| format!("copying firmware variables {}", vars_template.display()))?;

    let mut c = Command::new("qemu-system-x86_64");
    c.args(qemu_argv(o, format, &code, &vars));
    let errlog = tempfile::tempfile().context("creating a temporary file for QEMU's stderr")?;
    c.stdout(Stdio::piped()).stderr(errlog.try_clone()?);
    let mut child = cmd::spawn_logged(&mut c)?;
    let _running = cmd::track(&child);
    let stdout = child.stdout.take().expect("piped stdout");

    let matched: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    let tail: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (matched, done, tail) = (matched.clone(), done.clone(), tail.clone());
        let until = o.until.clone();
        let echo = o.echo;
        let mut log = match &o.log {
            Some(p) => Some(File::create(p).with_context(|| format!("creating {}", p.display()))?),
            None => None,
        };
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            let out = std::io::stdout();
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if echo {
                    let mut o = out.lock();
                    let _ = o.write_all(&buf[..n]);
                    let _ = o.flush();
                }
                if let Some(l) = log.as_mut() {
                    let _ = l.write_all(&buf[..n]);
                }
                for &b in &buf[..n] {
                    if b == b'\n' {
                        let text = clean_line(&line);
                        let mut t = tail.lock().unwrap();
                        t.push(text);
                        if t.len() > 40 {
                            t.remove(0);
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
                // Prompts such as "login:" arrive without a newline, so the
                // unfinished line is matched too.
                if let Some(re) = &until {
                    let mut m = matched.lock().unwrap();
                    if m.is_none() {
                        let recent = tail.lock().unwrap();
                        let current = clean_line(&line);
                        if let Some(hit) = recent
                            .iter()
                            .rev()
                            .take(8)
                            .chain(std::iter::once(&current))
                            .find(|l| re.is_match(l))
                        {
                            *m = Some(hit.clone());
                            done.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for QEMU")? {
            break Some(st);
        }
        if matched.lock().unwrap().is_some() {
            break None;
        }
        if start.elapsed() > o.timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            let t = tail.lock().unwrap().join("\n");
            let want = o
                .until
                .as_ref()
                .map(|r| format!(" for /{}/", r.as_str()))
                .unwrap_or_default();
            bail!(
                "timed out after {}s waiting{want} (the guest neither matched nor powered off); last console lines:\n{t}",
                o.timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    if let Some(hit) = matched.lock().unwrap().clone() {
        return Ok(Outcome::Matched(hit));
    }
    let status = status.expect("exited");
    if !status.success() {
        let mut err = String::new();
        let mut e = errlog;
        use std::io::Seek;
        let _ = e.seek(std::io::SeekFrom::Start(0));
        let _ = e.read_to_string(&mut err);
        bail!("QEMU failed ({status}): {}", err.trim());
    }
    if let Some(re) = &o.until {
        let t = tail.lock().unwrap().join("\n");
        bail!(
            "the guest powered off without printing a line matching /{}/; last console lines:\n{t}",
            re.as_str()
        );
    }
    Ok(Outcome::PoweredOff)
}

/// Console bytes to text: drops escape sequences and carriage returns.
fn clean_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(net: Net) -> VmOpts {
        VmOpts {
            image: "/img/disk.raw".into(),
            timeout: Duration::from_secs(1),
            until: None,
            net,
            memory_mib: 2048,
            cpus: 2,
            snapshot: false,
            log: None,
            firmware: None,
            echo: false,
        }
    }

    fn joined(a: Vec<OsString>) -> String {
        a.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn no_network_unless_restricted() {
        let a = joined(qemu_argv(
            &opts(Net::None),
            ImageFormat::Raw,
            Path::new("/c"),
            Path::new("/v"),
        ));
        assert!(a.contains("-nic none"), "{a}");
        assert!(!a.contains("netdev"), "{a}");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("file=/img/disk.raw,format=raw,if=virtio"), "{a}");
        assert!(a.contains("readonly=on,file=/c"), "{a}");
        let a = joined(qemu_argv(
            &opts(Net::Restricted),
            ImageFormat::Qcow2,
            Path::new("/c"),
            Path::new("/v"),
        ));
        assert!(a.contains("-netdev user,id=n0,restrict=on"), "{a}");
        assert!(!a.contains("hostfwd") && !a.contains("-nic none"), "{a}");
        assert!(a.contains("format=qcow2"), "{a}");
    }

    #[test]
    fn commas_in_paths_cannot_add_qemu_options() {
        let mut o = opts(Net::None);
        o.image = "/tmp/x/d,snapshot=off".into();
        o.snapshot = true;
        let a = qemu_argv(
            &o,
            ImageFormat::Raw,
            Path::new("/fw,a/CODE.fd"),
            Path::new("/tmp/v,readonly=off"),
        );
        let drives: Vec<String> = a
            .windows(2)
            .filter(|w| w[0] == "-drive")
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            drives,
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/fw,,a/CODE.fd",
                "if=pflash,format=raw,unit=1,file=/tmp/v,,readonly=off",
                "file=/tmp/x/d,,snapshot=off,format=raw,if=virtio",
            ]
        );
        assert!(a.iter().any(|s| s == "-snapshot"));
        // Bytes that are not UTF-8 reach QEMU unchanged.
        use std::os::unix::ffi::OsStrExt;
        o.image = std::ffi::OsStr::from_bytes(b"/i/\xff,x").into();
        let a = qemu_argv(&o, ImageFormat::Raw, Path::new("/c"), Path::new("/v"));
        assert!(a
            .iter()
            .any(|s| s.as_bytes() == b"file=/i/\xff,,x,format=raw,if=virtio"));
    }

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(
            clean_line(b"\x1b[0;32m  OK  \x1b[0m] Started x.\r"),
            "  OK  ] Started x."
        );
    }

    #[test]
    fn compressed_images_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.raw.zst");
        std::fs::write(&p, zstd::encode_all(&b"x"[..], 1).unwrap()).unwrap();
        assert!(detect_format(&p)
            .unwrap_err()
            .to_string()
            .contains("zstd -d"));
        std::fs::write(&p, b"QFI\xfb....").unwrap();
        assert_eq!(detect_format(&p).unwrap(), ImageFormat::Qcow2);
    }

    #[test]
    fn only_gpt_disks_and_qcow2_are_booted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        let err = |bytes: &[u8]| {
            std::fs::write(&p, bytes).unwrap();
            format!("{:#}", detect_format(&p).unwrap_err())
        };
        assert!(err(b"").contains("is empty"), "{}", err(b""));
        assert!(err(b"KDMV\x01\0\0\0").contains("VMDK"));
        assert!(err(b"vhdxfile\0\0").contains("VHDX"));
        assert!(err(&[7u8; 100]).contains("too small"));
        let mut disk = vec![0x5au8; 4096];
        let e = err(&disk);
        assert!(
            e.contains("no GPT: not a disk image airlock can boot"),
            "{e}"
        );
        disk[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(&p, &disk).unwrap();
        assert_eq!(detect_format(&p).unwrap(), ImageFormat::Raw);
    }
}
