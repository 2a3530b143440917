// SPDX-License-Identifier: Apache-2.0
//! The copy and the read-back.
//!
//! A reader thread reads (or decompresses) the mapped ranges of the image in
//! chunks, checks each range against the block map's sha256, lays the GPT
//! patches over it and hands the chunks to the writer, which writes them in
//! order. The chunk holding the partition table is kept back and written
//! last, after everything else has been flushed, so an interrupted write
//! leaves a disk with no partition table rather than a half-written one that
//! looks bootable. The read-back reads every written range from the target
//! (past the page cache) and compares its sha256 with what was written.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::gpt::Relocation;
use super::source::Source;
use super::target::{AlignedBuf, Target};
use crate::bmap::Bmap;

/// Bytes per read and write.
pub(crate) const CHUNK: usize = 1 << 20;
/// Chunks in flight between the threads.
const DEPTH: usize = 4;
/// With O_DIRECT writes, flush at least this often, so a failed flush names
/// a bounded range. (Buffered writes are left to the kernel's writeback and
/// flushed once: flushing every so often would stall the pipeline.)
const SYNC_EVERY: u64 = 256 << 20;

/// A range the read-back checks, with the sha256 its bytes must have.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) off: u64,
    pub(crate) len: u64,
    pub(crate) sha256: [u8; 32],
    /// What the range is, for messages: "blocks 0-511" or "the backup GPT".
    pub(crate) what: String,
}

/// What the copy did.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    pub(crate) checks: Vec<Check>,
    pub(crate) written: u64,
    pub(crate) zeroed: u64,
}

/// The names messages use.
pub(crate) struct Names<'a> {
    pub(crate) image: &'a str,
    pub(crate) target: &'a str,
}

enum Msg {
    Chunk { off: u64, n: usize, buf: AlignedBuf },
    Range(Check),
}

fn chunks(off: u64, len: u64) -> impl Iterator<Item = (u64, usize)> {
    let end = off + len;
    (0..len.div_ceil(CHUNK as u64)).map(move |i| {
        let s = off + i * CHUNK as u64;
        (s, (end - s).min(CHUNK as u64) as usize)
    })
}

fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.split_at(b.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// Reads every mapped range, checks it against the map and sends it on.
fn read_ranges(
    source: &mut dyn Source,
    bmap: &Bmap,
    reloc: Option<&Relocation>,
    names: &Names,
    tx: &SyncSender<Result<Msg>>,
    pool: &Receiver<AlignedBuf>,
) -> Result<()> {
    for r in &bmap.ranges {
        let (start, len) = bmap.bytes(r);
        let mut src = Sha256::new();
        let mut patched = reloc
            .filter(|p| p.touches(start, len))
            .map(|_| Sha256::new());
        for (off, n) in chunks(start, len) {
            let Ok(mut buf) = pool.recv() else {
                return Ok(());
            };
            source.read_at(off, buf.get_mut(n))?;
            src.update(buf.get(n));
            if let (Some(p), Some(h)) = (reloc, patched.as_mut()) {
                p.apply(off, buf.get_mut(n));
                h.update(buf.get(n));
            }
            if tx.send(Ok(Msg::Chunk { off, n, buf })).is_err() {
                return Ok(());
            }
        }
        let got = hex::encode(src.finalize());
        if got != r.sha256 {
            bail!(
                "{} does not match its block map: blocks {}-{} (bytes {start} to {}) have sha256 \
                 {got} but the map says {}; the image or the map is damaged",
                names.image,
                r.first,
                r.last,
                start + len,
                r.sha256
            );
        }
        let sha256 = match patched {
            Some(h) => h.finalize().into(),
            None => hex_32(&r.sha256)?,
        };
        let what = format!("blocks {}-{}", r.first, r.last);
        if tx
            .send(Ok(Msg::Range(Check {
                off: start,
                len,
                sha256,
                what,
            })))
            .is_err()
        {
            return Ok(());
        }
    }
    source.check_end(bmap.image_size)
}

fn hex_32(s: &str) -> Result<[u8; 32]> {
    let v = hex::decode(s).context("decoding a sha256")?;
    v.try_into()
        .map_err(|_| anyhow!("a sha256 is not 32 bytes"))
}

fn write_err(names: &Names, off: u64, len: usize, e: std::io::Error) -> anyhow::Error {
    anyhow!(
        "writing to {} failed at offset {off} ({len} bytes): {e}",
        names.target
    )
}

/// Writes the mapped ranges of `source` to `target` (or, with no target,
/// only reads and checks them, to learn what a read-back must find).
pub(crate) fn copy(
    mut source: Box<dyn Source>,
    bmap: &Bmap,
    reloc: Option<&Relocation>,
    mut target: Option<&mut dyn Target>,
    names: &Names,
    bar: &ProgressBar,
) -> Result<Copied> {
    let mut out = Copied::default();
    let head_len = bmap
        .ranges
        .first()
        .filter(|r| r.first == 0)
        .map(|r| bmap.bytes(r).1.min(CHUNK as u64));
    if let (Some(t), Some(n)) = (target.as_deref_mut(), head_len) {
        // First, the old partition table goes, so an interrupted write
        // leaves nothing that looks like a disk.
        let zeros = AlignedBuf::new(n as usize);
        t.write_at(zeros.get(n as usize), 0)
            .map_err(|(o, e)| write_err(names, o, n as usize, e))
            .context("erasing the old partition table")?;
        t.sync().map_err(|e| {
            anyhow!(
                "flushing {} after erasing its partition table: {e}",
                names.target
            )
        })?;
    }
    let mut held: Option<(AlignedBuf, usize)> = None;
    let mut synced_to = 0u64;
    let mut last_end = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Msg>>(DEPTH);
        let (ret, pool): (Sender<AlignedBuf>, Receiver<AlignedBuf>) = channel();
        for _ in 0..DEPTH + 2 {
            ret.send(AlignedBuf::new(CHUNK)).expect("the pool is open");
        }
        let src = &mut source;
        s.spawn(move || {
            if let Err(e) = read_ranges(src.as_mut(), bmap, reloc, names, &tx, &pool) {
                let _ = tx.send(Err(e));
            }
        });
        for msg in rx {
            match msg? {
                Msg::Range(c) => out.checks.push(c),
                Msg::Chunk { off, n, buf } => {
                    bar.inc(n as u64);
                    let Some(t) = target.as_deref_mut() else {
                        let _ = ret.send(buf);
                        continue;
                    };
                    if off == 0 {
                        held = Some((buf, n));
                        let _ = ret.send(AlignedBuf::new(CHUNK));
                        continue;
                    }
                    let data = buf.get(n);
                    let zeroed = is_zero(data)
                        && t.zero(off, n as u64)
                            .map_err(|e| write_err(names, off, n, e))?;
                    if zeroed {
                        out.zeroed += n as u64;
                    } else {
                        t.write_at(data, off)
                            .map_err(|(o, e)| write_err(names, o, n, e))?;
                        out.written += n as u64;
                    }
                    last_end = off + n as u64;
                    if t.writes_through() && last_end - synced_to >= SYNC_EVERY {
                        flush(t, names, synced_to, last_end)?;
                        synced_to = last_end;
                    }
                    let _ = ret.send(buf);
                }
            }
        }
        Ok(())
    })?;
    let Some(t) = target else { return Ok(out) };
    if let Some((at, tail)) = reloc.and_then(|r| r.tail.as_ref()) {
        t.write_at(tail, *at)
            .map_err(|(o, e)| write_err(names, o, tail.len(), e))?;
        out.written += tail.len() as u64;
        out.checks.push(Check {
            off: *at,
            len: tail.len() as u64,
            sha256: Sha256::digest(tail).into(),
            what: "the backup GPT at the end of the device".into(),
        });
        last_end = at + tail.len() as u64;
    }
    flush(t, names, synced_to, last_end)?;
    if let Some((buf, n)) = held {
        t.write_at(buf.get(n), 0)
            .map_err(|(o, e)| write_err(names, o, n, e))?;
        out.written += n as u64;
        flush(t, names, 0, n as u64)?;
    }
    Ok(out)
}

fn flush(t: &mut dyn Target, names: &Names, from: u64, to: u64) -> Result<()> {
    t.sync().map_err(|e| {
        anyhow!(
            "flushing {} failed: the writes between offsets {from} and {to} may not have reached \
             the device: {e}",
            names.target
        )
    })
}

/// The first range whose bytes on the target differ from what was written,
/// and how many differ.
pub(crate) struct Mismatch {
    pub(crate) check: Check,
    pub(crate) count: usize,
}

/// Reads every checked range back from `target` and compares sha256s.
pub(crate) fn read_back(
    target: &mut dyn Target,
    checks: &[Check],
    names: &Names,
    bar: &ProgressBar,
) -> Result<Option<Mismatch>> {
    target
        .drop_cache()
        .map_err(|e| anyhow!("dropping the cached pages of {}: {e}", names.target))?;
    let mut first: Option<Check> = None;
    let mut count = 0;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<(usize, bool, AlignedBuf, usize)>>(DEPTH);
        let (ret, pool) = channel::<AlignedBuf>();
        for _ in 0..DEPTH + 2 {
            ret.send(AlignedBuf::new(CHUNK)).expect("the pool is open");
        }
        s.spawn(move || {
            for (i, c) in checks.iter().enumerate() {
                let parts: Vec<_> = chunks(c.off, c.len).collect();
                let last = parts.len() - 1;
                for (k, (off, n)) in parts.into_iter().enumerate() {
                    let Ok(mut buf) = pool.recv() else { return };
                    let r = target
                        .read_at(buf.get_mut(n), off)
                        .map_err(|e| {
                            anyhow!(
                                "reading {} back at offset {off} ({n} bytes): {e}",
                                names.target
                            )
                        })
                        .map(|_| (i, k == last, buf, n));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let mut h = Sha256::new();
        for msg in rx {
            let (i, last, buf, n) = msg?;
            h.update(buf.get(n));
            bar.inc(n as u64);
            let _ = ret.send(buf);
            if last {
                let got: [u8; 32] = std::mem::take(&mut h).finalize().into();
                if got != checks[i].sha256 {
                    count += 1;
                    first.get_or_insert_with(|| checks[i].clone());
                }
            }
        }
        Ok(())
    })?;
    Ok(first.map(|check| Mismatch { check, count }))
}

/// The first offset in `check` where the target's bytes differ from the
/// `expected` ones, which `expected` fills chunk by chunk in order.
pub(crate) fn first_difference(
    target: &mut dyn Target,
    check: &Check,
    expected: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<Option<u64>> {
    let mut want = AlignedBuf::new(CHUNK);
    let mut got = AlignedBuf::new(CHUNK);
    for (off, n) in chunks(check.off, check.len) {
        expected(off, want.get_mut(n))?;
        target
            .read_at(got.get_mut(n), off)
            .with_context(|| format!("reading offset {off} again"))?;
        if let Some(i) = want.get(n).iter().zip(got.get(n)).position(|(a, b)| a != b) {
            return Ok(Some(off + i as u64));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
