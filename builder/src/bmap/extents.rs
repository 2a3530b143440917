// SPDX-License-Identifier: Apache-2.0
//! Sets of byte ranges: collected in any order, then sorted and merged.

/// Half-open byte ranges `[start, end)`, kept sorted and merged by
/// [`Extents::normalize`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Extents {
    ranges: Vec<(u64, u64)>,
}

impl Extents {
    /// Adds `[start, end)`; empty ranges are ignored.
    pub(crate) fn add(&mut self, start: u64, end: u64) {
        if start < end {
            self.ranges.push((start, end));
        }
    }

    pub(crate) fn extend(&mut self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        for (s, e) in ranges {
            self.add(s, e);
        }
    }

    /// Sorts the ranges and merges overlapping and touching ones.
    pub(crate) fn normalize(&mut self) {
        self.ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.ranges = out;
    }

    /// Widens every range to whole `block`s, clips it to `limit` and merges.
    pub(crate) fn align(&mut self, block: u64, limit: u64) {
        for r in &mut self.ranges {
            r.0 = r.0 / block * block;
            r.1 = r.1.div_ceil(block).saturating_mul(block).min(limit);
        }
        self.ranges.retain(|r| r.0 < r.1);
        self.normalize();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    /// Total bytes covered (after [`Extents::normalize`]).
    pub(crate) fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

/// Turns a bitmap into runs of set bits: `(first, count)` for bits
/// `0..nbits` of `bits` (least significant bit first, as ext4 and FAT use).
pub(crate) fn bit_runs(bits: &[u8], nbits: u64) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut start: Option<u64> = None;
    let mut i = 0u64;
    while i < nbits {
        let byte = bits[(i / 8) as usize];
        // Whole bytes at once where they are all set or all clear.
        if i % 8 == 0 && i + 8 <= nbits && (byte == 0 || byte == 0xff) {
            match (byte, start) {
                (0xff, None) => start = Some(i),
                (0, Some(s)) => {
                    runs.push((s, i - s));
                    start = None;
                }
                _ => {}
            }
            i += 8;
            continue;
        }
        let set = byte & (1 << (i % 8)) != 0;
        match (set, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i - s));
                start = None;
            }
            _ => {}
        }
        i += 1;
    }
    if let Some(s) = start {
        runs.push((s, nbits - s));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ranges<'a> = &'a [(u64, u64)];

    #[test]
    fn normalize_merges_overlapping_and_touching() {
        let cases: &[(&str, Ranges, Ranges)] = &[
            ("empty", &[], &[]),
            (
                "disjoint, unsorted",
                &[(10, 20), (0, 5)],
                &[(0, 5), (10, 20)],
            ),
            ("touching", &[(0, 5), (5, 9)], &[(0, 9)]),
            ("overlapping", &[(0, 10), (3, 4), (8, 12)], &[(0, 12)]),
            ("empty range dropped", &[(7, 7), (1, 2)], &[(1, 2)]),
        ];
        for (name, input, want) in cases {
            let mut e = Extents::default();
            e.extend(input.iter().copied());
            e.normalize();
            assert_eq!(e.iter().collect::<Vec<_>>(), *want, "{name}");
        }
    }

    #[test]
    fn align_widens_and_clips() {
        let mut e = Extents::default();
        e.extend([(1, 2), (4095, 4097), (10_000, 20_000)]);
        e.align(4096, 16_384);
        assert_eq!(e.iter().collect::<Vec<_>>(), [(0, 16_384)]);
        assert_eq!(e.bytes(), 16_384);
    }

    #[test]
    fn bit_runs_cases() {
        let cases: &[(&str, &[u8], u64, Ranges)] = &[
            ("none", &[0, 0], 16, &[]),
            ("all", &[0xff, 0xff], 16, &[(0, 16)]),
            ("lsb first", &[0b0000_0110], 8, &[(1, 2)]),
            (
                "across bytes",
                &[0b1000_0000, 0xff, 0b0000_0001],
                24,
                &[(7, 10)],
            ),
            ("clipped", &[0xff], 5, &[(0, 5)]),
            ("two runs", &[0b1100_0011], 8, &[(0, 2), (6, 2)]),
        ];
        for (name, bits, n, want) in cases {
            assert_eq!(bit_runs(bits, *n), *want, "{name}");
        }
    }
}
