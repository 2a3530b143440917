// SPDX-License-Identifier: Apache-2.0
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;

use super::*;
use crate::cmd::CommandRunExt;

/// A tool a test needs: missing means skip locally, fail in CI.
fn have(tool: &str) -> bool {
    let ok = crate::cmd::which(tool).is_some();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "{tool} is required in CI");
        eprintln!("skipping: {tool} is not installed");
    }
    ok
}

fn sample() -> Bmap {
    Bmap {
        image_size: 10 * 4096 + 100,
        block_size: 4096,
        ranges: vec![
            Range {
                first: 0,
                last: 1,
                sha256: "ab".repeat(32),
            },
            Range {
                first: 5,
                last: 5,
                sha256: "cd".repeat(32),
            },
            Range {
                first: 9,
                last: 10,
                sha256: "ef".repeat(32),
            },
        ],
    }
}

#[test]
fn xml_round_trips() {
    let b = sample();
    let xml = b.to_xml();
    assert!(xml.contains("<Range chksum=\"cdcd"), "{xml}");
    assert!(
        xml.contains("> 5 </Range>"),
        "single blocks are written bare: {xml}"
    );
    assert!(xml.contains("<BlocksCount> 11 </BlocksCount>"), "{xml}");
    assert!(
        xml.contains("<MappedBlocksCount> 5 </MappedBlocksCount>"),
        "{xml}"
    );
    assert_eq!(Bmap::parse(&xml, "x.bmap").unwrap(), b);
    // The last block is clipped to the image.
    assert_eq!(b.bytes(&b.ranges[2]), (9 * 4096, 4096 + 100));
    assert_eq!(b.mapped_bytes(), 4 * 4096 + 100);
}

#[test]
fn parse_refuses_damage() {
    let xml = sample().to_xml();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "range changed",
            xml.replace("> 5 </Range>", "> 6 </Range>"),
            "is damaged",
        ),
        (
            "checksum changed",
            xml.replace("cdcd", "cdce"),
            "is damaged",
        ),
        ("not xml", "<bmap".into(), "not valid XML"),
        (
            "old format",
            xml.replace("version=\"2.0\"", "version=\"1.3\""),
            "format \"1.3\"",
        ),
        (
            "sha1",
            xml.replace("<ChecksumType> sha256", "<ChecksumType> sha1"),
            "sha1",
        ),
    ];
    for (name, text, want) in cases {
        let err = format!("{:#}", Bmap::parse(&text, "x.bmap").unwrap_err());
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains("x.bmap"), "{name}: names the file: {err}");
    }
    // Structural errors, with a valid file checksum.
    let mut overlapping = sample();
    overlapping.ranges[1].first = 1;
    let err = format!(
        "{:#}",
        Bmap::parse(&overlapping.to_xml(), "y.bmap").unwrap_err()
    );
    assert!(err.contains("overlaps"), "{err}");
    let mut outside = sample();
    outside.ranges[2].last = 11;
    let err = format!(
        "{:#}",
        Bmap::parse(&outside.to_xml(), "y.bmap").unwrap_err()
    );
    assert!(err.contains("past block 10"), "{err}");
}

#[test]
fn candidates_follow_bmaptool() {
    let c = candidates(Path::new("/o/demo.raw.zst"));
    assert_eq!(
        c,
        ["/o/demo.raw.zst.bmap", "/o/demo.raw.bmap", "/o/demo.bmap"].map(PathBuf::from)
    );
}

/// An image with a GPT but no filesystems: data written at three places.
fn sparse_image(dir: &Path) -> PathBuf {
    let p = dir.join("a.raw");
    let mut f = File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut gpt = gptman::GPT::new_from(&mut f, 512, [7; 16]).unwrap();
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: [1; 16],
        unique_partition_guid: [2; 16],
        starting_lba: 2048,
        ending_lba: (40 << 20) / 512 - 1,
        attribute_bits: 0,
        partition_name: "data".into(),
    };
    gptman::GPT::write_protective_mbr_into(&mut f, 512).unwrap();
    gpt.write_into(&mut f).unwrap();
    f.write_all_at(&[1; 10], 10 << 20).unwrap();
    f.write_all_at(&[2; 5000], (20 << 20) + 4000).unwrap();
    p
}

#[test]
fn create_maps_data_and_zones() {
    let d = tempfile::tempdir().unwrap();
    let p = sparse_image(d.path());
    let b = create(&p, &indicatif::ProgressBar::hidden()).unwrap();
    let got: Vec<(u64, u64)> = b
        .ranges
        .iter()
        .map(|r| b.bytes(r))
        .map(|(s, l)| (s, s + l))
        .collect();
    let mib = 1u64 << 20;
    assert_eq!(
        got,
        [
            (0, 2 * mib),                    // disk head + partition head
            (10 * mib, 10 * mib + 4096),     // data
            (20 * mib, 20 * mib + 3 * 4096), // data across blocks
            (39 * mib, 40 * mib),            // partition tail
            (63 * mib, 64 * mib),            // disk tail (backup GPT)
        ]
    );
    let data = fs::read(&p).unwrap();
    for (r, (s, e)) in b.ranges.iter().zip(&got) {
        assert_eq!(
            r.sha256,
            hex::encode(Sha256::digest(&data[*s as usize..*e as usize]))
        );
    }
}

#[test]
fn bmaptool_reads_ours_and_we_read_bmaptools() {
    if !have("bmaptool") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = sparse_image(d.path());
    let ours = d.path().join("ours.bmap");
    write_for(&p, &ours, &indicatif::ProgressBar::hidden()).unwrap();
    let target = d.path().join("target");
    Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(&ours)
        .arg(&p)
        .arg(&target)
        .run()
        .unwrap();
    assert_eq!(fs::read(&target).unwrap(), fs::read(&p).unwrap());

    let theirs = d.path().join("theirs.bmap");
    Command::new("bmaptool")
        .arg("create")
        .arg("-o")
        .arg(&theirs)
        .arg(&p)
        .run()
        .unwrap();
    let b = Bmap::load(&theirs).unwrap();
    assert_eq!(b.image_size, 64 << 20);
    assert!(b.mapped_blocks() > 0);
}

#[test]
fn ext4_metadata_is_mapped_even_where_the_file_has_holes() {
    if !have("mke2fs") || !have("dumpe2fs") || !have("debugfs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("fs.img");
    File::create(&img).unwrap().set_len(300 << 20).unwrap();
    Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
        ])
        .arg(&img)
        .run()
        .unwrap();
    // What a sparse copy looks like: every zero block a hole.
    punch_zero_blocks(&img);
    let file = File::open(&img).unwrap();
    let used = ext4::used_ranges(&file, 0, 300 << 20).unwrap().unwrap();
    let mut e = extents::Extents::default();
    e.extend(used);
    e.normalize();
    let covered = |s: u64, n: u64| e.iter().any(|(a, b)| a <= s * 4096 && (s + n) * 4096 <= b);

    // Inode tables, as dumpe2fs (an independent reader) lists them.
    let dump = Command::new("dumpe2fs").arg(&img).run_get_string().unwrap();
    let re = regex::Regex::new(r"Inode table at (\d+)-(\d+)").unwrap();
    let mut tables = 0;
    for c in re.captures_iter(&dump) {
        let (a, b): (u64, u64) = (c[1].parse().unwrap(), c[2].parse().unwrap());
        assert!(covered(a, b - a + 1), "inode table {a}-{b} not mapped");
        tables += 1;
    }
    assert!(tables >= 2, "{dump}");
    // The journal's extents, from debugfs.
    let stat = Command::new("debugfs")
        .args(["-R", "stat <8>"])
        .arg(&img)
        .run_get_string()
        .unwrap();
    let re = regex::Regex::new(r"\(\d+(?:-\d+)?\):(\d+)(?:-(\d+))?").unwrap();
    let mut journal = 0;
    for c in re.captures_iter(&stat) {
        let a: u64 = c[1].parse().unwrap();
        let b: u64 = c.get(2).map_or(a, |m| m.as_str().parse().unwrap());
        assert!(covered(a, b - a + 1), "journal blocks {a}-{b} not mapped");
        journal += b - a + 1;
    }
    assert!(journal >= 1024, "{stat}");
    // And the data ranges alone miss them: the trap this guards against.
    let data: u64 = scan::data_ranges(&file, 300 << 20)
        .unwrap()
        .iter()
        .map(|(s, e)| e - s)
        .sum();
    assert!(
        data < journal * 4096,
        "the sparse copy still has the journal allocated"
    );
}

/// Punches a hole in every all-zero 4 KiB block of `path`.
fn punch_zero_blocks(path: &Path) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        f.read_exact_at(&mut buf[..n], off).unwrap();
        for (i, block) in buf[..n].chunks(4096).enumerate() {
            if block.iter().all(|&b| b == 0) {
                let at = off + i as u64 * 4096;
                let flags =
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
                rustix::fs::fallocate(&f, flags, at, 4096).unwrap();
            }
        }
        off += n as u64;
    }
}
