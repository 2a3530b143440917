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
