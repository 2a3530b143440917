// SPDX-License-Identifier: Apache-2.0
//! The copy engine against in-memory targets that fail on purpose.

use std::io;
use std::path::{Path, PathBuf};

use super::*;
use crate::write::source::{self, Format};

/// A target in memory that records what happened and fails where told.
#[derive(Default)]
struct Mem {
    data: Vec<u8>,
    /// Fail a write that covers this offset, having written up to it.
    fail_write_at: Option<u64>,
    fail_sync: bool,
    /// Store this byte flipped when a write covers it: a stick that
    /// silently keeps something else than it was sent.
    corrupt_at: Option<u64>,
    /// Offsets of the writes, and "sync" markers as u64::MAX.
    log: Vec<u64>,
}

impl Target for Mem {
    fn write_at(&mut self, buf: &[u8], off: u64) -> std::result::Result<(), (u64, io::Error)> {
        let end = off + buf.len() as u64;
        let stop = self.fail_write_at.filter(|f| (off..end).contains(f));
        let upto = stop.unwrap_or(end);
        self.data[off as usize..upto as usize].copy_from_slice(&buf[..(upto - off) as usize]);
        if let Some(c) = self.corrupt_at.filter(|c| (off..upto).contains(c)) {
            self.data[c as usize] ^= 0x10;
        }
        self.log.push(off);
        match stop {
            Some(f) => Err((f, io::Error::from_raw_os_error(libc::EIO))),
            None => Ok(()),
        }
    }
    fn zero(&mut self, _: u64, _: u64) -> io::Result<bool> {
        Ok(false)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        buf.copy_from_slice(&self.data[off as usize..off as usize + buf.len()]);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.log.push(u64::MAX);
        if self.fail_sync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
    fn drop_cache(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn writes_through(&self) -> bool {
        true
    }
}

const SIZE: u64 = 24 << 20;

/// A 24 MiB image with data at 0, 5 MiB (6 MiB long, so several chunks) and
/// near the end, and its block map.
fn image(dir: &Path) -> (PathBuf, Bmap) {
    let p = dir.join("a.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(SIZE).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"head", 0).unwrap();
    let body: Vec<u8> = (0..6 << 20).map(|i: u32| (i % 253) as u8 | 1).collect();
    f.write_all_at(&body, 5 << 20).unwrap();
    f.write_all_at(b"tail", SIZE - 100).unwrap();
    let b = crate::bmap::create(&p, &ProgressBar::hidden()).unwrap();
    (p, b)
}

fn names() -> Names<'static> {
    Names {
        image: "a.raw",
        target: "/dev/test",
    }
}

fn run(p: &Path, b: &Bmap, t: &mut Mem) -> Result<Copied> {
    let src = source::open(p, Format::Raw).unwrap();
    copy(src, b, None, Some(t), &names(), &ProgressBar::hidden())
}

#[test]
fn copies_mapped_ranges_only_and_writes_the_head_last() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = image(d.path());
    let mut t = Mem {
        data: vec![0xaa; SIZE as usize],
        ..Default::default()
    };
    let c = run(&p, &b, &mut t).unwrap();
    let img = std::fs::read(&p).unwrap();
    for r in &b.ranges {
        let (s, n) = b.bytes(r);
        assert_eq!(
            t.data[s as usize..(s + n) as usize],
            img[s as usize..(s + n) as usize]
        );
    }
    // Unmapped bytes keep what was there.
    assert_eq!(t.data[3 << 20], 0xaa);
    assert_eq!(c.written, b.mapped_bytes());
    // Erase the head, flush, ..., flush, write the head, flush.
    assert_eq!(t.log[..2], [0, u64::MAX]);
    assert_eq!(t.log[t.log.len() - 3..], [u64::MAX, 0, u64::MAX]);
    assert_eq!(c.checks.len(), b.ranges.len());
    let (compared, m) = read_back(&mut t, &c.checks, &names(), &ProgressBar::hidden()).unwrap();
    assert!(m.is_none());
    assert_eq!(compared, b.mapped_bytes());
}

#[test]
fn a_failed_write_names_the_offset() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = image(d.path());
    let bad = (7 << 20) + 12_345;
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        fail_write_at: Some(bad),
        ..Default::default()
    };
    let err = format!("{:#}", run(&p, &b, &mut t).unwrap_err());
    assert!(
        err.contains(&format!("writing to /dev/test failed at offset {bad}")),
        "{err}"
    );
    assert!(err.contains("Input/output error"), "{err}");
    // The partition table was never written.
    assert!(!t.log[2..].contains(&0), "{:?}", t.log);
}

#[test]
fn a_failed_flush_names_the_range() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = image(d.path());
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        fail_sync: true,
        ..Default::default()
    };
    let err = format!("{:#}", run(&p, &b, &mut t).unwrap_err());
    assert!(err.contains("flushing /dev/test"), "{err}");
    assert!(err.contains("Input/output error"), "{err}");
}

#[test]
fn a_changed_byte_on_the_target_is_found() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = image(d.path());
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        ..Default::default()
    };
    let c = run(&p, &b, &mut t).unwrap();
    let bad = (9 << 20) + 777;
    t.data[bad] ^= 0x40;
    let m = read_back(&mut t, &c.checks, &names(), &ProgressBar::hidden())
        .unwrap()
        .1
        .unwrap();
    assert_eq!(m.count, 1);
    assert!(m.check.off <= bad as u64 && bad as u64 <= m.check.off + m.check.len);
    let img = std::fs::read(&p).unwrap();
    let mut expected = |off: u64, buf: &mut [u8]| -> Result<()> {
        buf.copy_from_slice(&img[off as usize..off as usize + buf.len()]);
        Ok(())
    };
    assert_eq!(
        first_difference(&t, &m.check, &mut expected).unwrap(),
        Some(bad as u64)
    );
}

#[test]
fn an_image_that_does_not_match_its_map_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = image(d.path());
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all_at(b"X", (5 << 20) + 3)
            .unwrap();
    }
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        ..Default::default()
    };
    let err = format!("{:#}", run(&p, &b, &mut t).unwrap_err());
    assert!(err.contains("a.raw does not match its block map"), "{err}");
}

#[test]
fn zero_detection() {
    assert!(is_zero(&[0; 4099]));
    let mut v = vec![0u8; 4099];
    v[4098] = 1;
    assert!(!is_zero(&v));
    v[4098] = 0;
    v[8] = 1;
    assert!(!is_zero(&v));
}

fn options(image: &Path, verify: bool) -> crate::write::WriteOptions {
    crate::write::WriteOptions {
        image: image.to_path_buf(),
        device: "/dev/test".into(),
        bmap: None,
        yes: true,
        force: false,
        verify,
        verify_only: false,
        quiet: true,
    }
}

#[test]
fn verified_means_read_back_and_matched() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = image(d.path());
    let bad = (6 << 20) + 4321;
    let progress = crate::progress::Progress::quiet();
    let go = |verify: bool, t: &mut Mem| {
        crate::write::write_and_verify(
            &options(&p, verify),
            Format::Raw,
            &b,
            None,
            t,
            &names(),
            &progress,
        )
    };
    // A faithful target: everything written is read back and matches.
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        ..Default::default()
    };
    let done = go(true, &mut t).unwrap();
    assert!(done.verified());
    assert_eq!(done.bytes_verified, b.mapped_bytes());
    // A target that keeps a wrong byte: --no-verify does not notice, and
    // does not claim it checked.
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        corrupt_at: Some(bad),
        ..Default::default()
    };
    let done = go(false, &mut t).unwrap();
    assert!(!done.verified());
    assert_eq!(done.bytes_verified, 0);
    // The read-back does, and names the byte.
    let mut t = Mem {
        data: vec![0; SIZE as usize],
        corrupt_at: Some(bad),
        ..Default::default()
    };
    let err = format!("{:#}", go(true, &mut t).unwrap_err());
    assert!(
        err.contains(&format!("the first bad byte is at offset {bad}")),
        "{err}"
    );
}

#[test]
fn gpt_areas_a_map_leaves_out_are_still_written_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut b) = image(d.path());
    // A map from elsewhere listing only the middle of the image.
    let img = std::fs::read(&p).unwrap();
    let (first, last) = (1280u64, 2815u64);
    let bytes = &img[(first * 4096) as usize..((last + 1) * 4096) as usize];
    b.ranges = vec![crate::bmap::Range {
        first,
        last,
        sha256: hex::encode(Sha256::digest(bytes)),
    }];
    let backup = SIZE - 5 * 4096;
    assert_eq!(
        runs(&b),
        [
            Run {
                off: 0,
                len: 5 * 4096,
                range: None
            },
            Run {
                off: first * 4096,
                len: bytes.len() as u64,
                range: Some(0)
            },
            Run {
                off: backup,
                len: 5 * 4096,
                range: None
            },
        ]
    );
    let mut t = Mem {
        data: vec![0xaa; SIZE as usize],
        ..Default::default()
    };
    let c = run(&p, &b, &mut t).unwrap();
    assert_eq!(c.written, bytes.len() as u64 + 10 * 4096);
    assert_eq!(t.data[..5 * 4096], img[..5 * 4096]);
    assert_eq!(t.data[backup as usize..], img[backup as usize..]);
    assert_eq!(t.data[5 * 4096], 0xaa, "unlisted blocks are left alone");
    // The head goes last, as for a mapped head.
    assert_eq!(t.log[t.log.len() - 2..], [0, u64::MAX]);
    t.data[SIZE as usize - 300] ^= 1;
    let m = read_back(&mut t, &c.checks, &names(), &ProgressBar::hidden())
        .unwrap()
        .1
        .unwrap();
    assert_eq!(m.check.off, backup);
    assert!(
        m.check.what.contains("not in the block map"),
        "{}",
        m.check.what
    );
}
