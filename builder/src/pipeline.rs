// SPDX-License-Identifier: Apache-2.0
//! `airlock build`: recipe → verified inputs → root tree → filesystems →
//! GPT disk → outputs. `build` reads like the table of contents; each step
//! is one function over the shared [`Context`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use fn_error_context::context;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::boot::{self, Kernel};
use crate::disk::layout::{self, DiskIds, DiskLayout};
use crate::fs::{ext4, fat};
use crate::inputs::{Cache, Resolved, Wanted};
use crate::manifest::{self, EspRecord, FileRecord, UnitRecord};
use crate::output::formats::{self, Format};
use crate::output::{self, Staging};
use crate::progress::Progress;
use crate::recipe::{self, Loaded};
use crate::render::Renderer;
use crate::tree::{extract, overlay, Attrs, Root};
use crate::{identity, kube, units};

/// UUIDs are derived in this namespace from the recipe and input digests.
const NAMESPACE: Uuid = Uuid::from_u128(0x6169726c_6f63_6b00_8000_000000000001);

pub struct BuildOptions {
    pub recipe: PathBuf,
    pub out: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    /// Output formats overriding the recipe's `[disk] formats`.
    pub formats: Option<Vec<Format>>,
    /// Make new cluster secrets instead of reusing out/<cluster>/secrets.
    pub rotate_secrets: bool,
}

pub struct Context {
    pub loaded: Loaded,
    pub epoch: i64,
    pub out: PathBuf,
    /// What to write besides the raw image (raw is always written).
    pub formats: Vec<Format>,
    pub cache: Cache,
    pub progress: Progress,
}

/// What the build made, for `--json` and the summary line.
#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub out_dir: PathBuf,
    pub files: Vec<OutputFile>,
    pub kernel: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct OutputFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// Fixed identifiers of one build.
struct Ids {
    disk: DiskIds,
    root_fs: Uuid,
    hash_seed: Uuid,
    esp_volume_id: u32,
}

/// Everything laid into the root, for the manifest.
#[derive(Default)]
struct Staged {
    inputs: Vec<(Resolved, String)>,
    kernel: Option<Kernel>,
    notes: Vec<String>,
    /// Unit links the base brought, so the manifest lists only airlock's.
    base_units: BTreeSet<UnitRecord>,
    /// manifest.json keys of a Kubernetes node (kubernetes, containerd, ...).
    kube: serde_json::Map<String, serde_json::Value>,
}

pub fn build(opts: &BuildOptions) -> Result<Report> {
    let cx = context(opts)?;
    check_host()?;
    let mut resolved = resolve_inputs(&cx)?;
    let ids = derive_ids(&cx, &resolved);
    let kube_inputs = kube::stage::split_inputs(&mut resolved);
    let staging = Staging::new(&cx.out)?;
    let root = Root::create(&staging.path("root"))?;
    let mut st = Staged::default();
    layer_inputs(&cx, &root, resolved, &mut st)?;
    let kernel = find_kernel(&cx, &root, &mut st)?;
    let layout = plan_disk(&cx, &ids)?;
    let vars = template_context(&cx, &ids, &layout, &kernel);
    let renderer = Renderer::new(
        cx.loaded
            .recipe
            .template_dir
            .as_ref()
            .map(|d| cx.loaded.resolve(d.get_ref())),
    );
    configure_system(&cx, &root, &renderer, &vars, &mut st)?;
    let node = kube::stage::run(&cx, &root, &renderer, kube_inputs, opts.rotate_secrets)?;
    render_templates(&cx, &root, &renderer, &vars)?;
    copy_overlays(&cx, &root)?;
    enable_units(&cx, &root)?;
    kube::stage::finish(&cx, &root, &kernel, node.as_ref())?;
    st.notes.extend(reset_identity(&cx, &root)?);
    let mut esp = esp_files(&root, &kernel, &renderer, &vars)?;
    if let Some(n) = node {
        esp.extend(n.esp);
        st.inputs.extend(n.inputs);
        st.notes.extend(n.notes);
        st.kube = n.manifest;
    }
    let manifest = record_manifest(&cx, &root, &layout, &ids, &kernel, &esp, &st)?;
    // Last: nothing in the image may carry the build's wall-clock time.
    root.clamp_mtimes(cx.epoch)?;
    check_fits(&root, &layout, &cx.out)?;
    let raw_name = format!("{}.raw", cx.loaded.recipe.name.get_ref());
    let raw = staging.path(&raw_name);
    assemble_disk(&cx, &root, &raw, &layout, &ids, &esp)?;
    drop(root);
    fs::remove_dir_all(staging.path("root")).ok();
    write_outputs(&cx, staging, &raw_name, &layout, &kernel, manifest, st)
}

fn context(opts: &BuildOptions) -> Result<Context> {
    let loaded = recipe::load(&opts.recipe)?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|e| recipe::epoch_problem(*e).is_none())
            .with_context(|| {
                format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds from 1970 to 2106")
            })?,
        Err(_) => loaded.recipe.epoch.unwrap_or(recipe::DEFAULT_EPOCH),
    };
    let name = loaded.recipe.name.get_ref().clone();
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(&name));
    let cache = Cache::new(
        opts.cache
            .clone()
            .unwrap_or_else(|| PathBuf::from("out/cache")),
    );
    let formats = formats::effective(
        opts.formats
            .as_deref()
            .unwrap_or(&loaded.recipe.disk.formats),
    );
    formats::require_tools(&formats)?;
    Ok(Context {
        loaded,
        epoch,
        out,
        formats,
        cache,
        progress: Progress::new(),
    })
}

/// Staging a root tree keeps owners, device nodes and security xattrs only
/// when run as root; say so plainly rather than build a wrong image.
fn check_host() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "airlock build needs root for now: the root tree keeps file owners, device nodes \
             and security.capability xattrs, which only root can create (run it with sudo)"
        );
    }
    crate::cmd::require_tool("mke2fs")
}

#[context("resolving inputs")]
fn resolve_inputs(cx: &Context) -> Result<Vec<(Resolved, String)>> {
    let l = &cx.loaded;
    // Every pin is checked before anything is read, so an unpinned input
    // fails the build at once.
    let mut wanted = Vec::new();
    for i in l.inputs() {
        let sha256 = l.pinned(&i)?;
        wanted.push((
            Wanted {
                what: i.what,
                at: i.at,
                source: i.resolved,
                sha256,
            },
            i.dest,
        ));
    }
    cx.progress.step("verifying inputs");
    let mut out = Vec::new();
    for (w, dest) in wanted {
        let bar = cx.progress.bytes(0, &w.what);
        let res = cx.cache.resolve(&w, &bar);
        bar.finish_and_clear();
        out.push((res?, dest));
    }
    Ok(out)
}

fn derive_ids(cx: &Context, inputs: &[(Resolved, String)]) -> Ids {
    let d = &cx.loaded.recipe.disk;
    let mut seed = Sha256::new();
    seed.update(cx.loaded.sha256.as_bytes());
    for (r, _) in inputs {
        seed.update(r.sha256.as_bytes());
    }
    let seed = seed.finalize();
    let id = |what: &str| {
        let mut b = seed.to_vec();
        b.extend_from_slice(what.as_bytes());
        Uuid::new_v5(&NAMESPACE, &b)
    };
    let vol = Sha256::digest([&seed[..], b"esp-volume-id"].concat());
    Ids {
        disk: DiskIds {
            disk: d
                .disk_guid
                .as_ref()
                .map(|u| *u.get_ref())
                .unwrap_or_else(|| id("disk")),
            esp: id("esp-partition"),
            root: id("root-partition"),
        },
        root_fs: d
            .root_fs_uuid
            .as_ref()
            .map(|u| *u.get_ref())
            .unwrap_or_else(|| id("root-fs")),
        hash_seed: id("root-fs-hash-seed"),
        esp_volume_id: u32::from_be_bytes([vol[0], vol[1], vol[2], vol[3]]),
    }
}

#[context("laying out the root tree")]
fn layer_inputs(
    cx: &Context,
    root: &Root,
    inputs: Vec<(Resolved, String)>,
    st: &mut Staged,
) -> Result<()> {
    let r = &cx.loaded.recipe;
    let mut it = inputs.into_iter();
    let (base, dest) = it.next().expect("base comes first");
    cx.progress.step("unpacking the base root filesystem");
    let bar = cx.progress.bytes(base.size, "base");
    // A pulled image is always an OCI archive; a file is one if it looks so.
    let stats = if base.pin.is_some() || crate::registry::layout::Archive::sniff(&base.path)? {
        // An OCI image: its layers, in order, with whiteouts.
        let platform = crate::registry::manifest::Platform::parse(r.base.platform())?;
        let what = format!("base {}", base.source);
        let f = crate::registry::flatten::flatten_archive(
            root, &base, &platform, cx.epoch, &what, &bar,
        )?;
        cx.progress.note(&format!(
            "base: {platform} image {}, {} layers",
            f.manifest, f.layers
        ));
        f.stats
    } else {
        let (raw, check) = base.open_checked()?;
        let reader = extract::open_decompressed_reader(bar.wrap_read(raw), &base.path)?;
        let opts = extract::ExtractOpts {
            dest: "/".into(),
            strip_components: 0,
            members: Vec::new(),
            epoch: cx.epoch,
            keep_owner: true,
        };
        let stats = extract::extract(root, reader, &opts, &format!("base {}", base.source))?;
        check.finish()?;
        stats
    };
    bar.finish_and_clear();
    cx.progress.note(&format!(
        "base: {} entries, {} MiB",
        stats.entries,
        stats.bytes >> 20
    ));
    st.inputs.push((base, dest));
    // From here on every file written is airlock's, and goes in the manifest.
    root.record_writes();
    st.base_units = manifest::unit_links(root)?;

    cx.progress.step("adding files and archives");
    for f in &r.files {
        let (res, dest) = it.next().expect("one input per file");
        let (u, g) = recipe::parse_owner(f.owner.get_ref())?;
        let at = cx.loaded.at(&f.owner);
        let uid =
            identity::resolve_id(root, &u, false).with_context(|| format!("{at}: file.owner"))?;
        let gid =
            identity::resolve_id(root, &g, true).with_context(|| format!("{at}: file.owner"))?;
        let attrs = Attrs {
            mode: f.mode.get_ref().0,
            uid,
            gid,
            mtime: cx.epoch,
            xattrs: Vec::new(),
        };
        let (mut reader, check) = res.open_checked()?;
        root.write_file(&dest, &mut reader, &attrs)
            .with_context(|| format!("writing {dest} from {}", res.source))?;
        check.finish()?;
        st.inputs.push((res, dest));
    }
    for a in &r.archives {
        let (res, dest) = it.next().expect("one input per archive");
        let opts = extract::ExtractOpts {
            dest: dest.clone(),
            strip_components: a.strip_components,
            members: a.members.clone(),
            epoch: cx.epoch,
            keep_owner: a.keep_owner,
        };
        let (raw, check) = res.open_checked()?;
        let reader = extract::open_decompressed_reader(raw, &res.path)?;
        let stats = extract::extract(root, reader, &opts, &format!("archive {}", res.source))?;
        check.finish()?;
        if stats.entries == 0 {
            bail!(
                "{}: archive {} gave no files for {dest}: check members and strip_components",
                cx.loaded.at(&a.source),
                res.source
            );
        }
        st.inputs.push((res, dest));
    }
    Ok(())
}

fn find_kernel(cx: &Context, root: &Root, st: &mut Staged) -> Result<Kernel> {
    let wanted = cx.loaded.recipe.boot.kernel.as_ref();
    let found = boot::find_kernel(root, wanted.map(|k| k.get_ref().as_str()));
    let (k, note) = match wanted {
        Some(w) => found.with_context(|| format!("{}: boot.kernel", cx.loaded.at(w)))?,
        None => found?,
    };
    if let Some(n) = note {
        cx.progress.note(&n);
        st.notes.push(n);
    }
    st.kernel = Some(k.clone());
    Ok(k)
}

fn plan_disk(cx: &Context, ids: &Ids) -> Result<DiskLayout> {
    let d = &cx.loaded.recipe.disk;
    layout::plan(d.size.get_ref().0, d.esp_size.get_ref().0, &ids.disk)
        .with_context(|| format!("{}: disk", cx.loaded.at(&d.size)))
}

fn esp_fs_uuid(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
}

fn template_context(
    cx: &Context,
    ids: &Ids,
    layout: &DiskLayout,
    kernel: &Kernel,
) -> serde_json::Value {
    let r = &cx.loaded.recipe;
    let options = boot::cmdline(&layout.root.uuid, r.boot.serial_console, &r.boot.cmdline);
    let entry = boot::entry(r.name.get_ref(), kernel, options);
    json!({
        "name": r.name.get_ref(),
        "node": { "hostname": r.node.hostname.get_ref() },
        "vars": r.vars,
        "boot": { "timeout": r.boot.timeout, "serial_console": r.boot.serial_console },
        "root": { "fs_uuid": ids.root_fs.to_string(), "partuuid": layout.root.uuid.to_string(), "label": r.disk.label.get_ref() },
        "esp": { "fs_uuid": esp_fs_uuid(ids.esp_volume_id), "partuuid": layout.esp.uuid.to_string() },
        "kernel": kernel,
        "entry": entry,
        "epoch": cx.epoch,
    })
}

/// The files airlock itself owns in every image: hostname, hosts, fstab,
/// root growth, SSH host key generation and administrators.
#[context("configuring the system")]
fn configure_system(
    cx: &Context,
    root: &Root,
    renderer: &Renderer,
    vars: &serde_json::Value,
    st: &mut Staged,
) -> Result<()> {
    cx.progress.step("configuring hostname, fstab, users");
    let r = &cx.loaded.recipe;
    let put = |path: &str, text: &str, mode: u32| -> Result<()> {
        root.write_file(path, &mut text.as_bytes(), &Attrs::root(mode, cx.epoch))?;
        Ok(())
    };
    put(
        "etc/hostname",
        &format!("{}\n", r.node.hostname.get_ref()),
        0o644,
    )?;
    put("etc/hosts", &renderer.render("base/hosts.j2", vars)?, 0o644)?;
    put("etc/fstab", &renderer.render("base/fstab.j2", vars)?, 0o644)?;
    root.mkdir_all("boot/efi", cx.epoch)?;
    put(
        "etc/repart.d/50-root.conf",
        &renderer.render("base/repart-root.conf.j2", vars)?,
        0o644,
    )?;
    if root.exists("usr/sbin/sshd") {
        put(
            "etc/systemd/system/airlock-ssh-keygen.service",
            &renderer.render("base/airlock-ssh-keygen.service.j2", vars)?,
            0o644,
        )?;
        units::enable(root, "airlock-ssh-keygen.service", cx.epoch)?;
    }
    for u in &r.users {
        let mut v = vars.clone();
        v["user"] = json!({ "name": u.name.get_ref(), "password_hash": u.password_hash });
        let sudoers = renderer.render("base/sudoers-user.j2", &v)?;
        identity::add_user(root, u, &sudoers, cx.epoch)
            .with_context(|| format!("{}: adding user", cx.loaded.at(&u.name)))?;
        if !root.exists("usr/sbin/sshd") && !u.ssh_authorized_keys.is_empty() {
            st.notes.push(format!(
                "user {} has SSH keys but the base has no SSH server (/usr/sbin/sshd)",
                u.name.get_ref()
            ));
        }
    }
    Ok(())
}

#[context("rendering templates")]
fn render_templates(
    cx: &Context,
    root: &Root,
    renderer: &Renderer,
    vars: &serde_json::Value,
) -> Result<()> {
    cx.progress.step("rendering templates");
    for t in &cx.loaded.recipe.templates {
        let text = renderer
            .render(t.src.get_ref(), vars)
            .with_context(|| format!("{}: template {}", cx.loaded.at(&t.src), t.src.get_ref()))?;
        root.write_file(
            t.path.get_ref(),
            &mut text.as_bytes(),
            &Attrs::root(t.mode.get_ref().0, cx.epoch),
        )?;
    }
    Ok(())
}

#[context("copying overlays")]
fn copy_overlays(cx: &Context, root: &Root) -> Result<()> {
    cx.progress.step("copying overlays");
    for o in &cx.loaded.recipe.overlays {
        let dir = cx.loaded.resolve(o.get_ref());
        if !dir.exists() {
            bail!(
                "{}: overlay {} does not exist",
                cx.loaded.at(o),
                dir.display()
            );
        }
        if !dir.is_dir() {
            bail!(
                "{}: overlay {} is not a directory",
                cx.loaded.at(o),
                dir.display()
            );
        }
        // An overlay holding the output or cache folder would copy the
        // build into itself (and the cache into the image).
        let overlay = dir
            .canonicalize()
            .with_context(|| format!("resolving overlay {}", dir.display()))?;
        for (what, p) in [
            ("output folder", &cx.out),
            ("input cache", &cx.cache.root().to_path_buf()),
        ] {
            if let Ok(p) = p.canonicalize() {
                if p.starts_with(&overlay) {
                    bail!(
                        "{}: overlay {} contains the {what} {}: point the overlay at a folder of its own",
                        cx.loaded.at(o),
                        dir.display(),
                        p.display()
                    );
                }
            }
        }
        overlay::copy_dir(root, &dir, "/", cx.epoch)?;
    }
    Ok(())
}

fn enable_units(cx: &Context, root: &Root) -> Result<()> {
    for u in &cx.loaded.recipe.systemd.enable {
        units::enable(root, u.get_ref(), cx.epoch).with_context(|| cx.loaded.at(u))?;
    }
    Ok(())
}

/// Identity is reset last, so neither the base nor an overlay can bake one in.
fn reset_identity(cx: &Context, root: &Root) -> Result<Vec<String>> {
    let removed = identity::reset_machine_identity(root, cx.epoch)?;
    Ok(removed
        .into_iter()
        .map(|p| format!("removed per-machine file {p}"))
        .collect())
}

/// mke2fs fails late and cryptically on a full filesystem: check first.
fn check_fits(root: &Root, layout: &DiskLayout, out: &Path) -> Result<()> {
    let used = tree_usage(root.path())?;
    // ext4 keeps ~5% for metadata (inode tables, journal) at these sizes.
    let room = layout.root.size / 100 * 90;
    if used > room {
        bail!(
            "the root tree needs {} MiB but the root partition holds about {} MiB: raise [disk] size",
            used >> 20,
            room >> 20
        );
    }
    // The raw image is sparse, but mke2fs writes every inode table and the
    // journal (about 2% of the root) and the tree is copied in again; the
    // outputs then need about the same again. Refuse early rather than fill
    // the build host's disk half-way through.
    let need = used * 2 + layout.root.size / 50;
    if let Ok(st) = rustix::fs::statvfs(out) {
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if need > free {
            bail!(
                "building needs about {} MiB free in {} but only {} MiB are: free space or pass \
                 another --out (a [disk] size of {} needs {} MiB of metadata alone)",
                need >> 20,
                out.display(),
                free >> 20,
                crate::recipe::Size(layout.size),
                (layout.root.size / 50) >> 20
            );
        }
    }
    Ok(())
}

fn tree_usage(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let m = e.metadata()?;
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

/// What goes onto the ESP: systemd-boot, its configuration, kernel, initrd.
#[context("planning the EFI system partition")]
fn esp_files(
    root: &Root,
    kernel: &Kernel,
    renderer: &Renderer,
    vars: &serde_json::Value,
) -> Result<Vec<fat::EspFile>> {
    let host = |p: &str| root.path().join(p);
    let sd_boot = host(boot::SYSTEMD_BOOT);
    if !sd_boot.is_file() {
        bail!(
            "systemd-boot is not in the root tree (/{}): add systemd-boot-efi (Debian) or \
             systemd-boot-unsigned (Fedora) to the base",
            boot::SYSTEMD_BOOT
        );
    }
    let entry = &vars["entry"];
    let e = |k: &str| {
        entry[k]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string()
    };
    let files = vec![
        fat::EspFile {
            path: boot::REMOVABLE_PATH.into(),
            source: fat::EspSource::Host(sd_boot.clone()),
        },
        fat::EspFile {
            path: "EFI/systemd/systemd-bootx64.efi".into(),
            source: fat::EspSource::Host(sd_boot),
        },
        fat::EspFile {
            path: "loader/loader.conf".into(),
            source: fat::EspSource::Bytes(
                renderer.render("base/loader.conf.j2", vars)?.into_bytes(),
            ),
        },
        fat::EspFile {
            path: format!("loader/entries/{}.conf", e("id")),
            source: fat::EspSource::Bytes(
                renderer.render("base/entry.conf.j2", vars)?.into_bytes(),
            ),
        },
        fat::EspFile {
            path: e("linux"),
            source: fat::EspSource::Host(host(&kernel.image)),
        },
        fat::EspFile {
            path: e("initrd"),
            source: fat::EspSource::Host(host(&kernel.initrd)),
        },
    ];
    Ok(files)
}

/// Records what airlock placed in the root and on the ESP, and stores the
/// manifest (less what only the outputs can tell) inside the root.
#[context("recording the manifest")]
fn record_manifest<'a>(
    cx: &'a Context,
    root: &Root,
    layout: &'a DiskLayout,
    ids: &Ids,
    kernel: &Kernel,
    esp: &[fat::EspFile],
    st: &Staged,
) -> Result<Manifest<'a>> {
    cx.progress.step("recording file digests");
    let r = &cx.loaded.recipe;
    let manifest = Manifest {
        airlock_version: env!("CARGO_PKG_VERSION"),
        name: r.name.get_ref(),
        recipe: json!({ "path": cx.loaded.path, "sha256": cx.loaded.sha256 }),
        epoch: cx.epoch,
        inputs: st
            .inputs
            .iter()
            .map(|(r, dest)| json!({ "what": r.what, "source": r.source, "sha256": r.sha256, "size": r.size, "dest": dest }))
            .collect(),
        kernel: json!({
            "version": kernel.version,
            "image": format!("/{}", kernel.image),
            "initrd": format!("/{}", kernel.initrd),
            "cmdline": boot::cmdline(&layout.root.uuid, r.boot.serial_console, &r.boot.cmdline),
        }),
        disk: layout,
        root_fs: json!({ "type": "ext4", "uuid": ids.root_fs, "label": r.disk.label.get_ref() }),
        esp_fs: json!({ "type": "vfat", "uuid": esp_fs_uuid(ids.esp_volume_id) }),
        hostname: r.node.hostname.get_ref(),
        users: r.users.iter().map(|u| u.name.get_ref().as_str()).collect(),
        units: manifest::added_units(root, &st.base_units)?,
        files: manifest::record_files(root, &root.written())?,
        esp_files: manifest::record_esp(esp)?,
        outputs: None,
        kube: st.kube.clone(),
    };
    let inside = manifest::for_image(&serde_json::to_value(&manifest)?);
    let text = serde_json::to_string_pretty(&inside)? + "\n";
    let dir = Path::new(manifest::IMAGE_PATH)
        .parent()
        .and_then(Path::to_str)
        .expect("an absolute path");
    root.mkdir_all(dir, cx.epoch)?;
    root.write_file(
        manifest::IMAGE_PATH,
        &mut text.as_bytes(),
        &Attrs::root(0o644, cx.epoch),
    )?;
    Ok(manifest)
}

#[context("assembling the disk image")]
fn assemble_disk(
    cx: &Context,
    root: &Root,
    raw: &Path,
    layout: &DiskLayout,
    ids: &Ids,
    files: &[fat::EspFile],
) -> Result<()> {
    cx.progress.step("writing the GPT");
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(raw)
        .with_context(|| format!("creating {}", raw.display()))?;
    crate::disk::gpt::write(layout, &mut disk)?;

    cx.progress.step("writing the EFI system partition");
    let opts = fat::FatOpts {
        label: "ESP".into(),
        volume_id: ids.esp_volume_id,
        epoch: cx.epoch,
    };
    fat::make_esp(&disk, layout.esp.start, layout.esp.size, &opts, files)?;
    disk.sync_all().ok();
    drop(disk);

    cx.progress.step("making the ext4 root filesystem");
    let opts = ext4::Ext4Opts {
        label: cx.loaded.recipe.disk.label.get_ref().clone(),
        uuid: ids.root_fs,
        hash_seed: ids.hash_seed,
        epoch: cx.epoch,
        offset: layout.root.start,
        size: layout.root.size,
    };
    ext4::make_root(&opts, root.path(), raw)?;
    Ok(())
}

#[derive(Serialize)]
struct Manifest<'a> {
    airlock_version: &'a str,
    name: &'a str,
    recipe: serde_json::Value,
    epoch: i64,
    inputs: Vec<serde_json::Value>,
    kernel: serde_json::Value,
    disk: &'a DiskLayout,
    root_fs: serde_json::Value,
    esp_fs: serde_json::Value,
    hostname: &'a str,
    users: Vec<&'a str>,
    /// Units airlock enabled (links it added under /etc/systemd/system).
    units: Vec<UnitRecord>,
    /// Every regular file airlock placed in the root, as it is there.
    files: Vec<FileRecord>,
    esp_files: Vec<EspRecord>,
    /// Output file digests: only in manifest.json beside the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<BTreeMap<String, String>>,
    /// kubernetes, containerd, images, node, secrets (Kubernetes nodes).
    #[serde(flatten)]
    kube: serde_json::Map<String, serde_json::Value>,
}

#[context("writing outputs")]
fn write_outputs(
    cx: &Context,
    staging: Staging,
    raw_name: &str,
    layout: &DiskLayout,
    kernel: &Kernel,
    mut manifest: Manifest<'_>,
    st: Staged,
) -> Result<Report> {
    let name = cx.loaded.recipe.name.get_ref();
    let raw = staging.path(raw_name);
    let mut files = Vec::new();
    if cx.formats.contains(&Format::RawZst) {
        cx.progress.step("compressing and checksumming");
        let zst_name = format!("{raw_name}.zst");
        let bar = cx.progress.bytes(layout.size, "zstd");
        let c = output::compress_and_hash(&raw, &staging.path(&zst_name), &bar)?;
        bar.finish_and_clear();
        files.push(OutputFile {
            name: raw_name.to_string(),
            sha256: c.raw_sha256,
            size: fs::metadata(&raw)?.len(),
        });
        files.push(OutputFile {
            name: zst_name,
            sha256: c.zst_sha256,
            size: c.zst_size,
        });
    } else {
        cx.progress.step("checksumming");
        files.push(output_file(&raw, raw_name)?);
    }
    for &f in cx.formats.iter().filter(|f| f.is_vm()) {
        cx.progress
            .note(&format!("converting to {f} with qemu-img"));
        let vm_name = format!("{name}.{}", f.extension());
        formats::convert(f, &raw, &staging.path(&vm_name), &files[0].sha256)?;
        files.push(output_file(&staging.path(&vm_name), &vm_name)?);
    }
    // The block map `write` and `bmaptool copy` use; from the raw image.
    let bmap_name = format!("{name}.bmap");
    let bar = cx.progress.bytes(layout.size, "block map");
    let (bmap_sha, bmap_size) = crate::bmap::write_for(&raw, &staging.path(&bmap_name), &bar)?;
    bar.finish_and_clear();
    files.push(OutputFile {
        name: bmap_name,
        sha256: bmap_sha,
        size: bmap_size,
    });

    manifest.outputs = Some(
        files
            .iter()
            .map(|f| (f.name.clone(), f.sha256.clone()))
            .collect(),
    );
    let manifest_text = serde_json::to_string_pretty(&manifest)? + "\n";
    fs::write(staging.path("manifest.json"), &manifest_text).context("writing manifest.json")?;
    let manifest_sha = hex::encode(Sha256::digest(manifest_text.as_bytes()));
    files.push(OutputFile {
        name: "manifest.json".into(),
        sha256: manifest_sha,
        size: manifest_text.len() as u64,
    });
    let sums: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect();
    fs::write(staging.path("SHA256SUMS"), output::sha256sums(&sums))
        .context("writing SHA256SUMS")?;
    let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    names.push("SHA256SUMS");
    staging.commit(&names)?;
    cx.progress.finish();
    Ok(Report {
        name: name.clone(),
        out_dir: cx.out.clone(),
        files,
        kernel: kernel.version.clone(),
        notes: st.notes,
    })
}

/// An output file's name, sha256 and size, read back from disk.
fn output_file(path: &Path, name: &str) -> Result<OutputFile> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (sha256, size) =
        manifest::hash_reader(f).with_context(|| format!("hashing {}", path.display()))?;
    Ok(OutputFile {
        name: name.to_string(),
        sha256,
        size,
    })
}
