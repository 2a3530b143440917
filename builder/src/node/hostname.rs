// SPDX-License-Identifier: Apache-2.0
//! `airlock node hostname`: the host name from node.toml, which an operator
//! may have edited on the ESP after the image was built. It goes into
//! /etc/hostname, the `127.0.1.1` line of /etc/hosts that the build wrote,
//! and (on a running node) the kernel, before kubelet and kubeadm start, so
//! the node registers under the name the operator chose.

use anyhow::{Context, Result};

use super::{paths, say, settings, write_with_mode, NodeRoot};

/// The running host name, in the kernel's own file (sethostname(2) without
/// D-Bus or hostnamectl, which may not be up this early).
const KERNEL_HOSTNAME: &str = "/proc/sys/kernel/hostname";

pub fn run(root: &NodeRoot) -> Result<()> {
    let node = settings::load_node(&root.path(paths::NODE_TOML))?;
    apply(root, &node.node.hostname)
}

/// Makes `name` the host name; a no-op when it already is.
pub fn apply(root: &NodeRoot, name: &str) -> Result<()> {
    let etc = root.path("/etc/hostname");
    let old = std::fs::read_to_string(&etc).unwrap_or_default();
    let old = old.trim();
    if old != name {
        write_with_mode(&etc, format!("{name}\n").as_bytes(), 0o644)
            .context("writing /etc/hostname")?;
        say(format!(
            "host name {name} (node.toml; the image was built as {})",
            if old.is_empty() { "(none)" } else { old }
        ));
    }
    let hosts = root.path("/etc/hosts");
    if let Ok(text) = std::fs::read_to_string(&hosts) {
        if let Some(new) = hosts_with(&text, name) {
            write_with_mode(&hosts, new.as_bytes(), 0o644).context("writing /etc/hosts")?;
            say(format!("/etc/hosts: 127.0.1.1 is {name}"));
        }
    }
    if root.is_live() {
        let running = std::fs::read_to_string(KERNEL_HOSTNAME).unwrap_or_default();
        if running.trim() != name {
            std::fs::write(KERNEL_HOSTNAME, name)
                .with_context(|| format!("setting the host name {name} ({KERNEL_HOSTNAME})"))?;
            say(format!("running host name is now {name}"));
        }
    }
    Ok(())
}

/// /etc/hosts with its `127.0.1.1` entry naming `name`; `None` when there
/// is no such line (the site manages the file) or it already does.
fn hosts_with(text: &str, name: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let mut f = line.split_whitespace();
        if f.next() == Some("127.0.1.1") {
            let names: Vec<&str> = f.take_while(|w| !w.starts_with('#')).collect();
            if names != [name] {
                out.push_str(&format!("127.0.1.1\t{name}\n"));
                changed = true;
                continue;
            }
        }
        out.push_str(line);
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_127_0_1_1_entry_changes() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tcp-1\n::1\tlocalhost\n";
        assert_eq!(
            hosts_with(hosts, "cp-7").unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tcp-7\n::1\tlocalhost\n"
        );
        assert_eq!(hosts_with(hosts, "cp-1"), None);
        assert_eq!(hosts_with("127.0.0.1 localhost\n", "cp-7"), None);
    }

    #[test]
    fn etc_files_follow_node_toml() {
        let d = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(d.path());
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/hostname"), "cp-1\n").unwrap();
        std::fs::write(d.path().join("etc/hosts"), "127.0.1.1\tcp-1\n").unwrap();
        apply(&root, "cp-7").unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "cp-7\n");
        assert_eq!(read("etc/hosts"), "127.0.1.1\tcp-7\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("etc/hostname"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "everyone reads /etc/hostname");
    }
}
