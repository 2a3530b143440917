// SPDX-License-Identifier: Apache-2.0
//! The CNI manifest (flannel's kube-flannel.yml by default): the images its
//! pods run, and the pod network it configures, read with a YAML parser.

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::net::Cidr;

/// What the build needs to know about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Every `image:` of every container and init container, sorted, once.
    pub images: Vec<String>,
    /// flannel's `net-conf.json` Network, when the manifest has one.
    pub pod_network: Option<Cidr>,
}

/// The file name the manifest gets in /usr/lib/airlock/cni: the last path
/// component of its source, reduced to safe characters.
pub fn file_name(source: &str) -> String {
    let base = source.rsplit('/').next().unwrap_or(source);
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.is_empty() {
        "cni.yml".into()
    } else if clean.ends_with(".yml") || clean.ends_with(".yaml") {
        clean
    } else {
        format!("{clean}.yml")
    }
}

/// Parses a (multi-document) manifest. `what` names it in errors.
pub fn parse(text: &str, what: &str) -> Result<Manifest> {
    let mut images = Vec::new();
    let mut pod_network = None;
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .with_context(|| format!("parsing {what} (YAML document {})", i + 1))?;
        if v.is_null() {
            continue;
        }
        collect_images(&v, &mut images);
        if v["kind"] == "ConfigMap" {
            if let Some(conf) = v["data"]["net-conf.json"].as_str() {
                let j: Value = serde_json::from_str(conf).with_context(|| {
                    format!(
                        "{what}: ConfigMap {} has a net-conf.json that is not JSON",
                        v["metadata"]["name"]
                    )
                })?;
                if let Some(n) = j["Network"].as_str() {
                    let c =
                        Cidr::parse(n).with_context(|| format!("{what}: net-conf.json Network"))?;
                    pod_network = Some(c);
                }
            }
        }
    }
    images.sort();
    Ok(Manifest {
        images,
        pod_network,
    })
}

/// Images of pod templates anywhere in a document (Deployment, DaemonSet,
/// Pod, Job...): the `image` of every entry of `containers`,
/// `initContainers` and `ephemeralContainers` lists.
fn collect_images(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if matches!(
                    k.as_str(),
                    "containers" | "initContainers" | "ephemeralContainers"
                ) {
                    for c in child.as_array().into_iter().flatten() {
                        if let Some(img) = c["image"].as_str() {
                            if !out.iter().any(|x| x == img) {
                                out.push(img.to_string());
                            }
                        }
                    }
                }
                collect_images(child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_images(c, out)),
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A cut-down kube-flannel.yml with the parts the build reads.
    pub(crate) fn flannel(network: &str, version: &str, cni_plugin: &str) -> String {
        format!(
            r#"---
kind: Namespace
apiVersion: v1
metadata:
  name: kube-flannel
---
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  cni-conf.json: |
    {{
      "name": "cbr0",
      "cniVersion": "0.3.1",
      "plugins": [{{"type": "flannel"}}, {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]
    }}
  net-conf.json: |
    {{
      "Network": "{network}",
      "EnableNFTables": false,
      "Backend": {{
        "Type": "vxlan"
      }}
    }}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
spec:
  template:
    spec:
      initContainers:
      - name: install-cni-plugin
        image: {cni_plugin}
        command: ["cp"]
      - name: install-cni
        image: ghcr.io/flannel-io/flannel:{version}
      containers:
      - name: kube-flannel
        image: ghcr.io/flannel-io/flannel:{version}
"#
        )
    }

    #[test]
    fn reads_images_and_network() {
        let m = parse(
            &flannel(
                "10.244.0.0/16",
                "v0.28.9",
                "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
            ),
            "kube-flannel.yml",
        )
        .unwrap();
        // Both images of the DaemonSet, sorted, each once.
        let mut want = vec![
            "ghcr.io/flannel-io/flannel:v0.28.9",
            "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
        ];
        want.sort();
        assert_eq!(m.images, want);
        assert_eq!(m.pod_network, Some(Cidr::parse("10.244.0.0/16").unwrap()));
    }

    #[test]
    fn bad_yaml_names_the_document() {
        let e = parse("a: 1\n---\nb: [unclosed\n", "m.yml").unwrap_err();
        assert!(
            format!("{e:#}").contains("m.yml (YAML document 2)"),
            "{e:#}"
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(
            file_name(
                "https://github.com/flannel-io/flannel/releases/download/v0.28.9/kube-flannel.yml"
            ),
            "kube-flannel.yml"
        );
        assert_eq!(file_name("cni/calico.yaml"), "calico.yaml");
        assert_eq!(file_name("../x y"), "x_y.yml");
    }
}
