// SPDX-License-Identifier: Apache-2.0
//! Lays a Kubernetes node into the root tree: binaries, containerd, kubelet,
//! the preloaded image archives, host settings, cluster secrets and the
//! first-boot units, after checking that the images cover what kubeadm, the
//! CNI manifest and containerd's sandbox need. Returns what the manifest and
//! the ESP get.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::images::{self, ArchiveEntry, ImagesJson, Platform};
use super::kubeadm::{self, Needed};
use super::settings::{
    ClusterSettings, JoinSection, NodeSection, NodeSettings, CLUSTER_TOML, NODE_TOML_ESP,
};
use super::spec::{self, Role, DEFAULT_TOKEN_TTL};
use super::version::{self, Version};
use super::{
    cni, containerd, host, net, secrets, AIRLOCK_BIN, CNI_DIR, HOSTNAME_UNIT, IMAGES_DIR,
    IMAGES_JSON, IMAGES_UNIT, KUBEADM_UNIT, ROUTE_UNIT, TEMPLATES_DIR,
};
use crate::fs::fat::{EspFile, EspSource};
use crate::inputs::Resolved;
use crate::pipeline::Context as BuildContext;
use crate::render::Renderer;
use crate::tree::{extract, Attrs, Root};
use crate::units;

/// What staging a node gives the rest of the build.
#[derive(Debug, Default)]
pub struct Staged {
    /// The Kubernetes inputs, with where each landed.
    pub inputs: Vec<(Resolved, String)>,
    pub notes: Vec<String>,
    /// Top-level manifest.json keys: kubernetes, containerd, images, node, secrets.
    pub manifest: Map<String, Value>,
    /// Files for the ESP (node.toml).
    pub esp: Vec<EspFile>,
    /// Where containerd looks for CNI plugins (for preflight).
    pub cni_bin_dirs: Vec<String>,
    /// The files airlock wrote and checked, as they were then ([`finish`]
    /// refuses a template or overlay that changed them).
    pub managed: BTreeMap<String, Option<Fingerprint>>,
    /// The cluster secrets in the image, saved by [`finish`] when new.
    pub secrets: Option<(secrets::Secrets, secrets::Origin)>,
}

/// A file as airlock left it: a later write or replacement changes its
/// inode or its ctime (which no one can set back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

fn fingerprint(root: &Root, path: &str) -> Result<Option<Fingerprint>> {
    use std::os::unix::fs::MetadataExt;
    let Some(f) = root.open(path)? else {
        return Ok(None);
    };
    let m = f
        .metadata()
        .with_context(|| format!("reading the metadata of {path} in the image"))?;
    Ok(Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        ctime: (m.ctime(), m.ctime_nsec()),
    }))
}

/// The fingerprints of `paths`, and of every file under the template
/// folder the node renders with (an overlay must not add one there either).
fn managed_files(root: &Root, paths: &[String]) -> Result<BTreeMap<String, Option<Fingerprint>>> {
    let mut out = BTreeMap::new();
    for p in paths {
        let p = format!("/{}", p.trim_start_matches('/'));
        let f = fingerprint(root, &p)?;
        out.insert(p, f);
    }
    let mut dirs = vec![crate::node::paths::TEMPLATES.to_string()];
    while let Some(dir) = dirs.pop() {
        for name in root.list_dir(&dir)? {
            let p = format!("{dir}/{name}");
            let is_dir = match root.open(&p)? {
                Some(f) => f.metadata().map(|m| m.is_dir()).unwrap_or(false),
                None => false,
            };
            if is_dir {
                dirs.push(p);
            } else {
                let f = fingerprint(root, &p)?;
                out.insert(p, f);
            }
        }
    }
    Ok(out)
}

/// Whether a resolved input belongs to the Kubernetes sections.
pub fn is_kube_input(what: &str) -> bool {
    ["kubernetes.", "containerd.", "cni.", "image["]
        .iter()
        .any(|p| what.starts_with(p))
}

/// Takes the Kubernetes inputs out of the build's list (they come last).
pub fn split_inputs(all: &mut Vec<(Resolved, String)>) -> Vec<(Resolved, String)> {
    let (kube, rest): (Vec<_>, Vec<_>) = std::mem::take(all)
        .into_iter()
        .partition(|(r, _)| is_kube_input(&r.what));
    *all = rest;
    kube
}

/// `out/<cluster>/secrets` beside the image's output folder `out/<name>`.
pub fn secrets_dir(out: &Path, cluster: &str) -> PathBuf {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(cluster).join("secrets")
}

struct Log<'a> {
    cx: &'a BuildContext,
    notes: Vec<String>,
}

impl Log<'_> {
    fn note(&mut self, s: String) {
        self.cx.progress.note(&s);
        self.notes.push(s);
    }
}

fn put(root: &Root, path: &str, text: &str, mode: u32, epoch: i64) -> Result<()> {
    root.write_file(path, &mut text.as_bytes(), &Attrs::root(mode, epoch))?;
    Ok(())
}

/// Copies a verified input into the root, checking the cached bytes as
/// they are read.
fn copy_in(root: &Root, res: &Resolved, to: &str, mode: u32, epoch: i64) -> Result<()> {
    let (mut f, check) = res.open_checked()?;
    root.write_file(to, &mut f, &Attrs::root(mode, epoch))
        .with_context(|| format!("writing {to} from {}", res.path.display()))?;
    check.finish()
}

/// Stages the node; `None` for a recipe without [kubernetes].
pub fn run(
    cx: &BuildContext,
    root: &Root,
    renderer: &Renderer,
    inputs: Vec<(Resolved, String)>,
    rotate_secrets: bool,
) -> Result<Option<Staged>> {
    let l = &cx.loaded;
    let r = &l.recipe;
    let Some(k) = &r.kubernetes else {
        return Ok(None);
    };
    let c = r
        .containerd
        .as_ref()
        .context("[kubernetes] without [containerd] (validation should have refused it)")?;
    cx.progress.step("setting up the Kubernetes node");
    let epoch = cx.epoch;
    let mut log = Log {
        cx,
        notes: Vec::new(),
    };
    let input = |what: &str| -> Result<&(Resolved, String)> {
        inputs
            .iter()
            .find(|(r, _)| r.what == what)
            .with_context(|| format!("input {what} was not resolved"))
    };
    let kv = Version::parse_exact("kubernetes.version", k.version.get_ref())?;
    let cv = Version::parse_exact("containerd.version", c.version.get_ref())?;
    let role = spec::role(l)?;
    let cluster = r.cluster.clone().unwrap_or_default();
    let platform = Platform::parse(k.platform.get_ref())?;
    let bin_dir = k.bin_dir.get_ref().trim_end_matches('/').to_string();
    let ttl_secs = version::parse_duration(cluster.token_ttl.get_ref())?;
    let ttl = version::format_duration(ttl_secs);

    // Secrets: once per cluster, reused by every later build.
    let sdir = secrets_dir(&cx.out, cluster.name.get_ref());
    // New ones are saved only once the build's checks pass (finish).
    let (secrets, origin) = secrets::load_or_make(&sdir, cluster.name.get_ref(), rotate_secrets)?;
    log.note(match origin {
        secrets::Origin::Created => format!(
            "cluster secrets: made a new CA and bootstrap token, for {} once the checks pass",
            sdir.display()
        ),
        secrets::Origin::Reused => format!(
            "cluster secrets: reusing the CA and bootstrap token in {}",
            sdir.display()
        ),
        secrets::Origin::Rotated => format!(
            "cluster secrets: rotated (the old ones go to {}/previous once the checks pass)",
            sdir.display()
        ),
    });
    let ttl_note = if cluster.token_ttl.span() == (0..0) {
        format!("airlock's default {DEFAULT_TOKEN_TTL}; kubeadm's own is 24h")
    } else {
        "cluster.token_ttl".to_string()
    };
    log.note(format!(
        "bootstrap token TTL {ttl} ({ttl_note}){}",
        if ttl_secs == 0 {
            ": it never expires"
        } else {
            ""
        }
    ));
    let ca_cert_hash = secrets.ca_cert_hash()?;

    let (mut settings, node) = settings(l, &secrets.token, &ca_cert_hash)?;
    let endpoint = node.node.control_plane_endpoint.clone();
    let node_name = node.node.node_name();
    let cni_manifest = settings.cni_manifest.clone();
    let cni_spec = r
        .cni
        .as_ref()
        .context("[kubernetes] without [cni] (validation should have refused it)")?;

    // Image archives: the references each carries, read from the archive.
    let mut out_inputs = Vec::new();
    let mut archives: Vec<ArchiveEntry> = Vec::new();
    let mut present: BTreeMap<String, String> = BTreeMap::new();
    for (i, img) in r.images.iter().enumerate() {
        let (res, _) = input(&format!("image[{i}]"))?;
        let at = l.at(&img.source);
        let want = match &img.platform {
            Some(p) => Platform::parse(p.get_ref())?,
            None => platform.clone(),
        };
        let info = images::read_archive(&res.path, &want)
            .with_context(|| format!("{at}: image[{i}] {}", res.source))?;
        if !img.refs.is_empty() {
            let said: BTreeSet<String> = img
                .refs
                .iter()
                .map(|x| images::normalize_ref(x))
                .collect::<Result<_>>()?;
            let has: BTreeSet<String> = info.refs.iter().cloned().collect();
            if said != has {
                bail!(
                    "{at}: image[{i}].refs says {} but the archive {} carries {} for {want}: fix refs or the archive",
                    said.iter().cloned().collect::<Vec<_>>().join(", "),
                    res.source,
                    info.refs.join(", ")
                );
            }
        }
        if !info.missing_platforms.is_empty() {
            log.note(format!(
                "image[{i}] {}: its index lists {} without their blobs; using {want}",
                res.source,
                info.missing_platforms.join(", ")
            ));
        }
        let file = format!(
            "{IMAGES_DIR}/{}.{}",
            res.sha256,
            info.compression.extension()
        );
        for rf in &info.refs {
            present
                .entry(rf.clone())
                .or_insert_with(|| format!("image[{i}]"));
        }
        out_inputs.push((res.clone(), file.clone()));
        archives.push(ArchiveEntry {
            file,
            sha256: res.sha256.clone(),
            platform: want.to_string(),
            references: info.refs,
        });
    }

    // The CNI manifest: its images, and the pod network it configures.
    let mut needed: Vec<Needed> = Vec::new();
    let cni_text = {
        let n = cni_spec;
        let (res, dest) = input("cni.manifest")?;
        let at = l.at(&n.manifest.source);
        let text = fs::read_to_string(&res.path)
            .with_context(|| format!("{at}: reading the CNI manifest {}", res.source))?;
        let name = cni::file_name(n.manifest.source.get_ref());
        let m = cni::parse(&text, &name)
            .with_context(|| format!("{at}: CNI manifest {}", res.source))?;
        let pods = net::parse_subnets(cluster.pod_subnet.get_ref())?;
        match m.pod_network {
            Some(net) if !pods.iter().any(|p| p.same_network(&net)) => bail!(
                "{at}: the CNI manifest {name} sets the pod network {net} (net-conf.json \"Network\") but cluster.pod_subnet is {}: \
                 pods would get addresses the CNI does not route. Set cluster.pod_subnet = \"{net}\", or edit the manifest's \
                 Network and pin its new sha256",
                cluster.pod_subnet.get_ref()
            ),
            Some(net) => log.note(format!("CNI manifest {name}: pod network {net} matches cluster.pod_subnet")),
            None => log.note(format!(
                "CNI manifest {name} has no flannel net-conf.json: check yourself that it uses the pod network {}",
                cluster.pod_subnet.get_ref()
            )),
        }
        for img in m.images {
            needed.push(Needed {
                reference: img,
                why: format!("in the CNI manifest {name}"),
            });
        }
        out_inputs.push((res.clone(), dest.clone()));
        (dest.clone(), text)
    };

    // Binaries.
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let (res, dest) = input(&format!("kubernetes.{name}"))?;
        copy_in(root, res, dest, 0o755, epoch)?;
        out_inputs.push((res.clone(), dest.clone()));
    }
    let cni_bin_dirs = c.cni_bin_dirs.get_ref().clone();
    install_containerd(
        cx,
        root,
        renderer,
        c,
        &cv,
        &bin_dir,
        &inputs,
        &mut out_inputs,
        &mut log,
    )?;

    // kubeadm: the configuration for this node, and the images it needs.
    let config = kubeadm::render(renderer, &settings, &node).with_context(|| l.at(&k.version))?;
    check_yaml(&config).context("checking the rendered kubeadm configuration")?;
    let listing = match role {
        Role::Init => config.clone(),
        Role::Join => kubeadm::render_cluster_only(renderer, &settings, &node)?,
    };
    let (kubeadm_res, _) = input("kubernetes.kubeadm")?;
    let tmp = tempfile::tempdir().context("creating a temporary directory to run kubeadm from")?;
    let exe = tmp.path().join("kubeadm");
    fs::copy(&kubeadm_res.path, &exe)
        .with_context(|| format!("copying kubeadm to {}", exe.display()))?;
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", exe.display()))?;
    let mut list_notes = Vec::new();
    let list = kubeadm::images(&exe, &listing, &settings, &mut list_notes)
        .with_context(|| l.at(&k.kubeadm.source))?;
    drop(tmp);
    for n in list_notes {
        log.note(n);
    }
    log.note(format!("images kubeadm needs, from {}", list.source));
    if role == Role::Join {
        log.note("a worker runs only kube-proxy, CoreDNS and the sandbox of kubeadm's list; the control-plane images are not required".into());
    }
    for img in list.for_role(role) {
        needed.push(Needed {
            reference: img,
            why: format!("kubeadm {kv} ({})", role.as_str()),
        });
    }
    let sandbox = c
        .sandbox_image
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| list.pause.clone());
    needed.push(Needed {
        reference: sandbox.clone(),
        why: "containerd's sandbox image".into(),
    });
    settings.pause_image = list.pause.clone();

    // containerd's CRI reports the pinned label to kubelet only from 1.7:
    // before that, image garbage collection under disk pressure may delete
    // preloaded images that no node can pull again.
    if (cv.major, cv.minor) < (1, 7) {
        log.note(format!(
            "containerd {cv} ignores the pinned label airlock sets on preloaded images: under disk pressure \
             kubelet's image garbage collection may delete them, and behind the gap they cannot be pulled again; \
             use containerd 1.7 or later"
        ));
    }

    // containerd: its sandbox must be kubeadm's pause image.
    let ccfg = containerd::render(
        renderer,
        &containerd::ConfigInput {
            version: cv.clone(),
            sandbox_image: sandbox.clone(),
            cni_bin_dirs: cni_bin_dirs.clone(),
            cni_conf_dir: c.cni_conf_dir.get_ref().clone(),
        },
    )?;
    let at = c
        .sandbox_image
        .as_ref()
        .map(|s| l.at(s))
        .unwrap_or_else(|| l.at(&c.version));
    containerd::check_sandbox(&ccfg, &list.pause, &list.source).with_context(|| at.clone())?;
    kubeadm::check_coverage(&needed, &present)
        .with_context(|| format!("{}: [[image]]", l.path.display()))?;

    // Write it all.
    put(root, containerd::CONFIG_PATH, &ccfg, 0o644, epoch)?;
    let vars = json!({ "bin_dir": bin_dir, "cri_socket": kubeadm::CRI_SOCKET, "role": role.as_str(), "node_name": node_name });
    put(
        root,
        "etc/systemd/system/kubelet.service",
        &renderer.render("kube/kubelet.service.j2", &vars)?,
        0o644,
        epoch,
    )?;
    put(
        root,
        "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        &renderer.render("kube/10-kubeadm.conf.j2", &vars)?,
        0o644,
        epoch,
    )?;
    units::enable(root, "kubelet.service", epoch)?;
    put(
        root,
        "etc/modules-load.d/airlock-kubernetes.conf",
        &renderer.render("kube/modules-load.conf.j2", &vars)?,
        0o644,
        epoch,
    )?;
    put(
        root,
        "etc/sysctl.d/90-airlock-kubernetes.conf",
        &renderer.render("kube/sysctl.conf.j2", &vars)?,
        0o644,
        epoch,
    )?;
    put(
        root,
        "etc/crictl.yaml",
        &renderer.render("kube/crictl.yaml.j2", &vars)?,
        0o644,
        epoch,
    )?;
    for n in host::apply(l, root, renderer, role, epoch)? {
        log.note(n);
    }

    root.mkdir_all(IMAGES_DIR, epoch)?;
    let mut written = BTreeSet::new();
    for (a, img) in archives.iter().zip(&r.images) {
        if written.insert(a.file.clone()) {
            let (res, _) = inputs
                .iter()
                .find(|(res, _)| res.sha256 == a.sha256)
                .context("image archive input")?;
            copy_in(root, res, &a.file, 0o644, epoch).with_context(|| l.at(&img.source))?;
        }
    }
    let images_json = ImagesJson {
        archives: archives.clone(),
    };
    put(
        root,
        IMAGES_JSON,
        &(serde_json::to_string_pretty(&images_json)? + "\n"),
        0o644,
        epoch,
    )?;
    put(root, &cni_text.0, &cni_text.1, 0o644, epoch)?;
    // Root-only when it holds the bootstrap token.
    let cluster_mode = if settings.bootstrap_token.is_some() {
        0o600
    } else {
        0o644
    };
    put(
        root,
        CLUSTER_TOML,
        &settings.to_toml()?,
        cluster_mode,
        epoch,
    )?;
    let mut secret_names = vec!["bootstrap-token"];
    if role == Role::Init {
        root.mkdir_all("etc/kubernetes", epoch)?;
        root.mkdir("etc/kubernetes/pki", &Attrs::root(0o700, epoch))?;
        put(
            root,
            "etc/kubernetes/pki/ca.crt",
            &secrets.ca_cert_pem,
            0o644,
            epoch,
        )?;
        put(
            root,
            "etc/kubernetes/pki/ca.key",
            &secrets.ca_key_pem,
            0o600,
            epoch,
        )?;
        secret_names.extend(["ca.crt", "ca.key"]);
    }
    let exe = std::env::current_exe().context("finding the running airlock binary")?;
    let mut f = File::open(&exe).with_context(|| format!("opening {}", exe.display()))?;
    root.write_file(AIRLOCK_BIN, &mut f, &Attrs::root(0o755, epoch))
        .context("copying airlock into the image")?;
    root.mkdir_all("var/lib/airlock", epoch)?;
    for unit in [HOSTNAME_UNIT, IMAGES_UNIT, KUBEADM_UNIT, ROUTE_UNIT] {
        put(
            root,
            &format!("etc/systemd/system/{unit}"),
            &renderer.render(&format!("kube/{unit}.j2"), &vars)?,
            0o644,
            epoch,
        )?;
        units::enable(root, unit, epoch)?;
    }

    // The node renders with the templates the build used: a recipe's
    // shadowing kube/ templates go along.
    if let Some(dir) = &r.template_dir {
        let kube = l.resolve(dir.get_ref()).join("kube");
        if kube.is_dir() {
            crate::tree::overlay::copy_dir(root, &kube, TEMPLATES_DIR, epoch)?;
            log.note(format!(
                "the recipe's kube/ templates shadow airlock's: copied to {TEMPLATES_DIR} for the node"
            ));
        }
    }

    // What a later template or overlay must leave alone: everything above
    // that was checked, or that the node reads as the build's contract.
    let mut managed: Vec<String> = vec![
        containerd::CONFIG_PATH.into(),
        "/etc/systemd/system/kubelet.service".into(),
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf".into(),
        IMAGES_JSON.into(),
        cni_text.0.clone(),
        CLUSTER_TOML.into(),
        AIRLOCK_BIN.into(),
    ];
    managed.extend(
        [HOSTNAME_UNIT, IMAGES_UNIT, KUBEADM_UNIT, ROUTE_UNIT]
            .iter()
            .map(|u| format!("/etc/systemd/system/{u}")),
    );
    managed.extend(["kubeadm", "kubelet", "kubectl"].map(|b| format!("{bin_dir}/{b}")));
    managed.extend(archives.iter().map(|a| a.file.clone()));
    if !c.packaged {
        managed.push("/etc/systemd/system/containerd.service".into());
    }
    if role == Role::Init {
        managed.extend([
            "/etc/kubernetes/pki/ca.crt".into(),
            "/etc/kubernetes/pki/ca.key".into(),
        ]);
    }
    let managed = managed_files(root, &managed)?;

    let mut manifest = Map::new();
    manifest.insert(
        "kubernetes".into(),
        json!({
            "version": kv.to_string(),
            "kubeadm_api": settings.kubeadm_api,
            "bin_dir": bin_dir,
            "platform": platform.to_string(),
            "cluster_name": settings.cluster_name,
            "pod_subnet": settings.pod_subnet,
            "service_subnet": settings.service_subnet,
            "image_repository": settings.image_repository,
            "token_ttl": ttl,
            "image_list_source": list.source,
            "pause_image": list.pause,
            "cni_manifest": cni_manifest,
        }),
    );
    manifest.insert(
        "containerd".into(),
        json!({
            "version": cv.to_string(),
            "source": if c.packaged { "packaged" } else { "release" },
            "config_version": version::containerd_config_version(&cv)?,
            "sandbox_image": sandbox,
        }),
    );
    manifest.insert("images".into(), json!(present.keys().collect::<Vec<_>>()));
    manifest.insert(
        "node".into(),
        json!({ "role": role.as_str(), "name": node_name, "control_plane_endpoint": endpoint }),
    );
    manifest.insert("secrets".into(), json!(secret_names));
    Ok(Some(Staged {
        inputs: out_inputs,
        notes: log.notes,
        manifest,
        esp: vec![EspFile {
            path: NODE_TOML_ESP.into(),
            source: EspSource::Bytes(node.to_toml()?.into_bytes()),
        }],
        cni_bin_dirs,
        managed,
        secrets: Some((secrets, origin)),
    }))
}

/// cluster.toml and node.toml as the recipe describes them. The pause image
/// is kubeadm's default repository's until the image list is known.
pub fn settings(
    l: &crate::recipe::Loaded,
    token: &str,
    ca_cert_hash: &str,
) -> Result<(ClusterSettings, NodeSettings)> {
    let r = &l.recipe;
    let k = r
        .kubernetes
        .as_ref()
        .context("not a Kubernetes recipe: no [kubernetes]")?;
    let kv = Version::parse_exact("kubernetes.version", k.version.get_ref())?;
    let role = spec::role(l)?;
    let cluster = r.cluster.clone().unwrap_or_default();
    let platform = Platform::parse(k.platform.get_ref())?;
    let ttl = version::format_duration(version::parse_duration(cluster.token_ttl.get_ref())?);
    let advertise = r
        .node
        .advertise_address
        .as_ref()
        .map(|a| a.get_ref().parse::<std::net::IpAddr>())
        .transpose()?;
    let endpoint = match (
        r.node
            .control_plane_endpoint
            .as_ref()
            .or(cluster.control_plane_endpoint.as_ref()),
        advertise,
    ) {
        (Some(e), _) => e.get_ref().clone(),
        (None, Some(a)) => kubeadm::endpoint_with_port(&a.to_string()),
        (None, None) => bail!(
            "{}: no control-plane endpoint (validation should have refused it)",
            l.path.display()
        ),
    };
    let cni_spec = r
        .cni
        .as_ref()
        .context("[kubernetes] without [cni] (validation should have refused it)")?;
    let settings = ClusterSettings {
        kubernetes_version: kv.to_string(),
        kubeadm_api: kv.kubeadm_api()?.to_string(),
        cluster_name: cluster.name.get_ref().clone(),
        pod_subnet: cluster.pod_subnet.get_ref().clone(),
        service_subnet: cluster.service_subnet.get_ref().clone(),
        image_repository: cluster.image_repository.get_ref().clone(),
        token_ttl: ttl,
        bin_dir: k.bin_dir.get_ref().trim_end_matches('/').to_string(),
        cni_manifest: format!(
            "{CNI_DIR}/{}",
            cni::file_name(cni_spec.manifest.source.get_ref())
        ),
        // Replaced by kubeadm's pause image once the image list is known.
        pause_image: format!("{}/pause", cluster.image_repository.get_ref()),
        platform: platform.to_string(),
        keep_swap: host::keep_swap(l),
        bootstrap_token: (role == Role::Init).then(|| token.to_string()),
    };
    let node = NodeSettings {
        node: NodeSection {
            // Written only when it differs from the host name, so an
            // operator who edits the hostname in node.toml renames the node.
            name: r
                .node
                .name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .filter(|n| *n != r.node.hostname.get_ref().to_ascii_lowercase()),
            hostname: r.node.hostname.get_ref().clone(),
            role,
            advertise_address: advertise,
            advertise_interface: r
                .node
                .advertise_interface
                .as_ref()
                .map(|a| a.get_ref().clone()),
            control_plane_endpoint: endpoint,
        },
        join: (role == Role::Join).then(|| JoinSection {
            token: token.to_string(),
            ca_cert_hash: ca_cert_hash.to_string(),
        }),
    };
    Ok((settings, node))
}

/// Every document of the rendered configuration is YAML with a kind.
fn check_yaml(text: &str) -> Result<()> {
    use serde::Deserialize;
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("YAML document {}", i + 1))?;
        if v["apiVersion"].as_str().is_none() || v["kind"].as_str().is_none() {
            bail!("YAML document {} has no apiVersion and kind", i + 1);
        }
    }
    Ok(())
}

/// containerd, runc, crictl and the CNI plugins: from release files, or the
/// base's packages.
#[allow(clippy::too_many_arguments)]
fn install_containerd(
    cx: &BuildContext,
    root: &Root,
    renderer: &Renderer,
    c: &spec::Containerd,
    cv: &Version,
    bin_dir: &str,
    inputs: &[(Resolved, String)],
    out_inputs: &mut Vec<(Resolved, String)>,
    log: &mut Log<'_>,
) -> Result<()> {
    let l = &cx.loaded;
    let epoch = cx.epoch;
    let input = |what: &str| inputs.iter().find(|(r, _)| r.what == what);
    let unpack = |res: &Resolved, dest: &str, members: &[&str]| -> Result<()> {
        let opts = extract::ExtractOpts {
            dest: dest.to_string(),
            strip_components: 0,
            members: members.iter().map(|m| m.to_string()).collect(),
            epoch,
            keep_owner: false,
        };
        let reader = extract::open_decompressed(&res.path)?;
        extract::extract(root, reader, &opts, &format!("{} {}", res.what, res.source))?;
        Ok(())
    };
    if c.packaged {
        let Some(bin) = [
            "usr/bin/containerd",
            "usr/local/bin/containerd",
            "usr/sbin/containerd",
        ]
        .into_iter()
        .find(|p| root.exists(p)) else {
            bail!(
                "{}: containerd.packaged = true but the base has no containerd (/usr/bin/containerd): add the containerd \
                 package to the base, or pin the release tarball as containerd.release",
                l.at(&c.version)
            );
        };
        match packaged_version(root)? {
            Some(pv) if pv != (cv.major, cv.minor) => bail!(
                "{}: containerd.version is {cv} but the base's containerd package is {}.{}: set the base's version \
                 (it decides the config format)",
                l.at(&c.version),
                pv.0,
                pv.1
            ),
            Some(_) => log.note(format!("containerd {cv} from the base (/{bin}), version checked against dpkg")),
            None => log.note(format!("containerd from the base (/{bin}); its version is taken from the recipe ({cv})")),
        }
    } else {
        let (res, dest) =
            input("containerd.release").context("containerd.release was not resolved")?;
        unpack(res, dest, &["bin/*"])?;
        out_inputs.push((res.clone(), format!("{dest}/bin")));
        let (res, dest) = input("containerd.runc").context("containerd.runc was not resolved")?;
        copy_in(root, res, dest, 0o755, epoch)?;
        out_inputs.push((res.clone(), dest.clone()));
        let unit = renderer.render("kube/containerd.service.j2", &json!({}))?;
        put(
            root,
            "etc/systemd/system/containerd.service",
            &unit,
            0o644,
            epoch,
        )?;
    }
    if let Some((res, dest)) = input("containerd.crictl") {
        unpack(res, bin_dir, &["crictl"])?;
        out_inputs.push((res.clone(), dest.clone()));
    }
    if let Some((res, dest)) = input("containerd.cni_plugins") {
        unpack(res, dest, &[])?;
        out_inputs.push((res.clone(), dest.clone()));
    }
    units::enable(root, "containerd.service", epoch)?;
    Ok(())
}

/// The base's containerd package version (major, minor) from dpkg's
/// database; `None` when the base has no dpkg record of it (rpm bases).
pub(crate) fn packaged_version(root: &Root) -> Result<Option<(u32, u32)>> {
    let Some(status) = root.read("var/lib/dpkg/status")? else {
        return Ok(None);
    };
    let status = String::from_utf8_lossy(&status);
    for para in status.split("\n\n") {
        let field = |k: &str| para.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        if matches!(field("Package:"), Some("containerd" | "containerd.io")) {
            if let Some(v) = field("Version:") {
                let v = v.split(':').next_back().unwrap_or(v);
                let mut it = v
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty());
                if let (Some(a), Some(b)) = (it.next(), it.next()) {
                    if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                        return Ok(Some((a, b)));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// After templates and overlays, on the final tree: the files airlock
/// rendered and checked are still its own, and the tree has what kubeadm's
/// preflight needs for the kernel that boots. Only then are new cluster
/// secrets saved, so a refused build leaves none behind.
pub fn finish(
    cx: &BuildContext,
    root: &Root,
    kernel: &crate::boot::Kernel,
    staged: Option<&Staged>,
) -> Result<()> {
    let Some(s) = staged else { return Ok(()) };
    check_unchanged(cx, root, &s.managed)?;
    preflight(cx, root, kernel, s)?;
    if let Some((secrets, origin)) = &s.secrets {
        secrets::save(secrets, *origin).context("saving the cluster secrets")?;
    }
    Ok(())
}

/// Refuses a recipe whose templates or overlays replaced, changed, added or
/// removed a file airlock rendered and checked: the image would carry
/// something no check has seen.
fn check_unchanged(
    cx: &BuildContext,
    root: &Root,
    before: &BTreeMap<String, Option<Fingerprint>>,
) -> Result<()> {
    let paths: Vec<String> = before.keys().cloned().collect();
    let after = managed_files(root, &paths)?;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(p, f)| before.get(*p) != Some(f))
        .map(|(p, _)| p)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let l = &cx.loaded;
    let who = |path: &str| -> String {
        let rel = path.trim_start_matches('/');
        let same = |p: &str| {
            p.trim_start_matches('/') == rel
                || matches!((root.resolve(p), root.resolve(path)), (Ok(Some(a)), Ok(Some(b))) if a == b)
        };
        if let Some(t) = l.recipe.templates.iter().find(|t| same(t.path.get_ref())) {
            return format!("the [[template]] at {}", l.at(&t.path));
        }
        if let Some(o) = l
            .recipe
            .overlays
            .iter()
            .find(|o| l.resolve(o.get_ref()).join(rel).symlink_metadata().is_ok())
        {
            return format!(
                "the overlay {} ({})",
                l.resolve(o.get_ref()).display(),
                l.at(o)
            );
        }
        "a [[template]] or overlay".into()
    };
    let list: Vec<String> = changed
        .iter()
        .map(|p| format!("{p}, changed by {}", who(p)))
        .collect();
    bail!(
        "{}: the recipe replaces files airlock writes for the Kubernetes node and has checked:\n  {}\n\
         the image would carry what no check has seen. Remove them from the template or overlay; to change \
         them, use the recipe's [kubernetes], [containerd], [cni], [[image]], [cluster] and [host] settings, \
         or shadow airlock's template in template_dir's kube/ folder (rendered and checked like its own)",
        l.path.display(),
        list.join("\n  ")
    )
}

/// The tree has what kubeadm's preflight checks need for the kernel that
/// boots; every missing piece is named.
fn preflight(
    cx: &BuildContext,
    root: &Root,
    kernel: &crate::boot::Kernel,
    s: &Staged,
) -> Result<()> {
    cx.progress.step("checking what kubeadm's preflight needs");
    let missing = super::preflight::check(root, &kernel.version, &s.cni_bin_dirs)?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.into_iter().map(|m| m.0).collect();
        bail!(
            "the root tree lacks what kubeadm's preflight checks need on the node:\n  {}\nadd them to the base \
             (or with an [[archive]], [[file]] or overlay)",
            list.join("\n  ")
        );
    }
    Ok(())
}
