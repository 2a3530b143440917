// SPDX-License-Identifier: Apache-2.0
//! Reading what the build left for the node — cluster.toml, node.toml and
//! images.json, whose types [`crate::kube`] shares with the build — with
//! errors that name the file, line and column (an operator may have
//! edited node.toml on the ESP) and say what to do.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::kube::images::ImagesJson;
use crate::kube::settings::{ClusterSettings, NodeSettings};

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(s) => {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{}:{line}:{col}", path.display())
            }
            None => path.display().to_string(),
        };
        anyhow::anyhow!("{at}: {}", e.message().trim_end())
    })
}

/// `/usr/lib/airlock/cluster.toml`.
pub fn load_cluster(path: &Path) -> Result<ClusterSettings> {
    let c: ClusterSettings = parse_toml(path, &read(path, "cluster settings")?)?;
    c.validate().with_context(|| {
        format!(
            "{}: the build wrote this file: build the image again",
            path.display()
        )
    })?;
    Ok(c)
}

/// `/boot/efi/airlock/node.toml`.
pub fn load_node(path: &Path) -> Result<NodeSettings> {
    let text = read(path, "node settings").map_err(|e| {
        e.context("the ESP holds the node's settings: is it mounted at /boot/efi (fstab)?")
    })?;
    let n: NodeSettings = parse_toml(path, &text)?;
    n.validate().with_context(|| {
        format!(
            "{}: fix the file on the ESP (any laptop can edit it)",
            path.display()
        )
    })?;
    Ok(n)
}

/// `/usr/lib/airlock/images.json`.
pub fn load_images(path: &Path) -> Result<ImagesJson> {
    let text = read(path, "the image list")?;
    let f: ImagesJson = serde_json::from_str(&text)
        .with_context(|| format!("parsing the image list {}", path.display()))?;
    for a in &f.archives {
        if a.sha256.len() != 64 || !a.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!(
                "{}: archive {} has sha256 {:?}, not 64 hex digits",
                path.display(),
                a.file,
                a.sha256
            );
        }
        if !a.file.starts_with('/') || a.file.split('/').any(|c| c == "..") {
            bail!(
                "{}: archive file {:?} is not an absolute path",
                path.display(),
                a.file
            );
        }
    }
    Ok(f)
}

/// Every reference of the list, once, in order of appearance.
pub fn references(list: &ImagesJson) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    list.archives
        .iter()
        .flat_map(|a| a.references.iter().map(String::as_str))
        .filter(|r| seen.insert(*r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::spec::Role;

    const NODE: &str = r#"
[node]
name = "w-1"
hostname = "w-1"
role = "join"
advertise_interface = "eth0"
control_plane_endpoint = "10.0.0.10:6443"

[join]
token = "abcdef.0123456789abcdef"
ca_cert_hash = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
"#;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn a_join_node_parses() {
        let (_d, p) = write("node.toml", NODE);
        let n = load_node(&p).unwrap();
        assert_eq!(n.node.role, Role::Join);
        assert_eq!(n.node.advertise_interface.as_deref(), Some("eth0"));
    }

    #[test]
    fn operator_mistakes_name_file_line_and_fix() {
        let cases = [
            (
                "typo",
                NODE.replace("advertise_interface", "advertise_interfase"),
                "node.toml:6:1",
            ),
            (
                "bad role",
                NODE.replace("\"join\"", "\"master\""),
                "node.toml:5",
            ),
            (
                "bad address",
                NODE.replace(
                    "advertise_interface = \"eth0\"",
                    "advertise_address = \"10.0.0\"",
                ),
                "node.toml:6",
            ),
            (
                "bad token",
                NODE.replace("abcdef.0123", "ABCDEF.0123"),
                "fix the file on the ESP",
            ),
            (
                "no join",
                NODE.split("[join]").next().unwrap().to_string(),
                "no [join] section",
            ),
        ];
        for (name, text, want) in cases {
            let (_d, p) = write("node.toml", &text);
            let err = format!("{:#}", load_node(&p).unwrap_err());
            assert!(err.contains(want), "{name}: {err}");
        }
        let d = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load_node(&d.path().join("node.toml")).unwrap_err());
        assert!(err.contains("mounted at /boot/efi"), "{err}");
    }

    #[test]
    fn image_list_checks_and_deduplicates() {
        let sha = |c: char| c.to_string().repeat(64);
        let json = format!(
            r#"{{"archives": [
                {{"file": "/a.tar", "sha256": "{}", "platform": "linux/amd64", "references": ["x:1", "y:1"]}},
                {{"file": "/b.tar", "sha256": "{}", "platform": "linux/amd64", "references": ["y:1", "z:1"]}}
            ]}}"#,
            sha('a'),
            sha('b')
        );
        let (_d, p) = write("images.json", &json);
        assert_eq!(references(&load_images(&p).unwrap()), ["x:1", "y:1", "z:1"]);
        let (_d, p) = write("images.json", &json.replace("/b.tar", "../b.tar"));
        assert!(format!("{:#}", load_images(&p).unwrap_err()).contains("not an absolute path"));
    }
}
