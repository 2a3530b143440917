// SPDX-License-Identifier: Apache-2.0
use super::*;

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn good() -> String {
    format!(
        r#"name = "demo"

[base]
path = "base.tar.zst"
sha256 = "{SHA}"

[[file]]
source = "bin/tool"
sha256 = "{SHA}"
path = "/usr/local/bin/tool"
mode = "0755"

[node]
hostname = "node-1"
"#
    )
}

fn parse_str(text: &str) -> Result<Loaded> {
    parse(Path::new("/recipes/r.toml"), text.to_string())
}

fn err(text: &str) -> String {
    format!("{:#}", parse_str(text).unwrap_err())
}

#[test]
fn good_recipe_gets_defaults() {
    let l = parse_str(&good()).unwrap();
    let r = &l.recipe;
    assert_eq!(r.disk.size.get_ref().0, 4 << 30);
    assert_eq!(r.disk.esp_size.get_ref().0, 512 << 20);
    assert!(r.boot.serial_console);
    assert_eq!(r.files[0].mode.get_ref().0, 0o755);
    assert_eq!(r.files[0].owner.get_ref(), "root:root");
    assert_eq!(l.resolve(Path::new("x")), Path::new("/recipes/x"));
    assert_eq!(l.sha256.len(), 64);
}

#[test]
fn hostile_recipes_name_file_line_column_and_key() {
    // (case, edit to the good recipe, position, words the error must carry)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "unknown key",
            "[node]\nhostname = \"node-1\"\nflavour = \"x\"\n",
            "r.toml:",
            &["flavour"],
        ),
        ("bad sha", "", "r.toml:5:10", &["base.sha256", "sha256sum"]),
        ("bad mode", "", "r.toml:11:8", &["octal"]),
        (
            "dest not absolute",
            "",
            "r.toml:10:8",
            &["file.path", "absolute"],
        ),
        ("dest with ..", "", "r.toml:10:8", &["'..'"]),
        ("bad hostname", "", "r.toml:14:12", &["node.hostname"]),
        (
            "bad size",
            "[disk]\nsize = \"4 parsecs\"\n",
            "r.toml:",
            &["unknown unit"],
        ),
    ];
    for (case, extra, at, words) in cases {
        let mut text = good();
        match *case {
            "unknown key" => text = text.replace("[node]\nhostname = \"node-1\"\n", extra),
            "bad sha" => text = text.replacen(SHA, "abc", 1),
            "bad mode" => text = text.replace("\"0755\"", "\"0999\""),
            "dest not absolute" => {
                text = text.replace("\"/usr/local/bin/tool\"", "\"usr/local/bin/tool\"")
            }
            "dest with .." => text = text.replace("\"/usr/local/bin/tool\"", "\"/usr/../../x\""),
            "bad hostname" => text = text.replace("node-1", "node_1!"),
            _ => text.push_str(extra),
        }
        let e = err(&text);
        assert!(e.contains(at), "{case}: {e}");
        for w in *words {
            assert!(e.contains(w), "{case}: {e}");
        }
    }
}

#[test]
fn unknown_key_position_points_at_the_key() {
    let text = good().replace(
        "hostname = \"node-1\"",
        "hostname = \"node-1\"\nhostnme = \"x\"",
    );
    let e = err(&text);
    assert!(e.starts_with("/recipes/r.toml:15:1: "), "{e}");
    assert!(e.contains("hostnme"), "{e}");
}

#[test]
fn base_needs_exactly_one_source() {
    let both = good().replace(
        "path = \"base.tar.zst\"",
        "path = \"a\"\nurl = \"https://x/b\"",
    );
    assert!(err(&both).contains("more than one of path, url and image"));
    let image = good().replace(
        "path = \"base.tar.zst\"",
        "image = \"quay.io/fedora/fedora-bootc:43\"",
    );
    assert!(
        err(&image).contains("base.sha256 is for files"),
        "{}",
        err(&image)
    );
    let l = parse_str(&image.replacen(&format!("sha256 = \"{SHA}\"\n"), "", 1)).unwrap();
    let base = &l.inputs()[0];
    assert_eq!(base.sha256, None);
    assert!(
        matches!(&base.resolved, crate::inputs::Source::Image(i) if i.platforms == ["linux/amd64"])
    );
    let bad = image.replace(":43", "");
    assert!(err(&bad).contains("base.image"), "{}", err(&bad));
    let none = good().replace("path = \"base.tar.zst\"\n", "");
    assert!(err(&none).contains("needs `path`"));
}

#[test]
fn unpinned_input_needs_the_lock() {
    let text = good().replacen(&format!("sha256 = \"{SHA}\"\n"), "", 1);
    let l = parse_str(&text).unwrap();
    let inputs = l.inputs();
    assert_eq!(inputs[0].what, "base");
    let e = format!("{:#}", l.pinned(&inputs[0]).unwrap_err());
    assert!(
        e.contains("not pinned") && e.contains("airlock lock"),
        "{e}"
    );
    assert_eq!(l.pinned(&inputs[1]).unwrap(), SHA);
}

#[test]
fn owners_and_urls() {
    assert_eq!(parse_owner("0:0").unwrap(), (Id::Num(0), Id::Num(0)));
    assert_eq!(
        parse_owner("etcd:100000").unwrap(),
        (Id::Name("etcd".into()), Id::Num(100000))
    );
    assert!(parse_owner("root").is_err());
    assert!(is_url("https://dl.k8s.io/x"));
    assert!(!is_url("bin/tool"));
}

#[test]
fn values_cannot_inject_lines_into_system_files() {
    let user = "\n[[user]]\nname = \"ops\"\n";
    let cases = [
        (
            format!("{user}password_hash = \"$6$abc\\nroot::0:0:99999:7:::\""),
            "user[0].password_hash",
        ),
        (
            format!("{user}password_hash = \"abc:def\""),
            "password_hash",
        ),
        (
            "\n[boot]\ncmdline = [\"quiet\\nlinux /evil.efi\"]\n".to_string(),
            "boot.cmdline[0]",
        ),
    ];
    for (extra, words) in cases {
        let text = good().replace("[node]", &format!("{extra}\n[node]"));
        let e = err(&text);
        assert!(e.contains(words), "{extra}: {e}");
    }
    // [vars] may carry multi-line values for templates.
    let text = good().replace("[node]", "[vars]\nmotd = \"line one\\nline two\"\n\n[node]");
    parse_str(&text).unwrap();
}

/// `r.toml:LINE:COL` of the first occurrence of `needle` in `text`.
fn pos(text: &str, needle: &str) -> String {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {text}"));
    let (l, c) = line_col(text, at);
    format!("/recipes/r.toml:{l}:{c}: ")
}

/// The good recipe with `extra` before `[node]`.
fn with(extra: &str) -> String {
    good().replace("[node]", &format!("{extra}\n[node]"))
}

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey ops@site";

/// Each refused recipe: (edited text, the text the position must point at,
/// words the error must carry).
fn assert_refused(cases: &[(String, &str, &[&str])]) {
    for (text, at, words) in cases {
        let e = err(text);
        let want = pos(text, at);
        assert!(e.starts_with(&want), "want {want}: {e}");
        for w in *words {
            assert!(e.contains(w), "{w:?} missing: {e}");
        }
    }
}

#[test]
fn integer_modes_must_be_octal_literals() {
    let decimal = good().replace("mode = \"0755\"", "mode = 755");
    let template = with("[[template]]\nsrc = \"motd.j2\"\npath = \"/etc/motd\"\nmode = 750\n");
    let hex = good().replace("mode = \"0755\"", "mode = 0x1ed");
    assert_refused(&[
        (
            decimal,
            "755\n",
            &["file.mode", "decimal", "mode = \"0755\"", "0o755"],
        ),
        (template, "750\n", &["template.mode", "mode = \"0750\""]),
        (hex, "0x1ed", &["file.mode"]),
    ]);
    for (written, mode) in [("0o755", 0o755), ("\"755\"", 0o755), ("\"0o640\"", 0o640)] {
        let text = good().replace("mode = \"0755\"", &format!("mode = {written}"));
        let l = parse_str(&text).unwrap();
        assert_eq!(l.recipe.files[0].mode.get_ref().0, mode, "{written}");
    }
}

#[test]
fn password_hashes_must_be_crypt_hashes() {
    let user = |hash: &str| {
        with(&format!(
            "[[user]]\nname = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\npassword_hash = \"{hash}\"\n"
        ))
    };
    assert_refused(&[
        (
            user("plaintext"),
            "\"plaintext\"",
            &[
                "user ops",
                "password_hash",
                "mkpasswd -m yescrypt",
                "openssl passwd -6",
            ],
        ),
        (user("$1$abc$iCQ2D3nhptRYi27fDYv2s1"), "\"$1$", &["MD5"]),
        (user("$6$abc$short"), "\"$6$", &["86"]),
    ]);
    let ok = user("$6$abc$IdWKNKTJEb8LxY7CGg8YBXlvtfZzFw7Mp/r6niK9YB2mdvgY..TKjv1T..8RadRt2qvUHYRLr/TsVArtr91iR1");
    parse_str(&ok).unwrap();
}

#[test]
fn one_entry_per_destination_and_none_over_airlock_files() {
    let twice = with("[[template]]\nsrc = \"tool.j2\"\npath = \"/usr/local/bin//tool\"\n");
    let e = err(&twice);
    assert!(e.contains("r.toml:10:8"), "names the first entry: {e}");
    let hostname = good().replace("/usr/local/bin/tool", "/etc/hostname");
    let shadow = with("[[template]]\nsrc = \"s.j2\"\npath = \"/etc/shadow\"\n");
    let keys = with(&format!(
        "[[user]]\nname = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n\n\
         [[template]]\nsrc = \"k.j2\"\npath = \"/home/ops/.ssh/authorized_keys\"\n"
    ));
    assert_refused(&[
        (
            twice.clone(),
            "\"/usr/local/bin//tool\"",
            &["[[template]]", "/usr/local/bin/tool", "[[file]]"],
        ),
        (
            hostname,
            "\"/etc/hostname\"",
            &["airlock writes", "[node] hostname"],
        ),
        (shadow, "\"/etc/shadow\"", &["[[user]]"]),
        (keys, "\"/home/ops", &["ssh_authorized_keys"]),
    ]);
}

#[test]
fn users_are_defined_once_and_can_log_in() {
    let ops = format!("[[user]]\nname = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n");
    let twice = with(&format!("{ops}\n{ops}"));
    let e = err(&twice);
    let first = pos(&twice, "\"ops\"");
    assert!(
        e.contains(first.trim_end_matches(": ")),
        "names the first: {e}"
    );
    let second_at = twice.rfind("\"ops\"").unwrap();
    let (l, c) = line_col(&twice, second_at);
    assert!(e.starts_with(&format!("/recipes/r.toml:{l}:{c}: ")), "{e}");
    assert!(e.contains("already defined"), "{e}");

    let nobody = with("[[user]]\nname = \"ops\"\n");
    let bad_key = with(&format!(
        "[[user]]\nname = \"ops\"\nssh_authorized_keys = [\"{KEY}\", \"AAAAC3NzaC1lZDI1NTE5 ops\"]\n"
    ));
    assert_refused(&[
        (
            nobody,
            "\"ops\"",
            &["neither ssh_authorized_keys nor password_hash"],
        ),
        (
            bad_key,
            "\"AAAAC3",
            &["ssh_authorized_keys[1]", "<type> <base64> [comment]"],
        ),
    ]);
}

#[test]
fn unknown_url_schemes_are_refused() {
    let base = good().replace("path = \"base.tar.zst\"", "url = \"ftp://x/base.tar\"");
    let file = good().replace("\"bin/tool\"", "\"sftp://host/tool\"");
    assert_refused(&[
        (
            base,
            "\"ftp://",
            &["base.url", "ftp://", "https://, http://, file://"],
        ),
        (file, "\"sftp://", &["file.source", "sftp://"]),
    ]);
    // Supported schemes and plain paths still load.
    parse_str(&good().replace("path = \"base.tar.zst\"", "url = \"https://x/base.tar\"")).unwrap();
    parse_str(&good().replace("\"bin/tool\"", "\"file:///srv/tool\"")).unwrap();
}

#[test]
fn size_errors_say_why() {
    for (size, words) in [
        ("99999999999999999999GiB", "too large"),
        ("1.5GiB", "\"1536MiB\""),
    ] {
        let text = with(&format!("[disk]\nsize = \"{size}\"\n"));
        let e = err(&text);
        assert!(e.contains(&pos(&text, "size =")[..18]), "{e}");
        assert!(e.contains(words), "{size}: {e}");
    }
}

#[test]
fn late_checks_happen_at_load_with_positions() {
    let long = good().replace(
        "name = \"demo\"",
        &format!("name = \"{}\"", "n".repeat(300)),
    );
    let epoch = good().replace("name = \"demo\"", "name = \"demo\"\nepoch = -1");
    let late = good().replace("name = \"demo\"", "name = \"demo\"\nepoch = 4294967296");
    let small = with("[disk]\nsize = \"100MiB\"\n");
    let esp = with("[disk]\nesp_size = \"20MiB\"\n");
    let esp_fills = with("[disk]\nesp_size = \"4096MiB\"\n");
    let enable = with("[systemd]\nenable = [\"sshd.service\", \"/etc/x.service\"]\n");
    let ctl = with("[systemd]\nenable = [\"a\\u0007.service\"]\n");
    let root = with("[boot]\ncmdline = [\"quiet\", \"console=tty0 root=/dev/sda2\"]\n");
    assert_refused(&[
        (long, "\"nnn", &["300 characters", "at most 64"]),
        (epoch, "-1", &["epoch", "1970"]),
        (late, "4294967296", &["epoch", "2106"]),
        (small, "\"100MiB\"", &["disk.size", "too small"]),
        (esp, "\"20MiB\"", &["disk.esp_size", "too small"]),
        (esp_fills, "\"4096MiB\"", &["disk.esp_size", "too small"]),
        (enable, "\"/etc/x", &["systemd.enable", "unit name"]),
        (
            ctl,
            "\"a\\u0007",
            &["systemd.enable[0]", "control character"],
        ),
        (root, "\"console", &["boot.cmdline", "root=PARTUUID"]),
    ]);
}
