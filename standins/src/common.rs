// SPDX-License-Identifier: Apache-2.0
//! What every stand-in does: record the call, check, parse YAML, ask ctr.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_norway::Value;

/// One check of the contract.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// One call, as recorded in `<state>/<tool>.log` (a JSON line).
#[derive(Debug, Serialize)]
pub struct Call {
    pub tool: &'static str,
    pub standin: bool,
    pub version: &'static str,
    pub args: Vec<String>,
    pub checks: Vec<Check>,
    pub ok: bool,
}

impl Call {
    pub fn new(tool: &'static str, args: &[String]) -> Call {
        Call {
            tool,
            standin: true,
            version: crate::VERSION,
            args: args.to_vec(),
            checks: Vec::new(),
            ok: true,
        }
    }

    /// Records a check and prints it.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        say(
            self.tool,
            &format!(
                "check {name}: {} ({detail})",
                if ok { "ok" } else { "FAILED" }
            ),
        );
        self.ok &= ok;
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
        });
        ok
    }

    /// Appends the record and returns the exit status.
    pub fn finish(self) -> i32 {
        let dir = state_dir();
        let line = serde_json::to_string(&self).expect("a call serializes");
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{}.log", self.tool)))?;
            writeln!(f, "{line}")?;
            f.sync_all()
        });
        if let Err(e) = written {
            eprintln!(
                "airlock stand-in for {}: recording the call in {}: {e}",
                self.tool,
                dir.display()
            );
            return 3;
        }
        if self.ok {
            0
        } else {
            say(
                self.tool,
                "a contract check failed: exiting 1, as the real tool would fail here",
            );
            1
        }
    }
}

pub fn say(tool: &str, msg: &str) {
    println!("[airlock stand-in for {tool}] {msg}");
}

pub fn state_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_STANDIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/airlock-standin"))
}

/// Where a file the real tool would write goes (`/etc/kubernetes/…`).
pub fn under_root(abs: &str) -> PathBuf {
    let root = std::env::var_os("AIRLOCK_STANDIN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    root.join(abs.trim_start_matches('/'))
}

/// The value of `--flag VALUE` or `--flag=VALUE` (also `-f`).
pub fn flag<'a>(args: &'a [String], names: &[&str]) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        for n in names {
            if a == n {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                return Some(v);
            }
        }
    }
    None
}

/// Words that are not flags or flag values, e.g. `config images list`.
pub fn words(args: &[String], with_value: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a.starts_with('-') {
            skip = !a.contains('=') && with_value.contains(&a.as_str());
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Every document of a YAML file; each must be a mapping.
pub fn yaml_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut docs = Vec::new();
    for (i, d) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let v = <Value as serde::Deserialize>::deserialize(d)
            .map_err(|e| format!("{} document {}: {e}", path.display(), i + 1))?;
        match v {
            Value::Null => {}
            Value::Mapping(_) => docs.push(v),
            other => {
                return Err(format!(
                    "{} document {} is not a mapping: {other:?}",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    if docs.is_empty() {
        return Err(format!("{} holds no YAML documents", path.display()));
    }
    Ok(docs)
}

/// The document of `kind` (first one).
pub fn doc<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
}

/// A string at a path of keys.
pub fn get_str<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for k in keys {
        v = v.get(*k)?;
    }
    v.as_str()
}

/// The references containerd lists in the k8s.io namespace.
pub fn listed_images() -> Result<BTreeSet<String>, String> {
    let out = Command::new("ctr")
        .args(["-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .map_err(|e| format!("running ctr: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ctr -n k8s.io images ls -q failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Records whether every wanted image is listed by containerd.
pub fn check_images(call: &mut Call, wanted: &[String]) {
    match listed_images() {
        Err(e) => {
            call.check("images-preloaded", false, e);
        }
        Ok(listed) => {
            let missing: Vec<&str> = wanted
                .iter()
                .filter(|w| !listed.contains(*w))
                .map(String::as_str)
                .collect();
            let detail = if missing.is_empty() {
                format!(
                    "all {} listed by ctr -n k8s.io images ls: {}",
                    wanted.len(),
                    wanted.join(" ")
                )
            } else {
                format!(
                    "not in containerd's k8s.io namespace: {}",
                    missing.join(" ")
                )
            };
            call.check("images-preloaded", missing.is_empty(), detail);
        }
    }
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn is_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    matches!(t.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}
