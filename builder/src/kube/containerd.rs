// SPDX-License-Identifier: Apache-2.0
//! containerd's configuration for the recipe's containerd release, and the
//! check that its sandbox image is the pause image kubeadm uses.

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::images::normalize_ref;
use super::version::{self, Version};
use crate::render::Renderer;

/// Where the rendered configuration goes.
pub const CONFIG_PATH: &str = "/etc/containerd/config.toml";

/// What the configuration is rendered from.
#[derive(Debug, Clone)]
pub struct ConfigInput {
    pub version: Version,
    pub sandbox_image: String,
    pub cni_bin_dirs: Vec<String>,
    pub cni_conf_dir: String,
}

/// Renders `/etc/containerd/config.toml`: version 2 for 1.x, 3 for 2.x.
pub fn render(renderer: &Renderer, c: &ConfigInput) -> Result<String> {
    let config_version = version::containerd_config_version(&c.version)?;
    if c.cni_bin_dirs.is_empty() {
        bail!("containerd needs a CNI bin dir");
    }
    let ctx = json!({
        "containerd": { "version": c.version.to_string() },
        "config_version": config_version,
        "sandbox_image": c.sandbox_image,
        // containerd 2.1 replaced bin_dir by bin_dirs.
        "cni_bin_dirs_key": (c.version.major, c.version.minor) >= (2, 1),
        "cni_bin_dirs": c.cni_bin_dirs,
        "cni_conf_dir": c.cni_conf_dir,
    });
    renderer
        .render("kube/containerd-config.toml.j2", &ctx)
        .context("rendering the containerd configuration")
}

/// The sandbox image a rendered configuration names, read with a TOML
/// parser from the key containerd reads for that config version.
pub fn sandbox_image(config: &str) -> Result<String> {
    let v: toml::Value =
        toml::from_str(config).context("parsing the rendered containerd configuration as TOML")?;
    let plugins = v.get("plugins");
    let found = match v.get("version").and_then(toml::Value::as_integer) {
        Some(3) => plugins
            .and_then(|p| p.get("io.containerd.cri.v1.images"))
            .and_then(|p| p.get("pinned_images"))
            .and_then(|p| p.get("sandbox")),
        Some(2) => plugins.and_then(|p| p.get("io.containerd.grpc.v1.cri")).and_then(|p| p.get("sandbox_image")),
        other => bail!("the containerd configuration has version {other:?}; airlock writes 2 (containerd 1.x) or 3 (2.x)"),
    };
    match found.and_then(toml::Value::as_str) {
        Some(s) => Ok(s.to_string()),
        None => bail!(
            "the containerd configuration sets no sandbox image, so containerd would pull its built-in default"
        ),
    }
}

/// The sandbox image in the rendered configuration must be kubeadm's pause
/// image, or every pod start would try a network pull.
pub fn check_sandbox(config: &str, kubeadm_pause: &str, kubeadm_source: &str) -> Result<()> {
    let s = sandbox_image(config)?;
    if normalize_ref(&s)? != normalize_ref(kubeadm_pause)? {
        bail!(
            "containerd's sandbox image is {s} but kubeadm ({kubeadm_source}) uses {kubeadm_pause}: \
             the sandbox would be pulled at every pod start. Remove containerd.sandbox_image (airlock then uses \
             kubeadm's) or set it to {kubeadm_pause}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: &str) -> ConfigInput {
        ConfigInput {
            version: Version::parse_exact("v", v).unwrap(),
            sandbox_image: "registry.k8s.io/pause:3.10.1".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cni_conf_dir: "/etc/cni/net.d".into(),
        }
    }

    fn get<'a>(v: &'a toml::Value, path: &[&str]) -> &'a toml::Value {
        path.iter().fold(v, |v, k| {
            v.get(k).unwrap_or_else(|| panic!("no {k} in {path:?}"))
        })
    }

    #[test]
    fn containerd_2x_is_config_version_3() {
        let r = Renderer::new(None);
        for (ver, bin_dirs) in [
            ("2.0.5", false),
            ("2.1.9", true),
            ("2.2.7", true),
            ("2.3.4", true),
        ] {
            let mut i = input(ver);
            if !bin_dirs {
                i.cni_bin_dirs.truncate(1);
            }
            let text = render(&r, &i).unwrap();
            let v: toml::Value = toml::from_str(&text).unwrap();
            assert_eq!(v["version"].as_integer(), Some(3), "{ver}");
            let images = get(&v, &["plugins", "io.containerd.cri.v1.images"]);
            assert_eq!(
                get(images, &["pinned_images", "sandbox"]).as_str(),
                Some("registry.k8s.io/pause:3.10.1")
            );
            assert_eq!(get(images, &["snapshotter"]).as_str(), Some("overlayfs"));
            let rt = get(&v, &["plugins", "io.containerd.cri.v1.runtime"]);
            let runc = get(rt, &["containerd", "runtimes", "runc"]);
            assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
            assert_eq!(
                get(runc, &["options", "SystemdCgroup"]).as_bool(),
                Some(true)
            );
            let cni = get(rt, &["cni"]);
            assert_eq!(cni["conf_dir"].as_str(), Some("/etc/cni/net.d"));
            if bin_dirs {
                let dirs: Vec<_> = cni["bin_dirs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap())
                    .collect();
                assert_eq!(dirs, ["/opt/cni/bin", "/usr/lib/cni"], "{ver}");
                assert!(cni.get("bin_dir").is_none());
            } else {
                assert_eq!(cni["bin_dir"].as_str(), Some("/opt/cni/bin"), "{ver}");
            }
            // CRI is on: nothing disables it.
            assert!(v.get("disabled_plugins").is_none());
            assert_eq!(
                sandbox_image(&text).unwrap(),
                "registry.k8s.io/pause:3.10.1"
            );
        }
    }

    #[test]
    fn containerd_1x_is_config_version_2() {
        let r = Renderer::new(None);
        for ver in ["1.6.20", "1.7.34"] {
            let mut i = input(ver);
            i.cni_bin_dirs.truncate(1);
            let text = render(&r, &i).unwrap();
            let v: toml::Value = toml::from_str(&text).unwrap();
            assert_eq!(v["version"].as_integer(), Some(2));
            let cri = get(&v, &["plugins", "io.containerd.grpc.v1.cri"]);
            assert_eq!(
                cri["sandbox_image"].as_str(),
                Some("registry.k8s.io/pause:3.10.1")
            );
            let runc = get(cri, &["containerd", "runtimes", "runc"]);
            assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
            assert_eq!(
                get(runc, &["options", "SystemdCgroup"]).as_bool(),
                Some(true)
            );
            assert_eq!(get(cri, &["cni", "bin_dir"]).as_str(), Some("/opt/cni/bin"));
            assert_eq!(
                get(cri, &["cni", "conf_dir"]).as_str(),
                Some("/etc/cni/net.d")
            );
            assert!(v.get("disabled_plugins").is_none());
        }
    }

    #[test]
    fn pause_mismatch_is_refused() {
        let r = Renderer::new(None);
        let mut i = input("2.1.9");
        i.sandbox_image = "registry.k8s.io/pause:3.8".into();
        let text = render(&r, &i).unwrap();
        let e =
            check_sandbox(&text, "registry.k8s.io/pause:3.10.1", "kubeadm 1.34.11").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("pause:3.8")
                && msg.contains("pause:3.10.1")
                && msg.contains("containerd.sandbox_image"),
            "{msg}"
        );
        check_sandbox(
            &render(&r, &input("2.1.9")).unwrap(),
            "registry.k8s.io/pause:3.10.1",
            "x",
        )
        .unwrap();
        let e = sandbox_image("version = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("no sandbox image"));
    }
}
