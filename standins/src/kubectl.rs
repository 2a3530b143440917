// SPDX-License-Identifier: Apache-2.0
//! The kubectl stand-in: `version` and `apply -f`, which checks the
//! kubeconfig and the manifest parse and that every image the manifest runs
//! is in containerd's k8s.io namespace (pods could not start otherwise).

use std::path::Path;

use serde_norway::Value;

use crate::common::{check_images, flag, get_str, say, words, yaml_documents, Call};
use crate::VERSION;

const WITH_VALUE: &[&str] = &[
    "--kubeconfig",
    "-f",
    "--filename",
    "-o",
    "--output",
    "-n",
    "--namespace",
];

/// Every `image:` string in a manifest document, in order, once.
pub fn images(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("image"), Value::String(s)) => {
                        if !out.contains(s) {
                            out.push(s.clone());
                        }
                    }
                    _ => images(v, out),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| images(v, out)),
        _ => {}
    }
}

pub fn main(args: &[String]) -> i32 {
    let w = words(args, WITH_VALUE);
    let mut call = Call::new("kubectl", args);
    match w.first().map(String::as_str) {
        Some("version") => {
            println!("Client Version: {VERSION} (airlock stand-in)");
            0
        }
        Some("apply") => {
            apply(&mut call, args);
            call.finish()
        }
        _ => {
            call.check(
                "known-command",
                false,
                format!("the stand-in does not implement `kubectl {}`", w.join(" ")),
            );
            call.finish()
        }
    }
}

fn apply(call: &mut Call, args: &[String]) {
    let kubeconfig = flag(args, &["--kubeconfig"])
        .map(String::from)
        .or_else(|| std::env::var("KUBECONFIG").ok());
    match kubeconfig {
        None => {
            call.check("kubeconfig", false, "neither --kubeconfig nor KUBECONFIG");
        }
        Some(k) => {
            let kind = yaml_documents(Path::new(&k))
                .map(|d| get_str(&d[0], &["kind"]).unwrap_or("").to_string());
            call.check(
                "kubeconfig",
                matches!(kind.as_deref(), Ok("Config")),
                format!("{k}: {kind:?}"),
            );
        }
    }
    let Some(file) = flag(args, &["-f", "--filename"]) else {
        call.check("manifest", false, "no -f given");
        return;
    };
    let docs = match yaml_documents(Path::new(file)) {
        Ok(d) => d,
        Err(e) => {
            call.check("manifest", false, e);
            return;
        }
    };
    let objects: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                get_str(d, &["kind"]).unwrap_or("?"),
                get_str(d, &["metadata", "name"]).unwrap_or("?")
            )
        })
        .collect();
    let typed = docs
        .iter()
        .all(|d| get_str(d, &["apiVersion"]).is_some() && get_str(d, &["kind"]).is_some());
    call.check("manifest", typed, format!("{file}: {}", objects.join(", ")));
    let mut wanted = Vec::new();
    docs.iter().for_each(|d| images(d, &mut wanted));
    check_images(call, &wanted);
    if call.ok {
        say(
            "kubectl",
            &format!(
                "apply: {} objects would be created (stand-in: no API server)",
                objects.len()
            ),
        );
    }
}
