// SPDX-License-Identifier: Apache-2.0
//! Block maps: which 4 KiB blocks of a disk image must be written, with the
//! sha256 of each run of them, in the XML format bmaptool reads (2.0).
//!
//! `build` writes one beside every raw image, `write` uses it to copy only
//! those blocks and to check every byte it read and wrote back, and
//! `bmaptool copy` accepts it too. What counts as mapped is decided in
//! [`scan`]: data, the ends of the disk and partitions, and everything the
//! filesystems use, so that a writer that skips unmapped blocks leaves
//! nothing on the target the filesystems would read.

pub(crate) mod ext4;
pub(crate) mod extents;
pub(crate) mod fat;
pub(crate) mod scan;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

/// The block size of every map airlock writes.
pub const BLOCK_SIZE: u64 = 4096;

const CHECKSUM_LEN: usize = 64;

/// A block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Size of the image in bytes.
    pub image_size: u64,
    /// Size of a block in bytes.
    pub block_size: u64,
    /// Mapped runs of blocks, sorted and disjoint.
    pub ranges: Vec<Range>,
}

/// A run of mapped blocks and the sha256 of their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First block.
    pub first: u64,
    /// Last block (inclusive, as in the XML).
    pub last: u64,
    /// sha256 of the bytes of the blocks (the last block clipped to the
    /// image size), lowercase hex.
    pub sha256: String,
}

impl Bmap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// First byte and length of a range, clipped to the image.
    pub fn bytes(&self, r: &Range) -> (u64, u64) {
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        (start, end - start)
    }

    /// Bytes a writer copies.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| self.bytes(r).1).sum()
    }

    /// The XML text, with `BmapFileChecksum` filled in.
    pub fn to_xml(&self) -> String {
        let zeros = "0".repeat(CHECKSUM_LEN);
        let text = self.xml_with_checksum(&zeros);
        let sum = hex::encode(Sha256::digest(text.as_bytes()));
        self.xml_with_checksum(&sum)
    }

    fn xml_with_checksum(&self, checksum: &str) -> String {
        let mapped = self.mapped_blocks();
        let pct = if self.blocks_count() == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / self.blocks_count() as f64
        };
        let mut s = String::new();
        s.push_str("<?xml version=\"1.0\" ?>\n");
        s.push_str(
            "<!-- A block map, written by airlock in the format of bmaptool (bmap-tools):\n     \
             the blocks of the image that must be copied to the target, with the\n     \
             sha256 of each run. The other blocks hold nothing any partition table or\n     \
             filesystem in the image reads. BmapFileChecksum is the sha256 of this file\n     \
             with that checksum replaced by 64 \"0\" characters. -->\n",
        );
        s.push_str("<bmap version=\"2.0\">\n");
        let _ = writeln!(
            s,
            "    <!-- Image size in bytes: {} -->",
            human(self.image_size)
        );
        let _ = writeln!(s, "    <ImageSize> {} </ImageSize>\n", self.image_size);
        s.push_str("    <!-- Size of a block in bytes -->\n");
        let _ = writeln!(s, "    <BlockSize> {} </BlockSize>\n", self.block_size);
        s.push_str("    <!-- Count of blocks in the image file -->\n");
        let _ = writeln!(
            s,
            "    <BlocksCount> {} </BlocksCount>\n",
            self.blocks_count()
        );
        let _ = writeln!(
            s,
            "    <!-- Count of mapped blocks: {} or {pct:.1}% -->",
            human(mapped * self.block_size)
        );
        let _ = writeln!(s, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n");
        s.push_str("    <!-- Type of checksum used in this file -->\n");
        s.push_str("    <ChecksumType> sha256 </ChecksumType>\n\n");
        s.push_str(
            "    <!-- The checksum of this bmap file. When it is calculated, the value of\n",
        );
        s.push_str("         the checksum has be zero (all ASCII \"0\" symbols).  -->\n");
        let _ = writeln!(s, "    <BmapFileChecksum> {checksum} </BmapFileChecksum>\n");
        s.push_str("    <!-- The block map: ranges of blocks and the sha256 of each range. -->\n");
        s.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            if r.first == r.last {
                let _ = writeln!(
                    s,
                    "        <Range chksum=\"{}\"> {} </Range>",
                    r.sha256, r.first
                );
            } else {
                let _ = writeln!(
                    s,
                    "        <Range chksum=\"{}\"> {}-{} </Range>",
                    r.sha256, r.first, r.last
                );
            }
        }
        s.push_str("    </BlockMap>\n</bmap>\n");
        s
    }

    /// Parses and checks a block map: format 2.x (or 1.4, its old name) with
    /// sha256 checksums, its own checksum, and ranges that are sorted,
    /// disjoint, inside the image and counted right. `what` names the file
    /// in errors.
    pub fn parse(text: &str, what: &str) -> Result<Bmap> {
        let doc =
            roxmltree::Document::parse(text).with_context(|| format!("{what} is not valid XML"))?;
        let root = doc.root_element();
        ensure!(
            root.has_tag_name("bmap"),
            "{what} is not a block map (no <bmap> element)"
        );
        let version = root.attribute("version").unwrap_or("");
        ensure!(
            version.starts_with("2.") || version == "1.4",
            "{what} is block map format {version:?}; airlock reads format 2.x (bmaptool 3.x writes it)"
        );
        let child = |name: &str| {
            root.children()
                .find(|n| n.has_tag_name(name))
                .with_context(|| format!("{what} has no <{name}>"))
        };
        let number = |name: &str| -> Result<u64> {
            let t = child(name)?.text().unwrap_or("").trim();
            t.parse()
                .with_context(|| format!("{what}: <{name}> {t:?} is not a number"))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks = number("BlocksCount")?;
        let mapped = number("MappedBlocksCount")?;
        ensure!(block_size > 0, "{what}: block size is 0");
        let kind = child("ChecksumType")?
            .text()
            .unwrap_or("")
            .trim()
            .to_string();
        ensure!(
            kind == "sha256",
            "{what} uses {kind:?} checksums; airlock needs sha256 (bmaptool create -c sha256)"
        );
        let sum = child("BmapFileChecksum")?
            .text()
            .unwrap_or("")
            .trim()
            .to_string();
        ensure!(
            sum.len() == CHECKSUM_LEN,
            "{what}: BmapFileChecksum {sum:?} is not a sha256"
        );
        let pos = text
            .find(&sum)
            .expect("the checksum is in the text it was parsed from");
        let mut zeroed = text.as_bytes().to_vec();
        zeroed[pos..pos + CHECKSUM_LEN].fill(b'0');
        let actual = hex::encode(Sha256::digest(&zeroed));
        ensure!(
            actual == sum,
            "{what} is damaged: its checksum is {actual} but it says {sum}; copy it again"
        );

        let mut ranges = Vec::new();
        for n in child("BlockMap")?
            .children()
            .filter(|n| n.has_tag_name("Range"))
        {
            let t = n.text().unwrap_or("").trim();
            let (a, b) = t.split_once('-').unwrap_or((t, t));
            let parse = |s: &str| -> Result<u64> {
                s.trim()
                    .parse()
                    .with_context(|| format!("{what}: range {t:?} is not block numbers"))
            };
            let (first, last) = (parse(a)?, parse(b)?);
            let sha = n
                .attribute("chksum")
                .with_context(|| format!("{what}: range {t} has no checksum"))?
                .to_ascii_lowercase();
            ensure!(
                sha.len() == CHECKSUM_LEN && sha.bytes().all(|c| c.is_ascii_hexdigit()),
                "{what}: range {t} has checksum {sha:?}, not a sha256"
            );
            ranges.push(Range {
                first,
                last,
                sha256: sha,
            });
        }
        let bmap = Bmap {
            image_size,
            block_size,
            ranges,
        };
        ensure!(
            blocks == bmap.blocks_count(),
            "{what}: {blocks} blocks of {block_size} bytes do not make an image of {image_size} bytes"
        );
        let mut next = 0;
        for r in &bmap.ranges {
            ensure!(
                r.first >= next && r.first <= r.last && r.last < blocks,
                "{what}: range {}-{} overlaps another, is out of order, or lies past block {}",
                r.first,
                r.last,
                blocks.saturating_sub(1)
            );
            next = r.last + 1;
        }
        ensure!(
            bmap.mapped_blocks() == mapped,
            "{what}: MappedBlocksCount says {mapped} but the ranges hold {}",
            bmap.mapped_blocks()
        );
        Ok(bmap)
    }

    pub fn load(path: &Path) -> Result<Bmap> {
        Ok(Bmap::load_checked(path)?.0)
    }

    /// Reads the block map at `path` once: checks those bytes against a
    /// `SHA256SUMS` beside it, when that file has a line for it (as `build`
    /// writes), and parses the same bytes. Returns the map and its sha256.
    pub fn load_checked(path: &Path) -> Result<(Bmap, String)> {
        let bytes =
            crate::image::read_small_file(path, crate::image::SMALL_FILE_LIMIT, "block map")?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some((sums, want)) = sums_line(path) {
            if sha256 != want {
                bail!(
                    "{} has sha256 {sha256} but {} says {want}: the block map is not the one that was built",
                    path.display(),
                    sums.display()
                );
            }
            tracing::debug!("{} matches {}", path.display(), sums.display());
        }
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{} is not text: not a block map", path.display()))?;
        Ok((Bmap::parse(&text, &path.display().to_string())?, sha256))
    }
}

fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Computes the block map of the raw image at `image`, hashing every mapped
/// range; `progress` counts the mapped bytes read.
pub fn create(image: &Path, progress: &indicatif::ProgressBar) -> Result<Bmap> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("reading the size of {}", image.display()))?
        .len();
    let scan = scan::mapped(&file, size, BLOCK_SIZE)
        .with_context(|| format!("finding the mapped blocks of {}", image.display()))?;
    progress.set_length(scan.extents.bytes());
    let mut buf = vec![0u8; 4 << 20];
    let mut ranges = Vec::new();
    for (start, end) in scan.extents.iter() {
        let mut h = Sha256::new();
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {} at offset {off}", image.display()))?;
            h.update(&buf[..n]);
            progress.inc(n as u64);
            off += n as u64;
        }
        ranges.push(Range {
            first: start / BLOCK_SIZE,
            last: (end - 1) / BLOCK_SIZE,
            sha256: hex::encode(h.finalize()),
        });
    }
    Ok(Bmap {
        image_size: size,
        block_size: BLOCK_SIZE,
        ranges,
    })
}

/// Writes the block map of `image` to `dest` (a staging path); returns its
/// sha256 and size.
pub fn write_for(
    image: &Path,
    dest: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<(String, u64)> {
    let text = create(image, progress)?.to_xml();
    fs::write(dest, &text).with_context(|| format!("writing {}", dest.display()))?;
    Ok((
        hex::encode(Sha256::digest(text.as_bytes())),
        text.len() as u64,
    ))
}

/// The block map files bmaptool would find for `image`: `a.raw.zst` looks
/// for `a.raw.zst.bmap`, `a.raw.bmap`, then `a.bmap`.
pub fn candidates(image: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut p = image.to_path_buf();
    loop {
        let mut s = p.clone().into_os_string();
        s.push(".bmap");
        out.push(PathBuf::from(s));
        if p.extension().is_none() {
            break;
        }
        p.set_extension("");
    }
    out
}

/// The `SHA256SUMS` beside `bmap_path` and the sha256 it gives for it, when
/// it has a line for it.
fn sums_line(bmap_path: &Path) -> Option<(PathBuf, String)> {
    let sums = bmap_path.parent()?.join("SHA256SUMS");
    let text = fs::read_to_string(&sums).ok()?;
    let name = bmap_path.file_name().unwrap_or_default().to_string_lossy();
    let want = text.lines().find_map(|l| {
        let (sum, n) = l.split_once("  ")?;
        (n == name).then(|| sum.to_string())
    })?;
    Some((sums, want))
}

#[cfg(test)]
mod tests;
