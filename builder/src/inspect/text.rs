// SPDX-License-Identifier: Apache-2.0
//! The human-readable form of an inspect [`Report`].

use std::fmt::Write;

use serde_json::Value;

use super::Report;
use crate::disk::layout::{ESP_TYPE, ROOT_X86_64_TYPE};
use crate::image::Kind;

/// Width of the label column.
const W: usize = 12;

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let kind = match r.kind {
        Some(Kind::Raw) => "raw image",
        Some(Kind::RawZst) => "zstd-compressed raw image",
        Some(Kind::Device) => "block device",
        Some(Kind::Vm(_)) => "VM disk",
        None => "unknown",
    };
    line(
        &mut s,
        "Image",
        &format!("{} ({kind}, {})", r.image, size(r.size)),
    );
    if let Some(name) = &r.name {
        let mut v = name.clone();
        if let Some(a) = &r.airlock_version {
            v += &format!(", built by airlock {a}");
        }
        if let Some(e) = r.epoch {
            v += &format!(", epoch {e}");
        }
        line(&mut s, "Name", &v);
    }
    if let Some(g) = r.disk_guid {
        line(&mut s, "Disk GUID", &g.to_string());
    }
    if !r.partitions.is_empty() {
        line(&mut s, "Partitions", "");
        let rows: Vec<[String; 6]> = r
            .partitions
            .iter()
            .map(|p| {
                [
                    p.number.to_string(),
                    p.label.clone(),
                    part_type(&p.type_guid),
                    p.uuid.to_string(),
                    size(p.start),
                    size(p.size),
                ]
            })
            .collect();
        table(
            &mut s,
            ["#", "Label", "Type", "PARTUUID", "Start", "Size"],
            &rows,
        );
    }
    let b = &r.boot;
    let mut loader = Vec::new();
    if let Some(d) = &b.default {
        loader.push(format!("default {d}"));
    }
    if let Some(t) = &b.timeout {
        loader.push(format!("timeout {t}"));
    }
    if !loader.is_empty() || !b.entries.is_empty() {
        line(&mut s, "Boot", &loader.join(", "));
    }
    for e in &b.entries {
        let _ = writeln!(s, "  {}", e.file);
        for (k, v) in [
            ("title", &e.title),
            ("version", &e.version),
            ("linux", &e.linux),
            ("initrd", &e.initrd),
            ("options", &e.options),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "    {k:<8} {v}");
            }
        }
    }
    opt(&mut s, "Kernel", &r.kernel);
    opt(&mut s, "Hostname", &r.hostname);
    if !r.users.is_empty() {
        line(&mut s, "Users", &r.users.join(", "));
    }
    if !r.units.is_empty() {
        let units: Vec<String> = r
            .units
            .iter()
            .map(|u| {
                let how = if u.kind == "requires" {
                    "required by"
                } else {
                    "wanted by"
                };
                format!("{} ({how} {})", u.unit, u.target)
            })
            .collect();
        list(&mut s, "Units", &units);
    }
    if r.files + r.esp_files > 0 {
        line(
            &mut s,
            "Files",
            &format!(
                "{} in the root filesystem and {} on the ESP with recorded sha256",
                r.files, r.esp_files
            ),
        );
    }
    for (label, v) in [
        ("Kubernetes", &r.kubernetes),
        ("Containerd", &r.containerd),
        ("Node", &r.node),
        ("Images", &r.images),
        ("Secrets", &r.secrets),
    ] {
        if let Some(v) = v {
            value(&mut s, label, v);
        }
    }
    if !r.notes.is_empty() {
        list(&mut s, "Notes", &r.notes);
    }
    if !r.problems.is_empty() {
        list(&mut s, "Problems", &r.problems);
    }
    s
}

fn line(s: &mut String, label: &str, v: &str) {
    let _ = writeln!(s, "{}", format!("{label:<W$}{v}").trim_end());
}

fn opt(s: &mut String, label: &str, v: &Option<String>) {
    if let Some(v) = v {
        line(s, label, v);
    }
}

/// The first item beside the label, the rest below it.
fn list(s: &mut String, label: &str, items: &[String]) {
    for (i, it) in items.iter().enumerate() {
        line(s, if i == 0 { label } else { "" }, it);
    }
}

/// A manifest value of unknown shape: scalars inline, arrays one item a
/// line, objects as `key: value` lines (nested ones indented).
fn value(s: &mut String, label: &str, v: &Value) {
    let mut lines = Vec::new();
    match v {
        // What a reader looks for first (version, name, role) leads; the
        // node role is said in words.
        Value::Object(m) => {
            let mut rest = m.clone();
            for k in ["version", "name", "role"] {
                let Some(x) = rest.remove(k) else { continue };
                let shown = match (k, x.as_str()) {
                    ("role", Some("init")) => "init (the first control plane: kubeadm init)".into(),
                    ("role", Some("join")) => "join (a worker: kubeadm join)".into(),
                    _ => scalar(&x),
                };
                lines.push(format!("{k}: {shown}"));
            }
            flatten(&Value::Object(rest), "", &mut lines);
        }
        _ => flatten(v, "", &mut lines),
    }
    if lines.is_empty() {
        lines.push("(none)".to_string());
    }
    list(s, label, &lines);
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Object(_) => flatten(v, &format!("{prefix}{k}."), out),
                    Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
                        for (i, x) in a.iter().enumerate() {
                            flatten(x, &format!("{prefix}{k}[{i}]."), out);
                        }
                    }
                    _ => out.push(format!("{prefix}{k}: {}", scalar(v))),
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                match x {
                    Value::Object(_) | Value::Array(_) => {
                        let mut inner = Vec::new();
                        flatten(x, "", &mut inner);
                        out.push(format!("{prefix}{}", inner.join(", ")));
                    }
                    _ => out.push(format!("{prefix}{}", scalar(x))),
                }
            }
        }
        _ => out.push(
            format!("{prefix}{}", scalar(v))
                .trim_end_matches(": ")
                .to_string(),
        ),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn table<const N: usize>(s: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut row = |cells: Vec<&str>| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{c:<w$}  ", w = width[i]);
        }
        let _ = writeln!(s, "{}", l.trim_end());
    };
    row(head.to_vec());
    for r in rows {
        row(r.iter().map(String::as_str).collect());
    }
}

fn part_type(t: &uuid::Uuid) -> String {
    match *t {
        ESP_TYPE => "EFI System".into(),
        ROOT_X86_64_TYPE => "Linux root (x86-64)".into(),
        other => other.to_string(),
    }
}

/// Bytes in the largest binary unit that divides them, else with a decimal.
pub fn size(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (u, name) in UNITS {
        if b >= u && b % u == 0 {
            return format!("{} {name}", b / u);
        }
    }
    for (u, name) in UNITS {
        if b >= u {
            return format!("{:.1} {name}", b as f64 / u as f64);
        }
    }
    format!("{b} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::gpt::PartitionInfo;
    use crate::inspect::{Boot, BootEntry};
    use crate::manifest::UnitRecord;
    use serde_json::json;
    use uuid::Uuid;

    /// A report as a fixed-epoch build gives it, with the Kubernetes keys.
    fn report() -> Report {
        Report {
            image: "out/cp-1/cp-1.raw".into(),
            kind: Some(Kind::Raw),
            size: 4 << 30,
            name: Some("cp-1".into()),
            airlock_version: Some("0.1.0".into()),
            epoch: Some(1_700_000_000),
            disk_guid: Some(Uuid::from_u128(0x0d0e0f10_1112_4314_9516_1718191a1b1c)),
            partitions: vec![
                PartitionInfo {
                    number: 1,
                    label: "ESP".into(),
                    type_guid: ESP_TYPE,
                    uuid: Uuid::from_u128(0xa1a2a3a4_b1b2_4c1c_9d1d_e1e2e3e4e5e6),
                    start: 1 << 20,
                    size: 512 << 20,
                },
                PartitionInfo {
                    number: 2,
                    label: "root".into(),
                    type_guid: ROOT_X86_64_TYPE,
                    uuid: Uuid::from_u128(0xf0e0d0c0_b0a0_4090_8070_605040302010),
                    start: 513 << 20,
                    size: (4 << 30) - (514 << 20),
                },
            ],
            boot: Boot {
                default: Some("cp-1-6.1.0-28-amd64.conf".into()),
                timeout: Some("0".into()),
                entries: vec![BootEntry {
                    file: "cp-1-6.1.0-28-amd64.conf".into(),
                    title: Some("cp-1 (airlock, kernel 6.1.0-28-amd64)".into()),
                    version: Some("6.1.0-28-amd64".into()),
                    linux: Some("/airlock/6.1.0-28-amd64/linux".into()),
                    initrd: Some("/airlock/6.1.0-28-amd64/initrd".into()),
                    options: Some("root=PARTUUID=f0e0d0c0-b0a0-4090-8070-605040302010 rw console=ttyS0,115200".into()),
                }],
            },
            kernel: Some("6.1.0-28-amd64".into()),
            hostname: Some("cp-1".into()),
            users: vec!["ops".into()],
            units: vec![
                UnitRecord { unit: "airlock-kubeadm-init.service".into(), target: "multi-user.target".into(), kind: "wants".into() },
                UnitRecord { unit: "airlock-import-images.service".into(), target: "kubelet.service".into(), kind: "requires".into() },
            ],
            files: 42,
            esp_files: 6,
            // The shapes kube::stage writes into the manifest.
            kubernetes: Some(json!({ "version": "1.31.4", "kubeadm_api": "kubeadm.k8s.io/v1beta4", "cluster_name": "prod" })),
            containerd: Some(json!({ "version": "1.7.24", "source": "release", "config_version": 2 })),
            images: Some(json!(["registry.k8s.io/etcd:3.5.15-0", "registry.k8s.io/pause:3.10"])),
            node: Some(json!({ "role": "init", "name": "cp-1", "control_plane_endpoint": "10.0.0.10:6443" })),
            secrets: Some(json!(["bootstrap-token", "ca.crt", "ca.key"])),
            problems: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn golden_text() {
        let want = "\
Image       out/cp-1/cp-1.raw (raw image, 4 GiB)
Name        cp-1, built by airlock 0.1.0, epoch 1700000000
Disk GUID   0d0e0f10-1112-4314-9516-1718191a1b1c
Partitions
  #  Label  Type                 PARTUUID                              Start    Size
  1  ESP    EFI System           a1a2a3a4-b1b2-4c1c-9d1d-e1e2e3e4e5e6  1 MiB    512 MiB
  2  root   Linux root (x86-64)  f0e0d0c0-b0a0-4090-8070-605040302010  513 MiB  3582 MiB
Boot        default cp-1-6.1.0-28-amd64.conf, timeout 0
  cp-1-6.1.0-28-amd64.conf
    title    cp-1 (airlock, kernel 6.1.0-28-amd64)
    version  6.1.0-28-amd64
    linux    /airlock/6.1.0-28-amd64/linux
    initrd   /airlock/6.1.0-28-amd64/initrd
    options  root=PARTUUID=f0e0d0c0-b0a0-4090-8070-605040302010 rw console=ttyS0,115200
Kernel      6.1.0-28-amd64
Hostname    cp-1
Users       ops
Units       airlock-kubeadm-init.service (wanted by multi-user.target)
            airlock-import-images.service (required by kubelet.service)
Files       42 in the root filesystem and 6 on the ESP with recorded sha256
Kubernetes  version: 1.31.4
            cluster_name: prod
            kubeadm_api: kubeadm.k8s.io/v1beta4
Containerd  version: 1.7.24
            config_version: 2
            source: release
Node        name: cp-1
            role: init (the first control plane: kubeadm init)
            control_plane_endpoint: 10.0.0.10:6443
Images      registry.k8s.io/etcd:3.5.15-0
            registry.k8s.io/pause:3.10
Secrets     bootstrap-token
            ca.crt
            ca.key
";
        similar_asserts::assert_eq!(render(&report()), want);
    }

    #[test]
    fn absent_keys_print_nothing() {
        let r = Report {
            image: "x.raw".into(),
            kind: Some(Kind::Raw),
            size: 1536,
            ..Report::default()
        };
        assert_eq!(render(&r), "Image       x.raw (raw image, 1.5 KiB)\n");
    }

    #[test]
    fn sizes() {
        for (b, want) in [
            (0, "0 bytes"),
            (512, "512 bytes"),
            (1 << 20, "1 MiB"),
            (3 << 29, "1536 MiB"),
            ((1 << 30) + 1, "1.0 GiB"),
        ] {
            assert_eq!(size(b), want, "{b}");
        }
    }
}
