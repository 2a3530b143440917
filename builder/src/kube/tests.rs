// SPDX-License-Identifier: Apache-2.0
//! Node recipes: validation of hostile ones, the inputs they add, and the
//! Fedora recipes shipped in recipes/ (which cannot be built here: their
//! sources are unreachable) parsed, validated and rendered.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::kubeadm::{self, Needed};
use super::spec::Role;
use super::{containerd, images, stage};
use crate::recipe::{self, Loaded};
use crate::render::Renderer;

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const TOKEN: &str = "abcdef.0123456789abcdef";
const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(crate) fn node_recipe() -> String {
    format!(
        r#"name = "cp"

[base]
path = "base.tar"
sha256 = "{SHA}"

[kubernetes]
version = "1.34.11"
kubeadm = {{ source = "bin/kubeadm", sha256 = "{SHA}" }}
kubelet = {{ source = "bin/kubelet", sha256 = "{SHA}" }}
kubectl = {{ source = "bin/kubectl", sha256 = "{SHA}" }}

[containerd]
version = "2.1.9"
release = {{ source = "containerd.tar.gz", sha256 = "{SHA}" }}
runc = {{ source = "runc.amd64", sha256 = "{SHA}" }}

[cni]
manifest = {{ source = "kube-flannel.yml", sha256 = "{SHA}" }}

[[image]]
source = "images/k8s.tar"
sha256 = "{SHA}"

[cluster]
name = "prod"
control_plane_endpoint = "10.0.0.10:6443"

[node]
hostname = "cp-1"
"#
    )
}

fn parse(text: &str) -> anyhow::Result<Loaded> {
    recipe::parse(Path::new("/recipes/r.toml"), text.to_string())
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

#[test]
fn a_node_recipe_gets_defaults_and_inputs() {
    let l = parse(&node_recipe()).unwrap();
    let c = l.recipe.cluster.as_ref().unwrap();
    assert_eq!(c.token_ttl.get_ref(), "8760h");
    assert_eq!(c.pod_subnet.get_ref(), "10.244.0.0/16");
    assert_eq!(
        l.recipe.kubernetes.as_ref().unwrap().bin_dir.get_ref(),
        "/usr/local/bin"
    );
    let whats: Vec<(String, String)> = l.inputs().into_iter().map(|i| (i.what, i.dest)).collect();
    for (w, d) in [
        ("kubernetes.kubeadm", "/usr/local/bin/kubeadm"),
        ("containerd.release", "/usr/local"),
        ("containerd.runc", "/usr/local/sbin/runc"),
        ("cni.manifest", "/usr/lib/airlock/cni/kube-flannel.yml"),
        ("image[0]", "/var/lib/airlock/images"),
    ] {
        assert!(
            whats.contains(&(w.to_string(), d.to_string())),
            "{w} -> {d} missing from {whats:?}"
        );
    }
    assert_eq!(super::spec::role(&l).unwrap(), Role::Init);
}

#[test]
fn hostile_recipes_fail_clearly() {
    let good = node_recipe();
    for (from, to, words) in [
        (
            "version = \"1.34.11\"",
            "version = \"stable\"",
            &["r.toml:8:11", "label", "internet"][..],
        ),
        (
            "version = \"1.34.11\"",
            "version = \"latest-1.34\"",
            &["label"][..],
        ),
        (
            "version = \"1.34.11\"",
            "version = \"1.34\"",
            &["minor release", "1.34.0"][..],
        ),
        (
            "version = \"2.1.9\"",
            "version = \"9.0.0\"",
            &["containerd 9.0.0"][..],
        ),
        (
            "hostname = \"cp-1\"",
            "hostname = \"cp-1\"\nrole = \"worker\"",
            &["node.role", "join"][..],
        ),
        (
            "control_plane_endpoint = \"10.0.0.10:6443\"",
            "",
            &["control_plane_endpoint"][..],
        ),
        (
            "control_plane_endpoint = \"10.0.0.10:6443\"",
            "control_plane_endpoint = \"https://10.0.0.10:6443\"",
            &["no scheme"][..],
        ),
        (
            "[cni]\n",
            "[cni]\npod_network = \"10.42.0.0/16\"\n",
            &["cni.pod_network 10.42.0.0/16", "10.244.0.0/16"][..],
        ),
        (
            "name = \"prod\"",
            "name = \"prod\"\nservice_subnet = \"10.244.128.0/20\"",
            &["overlaps"][..],
        ),
        (
            "name = \"prod\"",
            "name = \"prod\"\ntoken_ttl = \"1y\"",
            &["token_ttl", "unit"][..],
        ),
        (
            "name = \"prod\"",
            "name = \"Prod Cluster\"",
            &["cluster.name"][..],
        ),
        (
            "runc = {",
            "packaged = true\nrunc = {",
            &["packaged", "keep one"][..],
        ),
        (
            "release = {",
            "#release = {",
            &["needs `release", "packaged = true"][..],
        ),
        (
            "[[image]]\nsource = \"images/k8s.tar\"",
            "[[image]]\nplatform = \"amd64\"\nsource = \"images/k8s.tar\"",
            &["platform"][..],
        ),
        (
            "sha256 = \"{SHA}\" }}\nkubelet",
            "sha256 = \"XYZ\" }\nkubelet",
            &["kubernetes.kubeadm.sha256"][..],
        ),
    ] {
        let from = from.replace("{SHA}", SHA).replace("}}", "}");
        assert!(good.contains(&from), "{from}");
        let e = err(&good.replacen(&from, to, 1));
        for w in words {
            assert!(e.contains(w), "{to:?}: error lacks {w:?}: {e}");
        }
    }
    // Sections that need [kubernetes], and those [kubernetes] needs.
    let no_k8s = good
        .replace("[kubernetes]", "[vars]")
        .replace("kubeadm = {", "a = {")
        .replace("kubelet = {", "b = {")
        .replace("kubectl = {", "c = {");
    assert!(
        err(&no_k8s).contains("[containerd] is for Kubernetes nodes"),
        "{}",
        err(&no_k8s)
    );
    let cut = |from: &str, to: &str| {
        let (a, b) = (good.find(from).unwrap(), good.find(to).unwrap());
        format!("{}{}", &good[..a], &good[b..])
    };
    assert!(err(&cut("[containerd]", "[cni]")).contains("container runtime"));
    assert!(err(&cut("[cni]", "[[image]]")).contains("pod network"));
    // A join node needs an endpoint from somewhere.
    let join = good
        .replace("hostname = \"cp-1\"", "hostname = \"w-1\"\nrole = \"join\"")
        .replace("control_plane_endpoint = \"10.0.0.10:6443\"", "");
    assert!(
        err(&join).contains("a worker needs the control plane's address"),
        "{}",
        err(&join)
    );
    // Swap: "off" or "keep", and "keep" only where kubelet has NoSwap.
    let swap = |v: &str, version: &str| {
        err(&format!("{good}\n[host]\nswap = \"{v}\"\n")
            .replace("version = \"1.34.11\"", &format!("version = \"{version}\"")))
    };
    let e = swap("on", "1.34.11");
    assert!(
        e.contains("host.swap \"on\" is not one of off, keep"),
        "{e}"
    );
    let e = swap("keep", "1.29.15");
    assert!(
        e.contains("r.toml:") && e.contains("needs Kubernetes 1.30") && e.contains("1.29.15"),
        "{e}"
    );
    // An init node can take its own advertise address as the endpoint.
    parse(
        &good
            .replace("control_plane_endpoint = \"10.0.0.10:6443\"", "")
            .replace(
                "hostname = \"cp-1\"",
                "hostname = \"cp-1\"\nadvertise_address = \"10.0.0.10\"",
            ),
    )
    .unwrap();
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// The shipped Fedora recipes parse and validate, and their kubeadm and
/// containerd configurations render and parse; their archives' declared
/// references cover what kubeadm 1.34.11 (airlock's table) and flannel
/// v0.28.9 need for each role.
#[test]
fn fedora_recipes_parse_validate_and_render() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let r = Renderer::new(None);
    for (file, role) in [
        ("fedora-control-plane.toml", Role::Init),
        ("fedora-worker.toml", Role::Join),
    ] {
        let l = recipe::load(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(super::spec::role(&l).unwrap(), role, "{file}");
        let k = l.recipe.kubernetes.as_ref().unwrap();
        assert_eq!(k.version.get_ref(), "1.34.11");
        for i in l.inputs() {
            if i.what.starts_with("kubernetes.") || i.what.starts_with("containerd.") {
                assert!(i.sha256.is_some(), "{file}: {} is not pinned", i.what);
                assert!(i.source.starts_with("https://"), "{file}: {}", i.source);
            }
        }
        let (mut cluster, node) = stage::settings(&l, TOKEN, HASH).unwrap();
        let list = kubeadm::from_table(&cluster).unwrap();
        cluster.pause_image = list.pause.clone();
        let text = kubeadm::render(&r, &cluster, &node).unwrap();
        let d = docs(&text);
        let first = &d[0];
        match role {
            Role::Init => {
                assert_eq!(first["kind"], "InitConfiguration");
                assert_eq!(first["bootstrapTokens"][0]["ttl"], "8760h0m0s");
                let cc = d
                    .iter()
                    .find(|x| x["kind"] == "ClusterConfiguration")
                    .unwrap();
                assert_eq!(cc["kubernetesVersion"], "v1.34.11");
                assert_eq!(cc["apiVersion"], "kubeadm.k8s.io/v1beta4");
                assert_eq!(cc["controlPlaneEndpoint"], "10.0.0.10:6443");
            }
            Role::Join => {
                assert_eq!(first["kind"], "JoinConfiguration");
                assert_eq!(
                    first["discovery"]["bootstrapToken"]["apiServerEndpoint"],
                    "10.0.0.10:6443"
                );
                assert_eq!(
                    first["discovery"]["bootstrapToken"]["caCertHashes"][0],
                    HASH
                );
                assert_eq!(node.node.advertise_interface.as_deref(), Some("enp1s0"));
            }
        }
        let c = l.recipe.containerd.as_ref().unwrap();
        let cfg = containerd::render(
            &r,
            &containerd::ConfigInput {
                version: super::version::Version::parse_exact("v", c.version.get_ref()).unwrap(),
                sandbox_image: list.pause.clone(),
                cni_bin_dirs: c.cni_bin_dirs.get_ref().clone(),
                cni_conf_dir: c.cni_conf_dir.get_ref().clone(),
            },
        )
        .unwrap();
        let v: toml::Value = toml::from_str(&cfg).unwrap();
        assert_eq!(v["version"].as_integer(), Some(3));
        containerd::check_sandbox(&cfg, &list.pause, &list.source).unwrap();
        // Declared references cover kubeadm's list for the role, flannel's
        // images (from the artifacts table) and the sandbox.
        let declared: BTreeMap<String, String> = l
            .recipe
            .images
            .iter()
            .flat_map(|i| {
                i.refs
                    .iter()
                    .map(|r| (images::normalize_ref(r).unwrap(), String::new()))
            })
            .collect();
        let mut needed: Vec<Needed> = list
            .for_role(role)
            .into_iter()
            .map(|reference| Needed {
                reference,
                why: "kubeadm".into(),
            })
            .collect();
        for f in [
            "ghcr.io/flannel-io/flannel:v0.28.9",
            "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
        ] {
            needed.push(Needed {
                reference: f.into(),
                why: "flannel".into(),
            });
        }
        kubeadm::check_coverage(&needed, &declared).unwrap_or_else(|e| panic!("{file}: {e:#}"));
    }
}

fn staging() -> (tempfile::TempDir, crate::tree::Root) {
    let d = tempfile::tempdir().unwrap();
    let root = crate::tree::Root::create(&d.path().join("r")).unwrap();
    (d, root)
}

fn put(root: &crate::tree::Root, p: &str, data: &str) {
    root.write_file(p, &mut data.as_bytes(), &crate::tree::Attrs::root(0o644, 0))
        .unwrap();
}

/// Fedora-like host settings: SELinux mode kept type, firewalld opened in
/// the default zone, time zone, chrony with only the site's servers, swap off.
#[test]
fn host_settings_on_a_fedora_like_tree() {
    let (_d, root) = staging();
    put(
        &root,
        "etc/selinux/config",
        "SELINUX=enforcing\nSELINUXTYPE=mls\n",
    );
    put(
        &root,
        "usr/lib/systemd/system/firewalld.service",
        "[Service]\n",
    );
    put(
        &root,
        "etc/firewalld/firewalld.conf",
        "DefaultZone=FedoraServer\n",
    );
    put(
        &root,
        "usr/lib/firewalld/zones/FedoraServer.xml",
        "<?xml version=\"1.0\"?>\n<zone>\n  <service name=\"ssh\"/>\n</zone>\n",
    );
    put(&root, "usr/sbin/chronyd", "");
    put(
        &root,
        "etc/chrony.conf",
        "pool 2.fedora.pool.ntp.org iburst\n",
    );
    put(&root, "usr/share/zoneinfo/Europe/Oslo", "TZif");
    let text = node_recipe()
        + "\n[host]\nselinux = \"permissive\"\nfirewalld = \"open\"\ntimezone = \"Europe/Oslo\"\nntp = [\"10.0.0.1\", \"ntp.site.internal\"]\n";
    let l = parse(&text).unwrap();
    let notes = super::host::apply(&l, &root, &Renderer::new(None), Role::Init, 0).unwrap();
    let read = |p: &str| String::from_utf8(root.read(p).unwrap().unwrap()).unwrap();
    assert!(read("etc/selinux/config").contains("SELINUX=permissive\nSELINUXTYPE=mls"));
    let zone = read("etc/firewalld/zones/FedoraServer.xml");
    assert!(
        zone.contains("<service name=\"ssh\"/>")
            && zone.contains("<service name=\"airlock-kubernetes\"/>"),
        "{zone}"
    );
    let svc = read("etc/firewalld/services/airlock-kubernetes.xml");
    for port in [
        "port=\"6443\"",
        "port=\"2379-2380\"",
        "port=\"10250\"",
        "protocol=\"udp\" port=\"8472\"",
    ] {
        assert!(svc.contains(port), "{port}: {svc}");
    }
    let chrony = read("etc/chrony.conf");
    assert!(
        chrony.contains("server 10.0.0.1 iburst")
            && chrony.contains("server ntp.site.internal iburst")
    );
    assert!(!chrony.contains("pool.ntp.org"), "{chrony}");
    assert!(root.is_symlink("etc/localtime"));
    assert!(root.exists("etc/systemd/zram-generator.conf"));
    assert!(root.is_symlink("etc/systemd/system/swap.target"));
    assert!(notes.is_empty(), "{notes:?}");
    // swap = "keep": Fedora's zram swap and swap.target are left alone.
    let (_d3, kept) = staging();
    let keep = parse(&(node_recipe() + "\n[host]\nswap = \"keep\"\n")).unwrap();
    let notes = super::host::apply(&keep, &kept, &Renderer::new(None), Role::Init, 0).unwrap();
    assert!(!kept.exists("etc/systemd/zram-generator.conf"));
    assert!(!kept.is_symlink("etc/systemd/system/swap.target"));
    assert!(notes[0].contains("failSwapOn: false"), "{notes:?}");
    // A time zone the base lacks: refused.
    let (_d2, bare) = staging();
    let e = format!(
        "{:#}",
        super::host::apply(&l, &bare, &Renderer::new(None), Role::Init, 0).unwrap_err()
    );
    assert!(e.contains("host.timezone \"Europe/Oslo\""), "{e}");
    // NTP servers for a base with neither chrony nor timesyncd: refused.
    let ntp_only = parse(&(node_recipe() + "\n[host]\nntp = [\"10.0.0.1\"]\n")).unwrap();
    let e = format!(
        "{:#}",
        super::host::apply(&ntp_only, &bare, &Renderer::new(None), Role::Init, 0).unwrap_err()
    );
    assert!(
        e.contains(
            "host.ntp is set but the base has neither chrony (chronyd) nor systemd-timesyncd"
        ),
        "{e}"
    );
}

/// Kubernetes' "Ports and Protocols": every node serves kubelet, the
/// kube-proxy health check and NodePort Services over TCP and UDP; the
/// control plane adds the API server, etcd, the controller manager and the
/// scheduler. Flannel's VXLAN on both.
#[test]
fn firewall_ports_follow_the_kubernetes_ports_page() {
    let both = [
        (10250, 10250, "tcp"),
        (10256, 10256, "tcp"),
        (30000, 32767, "tcp"),
        (30000, 32767, "udp"),
        (8472, 8472, "udp"),
    ];
    let plane = [
        (6443, 6443, "tcp"),
        (2379, 2380, "tcp"),
        (10257, 10257, "tcp"),
        (10259, 10259, "tcp"),
    ];
    let sorted = |mut v: Vec<(u32, u32, &'static str)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(super::host::ports(Role::Join)),
        sorted(both.to_vec())
    );
    assert_eq!(
        sorted(super::host::ports(Role::Init)),
        sorted([&both[..], &plane[..]].concat())
    );
}

#[test]
fn packaged_containerd_version_from_dpkg() {
    let (_d, root) = staging();
    assert_eq!(stage::packaged_version(&root).unwrap(), None);
    put(
        &root,
        "var/lib/dpkg/status",
        "Package: runc\nVersion: 1.1.5+ds1-1\n\nPackage: containerd\nStatus: install ok installed\nVersion: 1.6.20~ds1-1+b1\n\n",
    );
    assert_eq!(stage::packaged_version(&root).unwrap(), Some((1, 6)));
}
