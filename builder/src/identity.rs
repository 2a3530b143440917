// SPDX-License-Identifier: Apache-2.0
//! Per-node identity and accounts.
//!
//! An image is written to many machines, so nothing that must be unique per
//! machine is baked in: the machine-id is left `uninitialized` (systemd then
//! makes a fresh one and runs first-boot units), SSH host keys are removed
//! and generated on first boot, and the random seed is dropped. The hostname
//! comes from the recipe. Administrators are added to passwd/shadow/group.

use anyhow::{bail, Context, Result};

use crate::recipe::User;
use crate::tree::{Attrs, Root};

/// Files that identify one machine and must not be shared between images.
const PER_MACHINE: &[&str] = &[
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
];

/// Removes baked identity and writes `/etc/machine-id` = `uninitialized`.
/// Returns the paths it removed, for the build log.
pub fn reset_machine_identity(root: &Root, epoch: i64) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    // /var/lib/dbus/machine-id is a symlink to /etc/machine-id on current
    // distributions: only a regular file is a stale copy.
    for p in PER_MACHINE {
        if root.exists(p) && !root.is_symlink(p) {
            root.remove(p)?;
            removed.push(format!("/{p}"));
        }
    }
    for key in root.glob("etc/ssh/ssh_host_*")? {
        root.remove(&key)?;
        removed.push(key);
    }
    root.write_file(
        "etc/machine-id",
        &mut &b"uninitialized\n"[..],
        &Attrs::root(0o444, epoch),
    )?;
    Ok(removed)
}

/// One line of /etc/passwd-like files.
fn fields(line: &str) -> Vec<&str> {
    line.split(':').collect()
}

fn read_text(root: &Root, path: &str) -> Result<String> {
    match root.read(path)? {
        Some(b) => String::from_utf8(b).with_context(|| format!("reading /{path}: not UTF-8")),
        None => Ok(String::new()),
    }
}

fn lookup_id(text: &str, name: &str, field: usize) -> Option<u32> {
    text.lines()
        .map(fields)
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(field)?.parse().ok())
}

/// Resolves a user or group name through the image's own /etc/passwd or
/// /etc/group (never the build host's).
pub fn resolve_id(root: &Root, id: &crate::recipe::Id, group: bool) -> Result<u32> {
    match id {
        crate::recipe::Id::Num(n) => Ok(*n),
        crate::recipe::Id::Name(name) => {
            let file = if group { "etc/group" } else { "etc/passwd" };
            lookup_id(&read_text(root, file)?, name, 2).with_context(|| {
                format!(
                    "{} {name:?} does not exist in the image's /{file}",
                    if group { "group" } else { "user" }
                )
            })
        }
    }
}

/// Adds one administrator: passwd, shadow, group membership, home with
/// authorized_keys, and a sudoers drop-in. Returns (uid, gid).
pub fn add_user(root: &Root, u: &User, sudoers: &str, epoch: i64) -> Result<(u32, u32)> {
    let name = u.name.get_ref().as_str();
    let passwd = read_text(root, "etc/passwd")?;
    if passwd.is_empty() {
        bail!("the base has no /etc/passwd: cannot add user {name}");
    }
    if lookup_id(&passwd, name, 2).is_some() {
        bail!("user {name} already exists in the base's /etc/passwd");
    }
    let group = read_text(root, "etc/group")?;
    let used = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| fields(l).get(2)?.parse().ok())
            .collect()
    };
    let (uids, gids) = (used(&passwd), used(&group));
    let uid = (1000..60000)
        .find(|i| !uids.contains(i) && !gids.contains(i))
        .context("no free uid between 1000 and 60000")?;
    let gid = uid;
    let shell = if root.exists("bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = format!("home/{name}");

    let admin = ["sudo", "wheel"]
        .into_iter()
        .find(|g| lookup_id(&group, g, 2).is_some());
    let mut groups: Vec<String> = u.groups.clone();
    if let Some(a) = admin {
        if !groups.iter().any(|g| g == a) {
            groups.push(a.to_string());
        }
    }
    for g in &groups {
        if lookup_id(&group, g, 2).is_none() {
            bail!("user {name}: group {g:?} does not exist in the image's /etc/group");
        }
    }
    append_line(
        root,
        "etc/passwd",
        &format!("{name}:x:{uid}:{gid}:{name}:/{home}:{shell}"),
        0o644,
        epoch,
    )?;
    // "*" (not "!"): no password login, but the account is not locked, so
    // OpenSSH still accepts its keys.
    let hash = u.password_hash.as_deref().unwrap_or("*");
    append_line(
        root,
        "etc/shadow",
        &format!("{name}:{hash}:{}:0:99999:7:::", epoch / 86400),
        0o640,
        epoch,
    )?;
    let mut new_group = String::new();
    for line in group.lines() {
        let f = fields(line);
        if f.len() >= 4 && groups.iter().any(|g| g == f[0]) {
            let members = if f[3].is_empty() {
                name.to_string()
            } else {
                format!("{},{name}", f[3])
            };
            new_group.push_str(&format!("{}:{}:{}:{members}\n", f[0], f[1], f[2]));
        } else {
            new_group.push_str(line);
            new_group.push('\n');
        }
    }
    new_group.push_str(&format!("{name}:x:{gid}:\n"));
    write_keep_attrs(root, "etc/group", new_group.as_bytes(), 0o644, epoch)?;
    if root.exists("etc/gshadow") {
        append_line(root, "etc/gshadow", &format!("{name}:!::"), 0o640, epoch)?;
    }

    let user_attrs = |mode| Attrs {
        mode,
        uid,
        gid,
        mtime: epoch,
        xattrs: Vec::new(),
    };
    root.mkdir(&home, &user_attrs(0o700))?;
    root.mkdir(&format!("{home}/.ssh"), &user_attrs(0o700))?;
    let mut keys = u.ssh_authorized_keys.join("\n");
    if !keys.is_empty() {
        keys.push('\n');
    }
    root.write_file(
        &format!("{home}/.ssh/authorized_keys"),
        &mut keys.as_bytes(),
        &user_attrs(0o600),
    )?;
    if root.exists("etc/sudoers.d") || root.exists("etc/sudoers") {
        root.write_file(
            &format!("etc/sudoers.d/airlock-{name}"),
            &mut sudoers.as_bytes(),
            &Attrs::root(0o440, epoch),
        )?;
    }
    Ok((uid, gid))
}

fn append_line(root: &Root, path: &str, line: &str, mode: u32, epoch: i64) -> Result<()> {
    let mut text = read_text(root, path)?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_keep_attrs(root, path, text.as_bytes(), mode, epoch)
}

/// Rewrites an account file. shadow/gshadow keep group `shadow` when the base
/// has one (Debian), so tools that read it unprivileged keep working.
fn write_keep_attrs(root: &Root, path: &str, data: &[u8], mode: u32, epoch: i64) -> Result<()> {
    let mut attrs = Attrs::root(mode, epoch);
    if path.ends_with("shadow") {
        if let Some(g) = lookup_id(&read_text(root, "etc/group")?, "shadow", 2) {
            attrs.gid = g;
        } else {
            attrs.mode = 0o600;
        }
    }
    root.write_file(path, &mut &data[..], &attrs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Spanned;

    fn base() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let root = Root::create(&d.path().join("root")).unwrap();
        let a = Attrs::root(0o644, 0);
        root.write_file(
            "etc/passwd",
            &mut &b"root:x:0:0:root:/root:/bin/bash\nuser1:x:1000:1000::/home/user1:/bin/sh\n"[..],
            &a,
        )
        .unwrap();
        root.write_file("etc/shadow", &mut &b"root:*:19000:0:99999:7:::\n"[..], &a)
            .unwrap();
        root.write_file(
            "etc/group",
            &mut &b"root:x:0:\nshadow:x:42:\nsudo:x:27:\nuser1:x:1000:\n"[..],
            &a,
        )
        .unwrap();
        root.write_file("etc/ssh/ssh_host_ed25519_key", &mut &b"secret"[..], &a)
            .unwrap();
        root.write_file("var/lib/dbus/machine-id", &mut &b"0123"[..], &a)
            .unwrap();
        root.write_file("etc/sudoers", &mut &b""[..], &a).unwrap();
        (d, root)
    }

    #[test]
    fn identity_is_reset() {
        let (_d, root) = base();
        let removed = reset_machine_identity(&root, 0).unwrap();
        assert!(
            removed.iter().any(|p| p.contains("ssh_host_ed25519_key")),
            "{removed:?}"
        );
        assert!(!root.exists("etc/ssh/ssh_host_ed25519_key"));
        assert!(!root.exists("var/lib/dbus/machine-id"));
        assert_eq!(
            root.read("etc/machine-id").unwrap().unwrap(),
            b"uninitialized\n"
        );
    }

    #[test]
    fn admin_user_with_keys() {
        let (d, root) = base();
        let u = User {
            name: Spanned::new(0..0, "ops".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nz ops@laptop".into()],
            password_hash: None,
            groups: vec![],
        };
        let (uid, gid) = add_user(
            &root,
            &u,
            "ops ALL=(ALL:ALL) NOPASSWD: ALL\n",
            86400 * 20000,
        )
        .unwrap();
        assert_eq!((uid, gid), (1001, 1001), "1000 is taken");
        let passwd = String::from_utf8(root.read("etc/passwd").unwrap().unwrap()).unwrap();
        assert!(
            passwd.contains("ops:x:1001:1001:ops:/home/ops:/bin/sh"),
            "{passwd}"
        );
        let group = String::from_utf8(root.read("etc/group").unwrap().unwrap()).unwrap();
        assert!(group.contains("sudo:x:27:ops\n"), "{group}");
        let shadow = String::from_utf8(root.read("etc/shadow").unwrap().unwrap()).unwrap();
        assert!(shadow.contains("ops:*:20000:"), "{shadow}");
        let keys = d.path().join("root/home/ops/.ssh/authorized_keys");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&keys).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1001, 1001, 0o600));
        assert_eq!(
            std::fs::read_to_string(keys).unwrap(),
            "ssh-ed25519 AAAAC3Nz ops@laptop\n"
        );
        let shadow_meta = std::fs::metadata(d.path().join("root/etc/shadow")).unwrap();
        assert_eq!((shadow_meta.gid(), shadow_meta.mode() & 0o777), (42, 0o640));
        assert!(root.exists("etc/sudoers.d/airlock-ops"));
        // Adding the same user twice is refused.
        assert!(add_user(&root, &u, "", 0).is_err());
    }

    #[test]
    fn unknown_group_is_named() {
        let (_d, root) = base();
        let u = User {
            name: Spanned::new(0..0, "ops".into()),
            ssh_authorized_keys: vec![],
            password_hash: None,
            groups: vec!["docker".into()],
        };
        let err = add_user(&root, &u, "", 0).unwrap_err().to_string();
        assert!(err.contains("docker"), "{err}");
    }
}
