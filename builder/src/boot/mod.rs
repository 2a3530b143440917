// SPDX-License-Identifier: Apache-2.0
//! Boot: finding the kernel and initramfs in the root tree, and laying out
//! the ESP for systemd-boot with a Boot Loader Specification entry.

use std::cmp::Ordering;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::tree::Root;

/// Where systemd-boot lives in a root tree (Debian systemd-boot-efi,
/// Fedora systemd-boot-unsigned).
pub const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The removable-media path firmware boots with empty variables.
pub const REMOVABLE_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    pub version: String,
    /// Paths inside the root tree, without a leading slash.
    pub image: String,
    pub initrd: String,
}

/// Finds the kernel to boot. `wanted` picks a version; otherwise the newest
/// is taken and a note says so when there was a choice.
pub fn find_kernel(root: &Root, wanted: Option<&str>) -> Result<(Kernel, Option<String>)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for p in root.glob("boot/vmlinuz-*")? {
        let v = p
            .trim_start_matches('/')
            .trim_start_matches("boot/vmlinuz-")
            .to_string();
        found.push((v, p.trim_start_matches('/').to_string()));
    }
    for p in root.glob("usr/lib/modules/*/vmlinuz")? {
        let p = p.trim_start_matches('/').to_string();
        let v = p
            .trim_start_matches("usr/lib/modules/")
            .trim_end_matches("/vmlinuz")
            .to_string();
        if !found.iter().any(|(fv, _)| *fv == v) {
            found.push((v, p));
        }
    }
    if found.is_empty() {
        bail!(
            "no kernel in the root tree: looked for /boot/vmlinuz-<version> (Debian) and \
             /usr/lib/modules/<version>/vmlinuz (Fedora); add a kernel to the base \
             (linux-image-amd64 on Debian, kernel-core on Fedora)"
        );
    }
    found.sort_by(|a, b| version_cmp(&a.0, &b.0));
    let all: Vec<&str> = found.iter().map(|(v, _)| v.as_str()).collect();
    let ((version, image), note) = match wanted {
        Some(w) => match found.iter().find(|(v, _)| v == w) {
            Some(k) => (k.clone(), None),
            None => bail!(
                "boot.kernel {w:?} is not in the root tree; it has: {}",
                all.join(", ")
            ),
        },
        None => {
            let newest = found.last().unwrap().clone();
            let note = (found.len() > 1).then(|| {
                format!(
                    "the base has {} kernels ({}); booting the newest, {}: set boot.kernel to choose",
                    found.len(),
                    all.join(", "),
                    newest.0
                )
            });
            (newest, note)
        }
    };
    let candidates = [
        format!("boot/initrd.img-{version}"),
        format!("boot/initramfs-{version}.img"),
        format!("usr/lib/modules/{version}/initramfs.img"),
    ];
    let Some(initrd) = candidates.iter().find(|c| root.exists(c)) else {
        bail!(
            "kernel {version} has no initramfs: looked for /{}; generate one in the base \
             (update-initramfs -c -k {version} on Debian, dracut with dracut-config-generic on Fedora)",
            candidates.join(", /")
        );
    };
    Ok((
        Kernel {
            version,
            image,
            initrd: initrd.clone(),
        },
        note,
    ))
}

/// Compares kernel versions the way people read them: digit runs as numbers
/// ("6.10" is newer than "6.9").
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u64, &str>> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.chars().next().unwrap().is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (head, tail) = rest.split_at(end);
            out.push(if digits {
                head.parse::<u64>().map_err(|_| head)
            } else {
                Err(head)
            });
            rest = tail;
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(x), Err(y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The kernel command line: root by PARTUUID, then console, then the recipe's.
pub fn cmdline(root_partuuid: &uuid::Uuid, serial: bool, extra: &[String]) -> String {
    let mut args = vec![format!("root=PARTUUID={root_partuuid}"), "rw".to_string()];
    if serial {
        // The last console= becomes /dev/console: systemd's status lines and
        // first-boot messages then reach the serial port.
        args.push("console=tty0".into());
        args.push("console=ttyS0,115200".into());
    }
    args.extend(extra.iter().cloned());
    args.join(" ")
}

/// ESP paths of one boot entry (no leading slash).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub title: String,
    /// As written in the entry (leading slash, ESP-relative).
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

pub fn entry(name: &str, kernel: &Kernel, options: String) -> Entry {
    Entry {
        id: format!("{name}-{}", kernel.version),
        title: format!("{name} (airlock, kernel {})", kernel.version),
        linux: format!("/airlock/{}/linux", kernel.version),
        initrd: format!("/airlock/{}/initrd", kernel.version),
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Attrs;

    fn root_with(files: &[&str]) -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(&d.path().join("root")).unwrap();
        for f in files {
            root.write_file(f, &mut &b"x"[..], &Attrs::root(0o644, 0))
                .unwrap();
        }
        (d, root)
    }

    #[test]
    fn versions_compare_numerically() {
        let cases = [
            ("6.10.0", "6.9.12", Ordering::Greater),
            ("6.1.0-28-amd64", "6.1.0-9-amd64", Ordering::Greater),
            (
                "6.11.4-301.fc43.x86_64",
                "6.11.4-301.fc43.x86_64",
                Ordering::Equal,
            ),
            ("6.1.0", "6.1.0-1", Ordering::Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(version_cmp(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn debian_layout() {
        let (_d, root) = root_with(&[
            "/boot/vmlinuz-6.1.0-28-amd64",
            "/boot/initrd.img-6.1.0-28-amd64",
        ]);
        let (k, note) = find_kernel(&root, None).unwrap();
        assert_eq!(k.version, "6.1.0-28-amd64");
        assert_eq!(k.image, "boot/vmlinuz-6.1.0-28-amd64");
        assert_eq!(k.initrd, "boot/initrd.img-6.1.0-28-amd64");
        assert!(note.is_none());
    }

    #[test]
    fn fedora_layouts_and_newest_wins_with_a_note() {
        let (_d, root) = root_with(&[
            "/usr/lib/modules/6.9.5-200.fc43.x86_64/vmlinuz",
            "/boot/initramfs-6.9.5-200.fc43.x86_64.img",
            "/usr/lib/modules/6.10.2-100.fc43.x86_64/vmlinuz",
            "/usr/lib/modules/6.10.2-100.fc43.x86_64/initramfs.img",
        ]);
        let (k, note) = find_kernel(&root, None).unwrap();
        assert_eq!(k.version, "6.10.2-100.fc43.x86_64");
        assert_eq!(
            k.initrd,
            "usr/lib/modules/6.10.2-100.fc43.x86_64/initramfs.img"
        );
        assert!(note.unwrap().contains("newest"));
        let (k, _) = find_kernel(&root, Some("6.9.5-200.fc43.x86_64")).unwrap();
        assert_eq!(k.initrd, "boot/initramfs-6.9.5-200.fc43.x86_64.img");
        let err = find_kernel(&root, Some("5.0")).unwrap_err().to_string();
        assert!(err.contains("6.10.2-100.fc43.x86_64"), "{err}");
    }

    #[test]
    fn no_kernel_or_no_initrd_is_a_clear_error() {
        let (_d, root) = root_with(&["/etc/hostname"]);
        let err = find_kernel(&root, None).unwrap_err().to_string();
        assert!(err.contains("no kernel"), "{err}");
        let (_d, root) = root_with(&["/boot/vmlinuz-6.1.0-28-amd64"]);
        let err = find_kernel(&root, None).unwrap_err().to_string();
        assert!(err.contains("no initramfs"), "{err}");
    }

    #[test]
    fn cmdline_order() {
        let u = uuid::Uuid::nil();
        assert_eq!(
            cmdline(&u, true, &["quiet".into()]),
            format!("root=PARTUUID={u} rw console=tty0 console=ttyS0,115200 quiet")
        );
        assert_eq!(cmdline(&u, false, &[]), format!("root=PARTUUID={u} rw"));
    }
}
