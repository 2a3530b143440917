// SPDX-License-Identifier: Apache-2.0
//! `airlock build` of Kubernetes node recipes on small inputs made here
//! (release-like tarballs, stand-in binaries, OCI and docker-save image
//! archives), the image read back with ext4-view and airlock's FAT reader:
//! every file of the first-boot contract with its mode, the secrets reused
//! across builds and rotated, and hostile node recipes refused.

mod common;
#[path = "common/oci.rs"]
mod oci;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use airlock::kube::images::ImagesJson;
use airlock::kube::settings::{ClusterSettings, NodeSettings};
use airlock::kube::spec::Role;
use common::*;
use serde::Deserialize;

const KUBE: &str = "1.34.11";

fn tools() -> bool {
    is_root() && have("mke2fs")
}

/// Extra base entries kubeadm's preflight needs.
fn preflight_entries(with_conntrack: bool) -> Vec<Entry<'static>> {
    let mut v = vec![
        Entry::File("usr/sbin/iptables", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File("usr/sbin/modprobe", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File("usr/bin/mount", b"#!/bin/sh\n", 0o755, 0, 0),
        Entry::File(
            "usr/lib/modules/6.1.0-28-amd64/modules.builtin",
            b"kernel/fs/overlayfs/overlay.ko\n",
            0o644,
            0,
            0,
        ),
        Entry::File(
            "usr/lib/modules/6.1.0-28-amd64/kernel/net/bridge/br_netfilter.ko",
            b"\x7fELF module",
            0o644,
            0,
            0,
        ),
        Entry::File(
            "usr/lib/systemd/system/firewalld.service",
            b"[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
            0o644,
            0,
            0,
        ),
    ];
    if with_conntrack {
        v.push(Entry::File(
            "usr/sbin/conntrack",
            b"#!/bin/sh\n",
            0o755,
            0,
            0,
        ));
    }
    v
}

fn gz(path: &std::path::Path, entries: &[Entry]) {
    let tmp = path.with_extension("plain");
    tarball(&tmp, entries);
    fs::write(path, oci::gzip(&fs::read(&tmp).unwrap())).unwrap();
    fs::remove_file(tmp).unwrap();
}

/// A kube-flannel.yml cut to what the build reads.
fn flannel(network: &str) -> String {
    format!(
        r#"---
kind: ConfigMap
apiVersion: v1
metadata:
  name: kube-flannel-cfg
  namespace: kube-flannel
data:
  net-conf.json: |
    {{ "Network": "{network}", "Backend": {{ "Type": "vxlan" }} }}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel-ds
  namespace: kube-flannel
spec:
  template:
    spec:
      initContainers:
      - name: install-cni-plugin
        image: ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3
      containers:
      - name: kube-flannel
        image: ghcr.io/flannel-io/flannel:v0.28.9
"#
    )
}

/// The fixture plus everything a node recipe pins.
struct Node {
    fx: Fixture,
}

impl Node {
    fn new() -> Node {
        let fx = Fixture::new();
        let p = |s: &str| fx.path(s);
        let mut base = base_entries();
        base.extend(preflight_entries(true));
        tarball(&p("node-base.tar"), &base);
        let mut base = base_entries();
        base.extend(preflight_entries(false));
        tarball(&p("no-conntrack-base.tar"), &base);
        for b in ["kubeadm", "kubelet", "kubectl"] {
            // Scripts: never run on the build host, so the image table answers.
            fs::write(p(b), format!("#!/bin/sh\necho {b} stand-in\n")).unwrap();
        }
        gz(
            &p("containerd.tar.gz"),
            &[
                Entry::Dir("bin", 0o755),
                Entry::File("bin/containerd", b"containerd", 0o755, 1001, 1001),
                Entry::File("bin/containerd-shim-runc-v2", b"shim", 0o755, 1001, 1001),
                Entry::File("bin/ctr", b"ctr", 0o755, 1001, 1001),
            ],
        );
        fs::write(p("runc.amd64"), b"runc").unwrap();
        gz(
            &p("crictl.tar.gz"),
            &[Entry::File("crictl", b"crictl", 0o755, 1001, 1001)],
        );
        gz(
            &p("cni-plugins.tgz"),
            &[
                Entry::Dir("./", 0o755),
                Entry::File("./loopback", b"loopback", 0o755, 1001, 1001),
                Entry::File("./bridge", b"bridge", 0o755, 1001, 1001),
                Entry::File("./portmap", b"portmap", 0o755, 1001, 1001),
            ],
        );
        fs::write(p("kube-flannel.yml"), flannel("10.244.0.0/16")).unwrap();
        let plat = "linux/amd64";
        let cp = [
            "registry.k8s.io/kube-apiserver:v1.34.11",
            "registry.k8s.io/kube-controller-manager:v1.34.11",
            "registry.k8s.io/kube-scheduler:v1.34.11",
            "registry.k8s.io/etcd:3.6.5-0",
        ];
        fs::write(p("cp.tar.gz"), oci::gzip(&oci::oci_layout(&cp, plat))).unwrap();
        let node = [
            "registry.k8s.io/kube-proxy:v1.34.11",
            "registry.k8s.io/coredns/coredns:v1.12.1",
            "registry.k8s.io/pause:3.10.1",
        ];
        fs::write(p("node.tar.zst"), oci::zstd(&oci::oci_layout(&node, plat))).unwrap();
        fs::write(
            p("flannel.tar"),
            oci::docker_save(&["ghcr.io/flannel-io/flannel:v0.28.9"], plat),
        )
        .unwrap();
        fs::write(
            p("cni-plugin.tar.zst"),
            oci::zstd(&oci::oci_multi_platform(
                "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3",
                plat,
                &["linux/arm64"],
            )),
        )
        .unwrap();
        Node { fx }
    }

    fn sha(&self, f: &str) -> String {
        sha256_file(&self.fx.path(f))
    }

    fn recipe(&self, role: Role) -> String {
        let (name, node) = match role {
            Role::Init => (
                "cp",
                "hostname = \"cp-1\"\nadvertise_address = \"10.0.0.10\"\n",
            ),
            Role::Join => (
                "worker",
                "hostname = \"worker-1\"\nrole = \"join\"\nadvertise_interface = \"eth0\"\n",
            ),
        };
        let pin = |f: &str| format!("{{ source = \"{f}\", sha256 = \"{}\" }}", self.sha(f));
        format!(
            r#"name = "{name}"
epoch = 1700000000

[base]
path = "node-base.tar"
sha256 = "{base}"

[kubernetes]
version = "{KUBE}"
kubeadm = {kubeadm}
kubelet = {kubelet}
kubectl = {kubectl}

[containerd]
version = "2.1.9"
release = {containerd}
runc = {runc}
crictl = {crictl}
cni_plugins = {cni_plugins}

[cni]
manifest = {manifest}

[[image]]
source = "cp.tar.gz"
sha256 = "{cp}"
refs = ["registry.k8s.io/kube-apiserver:v1.34.11", "registry.k8s.io/kube-controller-manager:v1.34.11", "registry.k8s.io/kube-scheduler:v1.34.11", "registry.k8s.io/etcd:3.6.5-0"]

[[image]]
source = "node.tar.zst"
sha256 = "{node_img}"

[[image]]
source = "flannel.tar"
sha256 = "{flannel}"

[[image]]
source = "cni-plugin.tar.zst"
sha256 = "{cni_plugin}"

[cluster]
name = "prod"
control_plane_endpoint = "10.0.0.10:6443"

[host]
ntp = []

[disk]
size = "512MiB"
esp_size = "40MiB"

[node]
{node}"#,
            base = self.sha("node-base.tar"),
            kubeadm = pin("kubeadm"),
            kubelet = pin("kubelet"),
            kubectl = pin("kubectl"),
            containerd = pin("containerd.tar.gz"),
            runc = pin("runc.amd64"),
            crictl = pin("crictl.tar.gz"),
            cni_plugins = pin("cni-plugins.tgz"),
            manifest = pin("kube-flannel.yml"),
            cp = self.sha("cp.tar.gz"),
            node_img = self.sha("node.tar.zst"),
            flannel = self.sha("flannel.tar"),
            cni_plugin = self.sha("cni-plugin.tar.zst"),
        )
    }

    fn build(&self, text: &str, out: &str, extra: &[&str]) -> std::process::Output {
        let recipe = self.fx.write_recipe(text);
        airlock()
            .arg("build")
            .arg(&recipe)
            .arg("--out")
            .arg(self.fx.path(out))
            .arg("--cache")
            .arg(self.fx.path("cache"))
            .arg("--format")
            .arg("raw")
            .args(extra)
            .output()
            .unwrap()
    }
}

struct Image {
    ext: ext4_view::Ext4,
    raw: std::path::PathBuf,
    esp: (u64, u64),
    manifest: serde_json::Value,
}

impl Image {
    fn open(out: &std::path::Path, name: &str) -> Image {
        let m = manifest(out);
        let (root_off, _) = partition(&m, "root");
        let raw = out.join(format!("{name}.raw"));
        let ext = ext4_view::Ext4::load(Box::new(PartReader {
            file: fs::File::open(&raw).unwrap(),
            offset: root_off,
        }))
        .unwrap();
        Image {
            ext,
            esp: partition(&m, "esp"),
            raw,
            manifest: m,
        }
    }
    fn mode(&self, p: &str) -> u32 {
        u32::from(
            self.ext
                .metadata(p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .mode(),
        ) & 0o7777
    }
    fn text(&self, p: &str) -> String {
        self.ext
            .read_to_string(p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    }
    fn esp(&self, p: &str) -> String {
        let f = fs::File::open(&self.raw).unwrap();
        String::from_utf8(airlock::fs::fat::read_file(&f, self.esp.0, self.esp.1, p).unwrap())
            .unwrap()
    }
    fn link(&self, p: &str) -> String {
        self.ext
            .read_link(p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .to_str()
            .unwrap()
            .to_string()
    }
}

/// `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum`.
fn openssl_ca_hash(cert: &std::path::Path) -> String {
    let pubkey = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    let mut p = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&pubkey.stdout).unwrap();
    let der = p.wait_with_output().unwrap();
    format!("sha256:{}", sha256(&der.stdout))
}

#[test]
fn control_plane_image_holds_the_first_boot_contract() {
    if !tools() {
        return;
    }
    let n = Node::new();
    // A site template shadowing one of airlock's kube/ templates.
    fs::create_dir_all(n.fx.path("templates/kube")).unwrap();
    let shipped = include_str!("../../templates/kube/crictl.yaml.j2");
    fs::write(
        n.fx.path("templates/kube/crictl.yaml.j2"),
        format!("# site crictl\n{shipped}"),
    )
    .unwrap();
    let text = n
        .recipe(Role::Init)
        .replace("epoch = ", "template_dir = \"templates\"\nepoch = ");
    let log = run_ok(n.build(&text, "cp", &[]));
    eprintln!("{log}");
    assert!(
        log.contains("images kubeadm needs, from airlock's image table for Kubernetes 1.34.11"),
        "{log}"
    );
    assert!(
        log.contains("bootstrap token TTL 8760h0m0s (airlock's default 8760h"),
        "{log}"
    );
    assert!(log.contains("made a new CA and bootstrap token"), "{log}");
    assert!(
        log.contains("lists linux/arm64 without their blobs"),
        "{log}"
    );
    let img = Image::open(&n.fx.path("cp"), "cp");

    // Binaries where the recipe says, executable; release files unpacked;
    // the base's /opt -> var/opt link followed for the CNI plugins.
    for p in [
        "/usr/local/bin/kubeadm",
        "/usr/local/bin/kubelet",
        "/usr/local/bin/kubectl",
        "/usr/local/bin/containerd",
        "/usr/local/bin/ctr",
        "/usr/local/sbin/runc",
        "/usr/local/bin/crictl",
        "/var/opt/cni/bin/loopback",
    ] {
        assert_eq!(img.mode(p), 0o755, "{p}");
        assert_eq!(img.ext.metadata(p).unwrap().uid(), 0, "{p}");
    }
    assert_eq!(img.mode("/usr/lib/airlock/airlock"), 0o755);
    assert_eq!(
        sha256(&img.ext.read("/usr/lib/airlock/airlock").unwrap()),
        sha256_file(std::path::Path::new(env!("CARGO_BIN_EXE_airlock")))
    );

    // containerd: config version 3 with the preloaded pause as sandbox.
    let cfg: toml::Value = toml::from_str(&img.text("/etc/containerd/config.toml")).unwrap();
    assert_eq!(cfg["version"].as_integer(), Some(3));
    assert_eq!(
        cfg["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
        Some("registry.k8s.io/pause:3.10.1")
    );
    assert_eq!(
        cfg["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]["options"]
            ["SystemdCgroup"]
            .as_bool(),
        Some(true)
    );
    assert!(img
        .text("/etc/systemd/system/containerd.service")
        .contains("ExecStart=/usr/local/bin/containerd"));
    assert!(img
        .text("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf")
        .contains("ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS"));
    let crictl: serde_json::Value = serde_norway::from_str(&img.text("/etc/crictl.yaml")).unwrap();
    assert_eq!(
        crictl["runtime-endpoint"],
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(
        img.text("/etc/modules-load.d/airlock-kubernetes.conf")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["overlay", "br_netfilter"]
    );
    let sysctl = img.text("/etc/sysctl.d/90-airlock-kubernetes.conf");
    for k in [
        "net.ipv4.ip_forward = 1",
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.bridge.bridge-nf-call-ip6tables = 1",
    ] {
        assert!(sysctl.contains(k), "{sysctl}");
    }

    // Swap off, firewalld masked, units enabled.
    assert!(img.ext.exists("/etc/systemd/zram-generator.conf").unwrap());
    assert_eq!(img.link("/etc/systemd/system/swap.target"), "/dev/null");
    assert_eq!(
        img.link("/etc/systemd/system/firewalld.service"),
        "/dev/null"
    );
    for u in [
        "kubelet",
        "containerd",
        "airlock-images",
        "airlock-kubeadm",
        "airlock-route",
        "airlock-hostname",
    ] {
        let l = format!("/etc/systemd/system/multi-user.target.wants/{u}.service");
        assert_eq!(
            img.link(&l),
            format!("/etc/systemd/system/{u}.service"),
            "{l}"
        );
    }
    let unit = img.text("/etc/systemd/system/airlock-kubeadm.service");
    assert!(
        unit.contains("ExecStart=/usr/lib/airlock/airlock node kubeadm"),
        "{unit}"
    );
    assert!(unit.contains("ConditionPathExists=!/var/lib/airlock/kubeadm.done"));
    assert!(img
        .text("/etc/systemd/system/airlock-images.service")
        .contains("ExecStart=/usr/lib/airlock/airlock node images"));
    assert!(img
        .text("/etc/systemd/system/airlock-route.service")
        .contains("ExecStart=/usr/lib/airlock/airlock node route"));
    let unit = img.text("/etc/systemd/system/airlock-hostname.service");
    assert!(
        unit.contains("ExecStart=/usr/lib/airlock/airlock node hostname")
            && unit
                .contains("Before=kubelet.service airlock-route.service airlock-kubeadm.service"),
        "{unit}"
    );
    // Both read node.toml from the ESP, which fstab mounts with nofail (not
    // ordered before local-fs.target): without this they race the mount.
    for u in ["airlock-route", "airlock-kubeadm", "airlock-hostname"] {
        let text = img.text(&format!("/etc/systemd/system/{u}.service"));
        assert!(
            text.lines().any(|l| l == "RequiresMountsFor=/boot/efi"),
            "{u} does not wait for the ESP:\n{text}"
        );
    }
    // The recipe's shadowing kube/ template was used and goes to the node.
    assert!(img.text("/etc/crictl.yaml").starts_with("# site crictl\n"));
    assert_eq!(
        img.text("/usr/lib/airlock/templates/kube/crictl.yaml.j2"),
        fs::read_to_string(n.fx.path("templates/kube/crictl.yaml.j2")).unwrap()
    );

    // Image archives as pinned, listed with their references.
    let list: ImagesJson = serde_json::from_str(&img.text("/usr/lib/airlock/images.json")).unwrap();
    assert_eq!(list.archives.len(), 4);
    for (a, (file, ext)) in list.archives.iter().zip([
        ("cp.tar.gz", "tar.gz"),
        ("node.tar.zst", "tar.zst"),
        ("flannel.tar", "tar"),
        ("cni-plugin.tar.zst", "tar.zst"),
    ]) {
        assert_eq!(a.sha256, n.sha(file));
        assert_eq!(
            a.file,
            format!("/var/lib/airlock/images/{}.{ext}", a.sha256)
        );
        assert_eq!(sha256(&img.ext.read(&a.file).unwrap()), a.sha256);
        assert_eq!(a.platform, "linux/amd64");
    }
    assert_eq!(
        list.archives[2].references,
        ["ghcr.io/flannel-io/flannel:v0.28.9"]
    );
    assert_eq!(
        list.archives[3].references,
        ["ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3"]
    );
    assert_eq!(
        img.text("/usr/lib/airlock/cni/kube-flannel.yml"),
        flannel("10.244.0.0/16")
    );

    // Secrets: the CA in pki (key 0600, folder 0700), the token in the
    // root-only cluster.toml; all equal to out/prod/secrets.
    let secrets = n.fx.path("prod/secrets");
    assert_eq!(
        fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in ["ca.crt", "ca.key", "bootstrap-token"] {
        assert_eq!(
            fs::metadata(secrets.join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
    assert_eq!(img.mode("/etc/kubernetes/pki"), 0o700);
    assert_eq!(img.mode("/etc/kubernetes/pki/ca.key"), 0o600);
    assert_eq!(img.mode("/etc/kubernetes/pki/ca.crt"), 0o644);
    assert_eq!(
        img.text("/etc/kubernetes/pki/ca.key"),
        fs::read_to_string(secrets.join("ca.key")).unwrap()
    );
    assert_eq!(img.mode("/usr/lib/airlock/cluster.toml"), 0o600);
    let token = fs::read_to_string(secrets.join("bootstrap-token"))
        .unwrap()
        .trim()
        .to_string();
    let cluster =
        ClusterSettings::from_toml(&img.text("/usr/lib/airlock/cluster.toml"), "cluster.toml")
            .unwrap();
    assert_eq!(cluster.bootstrap_token.as_deref(), Some(token.as_str()));
    assert_eq!(cluster.kubernetes_version, KUBE);
    assert_eq!(cluster.pause_image, "registry.k8s.io/pause:3.10.1");
    assert_eq!(cluster.token_ttl, "8760h0m0s");
    assert_eq!(
        cluster.cni_manifest,
        "/usr/lib/airlock/cni/kube-flannel.yml"
    );

    // node.toml on the ESP; the node renders the same configuration from it.
    let node = NodeSettings::from_toml(&img.esp("airlock/node.toml"), "node.toml").unwrap();
    assert_eq!(
        (node.node.role, node.node.node_name().as_str()),
        (Role::Init, "cp-1")
    );
    assert!(node.join.is_none());
    let text =
        airlock::kube::kubeadm::render(&airlock::render::Renderer::new(None), &cluster, &node)
            .unwrap();
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs[0]["bootstrapTokens"][0]["token"], token.as_str());
    assert_eq!(docs[1]["kubernetesVersion"], "v1.34.11");

    // The manifest says what is inside, never a secret's value.
    let m = &img.manifest;
    assert_eq!(m["kubernetes"]["version"], KUBE);
    assert_eq!(m["kubernetes"]["token_ttl"], "8760h0m0s");
    assert_eq!(m["containerd"]["version"], "2.1.9");
    assert_eq!(m["node"]["role"], "init");
    assert_eq!(m["node"]["name"], "cp-1");
    let refs: Vec<&str> = m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        refs.contains(&"registry.k8s.io/pause:3.10.1") && refs.len() == 9,
        "{refs:?}"
    );
    let names: Vec<&str> = m["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, ["bootstrap-token", "ca.crt", "ca.key"]);
    let all = fs::read_to_string(n.fx.path("cp/manifest.json")).unwrap();
    assert!(
        !all.contains(&token) && !all.contains("PRIVATE KEY"),
        "a secret leaked into manifest.json"
    );
    let inputs: Vec<&str> = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["what"].as_str().unwrap())
        .collect();
    for w in [
        "kubernetes.kubeadm",
        "containerd.release",
        "cni.manifest",
        "image[3]",
    ] {
        assert!(inputs.contains(&w), "{w} not in {inputs:?}");
    }
}

#[test]
fn workers_reuse_the_cluster_secrets_until_rotated() {
    if !tools() || !have("openssl") {
        return;
    }
    let n = Node::new();
    run_ok(n.build(&n.recipe(Role::Init), "cp", &[]));
    let secrets = n.fx.path("prod/secrets");
    let token = fs::read_to_string(secrets.join("bootstrap-token"))
        .unwrap()
        .trim()
        .to_string();
    let hash = openssl_ca_hash(&secrets.join("ca.crt"));

    let log = run_ok(n.build(&n.recipe(Role::Join), "worker", &[]));
    assert!(log.contains("reusing the CA and bootstrap token"), "{log}");
    assert!(log.contains("a worker runs only kube-proxy"), "{log}");
    let img = Image::open(&n.fx.path("worker"), "worker");
    let node = NodeSettings::from_toml(&img.esp("airlock/node.toml"), "node.toml").unwrap();
    assert_eq!(node.node.role, Role::Join);
    assert_eq!(node.node.advertise_interface.as_deref(), Some("eth0"));
    assert_eq!(node.node.control_plane_endpoint, "10.0.0.10:6443");
    let join = node.join.unwrap();
    assert_eq!(join.token, token);
    assert_eq!(
        join.ca_cert_hash, hash,
        "the CA hash is not what kubeadm's discovery computes"
    );
    // Never the CA key on a worker; cluster.toml carries no token there.
    assert!(!img.ext.exists("/etc/kubernetes/pki/ca.key").unwrap());
    assert_eq!(img.mode("/usr/lib/airlock/cluster.toml"), 0o644);
    assert!(
        ClusterSettings::from_toml(&img.text("/usr/lib/airlock/cluster.toml"), "c")
            .unwrap()
            .bootstrap_token
            .is_none()
    );
    assert_eq!(img.manifest["node"]["role"], "join");
    assert_eq!(
        img.manifest["secrets"],
        serde_json::json!(["bootstrap-token"])
    );

    let log = run_ok(n.build(&n.recipe(Role::Join), "worker2", &["--rotate-secrets"]));
    assert!(log.contains("rotated"), "{log}");
    let img = Image::open(&n.fx.path("worker2"), "worker");
    let join = NodeSettings::from_toml(&img.esp("airlock/node.toml"), "n")
        .unwrap()
        .join
        .unwrap();
    assert_ne!(join.token, token);
    assert_ne!(join.ca_cert_hash, hash);
    assert_eq!(join.ca_cert_hash, openssl_ca_hash(&secrets.join("ca.crt")));
    assert_eq!(
        fs::read_to_string(secrets.join("previous/bootstrap-token"))
            .unwrap()
            .trim(),
        token
    );
}

/// A hostile recipe: a clear error naming the problem, no output, and no
/// new cluster secrets (no image carries them).
fn refused(n: &Node, text: &str, words: &[&str]) {
    let secrets = n.fx.path("prod/secrets");
    let had_secrets = secrets.exists();
    let err = run_err(n.build(text, "bad-out", &[]));
    for w in words {
        assert!(err.contains(w), "error lacks {w:?}: {err}");
    }
    assert!(
        !n.fx.path("bad-out").exists(),
        "a failed build left output behind"
    );
    if !had_secrets {
        assert!(
            !secrets.exists(),
            "a failed build saved new cluster secrets: {err}"
        );
    }
}

#[test]
fn templates_and_overlays_cannot_replace_what_airlock_checked() {
    if !tools() {
        return;
    }
    let n = Node::new();
    let good = n.recipe(Role::Init);
    let site = n.fx.path("site");

    // An overlay with its own containerd config (no sandbox check, no CRI).
    fs::create_dir_all(site.join("etc/containerd")).unwrap();
    fs::write(
        site.join("etc/containerd/config.toml"),
        "version = 2\ndisabled_plugins = [\"cri\"]\n",
    )
    .unwrap();
    let overlaid = good.replace("epoch = ", "overlays = [\"site\"]\nepoch = ");
    refused(
        &n,
        &overlaid,
        &[
            "recipe.toml: the recipe replaces files airlock writes",
            &format!(
                "/etc/containerd/config.toml, changed by the overlay {}",
                site.display()
            ),
            "template_dir's kube/ folder",
        ],
    );

    // An overlay slipping a kubeadm template to the node, which renders
    // its configuration with it at first boot.
    fs::remove_dir_all(site.join("etc")).unwrap();
    fs::create_dir_all(site.join("usr/lib/airlock/templates/kube")).unwrap();
    fs::write(
        site.join("usr/lib/airlock/templates/kube/kubeadm.yaml.j2"),
        "kind: InitConfiguration\n",
    )
    .unwrap();
    refused(
        &n,
        &overlaid,
        &["/usr/lib/airlock/templates/kube/kubeadm.yaml.j2, changed by the overlay"],
    );

    // A [[template]] over cluster.toml.
    fs::create_dir_all(n.fx.path("templates")).unwrap();
    fs::write(
        n.fx.path("templates/cluster.j2"),
        "kubernetes_version = \"1.34.11\"\n",
    )
    .unwrap();
    let templated = good.replace("epoch = ", "template_dir = \"templates\"\nepoch = ")
        + "\n[[template]]\nsrc = \"cluster.j2\"\npath = \"/usr/lib/airlock/cluster.toml\"\n";
    refused(
        &n,
        &templated,
        &[&format!(
            "/usr/lib/airlock/cluster.toml, changed by the [[template]] at {}:",
            n.fx.path("recipe.toml").display()
        )],
    );

    // The recipe as it was builds, and only now are the secrets saved.
    let log = run_ok(n.build(&good, "cp", &[]));
    assert!(log.contains("made a new CA and bootstrap token"), "{log}");
    assert!(n.fx.path("prod/secrets/ca.key").is_file());
}

#[test]
fn hostile_node_recipes_are_refused() {
    if !tools() {
        return;
    }
    let n = Node::new();
    let good = n.recipe(Role::Init);
    // A version label kubeadm would resolve online.
    refused(
        &n,
        &good.replace("version = \"1.34.11\"", "version = \"stable\""),
        &["recipe.toml:9:11", "label", "exact release"],
    );
    // Images kubeadm needs are in no archive: each is named.
    let no_node_images = good.replace(
        &format!(
            "[[image]]\nsource = \"node.tar.zst\"\nsha256 = \"{}\"\n",
            n.sha("node.tar.zst")
        ),
        "",
    );
    refused(
        &n,
        &no_node_images,
        &[
            "3 image(s)",
            "registry.k8s.io/kube-proxy:v1.34.11 (kubeadm 1.34.11",
            "registry.k8s.io/coredns/coredns:v1.12.1",
            "registry.k8s.io/pause:3.10.1",
        ],
    );
    // containerd's sandbox differs from kubeadm's pause.
    refused(
        &n,
        &good.replace(
            "version = \"2.1.9\"",
            "version = \"2.1.9\"\nsandbox_image = \"registry.k8s.io/pause:3.10\"",
        ),
        &[
            "recipe.toml:",
            "sandbox image is registry.k8s.io/pause:3.10 but kubeadm",
            "pause:3.10.1",
        ],
    );
    // The CNI manifest's network is not the cluster's pod subnet.
    refused(
        &n,
        &good.replace(
            "name = \"prod\"",
            "name = \"prod\"\npod_subnet = \"10.42.0.0/16\"",
        ),
        &[
            "kube-flannel.yml sets the pod network 10.244.0.0/16",
            "cluster.pod_subnet is 10.42.0.0/16",
        ],
    );
    // An archive whose references differ from what the recipe says.
    refused(
        &n,
        &good.replace(
            "\"registry.k8s.io/etcd:3.6.5-0\"]",
            "\"registry.k8s.io/etcd:3.6.6-0\"]",
        ),
        &["image[0].refs", "etcd:3.6.6-0", "etcd:3.6.5-0"],
    );
    // The base lacks what kubeadm's preflight needs.
    let text = good
        .replace("node-base.tar", "no-conntrack-base.tar")
        .replace(&n.sha("node-base.tar"), &n.sha("no-conntrack-base.tar"));
    refused(&n, &text, &["preflight", "program conntrack"]);
}
