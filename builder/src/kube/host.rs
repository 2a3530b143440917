// SPDX-License-Identifier: Apache-2.0
//! Host settings of a Kubernetes node ([host]), with safe defaults: swap off
//! (Fedora's swap on zram too; or kept, with kubelet told so), SELinux permissive where the base has it,
//! firewalld disabled (or the Kubernetes ports opened), time zone and NTP
//! servers inside the gap.

use anyhow::{bail, Result};
use serde_json::json;

use super::spec::Role;
use crate::recipe::Loaded;
use crate::render::Renderer;
use crate::tree::{Attrs, Root};

/// Applies [host]; returns notes for the build log.
pub fn apply(
    l: &Loaded,
    root: &Root,
    renderer: &Renderer,
    role: Role,
    epoch: i64,
) -> Result<Vec<String>> {
    let host = l.recipe.host.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let put = |path: &str, text: &str| -> Result<()> {
        root.write_file(path, &mut text.as_bytes(), &Attrs::root(0o644, epoch))?;
        Ok(())
    };
    let mask = |unit: &str| -> Result<()> {
        root.symlink(
            &format!("etc/systemd/system/{unit}"),
            "/dev/null",
            &Attrs::root(0o777, epoch),
        )
    };

    // Swap: kubelet refuses to start with swap on. zram-generator reads
    // /etc/systemd/zram-generator.conf before /usr/lib's: with no [zram*]
    // section it makes no device. swap.target masked keeps any other swap off.
    if keep_swap(l) {
        notes.push("swap kept as the base has it (host.swap = \"keep\"): kubelet runs with failSwapOn: false, pods get no swap (NoSwap)".into());
    } else {
        put(
            "etc/systemd/zram-generator.conf",
            "# Written by airlock: no swap on zram on a Kubernetes node (kubelet refuses swap).\n",
        )?;
        mask("swap.target")?;
    }

    // SELinux.
    if root.exists("etc/selinux/config") {
        let mode = host
            .selinux
            .as_ref()
            .map_or("permissive", |s| s.get_ref().as_str());
        let old = String::from_utf8_lossy(&root.read("etc/selinux/config")?.unwrap_or_default())
            .into_owned();
        let ty = old
            .lines()
            .find_map(|l| l.trim().strip_prefix("SELINUXTYPE="))
            .unwrap_or("targeted")
            .to_string();
        put(
            "etc/selinux/config",
            &renderer.render(
                "kube/selinux-config.j2",
                &json!({ "selinux": mode, "selinux_type": ty }),
            )?,
        )?;
        if host.selinux.is_none() {
            notes.push("SELinux set to permissive (host.selinux; kubeadm's containers need policy work under enforcing)".into());
        }
    } else if let Some(s) = &host.selinux {
        notes.push(format!(
            "host.selinux = {:?} ignored: the base has no /etc/selinux/config",
            s.get_ref()
        ));
    }

    // firewalld.
    let has_firewalld = [
        "usr/lib/systemd/system/firewalld.service",
        "lib/systemd/system/firewalld.service",
    ]
    .iter()
    .any(|p| root.exists(p));
    match (
        has_firewalld,
        host.firewalld.as_ref().map(|s| s.get_ref().as_str()),
    ) {
        (false, Some(f)) => notes.push(format!(
            "host.firewalld = {f:?} ignored: the base has no firewalld"
        )),
        (false, None) => {}
        (true, None | Some("disable")) => {
            mask("firewalld.service")?;
            notes.push("firewalld masked (host.firewalld = \"disable\")".into());
        }
        (true, Some(_)) => open_ports(root, renderer, role, epoch)?,
    }

    // Time zone.
    if let Some(tz) = &host.timezone {
        let zone = tz.get_ref();
        if !root.exists(&format!("usr/share/zoneinfo/{zone}")) {
            bail!(
                "{}: host.timezone {zone:?}: /usr/share/zoneinfo/{zone} is not in the base (install tzdata, or check the name)",
                l.at(tz)
            );
        }
        root.symlink(
            "etc/localtime",
            &format!("../usr/share/zoneinfo/{zone}"),
            &Attrs::root(0o777, epoch),
        )?;
        if root.exists("etc/timezone") {
            put("etc/timezone", &format!("{zone}\n"))?;
        }
    }

    // NTP inside the gap.
    if !host.ntp.is_empty() {
        let ctx = json!({ "ntp": host.ntp });
        let mut done = false;
        if ["usr/sbin/chronyd", "sbin/chronyd"]
            .iter()
            .any(|p| root.exists(p))
        {
            let path = if root.exists("etc/chrony/chrony.conf") {
                "etc/chrony/chrony.conf"
            } else {
                "etc/chrony.conf"
            };
            put(path, &renderer.render("kube/chrony.conf.j2", &ctx)?)?;
            done = true;
        }
        if [
            "usr/lib/systemd/systemd-timesyncd",
            "lib/systemd/systemd-timesyncd",
        ]
        .iter()
        .any(|p| root.exists(p))
        {
            put(
                "etc/systemd/timesyncd.conf.d/50-airlock.conf",
                &renderer.render("kube/timesyncd.conf.j2", &ctx)?,
            )?;
            done = true;
        }
        if !done {
            bail!(
                "{}: host.ntp is set but the base has neither chrony (chronyd) nor systemd-timesyncd: add one to the base",
                l.path.display()
            );
        }
    }
    Ok(notes)
}

/// Whether the recipe keeps the base's swap (`[host] swap = "keep"`).
pub fn keep_swap(l: &Loaded) -> bool {
    l.recipe
        .host
        .as_ref()
        .and_then(|h| h.swap.as_ref())
        .is_some_and(|s| s.get_ref() == "keep")
}

/// The ports a node of `role` serves (Kubernetes' "Ports and Protocols"
/// page), plus flannel's VXLAN. Every kubeadm node runs kubelet and
/// kube-proxy, so the control plane also serves the kube-proxy health
/// check and NodePort Services (TCP and UDP).
pub fn ports(role: Role) -> Vec<(u32, u32, &'static str)> {
    let mut p = vec![
        (10250, 10250, "tcp"),
        (10256, 10256, "tcp"),
        (30000, 32767, "tcp"),
        (30000, 32767, "udp"),
        (8472, 8472, "udp"),
    ];
    if role == Role::Init {
        p.extend([
            (6443, 6443, "tcp"),
            (2379, 2380, "tcp"),
            (10257, 10257, "tcp"),
            (10259, 10259, "tcp"),
        ]);
    }
    p
}

/// Adds an `airlock-kubernetes` firewalld service and puts it in the
/// default zone (copying the zone from /usr/lib/firewalld when /etc has none).
fn open_ports(root: &Root, renderer: &Renderer, role: Role, epoch: i64) -> Result<()> {
    let ports: Vec<_> = ports(role)
        .into_iter()
        .map(|(a, b, proto)| json!({ "port": if a == b { a.to_string() } else { format!("{a}-{b}") }, "protocol": proto }))
        .collect();
    let xml = renderer.render(
        "kube/firewalld-kubernetes.xml.j2",
        &json!({ "role": role.as_str(), "ports": ports }),
    )?;
    root.write_file(
        "etc/firewalld/services/airlock-kubernetes.xml",
        &mut xml.as_bytes(),
        &Attrs::root(0o644, epoch),
    )?;
    let conf = String::from_utf8_lossy(
        &root
            .read("etc/firewalld/firewalld.conf")?
            .unwrap_or_default(),
    )
    .into_owned();
    let zone = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("DefaultZone="))
        .map(|z| z.trim().to_string())
        .filter(|z| !z.is_empty() && !z.contains('/'))
        .unwrap_or_else(|| "public".into());
    let etc = format!("etc/firewalld/zones/{zone}.xml");
    let current = match root.read(&etc)? {
        Some(b) => Some(b),
        None => root.read(&format!("usr/lib/firewalld/zones/{zone}.xml"))?,
    };
    let text = String::from_utf8_lossy(&current.unwrap_or_default()).into_owned();
    let line = "  <service name=\"airlock-kubernetes\"/>\n";
    let new = if text.contains("airlock-kubernetes") {
        text
    } else if let Some(i) = text.rfind("</zone>") {
        format!("{}{line}{}", &text[..i], &text[i..])
    } else {
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<zone>\n  <short>{zone}</short>\n{line}</zone>\n")
    };
    root.write_file(&etc, &mut new.as_bytes(), &Attrs::root(0o644, epoch))?;
    Ok(())
}
