// SPDX-License-Identifier: Apache-2.0
//! The safety checks against a fake sysfs, mountinfo, swaps and udev tree.

use std::os::unix::fs::symlink;

use super::*;

struct Fake {
    dir: tempfile::TempDir,
    host: Host,
}

impl Fake {
    /// A USB stick sdb (two partitions), a fixed virtio disk vda with one
    /// partition, and an NVMe disk whose second partition is under LVM
    /// (dm-0).
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host = Host {
            sys: d.join("sys"),
            mountinfo: d.join("mountinfo"),
            swaps: d.join("swaps"),
            udev: d.join("udev"),
        };
        let f = Fake { dir, host };
        f.disk("pci0/usb1/1-1/host0/block", "sdb", (8, 16), "1", 60_000_000);
        f.part("sdb", "sdb1", 1, (8, 17));
        f.part("sdb", "sdb2", 2, (8, 18));
        f.write(
            "sys/devices/pci0/usb1/1-1/host0/block/sdb/device/model",
            "Ultra\n",
        );
        f.write(
            "sys/devices/pci0/usb1/1-1/host0/block/sdb/device/vendor",
            "SanDisk\n",
        );
        f.write(
            "udev/b8:16",
            "E:ID_SERIAL_SHORT=4C530001\nE:ID_MODEL=Ultra\n",
        );
        f.write("udev/b8:17", "E:ID_FS_TYPE=vfat\nE:ID_FS_LABEL=BACKUP\n");
        f.disk("pci0/virtio1/block", "vda", (254, 0), "0", 100_000_000);
        f.part("vda", "vda1", 1, (254, 1));
        f.disk(
            "pci0/nvme/nvme0/block",
            "nvme0n1",
            (259, 0),
            "0",
            200_000_000,
        );
        f.part("nvme0n1", "nvme0n1p1", 1, (259, 1));
        f.part("nvme0n1", "nvme0n1p2", 2, (259, 2));
        f.disk("virtual", "dm-0", (253, 0), "0", 1_000_000);
        let slaves = f.host.sys.join("devices/virtual/block/dm-0/slaves");
        fs::create_dir_all(&slaves).unwrap();
        symlink(
            "../../../../pci0/nvme/nvme0/block/nvme0n1/nvme0n1p2",
            slaves.join("nvme0n1p2"),
        )
        .unwrap();
        f.write("swaps", "Filename Type Size Used Priority\n");
        f.mounts(&[]);
        f
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn link(&self, devices_rel: &str, name: &str, devno: (u32, u32)) {
        let sys = &self.host.sys;
        fs::create_dir_all(sys.join("class/block")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        symlink(
            format!("../../devices/{devices_rel}"),
            sys.join("class/block").join(name),
        )
        .unwrap();
        symlink(
            format!("../../devices/{devices_rel}"),
            sys.join(format!("dev/block/{}:{}", devno.0, devno.1)),
        )
        .unwrap();
    }

    fn disk(&self, under: &str, name: &str, devno: (u32, u32), removable: &str, sectors: u64) {
        let rel = format!("{under}/{name}");
        let base = format!("sys/devices/{rel}");
        self.write(
            &format!("{base}/dev"),
            &format!("{}:{}\n", devno.0, devno.1),
        );
        self.write(&format!("{base}/removable"), &format!("{removable}\n"));
        self.write(&format!("{base}/size"), &format!("{sectors}\n"));
        self.write(&format!("{base}/ro"), "0\n");
        fs::create_dir_all(self.host.sys.join(format!("devices/{rel}/holders"))).unwrap();
        self.link(&rel, name, devno);
    }

    fn part(&self, disk: &str, name: &str, n: u32, devno: (u32, u32)) {
        let disk_dir = fs::canonicalize(self.host.sys.join("class/block").join(disk)).unwrap();
        let rel = disk_dir
            .strip_prefix(self.host.sys.join("devices"))
            .unwrap()
            .join(name);
        let rel = rel.to_str().unwrap();
        let base = format!("sys/devices/{rel}");
        self.write(
            &format!("{base}/dev"),
            &format!("{}:{}\n", devno.0, devno.1),
        );
        self.write(&format!("{base}/partition"), &format!("{n}\n"));
        self.write(&format!("{base}/size"), "2048\n");
        fs::create_dir_all(self.host.sys.join(format!("devices/{rel}/holders"))).unwrap();
        self.link(rel, name, devno);
    }

    /// Mount table lines: (maj:min, mount point, source).
    fn mounts(&self, m: &[(&str, &str, &str)]) {
        let mut text = String::from("22 1 0:21 / /proc rw,nosuid - proc proc rw\n");
        for (i, (dev, point, src)) in m.iter().enumerate() {
            text.push_str(&format!(
                "{} 1 {dev} / {point} rw,relatime shared:1 - ext4 {src} rw\n",
                30 + i
            ));
        }
        self.write("mountinfo", &text);
    }

    fn check(&self, name: &str, devno: (u32, u32), image: u64, force: bool) -> Result<()> {
        check(
            &self.host,
            Path::new(&format!("/dev/{name}")),
            name,
            devno,
            image,
            force,
        )
    }
}

const IMAGE: u64 = 2 << 30;

#[test]
fn a_removable_unmounted_disk_is_accepted() {
    let f = Fake::new();
    f.mounts(&[("254:1", "/", "/dev/vda1"), ("0:40", "/home", "tank/home")]);
    f.check("sdb", (8, 16), IMAGE, false).unwrap();
}

#[test]
fn refusals() {
    type Setup = fn(&Fake);
    type Case<'a> = (&'a str, Setup, &'a str, (u32, u32), bool, &'a str);
    let cases: &[Case] = &[
        (
            "partition",
            |_| {},
            "sdb1",
            (8, 17),
            false,
            "partition 1 of /dev/sdb, and airlock writes whole disks; give /dev/sdb",
        ),
        (
            "system disk",
            |f| f.mounts(&[("8:18", "/", "/dev/sdb2")]),
            "sdb",
            (8, 16),
            true,
            "running system's /",
        ),
        (
            "system disk under LVM",
            |f| {
                f.mounts(&[
                    ("253:0", "/", "/dev/mapper/vg-root"),
                    ("259:1", "/boot/efi", "/dev/nvme0n1p1"),
                ])
            },
            "nvme0n1",
            (259, 0),
            true,
            "running system's /",
        ),
        (
            "boot",
            |f| f.mounts(&[("8:17", "/boot", "/dev/sdb1")]),
            "sdb",
            (8, 16),
            true,
            "running system's /boot",
        ),
        (
            "mounted partition, escaped path",
            |f| f.mounts(&[("8:17", "/media/my\\040stick", "/dev/sdb1")]),
            "sdb",
            (8, 16),
            true,
            "/dev/sdb1 is mounted at /media/my stick; unmount it first",
        ),
        (
            "held partition",
            |f| {
                let h = f.host.sys.join("class/block/sdb2/holders/dm-3");
                fs::create_dir_all(h).unwrap();
            },
            "sdb",
            (8, 16),
            true,
            "/dev/sdb2 is in use by dm-3",
        ),
        (
            "swap",
            |f| f.write("swaps", "Filename Type\n/dev/sdb2 partition 1 0 -2\n"),
            "sdb",
            (8, 16),
            true,
            "swap",
        ),
        (
            "read-only",
            |f| f.write("sys/class/block/sdb/ro", "1\n"),
            "sdb",
            (8, 16),
            true,
            "read-only",
        ),
        (
            "fixed disk",
            |_| {},
            "vda",
            (254, 0),
            false,
            "non-removable) disk; if it really is the disk you mean to erase, use --force",
        ),
    ];
    for (name, setup, dev, devno, force, want) in cases {
        let f = Fake::new();
        setup(&f);
        let err = format!("{:#}", f.check(dev, *devno, IMAGE, *force).unwrap_err());
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(&format!("/dev/{dev}")),
            "{name}: names the device: {err}"
        );
    }
}

#[test]
fn too_small_names_both_sizes() {
    let f = Fake::new();
    let err = format!(
        "{:#}",
        f.check("sdb", (8, 16), 40 << 30, false).unwrap_err()
    );
    assert!(
        err.contains("holds 28.6 GiB") && err.contains("needs 40.0 GiB"),
        "{err}"
    );
}

#[test]
fn force_allows_a_fixed_disk() {
    let f = Fake::new();
    f.check("vda", (254, 0), IMAGE, true).unwrap();
}

#[test]
fn describe_names_model_serial_size_and_partitions() {
    let f = Fake::new();
    let s = describe(&f.host, Path::new("/dev/sdb"), "sdb", (8, 16), None);
    assert!(s.contains("SanDisk Ultra"), "{s}");
    assert!(s.contains("serial 4C530001"), "{s}");
    assert!(s.contains("USB") && s.contains("removable"), "{s}");
    assert!(s.contains("28.6 GiB"), "{s}");
    assert!(s.contains("sdb1") && s.contains("vfat BACKUP"), "{s}");
    let g = describe(
        &f.host,
        Path::new("/dev/sdb"),
        "sdb",
        (8, 16),
        Some(&["1  \"ESP\"".to_string()]),
    );
    assert!(
        g.contains("current partitions (GPT)") && g.contains("\"ESP\""),
        "{g}"
    );
}

#[test]
fn mountinfo_parsing() {
    let m = mounts(
        "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
    );
    assert_eq!(
        m,
        [Mount {
            devno: (98, 0),
            point: "/mnt/a b".into(),
            source: "/dev/root".into()
        }]
    );
}

#[test]
fn identify_files() {
    let d = tempfile::tempdir().unwrap();
    let host = Host::real();
    assert_eq!(
        identify(&host, &d.path().join("new.img")).unwrap(),
        Kind::NewFile
    );
    fs::write(d.path().join("old.img"), b"1234").unwrap();
    assert_eq!(
        identify(&host, &d.path().join("old.img")).unwrap(),
        Kind::File(4)
    );
    let err = identify(&host, d.path()).unwrap_err();
    assert!(format!("{err:#}").contains("neither a block device nor a regular file"));
    assert!(identify(&host, &d.path().join("no/such/dir/x")).is_err());
    let err = identify(&host, Path::new("/dev/airlock-no-such-disk")).unwrap_err();
    assert!(format!("{err:#}").contains("no such device"), "{err:#}");
    assert!(!Path::new("/dev/airlock-no-such-disk").exists());
}

#[test]
fn the_real_system_disk_is_refused() {
    // Read-only: finds the disk under this machine's / and asks `check`
    // about it; nothing is opened for writing.
    let host = Host::real();
    let info = fs::read_to_string(&host.mountinfo).unwrap();
    let Some(root) = mounts(&info).into_iter().find(|m| m.point == "/") else {
        return;
    };
    let disks = disks_under(&host, root.devno, 0);
    let real: Vec<_> = disks
        .iter()
        .filter(|d| host.attr(d, "dev").is_some() && host.class(d).join("size").is_file())
        .collect();
    if real.is_empty() {
        eprintln!(
            "skipping: / is not on a block device here ({})",
            root.source
        );
        return;
    }
    for d in real {
        let devno = host
            .attr(d, "dev")
            .as_deref()
            .and_then(parse_devno)
            .unwrap();
        let err = check(&host, Path::new(&format!("/dev/{d}")), d, devno, 1, true).unwrap_err();
        assert!(format!("{err:#}").contains("running system's /"), "{err:#}");
    }
}
