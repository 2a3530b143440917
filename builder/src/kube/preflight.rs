// SPDX-License-Identifier: Apache-2.0
//! What kubeadm's preflight checks need from the root tree, checked at
//! build time so a node never fails them in a room nobody can reach:
//! conntrack, iptables or nft, modprobe, mount, a CNI loopback plugin, and
//! the br_netfilter and overlay modules for the kernel that boots.

use anyhow::Result;

use crate::tree::Root;

const BIN_DIRS: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
];

/// One missing piece, with where it was looked for and what provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

fn have_program(root: &Root, name: &str) -> bool {
    BIN_DIRS.iter().any(|d| root.exists(&format!("{d}/{name}")))
}

/// Where a kernel module is: built in, or a file of the modules tree.
fn have_module(root: &Root, modules: &str, name: &str, usual: &str) -> Result<bool> {
    let ko = format!("{name}.ko");
    let text = |f: &str| -> Result<String> {
        Ok(
            String::from_utf8_lossy(&root.read(&format!("{modules}/{f}"))?.unwrap_or_default())
                .into_owned(),
        )
    };
    if text("modules.builtin")?
        .lines()
        .any(|l| l.trim().rsplit('/').next() == Some(ko.as_str()))
    {
        return Ok(true);
    }
    let dep = text("modules.dep")?;
    let listed = dep.lines().filter_map(|l| l.split(':').next()).any(|p| {
        let base = p.rsplit('/').next().unwrap_or(p);
        base == ko
            || base
                .strip_prefix(&ko)
                .is_some_and(|rest| rest.starts_with('.'))
    });
    if listed {
        return Ok(true);
    }
    Ok(!root.glob(&format!("{modules}/{usual}/{ko}*"))?.is_empty())
}

/// Everything missing for kubeadm on `kernel`; empty when the tree is fine.
pub fn check(root: &Root, kernel: &str, cni_bin_dirs: &[String]) -> Result<Vec<Missing>> {
    let mut missing = Vec::new();
    for (prog, pkg) in [
        (
            "conntrack",
            "conntrack (Debian) or conntrack-tools (Fedora)",
        ),
        ("modprobe", "kmod"),
        ("mount", "mount (Debian) or util-linux-core (Fedora)"),
    ] {
        if !have_program(root, prog) {
            missing.push(Missing(format!("program {prog} (install {pkg})")));
        }
    }
    if !have_program(root, "iptables") && !have_program(root, "nft") {
        missing.push(Missing(
            "program iptables or nft (install iptables or nftables)".into(),
        ));
    }
    let modules = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| format!("{d}/{kernel}"))
        .find(|d| root.exists(d));
    match modules {
        None => missing.push(Missing(format!(
            "kernel modules for {kernel} (no /usr/lib/modules/{kernel}): br_netfilter and overlay cannot load"
        ))),
        Some(m) => {
            for (name, usual) in [("br_netfilter", "kernel/net/bridge"), ("overlay", "kernel/fs/overlayfs")] {
                if !have_module(root, &m, name, usual)? {
                    missing.push(Missing(format!(
                        "kernel module {name} for {kernel} (neither in /{m}/modules.builtin nor under /{m}/kernel)"
                    )));
                }
            }
        }
    }
    if !cni_bin_dirs
        .iter()
        .any(|d| root.exists(&format!("{}/loopback", d.trim_start_matches('/'))))
    {
        missing.push(Missing(format!(
            "CNI plugin loopback in {} (add containerd.cni_plugins, or name the base's plugin folder in containerd.cni_bin_dirs)",
            cni_bin_dirs.join(" or ")
        )));
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Attrs;

    fn put(root: &Root, p: &str, data: &[u8]) {
        root.write_file(p, &mut &data[..], &Attrs::root(0o755, 0))
            .unwrap();
    }

    #[test]
    fn names_each_missing_piece() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(&d.path().join("r")).unwrap();
        root.symlink("lib", "usr/lib", &Attrs::root(0o777, 0))
            .unwrap();
        put(&root, "usr/bin/mount", b"");
        put(
            &root,
            "usr/lib/modules/6.1.0/modules.builtin",
            b"kernel/fs/overlayfs/overlay.ko\n",
        );
        let m = check(&root, "6.1.0", &["/opt/cni/bin".into()]).unwrap();
        let all: Vec<String> = m.iter().map(|m| m.0.clone()).collect();
        let text = all.join("\n");
        for want in [
            "conntrack",
            "modprobe",
            "iptables or nft",
            "br_netfilter",
            "loopback",
        ] {
            assert!(text.contains(want), "{want} not named: {text}");
        }
        assert!(
            !text.contains("program mount") && !text.contains("module overlay"),
            "{text}"
        );

        put(&root, "usr/sbin/conntrack", b"");
        put(&root, "sbin/modprobe", b""); // through nothing: a real dir here
        put(&root, "usr/sbin/nft", b"");
        put(&root, "opt/cni/bin/loopback", b"");
        put(
            &root,
            "usr/lib/modules/6.1.0/kernel/net/bridge/br_netfilter.ko.xz",
            b"",
        );
        assert!(check(&root, "6.1.0", &["/opt/cni/bin".into()])
            .unwrap()
            .is_empty());
        // modules.dep alone is enough too.
        root.remove("usr/lib/modules/6.1.0/kernel").unwrap();
        put(
            &root,
            "usr/lib/modules/6.1.0/modules.dep",
            b"kernel/net/bridge/br_netfilter.ko.zst: kernel/net/bridge/bridge.ko.zst\n",
        );
        assert!(check(&root, "6.1.0", &["/opt/cni/bin".into()])
            .unwrap()
            .is_empty());
        let m = check(&root, "6.9.9", &["/opt/cni/bin".into()]).unwrap();
        assert!(m[0].0.contains("no /usr/lib/modules/6.9.9"), "{m:?}");
    }
}
