// SPDX-License-Identifier: Apache-2.0
//! Enabling systemd units in an offline root, as `systemctl enable` would:
//! read the unit's [Install] section and make the `.wants`/`.requires` links.

use anyhow::{bail, Result};

use crate::tree::{Attrs, Root};

const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// Where the unit file lives in the root (image-absolute path).
fn find_unit(root: &Root, unit: &str) -> Option<String> {
    UNIT_DIRS
        .iter()
        .map(|d| format!("{d}/{unit}"))
        .find(|p| root.exists(p))
        .map(|p| format!("/{p}"))
}

/// The targets named by WantedBy= and RequiredBy= in [Install].
pub fn install_targets(text: &str) -> Vec<(String, &'static str)> {
    let mut in_install = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        for (key, suffix) in [("WantedBy=", "wants"), ("RequiredBy=", "requires")] {
            if let Some(v) = l.strip_prefix(key) {
                out.extend(v.split_whitespace().map(|t| (t.to_string(), suffix)));
            }
        }
    }
    out
}

/// Enables `unit` in the root; returns the links it made.
pub fn enable(root: &Root, unit: &str, epoch: i64) -> Result<Vec<String>> {
    if unit.contains('/') || !unit.contains('.') {
        bail!("systemd.enable: {unit:?} is not a unit name like \"foo.service\"");
    }
    let Some(path) = find_unit(root, unit) else {
        bail!(
            "systemd.enable: unit {unit} is not in the image (looked in /{}); add it with a template or overlay",
            UNIT_DIRS.join(", /")
        );
    };
    let text = String::from_utf8_lossy(&root.read(&path)?.unwrap_or_default()).into_owned();
    let targets = install_targets(&text);
    if targets.is_empty() {
        bail!("systemd.enable: {path} has no WantedBy= or RequiredBy= in an [Install] section");
    }
    let mut links = Vec::new();
    for (target, suffix) in targets {
        let link = format!("etc/systemd/system/{target}.{suffix}/{unit}");
        root.mkdir_all(&format!("etc/systemd/system/{target}.{suffix}"), epoch)?;
        root.symlink(&link, &path, &Attrs::root(0o777, epoch))?;
        links.push(format!("/{link}"));
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_install_section_only() {
        let t = "[Unit]\nWantedBy=wrong.target\n[Install]\nWantedBy=multi-user.target  graphical.target\nRequiredBy=x.target\n";
        assert_eq!(
            install_targets(t),
            vec![
                ("multi-user.target".to_string(), "wants"),
                ("graphical.target".to_string(), "wants"),
                ("x.target".to_string(), "requires")
            ]
        );
    }

    #[test]
    fn enables_and_refuses_missing() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(&d.path().join("r")).unwrap();
        root.write_file(
            "usr/lib/systemd/system/a.service",
            &mut &b"[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"[..],
            &Attrs::root(0o644, 0),
        )
        .unwrap();
        let links = enable(&root, "a.service", 0).unwrap();
        assert_eq!(
            links,
            vec!["/etc/systemd/system/multi-user.target.wants/a.service"]
        );
        let target = std::fs::read_link(
            d.path()
                .join("r/etc/systemd/system/multi-user.target.wants/a.service"),
        )
        .unwrap();
        assert_eq!(
            target,
            std::path::Path::new("/usr/lib/systemd/system/a.service")
        );
        assert!(enable(&root, "b.service", 0)
            .unwrap_err()
            .to_string()
            .contains("not in the image"));
    }
}
