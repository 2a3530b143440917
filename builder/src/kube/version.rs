// SPDX-License-Identifier: Apache-2.0
//! Versions and durations: the exact Kubernetes release a recipe pins (never
//! a label kubeadm would resolve over the internet), the kubeadm config API
//! it implies, containerd's config format, and Go-style durations for the
//! bootstrap token TTL.

use std::fmt;

use anyhow::{bail, Result};

/// An exact release, `MAJOR.MINOR.PATCH` with an optional pre-release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// `rc.1` in `1.35.0-rc.1`; empty for a release.
    pub pre: String,
}

impl Version {
    /// Parses `1.34.11` or `v1.34.11`. Labels (`stable`, `latest-1.34`) and
    /// bare minors (`1.34`) are refused: kubeadm would look them up online.
    pub fn parse_exact(what: &str, s: &str) -> Result<Version> {
        let t = s.trim();
        let bare = t.strip_prefix('v').unwrap_or(t);
        let lower = bare.to_ascii_lowercase();
        if ["stable", "latest", "ci"]
            .iter()
            .any(|l| lower.starts_with(l))
        {
            bail!(
                "{what} {s:?} is a release label that kubeadm resolves over the internet; \
                 an air-gapped node needs an exact release such as \"1.34.11\""
            );
        }
        let (core, pre) = match bare.split_once('-') {
            Some((c, p)) => (c, p.to_string()),
            None => (bare, String::new()),
        };
        let parts: Vec<&str> = core.split('.').collect();
        let num = |p: &str| {
            p.parse::<u32>()
                .ok()
                .filter(|_| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        match parts.as_slice() {
            [a, b, c] => match (num(a), num(b), num(c)) {
                (Some(major), Some(minor), Some(patch))
                    if pre.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') =>
                {
                    Ok(Version {
                        major,
                        minor,
                        patch,
                        pre,
                    })
                }
                _ => bail!("{what} {s:?} is not a version like \"1.34.11\""),
            },
            [a, b] if num(a).is_some() && num(b).is_some() => bail!(
                "{what} {s:?} names a minor release, not an exact one; kubeadm would look up its \
                 newest patch over the internet: pin the patch release, e.g. \"{a}.{b}.0\""
            ),
            _ => bail!("{what} {s:?} is not a version like \"1.34.11\""),
        }
    }

    /// `(major, minor)`, for comparisons by minor release.
    pub fn minor_key(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// `v1.34.11`, as kubeadm's `kubernetesVersion` wants it.
    pub fn with_v(&self) -> String {
        format!("v{self}")
    }

    /// The kubeadm configuration API for this release: v1beta4 from 1.31,
    /// v1beta3 before (v1beta3 exists from 1.22).
    pub fn kubeadm_api(&self) -> Result<&'static str> {
        match self.minor_key() {
            (1, m) if m >= 31 => Ok("kubeadm.k8s.io/v1beta4"),
            (1, m) if m >= 22 => Ok("kubeadm.k8s.io/v1beta3"),
            _ => bail!("Kubernetes {self} is older than 1.22, which airlock's kubeadm configuration does not support"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

/// containerd's configuration file format for a release: version 2 for
/// 1.x (`sandbox_image`), version 3 for 2.x (`pinned_images.sandbox`).
pub fn containerd_config_version(v: &Version) -> Result<u32> {
    match v.major {
        1 if v.minor >= 5 => Ok(2),
        1 => bail!("containerd {v} is older than 1.5; use 1.6 or later"),
        2 => Ok(3),
        _ => bail!("containerd {v}: airlock knows config formats for containerd 1.x and 2.x only"),
    }
}

/// A Go duration as kubeadm reads it (`8760h`, `90m`, `1h30m`, `0s`), in
/// seconds. Only h, m and s units: a token TTL needs no more.
pub fn parse_duration(s: &str) -> Result<u64> {
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => bail!("duration {s:?}: unit {c:?} is not one of h, m, s (e.g. \"8760h\")"),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("duration {s:?} is not like \"8760h\" or \"1h30m\""))?;
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| anyhow::anyhow!("duration {s:?} is too long"))?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        bail!("duration {s:?} is not like \"8760h\" or \"1h30m\" (a number needs a unit)");
    }
    Ok(total)
}

/// Seconds as Go prints a duration: `8760h0m0s`, `0s`.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_versions_only() {
        let v = Version::parse_exact("v", "1.34.11").unwrap();
        assert_eq!(
            (v.major, v.minor, v.patch, v.with_v()),
            (1, 34, 11, "v1.34.11".to_string())
        );
        assert_eq!(
            Version::parse_exact("v", "v1.35.0-rc.1")
                .unwrap()
                .to_string(),
            "1.35.0-rc.1"
        );
        for (bad, word) in [
            ("stable", "label"),
            ("latest", "label"),
            ("stable-1.34", "label"),
            ("latest-1.34", "label"),
            ("1.34", "minor release"),
            ("v1.34", "minor release"),
            ("1", "not a version"),
            ("1.34.x", "not a version"),
            ("1.34.11.2", "not a version"),
            ("", "not a version"),
        ] {
            let e = Version::parse_exact("kubernetes.version", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }

    #[test]
    fn kubeadm_api_by_minor() {
        let api = |s| Version::parse_exact("v", s).unwrap().kubeadm_api().unwrap();
        assert_eq!(api("1.30.14"), "kubeadm.k8s.io/v1beta3");
        assert_eq!(api("1.31.0"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(api("1.36.4"), "kubeadm.k8s.io/v1beta4");
        assert!(Version::parse_exact("v", "1.21.0")
            .unwrap()
            .kubeadm_api()
            .is_err());
    }

    #[test]
    fn containerd_formats() {
        let cv = |s| containerd_config_version(&Version::parse_exact("v", s).unwrap());
        assert_eq!(cv("1.6.20").unwrap(), 2);
        assert_eq!(cv("1.7.34").unwrap(), 2);
        assert_eq!(cv("2.1.9").unwrap(), 3);
        assert!(cv("3.0.0").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8760h").unwrap(), 8760 * 3600);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(format_duration(8760 * 3600), "8760h0m0s");
        assert_eq!(format_duration(90), "1m30s");
        assert_eq!(format_duration(0), "0s");
        for bad in ["", "24", "1d", "h", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
