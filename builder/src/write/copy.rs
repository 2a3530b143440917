// SPDX-License-Identifier: Apache-2.0
//! The copy and the read-back.
//!
//! A reader thread reads (or decompresses) the mapped ranges of the image in
//! chunks; the next thread checks each range against the block map's
//! sha256, lays the GPT patches over it and hands the chunks to a writer
//! thread, which writes them in order while the next chunk is hashed. The
//! chunk holding the partition table is kept back and written last, after
//! everything else has been flushed, so an interrupted write leaves a disk
//! with no partition table rather than a half-written one that looks
//! bootable. The read-back reads every written range from the target (past
//! the page cache) and compares its sha256 with what was written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::gpt::{self, Relocation};
use super::source::Source;
use super::target::{AlignedBuf, Target};
use crate::bmap::Bmap;

/// Bytes per read and write of the copy: small enough that a chunk read
/// from the page cache is still in the CPU cache when it is hashed and
/// written (4 MiB chunks made the copy half as fast).
pub(crate) const CHUNK: usize = 1 << 20;
/// Bytes per read of the read-back, which bypasses the page cache.
const READ_BACK_CHUNK: usize = 4 << 20;
/// Chunks in flight between the threads.
const DEPTH: usize = 4;
/// Threads reading the target back.
const READERS: usize = 3;
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

/// A stretch of the image to copy: one of the block map's ranges (whose
/// bytes are checked against the map's sha256), or a part of the GPT areas
/// that the map does not list. A map from elsewhere may leave out the
/// partition tables, but they are always written and read back: a disk
/// with new data under an old partition table must never result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) off: u64,
    pub(crate) len: u64,
    /// The block map range, if it is one.
    pub(crate) range: Option<usize>,
}

/// The block map's ranges and the unlisted blocks of the image's GPT areas
/// (primary and backup), in order.
pub(crate) fn runs(bmap: &Bmap) -> Vec<Run> {
    let bs = bmap.block_size.max(1);
    let size = bmap.image_size;
    let mut out: Vec<Run> = bmap
        .ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (off, len) = bmap.bytes(r);
            Run {
                off,
                len,
                range: Some(i),
            }
        })
        .collect();
    let mut areas = vec![(0, gpt::HEAD.min(size))];
    if size >= gpt::HEAD + gpt::BACKUP {
        areas.push((size - gpt::BACKUP, size));
    }
    for (s, e) in areas {
        // Whole blocks, as the map counts them.
        let (mut at, end) = (s / bs * bs, e.div_ceil(bs).saturating_mul(bs).min(size));
        let mut mapped: Vec<(u64, u64)> = out
            .iter()
            .map(|r| (r.off, r.off + r.len))
            .filter(|&(a, b)| a < end && b > at)
            .collect();
        mapped.sort();
        for (a, b) in mapped {
            if a > at {
                out.push(Run {
                    off: at,
                    len: a - at,
                    range: None,
                });
            }
            at = at.max(b);
        }
        if at < end {
            out.push(Run {
                off: at,
                len: end - at,
                range: None,
            });
        }
    }
    out.sort_by_key(|r| r.off);
    out.dedup();
    out
}

/// Bytes [`copy`] sends: the mapped bytes and any unlisted GPT blocks.
pub(crate) fn total(bmap: &Bmap) -> u64 {
    runs(bmap).iter().map(|r| r.len).sum()
}

/// A chunk of run `range` of [`runs`], as read from the image.
enum Msg {
    Chunk {
        range: usize,
        last: bool,
        off: u64,
        n: usize,
        buf: AlignedBuf,
    },
}

/// `[off, off + len)` in pieces of at most `size` bytes.
fn pieces(off: u64, len: u64, size: usize) -> impl Iterator<Item = (u64, usize)> {
    let end = off + len;
    let size = size as u64;
    (0..len.div_ceil(size)).map(move |i| {
        let s = off + i * size;
        (s, (end - s).min(size) as usize)
    })
}

fn chunks(off: u64, len: u64) -> impl Iterator<Item = (u64, usize)> {
    pieces(off, len, CHUNK)
}

fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.split_at(b.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// Reads (or decompresses) every mapped range and sends it on in chunks;
/// the hashing is left to the other thread, so that on two cores
/// decompressing and hashing run side by side.
fn read_ranges(
    source: &mut dyn Source,
    bmap: &Bmap,
    runs: &[Run],
    tx: &SyncSender<Result<Msg>>,
    pool: &Receiver<AlignedBuf>,
) -> Result<()> {
    for (range, r) in runs.iter().enumerate() {
        let parts: Vec<_> = chunks(r.off, r.len).collect();
        let last = parts.len() - 1;
        for (k, (off, n)) in parts.into_iter().enumerate() {
            let Ok(mut buf) = pool.recv() else {
                return Ok(());
            };
            source.read_at(off, buf.get_mut(n))?;
            let msg = Msg::Chunk {
                range,
                last: k == last,
                off,
                n,
                buf,
            };
            if tx.send(Ok(msg)).is_err() {
                return Ok(());
            }
        }
    }
    source.check_end(bmap.image_size)
}

/// Hashes a range's chunks as they pass: the image's bytes, checked against
/// the block map, and (where the GPT is patched) the bytes written.
struct RangeHash<'a> {
    bmap: &'a Bmap,
    runs: &'a [Run],
    reloc: Option<&'a Relocation>,
    names: &'a Names<'a>,
    src: Sha256,
    patched: Option<Sha256>,
}

impl RangeHash<'_> {
    /// Hashes `buf` (the chunk at `off` of run `r`), patches it, and at
    /// the run's end returns what the read-back must find there.
    fn chunk(&mut self, r: usize, last: bool, off: u64, buf: &mut [u8]) -> Result<Option<Check>> {
        let (bmap, names) = (self.bmap, self.names);
        let run = self.runs[r];
        let (start, len) = (run.off, run.len);
        if run.range.is_some() {
            self.src.update(&*buf);
        }
        let patch = self.reloc.filter(|p| p.touches(start, len));
        if let Some(p) = patch {
            p.apply(off, buf);
        }
        if patch.is_some() || run.range.is_none() {
            self.patched.get_or_insert_with(Sha256::new).update(&*buf);
        }
        if !last {
            return Ok(None);
        }
        let src = std::mem::take(&mut self.src);
        let patched = self.patched.take();
        let Some(i) = run.range else {
            return Ok(Some(Check {
                off: start,
                len,
                sha256: patched.expect("hashed above").finalize().into(),
                what: format!(
                    "bytes {start} to {} (partition table, not in the block map)",
                    start + len
                ),
            }));
        };
        let range = &bmap.ranges[i];
        let got = hex::encode(src.finalize());
        if got != range.sha256 {
            bail!(
                "{} does not match its block map: blocks {}-{} (bytes {start} to {}) have sha256 \
                 {got} but the map says {}; the image or the map is damaged",
                names.image,
                range.first,
                range.last,
                start + len,
                range.sha256
            );
        }
        let sha256 = match patched {
            Some(h) => h.finalize().into(),
            None => hex_32(&range.sha256)?,
        };
        let what = format!("blocks {}-{}", range.first, range.last);
        Ok(Some(Check {
            off: start,
            len,
            sha256,
            what,
        }))
    }
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
    let runs = runs(bmap);
    let head_len = runs
        .first()
        .filter(|r| r.off == 0)
        .map(|r| r.len.min(CHUNK as u64));
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
    let mut w = Written::default();
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Msg>>(DEPTH);
        let (ret, pool): (Sender<AlignedBuf>, Receiver<AlignedBuf>) = channel();
        for _ in 0..2 * DEPTH + 2 {
            ret.send(AlignedBuf::new(CHUNK)).expect("the pool is open");
        }
        let src = &mut source;
        let plan = &runs;
        s.spawn(move || {
            if let Err(e) = read_ranges(src.as_mut(), bmap, plan, &tx, &pool) {
                let _ = tx.send(Err(e));
            }
        });
        // The writes run in a thread of their own, so that hashing the next
        // chunk overlaps writing this one (with O_DIRECT a write waits for
        // the device).
        let (wtx, wrx) = sync_channel::<(u64, usize, AlignedBuf)>(DEPTH);
        let writer = target.as_deref_mut().map(|t| {
            let ret = ret.clone();
            s.spawn(move || write_chunks(t, &wrx, &ret, names))
        });
        let mut hash = RangeHash {
            bmap,
            runs: &runs,
            reloc,
            names,
            src: Sha256::new(),
            patched: None,
        };
        let hashed = (|| -> Result<()> {
            for msg in rx {
                let Msg::Chunk {
                    range,
                    last,
                    off,
                    n,
                    mut buf,
                } = msg?;
                if let Some(c) = hash.chunk(range, last, off, buf.get_mut(n))? {
                    out.checks.push(c);
                }
                bar.inc(n as u64);
                if writer.is_none() {
                    let _ = ret.send(buf);
                } else if off == 0 {
                    held = Some((buf, n));
                    let _ = ret.send(AlignedBuf::new(CHUNK));
                } else if wtx.send((off, n, buf)).is_err() {
                    break; // The writer failed; its error is returned below.
                }
            }
            Ok(())
        })();
        drop(wtx);
        if let Some(h) = writer {
            w = h.join().expect("the writer thread panicked")?;
        }
        hashed
    })?;
    out.written = w.written;
    out.zeroed = w.zeroed;
    let (synced_to, mut last_end) = (w.synced_to, w.last_end);
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

/// What the writer thread did.
#[derive(Debug, Default)]
struct Written {
    written: u64,
    zeroed: u64,
    synced_to: u64,
    last_end: u64,
}

/// Writes (or zeroes in place) the chunks it is sent, in order, flushing
/// every [`SYNC_EVERY`] bytes when writes bypass the page cache.
fn write_chunks(
    t: &mut dyn Target,
    jobs: &Receiver<(u64, usize, AlignedBuf)>,
    ret: &Sender<AlignedBuf>,
    names: &Names,
) -> Result<Written> {
    let mut w = Written::default();
    for (off, n, buf) in jobs {
        let data = buf.get(n);
        let zeroed = is_zero(data)
            && t.zero(off, n as u64)
                .map_err(|e| write_err(names, off, n, e))?;
        if zeroed {
            w.zeroed += n as u64;
        } else {
            t.write_at(data, off)
                .map_err(|(o, e)| write_err(names, o, n, e))?;
            w.written += n as u64;
        }
        w.last_end = off + n as u64;
        if t.writes_through() && w.last_end - w.synced_to >= SYNC_EVERY {
            flush(t, names, w.synced_to, w.last_end)?;
            w.synced_to = w.last_end;
        }
        let _ = ret.send(buf);
    }
    Ok(w)
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

/// Reads every checked range back from `target` and compares sha256s;
/// returns the bytes compared, and the first mismatch.
///
/// [`READERS`] threads read chunks (keeping several reads in flight, which
/// most devices need for full speed); this thread hashes them in order.
pub(crate) fn read_back(
    target: &mut dyn Target,
    checks: &[Check],
    names: &Names,
    bar: &ProgressBar,
) -> Result<(u64, Option<Mismatch>)> {
    target
        .drop_cache()
        .map_err(|e| anyhow!("dropping the cached pages of {}: {e}", names.target))?;
    let target: &dyn Target = target;
    // Every chunk, in order: (check, is its last chunk, offset, length).
    let work: Vec<(usize, bool, u64, usize)> = checks
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            let parts: Vec<_> = pieces(c.off, c.len, READ_BACK_CHUNK).collect();
            let last = parts.len() - 1;
            parts
                .into_iter()
                .enumerate()
                .map(move |(k, (off, n))| (i, k == last, off, n))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let mut first: Option<Check> = None;
    let mut count = 0;
    let mut compared = 0u64;
    let (ret, pool) = channel::<AlignedBuf>();
    for _ in 0..DEPTH + READERS {
        ret.send(AlignedBuf::new(READ_BACK_CHUNK))
            .expect("the pool is open");
    }
    let pool = Mutex::new(pool);
    std::thread::scope(|s| -> Result<()> {
        // Owned here, so it is dropped (and blocked readers wake) before
        // the scope waits for them.
        let ret = ret;
        let (tx, rx) = sync_channel::<Result<(usize, AlignedBuf)>>(DEPTH);
        for _ in 0..READERS {
            let (tx, pool, next, work) = (tx.clone(), &pool, &next, &work);
            s.spawn(move || loop {
                // A buffer first, then a chunk: the chunk the hasher waits
                // for always has a buffer.
                let Ok(mut buf) = pool.lock().expect("pool lock").recv() else {
                    return;
                };
                let item = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(_, _, off, n)) = work.get(item) else {
                    return;
                };
                let r = target
                    .read_at(buf.get_mut(n), off)
                    .map_err(|e| {
                        anyhow!(
                            "reading {} back at offset {off} ({n} bytes): {e}",
                            names.target
                        )
                    })
                    .map(|_| (item, buf));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            });
        }
        drop(tx);
        let mut waiting: BTreeMap<usize, AlignedBuf> = BTreeMap::new();
        let mut h = Sha256::new();
        let mut want = 0;
        for msg in rx {
            let (item, buf) = msg?;
            waiting.insert(item, buf);
            while let Some(buf) = waiting.remove(&want) {
                let (i, last, _, n) = work[want];
                h.update(buf.get(n));
                compared += n as u64;
                bar.inc(n as u64);
                let _ = ret.send(buf);
                if last {
                    let got: [u8; 32] = std::mem::take(&mut h).finalize().into();
                    if got != checks[i].sha256 {
                        count += 1;
                        first.get_or_insert_with(|| checks[i].clone());
                    }
                }
                want += 1;
            }
            if want == work.len() {
                break;
            }
        }
        Ok(())
    })?;
    Ok((compared, first.map(|check| Mismatch { check, count })))
}

/// The first offset in `check` where the target's bytes differ from the
/// `expected` ones, which `expected` fills chunk by chunk in order.
pub(crate) fn first_difference(
    target: &dyn Target,
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
