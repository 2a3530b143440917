// SPDX-License-Identifier: Apache-2.0
//! Value checks that need no recipe context: password hashes, SSH keys,
//! destinations airlock writes itself, URL schemes.

use base64::Engine;

/// Why `h` is not a crypt(3) hash that /etc/shadow can use, if it is not.
///
/// Only the modular formats current distributions make are accepted, with
/// the hash part at its exact length, so a truncated paste or a plain-text
/// password is caught here rather than producing an account no password
/// opens (or, worse, a password stored in clear).
pub fn password_hash_problem(h: &str) -> Option<String> {
    let parts: Vec<&str> = h.split('$').collect();
    if parts.len() < 4 || !parts[0].is_empty() || parts[1..].iter().any(|p| p.is_empty()) {
        return Some(
            "it is not a crypt(3) hash like \"$y$j9T$…$…\" (a plain-text password would be \
             stored in /etc/shadow as is)"
                .into(),
        );
    }
    let id = parts[1];
    let hash = parts[parts.len() - 1];
    let (name, len, fields) =
        match id {
            "y" => ("yescrypt", 43, 5..=5),
            "gy" => ("gost-yescrypt", 43, 5..=5),
            "7" => ("scrypt", 43, 4..=4),
            "6" => ("SHA-512", 86, 4..=5),
            "5" => ("SHA-256", 43, 4..=5),
            "2a" | "2b" | "2y" => ("bcrypt", 53, 4..=4),
            "1" => return Some(
                "it is an MD5 hash ($1$), which is fast to crack: make a yescrypt or SHA-512 one"
                    .into(),
            ),
            _ => return Some(format!("${id}$ is not a hash method airlock knows")),
        };
    if !fields.contains(&parts.len()) {
        return Some(format!(
            "it is not a whole {name} hash (it has {} '$'-separated fields, not {})",
            parts.len() - 1,
            fields.start() - 1
        ));
    }
    if hash.len() != len
        || !hash
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/')
    {
        return Some(format!(
            "its hash part is {} characters, a {name} hash has {len} of [./0-9A-Za-z] \
             (was it cut when copied?)",
            hash.len()
        ));
    }
    if name == "bcrypt" && !(parts[2].len() == 2 && parts[2].chars().all(|c| c.is_ascii_digit())) {
        return Some(format!("its bcrypt cost {:?} is not two digits", parts[2]));
    }
    None
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn known_key_type(t: &str) -> bool {
    if KEY_TYPES.contains(&t) {
        return true;
    }
    // Certificates: "ssh-ed25519-cert-v01@openssh.com", and for security
    // keys the base name drops its own "@openssh.com".
    t.strip_suffix("-cert-v01@openssh.com").is_some_and(|b| {
        KEY_TYPES.contains(&b) || KEY_TYPES.contains(&format!("{b}@openssh.com").as_str())
    })
}

/// Why `line` is not an authorized_keys line (`[options] <type> <base64>
/// [comment]`), if it is not. The key blob must start with its own type, as
/// every OpenSSH public key does; the key material itself is not checked.
pub fn ssh_key_problem(line: &str) -> Option<String> {
    if line.contains("PRIVATE KEY") {
        return Some("it is a private key: give the public one (the .pub file)".into());
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(i) = words.iter().position(|w| known_key_type(w)) else {
        return Some(format!(
            "it has no key type ({} ...)",
            KEY_TYPES[..3].join(", ")
        ));
    };
    let ty = words[i];
    let Some(b64) = words.get(i + 1) else {
        return Some(format!(
            "the {ty} key has no base64 key data after its type"
        ));
    };
    let data = b64.trim_end_matches('=');
    if !data
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    {
        return Some(format!("the {ty} key data is not base64"));
    }
    // Whole 4-character groups decode without padding rules getting in the way.
    let whole = &data[..data.len() / 4 * 4];
    let blob = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(whole)
        .unwrap_or_default();
    let embedded = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if embedded != Some(ty.as_bytes()) {
        return Some(format!(
            "the key data does not hold a {ty} key (it does not start with its type)"
        ));
    }
    None
}

/// A destination as one canonical string: "/etc//x/./y/" is "/etc/x/y".
pub fn norm_dest(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// When `dest` (normalised) is a file airlock writes or removes after the
/// recipe's files and templates, the recipe key that controls it instead.
pub fn airlock_owned(dest: &str, users: &[&str]) -> Option<String> {
    let hint = match dest {
        "/etc/hostname" => "airlock writes it from [node] hostname",
        "/etc/hosts" => {
            "airlock writes it from [node] hostname; to change it, shadow base/hosts.j2 in template_dir"
        }
        "/etc/fstab" => {
            "airlock writes it to mount the root by UUID; to change it, shadow base/fstab.j2 in template_dir"
        }
        "/etc/repart.d/50-root.conf" => {
            "airlock writes it to grow the root; to change it, shadow base/repart-root.conf.j2 in template_dir"
        }
        "/etc/machine-id"
        | "/var/lib/dbus/machine-id"
        | "/var/lib/systemd/random-seed"
        | "/var/lib/systemd/credential.secret" => {
            "it must differ on every machine: airlock resets it and systemd makes it on first boot"
        }
        "/etc/passwd" | "/etc/shadow" | "/etc/group" | "/etc/gshadow" => {
            "accounts come from the base; add administrators with [[user]]"
        }
        "/etc/systemd/system/airlock-ssh-keygen.service" => {
            "airlock writes it to make SSH host keys on first boot"
        }
        "/usr/lib/airlock/manifest.json" => "airlock writes its build manifest there",
        _ if dest.starts_with("/etc/ssh/ssh_host_") => {
            "host keys must differ on every machine: airlock removes them and they are made on first boot"
        }
        _ => {
            return users.iter().find_map(|u| {
                if dest == format!("/home/{u}/.ssh/authorized_keys") {
                    Some(format!(
                        "airlock writes it from [[user]] {u}'s ssh_authorized_keys"
                    ))
                } else if dest == format!("/etc/sudoers.d/airlock-{u}") {
                    Some(format!("airlock writes it for [[user]] {u}"))
                } else {
                    None
                }
            })
        }
    };
    Some(hint.to_string())
}

/// Schemes `inputs` can fetch; anything else written as `scheme://` would
/// be taken for a relative path and fail late with "no such file".
pub const SCHEMES: &[&str] = &["https", "http", "file"];

/// Why a source or URL string names a scheme airlock cannot fetch, if it does.
pub fn scheme_problem(s: &str) -> Option<String> {
    let (scheme, _) = s.split_once("://")?;
    let looks_like_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !looks_like_scheme || SCHEMES.contains(&scheme) {
        return None;
    }
    let supported = SCHEMES
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(if SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        format!("{scheme}:// must be written in lowercase ({supported})")
    } else {
        format!(
            "{scheme}:// is not a scheme airlock fetches: use {supported} or a path relative to the recipe"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes() {
        // Made with crypt(3) and `openssl passwd` for the password "secret".
        let good = [
            "$y$j9T$abcdefghijklmnopqrstu.$7uryFExhLbAhrpK1WytVzeNObCUVaK3VoKccP3fJEIB",
            "$6$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRLr/TsVArtr91iR1",
            "$6$rounds=10000$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRLr/TsVArtr91iR1",
            "$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0",
            "$2b$12$aW96GnqbUcDIcAFfiquVb.eAt7myVbq.xWg/H8ZjuS/pcCfA8na.6",
        ];
        for h in good {
            assert_eq!(password_hash_problem(h), None, "{h}");
        }
        let bad = [
            ("plaintext", "plain-text"),
            ("$1$abc$iCQ2D3nhptRYi27fDYv2s1", "MD5"),
            ("$9$abc$def", "not a hash method"),
            ("$6$abc$tooShort", "86"),
            (
                "$y$j9T$ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg",
                "fields",
            ),
            ("$6$$x", "not a crypt(3) hash"),
            ("!", "not a crypt(3) hash"),
        ];
        for (h, words) in bad {
            let p = password_hash_problem(h).unwrap_or_else(|| panic!("{h} accepted"));
            assert!(p.contains(words), "{h}: {p}");
        }
    }

    #[test]
    fn ssh_keys() {
        for k in [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyReplaceMeWithYourOwnPublicKey0000 admin@demo",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey",
            "from=\"10.0.0.0/8\",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== x",
        ] {
            assert_eq!(ssh_key_problem(k), None, "{k}");
        }
        for (k, words) in [
            ("AAAAC3NzaC1lZDI1NTE5AAAAITestKey ops@site", "no key type"),
            ("ssh-ed25519", "no base64"),
            ("ssh-ed25519 not*base64", "not base64"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAITestKey",
                "does not hold a ssh-rsa",
            ),
            ("-----BEGIN OPENSSH PRIVATE KEY----- b3Blbn", "private key"),
        ] {
            let p = ssh_key_problem(k).unwrap_or_else(|| panic!("{k} accepted"));
            assert!(p.contains(words), "{k}: {p}");
        }
    }

    #[test]
    fn destinations_and_schemes() {
        assert_eq!(norm_dest("/etc//x/./y/"), "/etc/x/y");
        assert!(airlock_owned("/etc/hostname", &[])
            .unwrap()
            .contains("[node] hostname"));
        assert!(airlock_owned("/etc/ssh/ssh_host_ed25519_key", &[]).is_some());
        assert!(airlock_owned("/home/ops/.ssh/authorized_keys", &["ops"]).is_some());
        assert_eq!(airlock_owned("/etc/motd", &["ops"]), None);
        assert_eq!(scheme_problem("https://x/y"), None);
        assert_eq!(scheme_problem("bin/tool"), None);
        assert!(scheme_problem("ftp://x/base.tar")
            .unwrap()
            .contains("https://, http://, file://"));
        assert!(scheme_problem("HTTPS://x").unwrap().contains("lowercase"));
    }
}
