// SPDX-License-Identifier: Apache-2.0
//! The kubeadm configuration for each supported release and both roles,
//! read back with a YAML parser.

use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::kube::settings::{JoinSection, NodeSection};

const TOKEN: &str = "abcdef.0123456789abcdef";
const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(crate) fn cluster(version: &str) -> ClusterSettings {
    let v = Version::parse_exact("v", version).unwrap();
    ClusterSettings {
        kubernetes_version: version.into(),
        kubeadm_api: v.kubeadm_api().unwrap().into(),
        cluster_name: "prod".into(),
        pod_subnet: "10.244.0.0/16".into(),
        service_subnet: "10.96.0.0/12".into(),
        image_repository: "registry.k8s.io".into(),
        token_ttl: "8760h0m0s".into(),
        bin_dir: "/usr/local/bin".into(),
        cni_manifest: "/usr/lib/airlock/cni/kube-flannel.yml".into(),
        pause_image: "registry.k8s.io/pause:3.10.1".into(),
        platform: "linux/amd64".into(),
        keep_swap: false,
        bootstrap_token: Some(TOKEN.into()),
    }
}

pub(crate) fn node(role: Role) -> NodeSettings {
    NodeSettings {
        node: NodeSection {
            name: (role == Role::Join).then(|| "worker-1".into()),
            hostname: "cp-1".into(),
            role,
            advertise_address: Some("10.0.0.10".parse().unwrap()),
            advertise_interface: None,
            control_plane_endpoint: "10.0.0.10".into(),
        },
        join: (role == Role::Join).then(|| JoinSection {
            token: TOKEN.into(),
            ca_cert_hash: HASH.into(),
        }),
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn init_configuration_for_each_release() {
    let r = Renderer::new(None);
    for (version, api) in [
        ("1.33.13", "kubeadm.k8s.io/v1beta4"),
        ("1.34.11", "kubeadm.k8s.io/v1beta4"),
        ("1.35.8", "kubeadm.k8s.io/v1beta4"),
        ("1.36.4", "kubeadm.k8s.io/v1beta4"),
        ("1.30.14", "kubeadm.k8s.io/v1beta3"),
    ] {
        let text = render(&r, &cluster(version), &node(Role::Init)).unwrap();
        let d = docs(&text);
        assert_eq!(d.len(), 3, "{version}: {text}");
        let init = kind(&d, "InitConfiguration");
        assert_eq!(init["apiVersion"], api, "{version}");
        assert_eq!(init["bootstrapTokens"][0]["token"], TOKEN);
        assert_eq!(init["bootstrapTokens"][0]["ttl"], "8760h0m0s");
        assert_eq!(init["localAPIEndpoint"]["advertiseAddress"], "10.0.0.10");
        let reg = &init["nodeRegistration"];
        assert_eq!(reg["name"], "cp-1");
        assert_eq!(reg["imagePullPolicy"], "Never");
        assert_eq!(reg["criSocket"], CRI_SOCKET);
        if api.ends_with("v1beta4") {
            assert_eq!(reg["kubeletExtraArgs"][0]["name"], "node-ip");
            assert_eq!(reg["kubeletExtraArgs"][0]["value"], "10.0.0.10");
        } else {
            assert_eq!(reg["kubeletExtraArgs"]["node-ip"], "10.0.0.10");
        }
        let cc = kind(&d, "ClusterConfiguration");
        assert_eq!(cc["apiVersion"], api);
        assert_eq!(cc["kubernetesVersion"], format!("v{version}"));
        assert_eq!(cc["clusterName"], "prod");
        assert_eq!(cc["controlPlaneEndpoint"], "10.0.0.10:6443");
        assert_eq!(cc["imageRepository"], "registry.k8s.io");
        assert_eq!(cc["networking"]["podSubnet"], "10.244.0.0/16");
        assert_eq!(cc["networking"]["serviceSubnet"], "10.96.0.0/12");
        let kc = kind(&d, "KubeletConfiguration");
        assert_eq!(kc["apiVersion"], "kubelet.config.k8s.io/v1beta1");
        assert_eq!(kc["cgroupDriver"], "systemd");
    }
}

#[test]
fn join_configuration_for_each_release() {
    let r = Renderer::new(None);
    for version in ["1.33.13", "1.34.11", "1.35.8", "1.36.4", "1.29.15"] {
        let mut c = cluster(version);
        c.bootstrap_token = None;
        let text = render(&r, &c, &node(Role::Join)).unwrap();
        let d = docs(&text);
        assert_eq!(d.len(), 1, "{text}");
        let j = kind(&d, "JoinConfiguration");
        assert_eq!(j["apiVersion"], c.kubeadm_api);
        let bt = &j["discovery"]["bootstrapToken"];
        assert_eq!(bt["apiServerEndpoint"], "10.0.0.10:6443");
        assert_eq!(bt["token"], TOKEN);
        assert_eq!(bt["caCertHashes"][0], HASH);
        assert_eq!(j["nodeRegistration"]["name"], "worker-1");
        assert_eq!(j["nodeRegistration"]["imagePullPolicy"], "Never");
        // The cluster-only document carries what `config images list` needs.
        let only = docs(&render_cluster_only(&r, &c, &node(Role::Join)).unwrap());
        assert_eq!(
            kind(&only, "ClusterConfiguration")["kubernetesVersion"],
            format!("v{version}")
        );
    }
}

#[test]
fn values_are_quoted_and_edited_node_files_are_checked() {
    let r = Renderer::new(None);
    let mut n = node(Role::Init);
    n.node.advertise_address = None;
    n.node.control_plane_endpoint = "api.prod.internal".into();
    let d = docs(&render(&r, &cluster("1.34.11"), &n).unwrap());
    assert!(kind(&d, "InitConfiguration")
        .get("localAPIEndpoint")
        .is_none());
    assert!(kind(&d, "InitConfiguration")["nodeRegistration"]
        .get("kubeletExtraArgs")
        .is_none());
    assert_eq!(
        kind(&d, "ClusterConfiguration")["controlPlaneEndpoint"],
        "api.prod.internal:6443"
    );

    n.node.name = Some("Bad Name".into());
    assert!(
        format!("{:#}", render(&r, &cluster("1.34.11"), &n).unwrap_err()).contains("node.name")
    );
    let mut c = cluster("1.34.11");
    c.bootstrap_token = None;
    let e = format!("{:#}", render(&r, &c, &node(Role::Init)).unwrap_err());
    assert!(e.contains("bootstrap_token"), "{e}");
    let mut c = cluster("1.34.11");
    c.kubeadm_api = "kubeadm.k8s.io/v1beta3".into();
    assert!(format!("{:#}", render(&r, &c, &node(Role::Init)).unwrap_err()).contains("v1beta4"));
}

#[test]
fn table_lists_images_and_derives_patch_releases() {
    let l = from_table(&cluster("1.34.11")).unwrap();
    assert_eq!(l.pause, "registry.k8s.io/pause:3.10.1");
    assert!(l
        .images
        .contains(&"registry.k8s.io/kube-apiserver:v1.34.11".to_string()));
    assert!(l
        .images
        .contains(&"registry.k8s.io/coredns/coredns:v1.12.1".to_string()));
    assert!(l.source.contains("table"));
    // A patch release the table lacks: add-ons of the newest same minor.
    let l = from_table(&cluster("1.34.12")).unwrap();
    assert!(l
        .images
        .contains(&"registry.k8s.io/kube-proxy:v1.34.12".to_string()));
    assert!(l
        .images
        .contains(&"registry.k8s.io/etcd:3.6.5-0".to_string()));
    assert!(l.source.contains("1.34.11"), "{}", l.source);
    // A mirror: CoreDNS moves up a level, as kubeadm does it.
    let mut c = cluster("1.33.13");
    c.image_repository = "registry.internal/k8s".into();
    let l = from_table(&c).unwrap();
    assert!(
        l.images
            .contains(&"registry.internal/k8s/coredns:v1.12.0".to_string()),
        "{:?}",
        l.images
    );
    assert_eq!(l.pause, "registry.internal/k8s/pause:3.10");
    // Unknown minor.
    let e = format!("{:#}", from_table(&cluster("1.40.0")).unwrap_err());
    assert!(e.contains("1.40") && e.contains("1.34.11"), "{e}");
    // Workers do not need the control-plane images.
    let l = from_table(&cluster("1.35.8")).unwrap();
    let w = l.for_role(Role::Join);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w
        .iter()
        .all(|i| !i.contains("apiserver") && !i.contains("etcd")));
}

#[test]
fn coverage_names_each_missing_image() {
    let present: BTreeMap<String, String> = [(
        "registry.k8s.io/pause:3.10.1".to_string(),
        "image[0]".to_string(),
    )]
    .into_iter()
    .collect();
    let needed = vec![
        Needed {
            reference: "registry.k8s.io/pause:3.10.1".into(),
            why: "sandbox".into(),
        },
        Needed {
            reference: "registry.k8s.io/kube-proxy:v1.34.11".into(),
            why: "kubeadm".into(),
        },
        Needed {
            reference: "flannel/flannel:v0.22.0".into(),
            why: "in the CNI manifest".into(),
        },
    ];
    let e = format!("{:#}", check_coverage(&needed, &present).unwrap_err());
    assert!(
        e.contains("registry.k8s.io/kube-proxy:v1.34.11 (kubeadm)"),
        "{e}"
    );
    assert!(
        e.contains("docker.io/flannel/flannel:v0.22.0 (in the CNI manifest)"),
        "{e}"
    );
    assert!(e.starts_with("2 image(s)"), "{e}");
    assert!(!e.contains("pause:3.10.1 (sandbox)"), "{e}");
    check_coverage(&needed[..1], &present).unwrap();

    // References are compared whole: a tag that only starts like another
    // neither provides it nor hides it in the list of missing ones.
    let need = |r: &str, why: &str| Needed {
        reference: r.into(),
        why: why.into(),
    };
    let e = format!(
        "{:#}",
        check_coverage(&[need("registry.k8s.io/pause:3.10", "sandbox")], &present).unwrap_err()
    );
    assert!(e.contains("registry.k8s.io/pause:3.10 (sandbox)"), "{e}");
    let e = format!(
        "{:#}",
        check_coverage(
            &[
                need("registry.k8s.io/etcd:3.6.5-0", "kubeadm"),
                need("registry.k8s.io/etcd:3.6.5", "the CNI manifest"),
                need("registry.k8s.io/etcd:3.6.5-0", "again"),
            ],
            &present
        )
        .unwrap_err()
    );
    assert!(e.starts_with("2 image(s)"), "{e}");
    assert!(
        e.contains("registry.k8s.io/etcd:3.6.5 (the CNI manifest)"),
        "{e}"
    );
}

#[test]
fn endpoints_get_a_port() {
    assert_eq!(endpoint_with_port("10.0.0.1"), "10.0.0.1:6443");
    assert_eq!(endpoint_with_port("10.0.0.1:443"), "10.0.0.1:443");
    assert_eq!(endpoint_with_port("fd00::1"), "[fd00::1]:6443");
    assert_eq!(endpoint_with_port("[fd00::1]:443"), "[fd00::1]:443");
    assert_eq!(endpoint_with_port("api.internal"), "api.internal:6443");
}

#[test]
fn only_host_elf_binaries_are_run() {
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("kubeadm");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    assert!(!host_can_run(&script));
    let me = std::env::current_exe().unwrap();
    assert!(host_can_run(&me));
}

/// A stand-in kubeadm (a host ELF) answering `version` and `config images
/// list -o json`: the build runs it and uses its list.
#[test]
fn runs_a_host_kubeadm_when_it_can() {
    if crate::cmd::which("cc").is_none() {
        assert!(std::env::var_os("CI").is_none(), "cc is required in CI");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("k.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "version") == 0) { puts(VERSION); return 0; }
  if (argc > 7 && strcmp(argv[1], "config") == 0) {
    FILE *f = fopen(argv[7], "r"); if (!f) return 3;
    char buf[4096]; size_t n = fread(buf, 1, sizeof buf - 1, f); buf[n] = 0;
    if (!strstr(buf, "kubernetesVersion: \"v1.34.11\"")) return 4;
    puts("{\"kind\":\"Images\",\"images\":[\"registry.k8s.io/kube-proxy:v1.34.11\",\"registry.k8s.io/pause:3.10.9\"]}");
    return 0;
  }
  return 2;
}
"#,
    )
    .unwrap();
    let compile = |version: &str, exe: &std::path::Path| {
        let st = std::process::Command::new("cc")
            .arg(format!("-DVERSION=\"{version}\""))
            .arg("-o")
            .arg(exe)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let exe = d.path().join("kubeadm");
    compile("v1.34.11", &exe);
    let r = Renderer::new(None);
    let config = render(&r, &cluster("1.34.11"), &node(Role::Init)).unwrap();
    let mut notes = Vec::new();
    let l = images(&exe, &config, &cluster("1.34.11"), &mut notes).unwrap();
    assert_eq!(l.pause, "registry.k8s.io/pause:3.10.9");
    assert!(l.source.contains("kubeadm v1.34.11"), "{}", l.source);
    assert!(notes.is_empty(), "{notes:?}");
    // A kubeadm of another release than the recipe's is refused.
    let other = d.path().join("kubeadm-other");
    compile("v1.34.12", &other);
    let e = format!(
        "{:#}",
        images(&other, &config, &cluster("1.34.11"), &mut notes).unwrap_err()
    );
    assert!(
        e.contains("kubeadm \"v1.34.12\"") && e.contains("kubernetes.version is 1.34.11"),
        "{e}"
    );
    // A script is never run on the build host: the table answers.
    let script = d.path().join("script");
    std::fs::write(&script, "#!/bin/sh\nexit 1\n").unwrap();
    let l = images(&script, &config, &cluster("1.34.11"), &mut notes).unwrap();
    assert_eq!(l.pause, "registry.k8s.io/pause:3.10.1");
    assert!(notes[0].contains("image table"), "{notes:?}");
}

/// `[host] swap = "keep"`: the init node's KubeletConfiguration (which
/// becomes the cluster's) lets kubelet start with swap and keeps pods out
/// of it; a worker, whose configuration comes from the cluster, gets the
/// flag; swap off (the default) leaves kubelet's refusal in place.
#[test]
fn kept_swap_is_told_to_kubelet() {
    let r = Renderer::new(None);
    let mut c = cluster("1.34.11");
    let d = docs(&render(&r, &c, &node(Role::Init)).unwrap());
    let kc = kind(&d, "KubeletConfiguration");
    assert!(kc.get("failSwapOn").is_none() && kc.get("memorySwap").is_none());

    c.keep_swap = true;
    for (version, api) in [("1.34.11", "v1beta4"), ("1.30.14", "v1beta3")] {
        let mut c = c.clone();
        c.kubernetes_version = version.into();
        c.kubeadm_api = format!("kubeadm.k8s.io/{api}");
        let d = docs(&render(&r, &c, &node(Role::Init)).unwrap());
        let kc = kind(&d, "KubeletConfiguration");
        assert_eq!(kc["failSwapOn"], false, "{version}");
        assert_eq!(kc["memorySwap"]["swapBehavior"], "NoSwap", "{version}");
        let reg = &kind(&d, "InitConfiguration")["nodeRegistration"];
        let args = &reg["kubeletExtraArgs"];
        assert!(
            !args.to_string().contains("fail-swap-on"),
            "the init node's configuration says it: {args}"
        );

        c.bootstrap_token = None;
        let d = docs(&render(&r, &c, &node(Role::Join)).unwrap());
        let args = &kind(&d, "JoinConfiguration")["nodeRegistration"]["kubeletExtraArgs"];
        if api == "v1beta4" {
            assert_eq!(
                args,
                &serde_json::json!([
                    { "name": "node-ip", "value": "10.0.0.10" },
                    { "name": "fail-swap-on", "value": "false" }
                ])
            );
        } else {
            assert_eq!(
                args,
                &serde_json::json!({ "node-ip": "10.0.0.10", "fail-swap-on": "false" })
            );
        }
    }
    // Before 1.30 there is no NoSwap: refused.
    let mut old = cluster("1.29.15");
    old.keep_swap = true;
    let e = format!("{:#}", render(&r, &old, &node(Role::Init)).unwrap_err());
    assert!(e.contains("1.30"), "{e}");
}
