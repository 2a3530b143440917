// SPDX-License-Identifier: Apache-2.0
//! Byte sizes written the way people write them: "4GiB", "512MiB", "1G".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "size {s:?} must start with a number, e.g. \"4GiB\""
            ));
        }
        // Every digit string fits u64 unless it overflows.
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} is too large"))?;
        if let Some(frac) = unit.strip_prefix('.') {
            return Err(fraction_hint(s, n, frac));
        }
        // Binary units either way: disk sizes people mean in "G" are GiB
        // in every tool this replaces (truncate, qemu-img, sgdisk).
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            u => {
                return Err(format!(
                    "size {s:?} has unknown unit {u:?}: use B, KiB, MiB, GiB or TiB \
                     (K, M, G and T are accepted as the same binary units)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

/// The message for "1.5GiB": whole numbers only, with the same size in the
/// next smaller unit when it is a whole number there.
fn fraction_hint(s: &str, whole: u64, rest: &str) -> String {
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (frac, unit) = rest.split_at(digits);
    let smaller = match unit.trim() {
        "T" | "TiB" => Some("GiB"),
        "G" | "GiB" => Some("MiB"),
        "M" | "MiB" => Some("KiB"),
        "K" | "KiB" | "k" => Some("B"),
        _ => None,
    };
    // value * 1024 is whole when frac * 1024 / 10^len(frac) is.
    let exact = smaller.and_then(|u| {
        let scale = 10u64.checked_pow(frac.len() as u32)?;
        let f: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        let part = f.checked_mul(1024)?;
        if part % scale != 0 {
            return None;
        }
        let n = whole.checked_mul(1024)?.checked_add(part / scale)?;
        Some(format!("{n}{u}"))
    });
    match exact {
        Some(e) => format!("size {s:?} is a fraction: sizes are whole numbers, write {e:?}"),
        None => format!(
            "size {s:?} is a fraction: sizes are whole numbers, write it in a smaller unit (e.g. \"1536MiB\" for 1.5GiB)"
        ),
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let cases = [
            ("4GiB", 4u64 << 30, "4GiB"),
            ("4G", 4 << 30, "4GiB"),
            ("512MiB", 512 << 20, "512MiB"),
            ("1536MiB", 1536 << 20, "1536MiB"),
            ("100", 100, "100B"),
            ("2TiB", 2 << 40, "2TiB"),
        ];
        for (input, bytes, shown) in cases {
            let s: Size = input.parse().unwrap();
            assert_eq!(s.0, bytes, "{input}");
            assert_eq!(s.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("99999999999999999999GiB", "too large"),
            ("20000000TiB", "too large"),
            ("1.5GiB", "\"1536MiB\""),
            ("0.25T", "\"256GiB\""),
            ("1.1GiB", "smaller unit"),
            ("4 parsecs", "K, M, G and T"),
            ("GiB", "must start with a number"),
        ];
        for (input, words) in cases {
            let e = input.parse::<Size>().unwrap_err();
            assert!(e.contains(words), "{input}: {e}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "GiB", "4 parsecs", "99999999999TiB", "-1G"] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} accepted");
        }
    }
}
