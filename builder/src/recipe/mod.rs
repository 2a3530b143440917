// SPDX-License-Identifier: Apache-2.0
//! The recipe: a TOML file that pins every input of an image.
//!
//! Parsing rejects unknown keys; every error names `file:line:column` and the
//! key. Relative paths resolve against the recipe's directory.

mod checks;
pub mod lock;
mod size;
mod spans;

use std::collections::BTreeMap;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

pub use size::Size;

/// Default timestamp clamp when neither SOURCE_DATE_EPOCH nor the recipe sets
/// one: 2025-01-01T00:00:00Z. Any fixed value keeps builds reproducible.
pub const DEFAULT_EPOCH: i64 = 1_735_689_600;

/// Timestamps ext4 stores without the extra-epoch bits: 1970 to 2106.
pub const EPOCH_RANGE: RangeInclusive<i64> = 0..=u32::MAX as i64;

/// Longest image name: it names the output folder and files
/// (`<name>.raw.zst`, ...), which must stay well inside NAME_MAX.
pub const MAX_NAME: usize = 64;

/// Why an epoch cannot be used, if it cannot.
pub fn epoch_problem(e: i64) -> Option<String> {
    (!EPOCH_RANGE.contains(&e)).then(|| {
        format!(
            "{e} is outside 1970-01-01..2106-02-07 ({}..={}), the timestamps ext4 stores",
            EPOCH_RANGE.start(),
            EPOCH_RANGE.end()
        )
    })
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Image name: names the output folder and files.
    pub name: Spanned<String>,
    /// Fixed timestamp (seconds since 1970) for reproducible output;
    /// SOURCE_DATE_EPOCH overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    pub base: Base,
    #[serde(default, rename = "file", skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileInput>,
    #[serde(default, rename = "archive", skip_serializing_if = "Vec::is_empty")]
    pub archives: Vec<ArchiveInput>,
    /// A directory of templates that shadows airlock's own `templates/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_dir: Option<Spanned<PathBuf>>,
    #[serde(default, rename = "template", skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateEntry>,
    /// Values templates can read as `vars.NAME`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub vars: toml::Table,
    /// Directory trees copied over the root, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    pub disk: DiskSpec,
    #[serde(default)]
    pub boot: BootSpec,
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    pub node: Node,
    #[serde(default)]
    pub systemd: SystemdSpec,
    /// Registry mirrors, tried in order before the registry an image names.
    #[serde(default, rename = "mirror", skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<crate::registry::Mirror>,
    /// A Kubernetes node (crate::kube::spec); without it a plain image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube::spec::Kubernetes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<crate::kube::spec::Containerd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<crate::kube::spec::Cni>,
    /// Container image archives to preload.
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::kube::spec::ImageInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::kube::spec::Cluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::kube::spec::Host>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdSpec {
    /// Units to enable, as `systemctl enable` would (from their [Install]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enable: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<PathBuf>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Spanned<String>>,
    /// A container image (`quay.io/fedora/fedora-bootc:43@sha256:…`) whose
    /// layers are flattened into the root; pinned by its digest, in the
    /// reference or the lock file. A `path` or `url` may also name an OCI
    /// image layout archive, flattened the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    /// The platform taken from a multi-platform image (default linux/amd64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Spanned<String>>,
    /// Unset: the digest must come from the lock file (`airlock lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Spanned<String>>,
}

impl Base {
    /// The platform of an image base.
    pub fn platform(&self) -> &str {
        self.platform
            .as_ref()
            .map(|p| p.get_ref().as_str())
            .unwrap_or(crate::registry::DEFAULT_PLATFORM)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// A path (relative to the recipe) or a URL.
    pub source: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Spanned<String>>,
    /// Destination inside the image.
    pub path: Spanned<String>,
    #[serde(default = "default_file_mode")]
    pub mode: Spanned<Mode>,
    #[serde(default = "default_owner")]
    pub owner: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveInput {
    pub source: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Spanned<String>>,
    /// Destination directory inside the image.
    pub dest: Spanned<String>,
    /// Glob patterns of members to take (after stripping); empty takes all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default)]
    pub strip_components: usize,
    /// Keep the owners recorded in the archive (default: everything root:root).
    #[serde(default)]
    pub keep_owner: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateEntry {
    /// Template name, looked up in the recipe's template_dir, then airlock's.
    pub src: Spanned<String>,
    /// Destination inside the image.
    pub path: Spanned<String>,
    #[serde(default = "default_file_mode")]
    pub mode: Spanned<Mode>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    #[serde(default = "default_disk_size")]
    pub size: Spanned<Size>,
    #[serde(default = "default_esp_size")]
    pub esp_size: Spanned<Size>,
    /// ext4 label of the root filesystem.
    #[serde(default = "default_label")]
    pub label: Spanned<String>,
    /// Fixed identifiers; derived from the recipe and inputs when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<Spanned<uuid::Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_fs_uuid: Option<Spanned<uuid::Uuid>>,
    /// Output formats: raw, raw.zst, qcow2, vmdk, vhdx (raw is always
    /// written; `airlock build --format` overrides this list).
    #[serde(default = "default_formats")]
    pub formats: Vec<crate::output::formats::Format>,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            size: default_disk_size(),
            esp_size: default_esp_size(),
            label: default_label(),
            disk_guid: None,
            root_fs_uuid: None,
            formats: default_formats(),
        }
    }
}

fn default_formats() -> Vec<crate::output::formats::Format> {
    crate::output::formats::DEFAULT.to_vec()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// Extra kernel command-line arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    /// Send the console to the first serial port too (console=ttyS0).
    #[serde(default = "yes")]
    pub serial_console: bool,
    /// Kernel version to boot when the base has several (default: newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Spanned<String>>,
    /// systemd-boot menu timeout in seconds (0: boot straight away).
    #[serde(default)]
    pub timeout: u32,
}

impl Default for BootSpec {
    fn default() -> Self {
        BootSpec {
            cmdline: Vec::new(),
            serial_console: true,
            kernel: None,
            timeout: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Spanned<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash (e.g. from `mkpasswd -m yescrypt`); without one the
    /// account has no password and gets passwordless sudo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Extra groups; the distribution's admin group (sudo or wheel) is added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub hostname: Spanned<String>,
    /// Kubernetes nodes: "init" (first control plane, default) or "join" (worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Spanned<String>>,
    /// Kubernetes node name (default: hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<Spanned<String>>,
    /// Used at first boot when no address is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_interface: Option<Spanned<String>>,
    /// `host:port` of the API server (default: cluster.control_plane_endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<Spanned<String>>,
}

/// A permission mode written as an octal string ("0755") or a TOML octal
/// literal (0o755); a plain integer is refused in `validate` (`check_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Mode(pub u32);

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        format!("{:04o}", m.0)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Int(i) => i,
            Raw::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!("mode {s:?} is not an octal number like \"0644\""))
            })?,
        };
        if v > 0o7777 {
            return Err(serde::de::Error::custom(format!(
                "mode {v:o} has bits beyond 07777"
            )));
        }
        Ok(Mode(v))
    }
}

fn default_file_mode() -> Spanned<Mode> {
    Spanned::new(0..0, Mode(0o644))
}
fn default_owner() -> Spanned<String> {
    Spanned::new(0..0, "root:root".into())
}
fn default_disk_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(4 << 30))
}
fn default_esp_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(512 << 20))
}
fn default_label() -> Spanned<String> {
    Spanned::new(0..0, "root".into())
}
fn yes() -> bool {
    true
}

/// A recipe as loaded from disk: the parsed value, where it came from, its
/// text (for error positions) and its digest.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub recipe: Recipe,
    /// Digests from `<recipe>.lock`, for inputs the recipe does not pin.
    pub lock: lock::Lock,
    pub path: PathBuf,
    pub dir: PathBuf,
    pub text: String,
    pub sha256: String,
}

impl Loaded {
    /// `file:line:column` of a byte span in the recipe, for error messages.
    pub fn at<T>(&self, s: &Spanned<T>) -> String {
        self.at_span(s.span())
    }

    /// `file:line:column` of a byte range in the recipe text.
    pub fn at_span(&self, span: Range<usize>) -> String {
        if span.start == 0 && span.end == 0 {
            return format!("{} (default)", self.path.display());
        }
        let (line, col) = line_col(&self.text, span.start);
        format!("{}:{line}:{col}", self.path.display())
    }

    /// Resolves a path from the recipe against the recipe's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Reads, parses and validates a recipe.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    parse(path, text)
}

/// Parses and validates recipe text; `path` is used for messages and for
/// resolving relative paths.
pub fn parse(path: &Path, text: String) -> Result<Loaded> {
    let recipe: Recipe = match toml::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            let at = match e.span() {
                Some(s) => {
                    let (l, c) = line_col(&text, s.start);
                    format!("{}:{l}:{c}", path.display())
                }
                None => path.display().to_string(),
            };
            bail!("{at}: {}", e.message().trim_end())
        }
    };
    let dir = path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let lock = lock::Lock::load(&lock::path_for(path))?;
    let loaded = Loaded {
        recipe,
        lock,
        path: path.to_path_buf(),
        dir,
        text,
        sha256,
    };
    let mut loaded = loaded;
    crate::registry::adopt_image_refs(&mut loaded)?;
    validate(&loaded)?;
    Ok(loaded)
}

/// Checks what serde cannot: digests, names, exclusive keys, destinations,
/// and everything else that would otherwise fail (or silently go wrong)
/// only after the base is unpacked.
fn validate(l: &Loaded) -> Result<()> {
    let r = &l.recipe;
    let spans = spans::Spans::of(&l.text)?;
    // Position of a key path the typed recipe keeps no span for.
    let at = |path: &str| match spans.span(path) {
        Some(s) => l.at_span(s),
        None => l.path.display().to_string(),
    };
    no_control_chars(l, &spans)?;
    let name = r.name.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        bail!(
            "{}: name {name:?} must be letters, digits, '-', '_' or '.' (it names output files)",
            l.at(&r.name)
        );
    }
    if name.len() > MAX_NAME {
        bail!(
            "{}: name is {} characters long: at most {MAX_NAME} (it names the output folder and files)",
            l.at(&r.name),
            name.len()
        );
    }
    if let Some(e) = r.epoch {
        if let Some(p) = epoch_problem(e) {
            bail!("{}: epoch {p}", at("epoch"));
        }
    }
    check_sha(l, "base.sha256", &r.base.sha256)?;
    match (&r.base.path, &r.base.url, &r.base.image) {
        (Some(_), Some(u), _) | (Some(_), _, Some(u)) | (_, Some(_), Some(u)) => {
            bail!(
                "{}: [base] has more than one of path, url and image: keep one",
                l.at(u)
            )
        }
        (None, None, None) => bail!(
            "{}: [base] needs `path` (a rootfs tarball or OCI archive), `url` or `image`",
            l.path.display()
        ),
        _ => {}
    }
    if let Some(u) = &r.base.url {
        check_scheme(l, "base.url", u)?;
    }
    if let Some(i) = &r.base.image {
        crate::registry::reference::Reference::parse(i.get_ref())
            .with_context(|| format!("{}: base.image", l.at(i)))?;
        if let Some(s) = &r.base.sha256 {
            bail!("{}: base.sha256 is for files: pin an image with @sha256:… in base.image (or let `airlock lock` pin it)", l.at(s));
        }
    }
    if let Some(p) = &r.base.platform {
        crate::registry::manifest::Platform::parse(p.get_ref())
            .with_context(|| format!("{}: base.platform", l.at(p)))?;
    }
    crate::registry::validate_mirrors(l, &r.mirrors)?;
    for f in &r.files {
        check_scheme(l, "file.source", &f.source)?;
        check_sha(l, "file.sha256", &f.sha256)?;
        check_dest(l, "file.path", &f.path)?;
        check_mode(l, "file.mode", &f.mode)?;
        parse_owner(f.owner.get_ref())
            .with_context(|| format!("{}: file.owner", l.at(&f.owner)))?;
    }
    for a in &r.archives {
        check_scheme(l, "archive.source", &a.source)?;
        check_sha(l, "archive.sha256", &a.sha256)?;
        check_dest(l, "archive.dest", &a.dest)?;
        for m in &a.members {
            glob::Pattern::new(m)
                .with_context(|| format!("{}: archive.members pattern {m:?}", l.at(&a.source)))?;
        }
    }
    for t in &r.templates {
        check_dest(l, "template.path", &t.path)?;
        check_mode(l, "template.mode", &t.mode)?;
    }
    let host = r.node.hostname.get_ref();
    let host_ok = !host.is_empty()
        && host.len() <= 63
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !host.starts_with('-')
        && !host.ends_with('-');
    if !host_ok {
        bail!(
            "{}: node.hostname {host:?} is not a valid host name (letters, digits and '-', at most 63)",
            l.at(&r.node.hostname)
        );
    }
    check_users(l, &at)?;
    check_destinations(l)?;
    let label = r.disk.label.get_ref();
    if label.is_empty() || label.len() > 16 {
        bail!(
            "{}: disk.label {label:?} must be 1 to 16 bytes (ext4 limit)",
            l.at(&r.disk.label)
        );
    }
    check_disk(l)?;
    if let Some(k) = &r.boot.kernel {
        if k.get_ref().contains('/') {
            bail!(
                "{}: boot.kernel is a version like \"6.1.0-28-amd64\", not a path",
                l.at(k)
            );
        }
    }
    for (i, arg) in r.boot.cmdline.iter().enumerate() {
        if arg.split_whitespace().any(|w| w.starts_with("root=")) {
            bail!(
                "{}: boot.cmdline entry {arg:?} sets root=: airlock boots the root partition by \
                 root=PARTUUID=…, and a second root= overrides it, leaving an image that cannot \
                 find its root; remove it",
                at(&format!("boot.cmdline[{i}]"))
            );
        }
    }
    for u in &r.systemd.enable {
        let v = u.get_ref();
        let suffix_ok = v
            .rsplit_once('.')
            .is_some_and(|(stem, s)| !stem.is_empty() && UNIT_SUFFIXES.contains(&s));
        if v.contains('/') || !suffix_ok {
            bail!(
                "{}: systemd.enable {v:?} is not a unit name like \"foo.service\" (a name, no \
                 path, ending in .{})",
                l.at(u),
                UNIT_SUFFIXES.join(", .")
            );
        }
    }
    crate::kube::spec::validate(l)?;
    // Inputs other sections add (kubernetes, containerd, cni, ...).
    for i in l.inputs() {
        if matches!(i.resolved, crate::inputs::Source::Image(_)) {
            continue;
        }
        if let Some(p) = checks::scheme_problem(&i.source) {
            bail!("{}: {} source {:?}: {p}", i.at, i.what, i.source);
        }
    }
    Ok(())
}

/// Unit types `systemctl enable` can link from an [Install] section.
const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "target",
    "mount",
    "automount",
    "swap",
];

fn check_scheme(l: &Loaded, key: &str, s: &Spanned<String>) -> Result<()> {
    if let Some(p) = checks::scheme_problem(s.get_ref()) {
        bail!("{}: {key} {:?}: {p}", l.at(s), s.get_ref());
    }
    Ok(())
}

/// A TOML integer mode is only unambiguous as an octal literal: `mode = 755`
/// is the decimal 755 (0o1363, sticky and world-writable bits).
fn check_mode(l: &Loaded, key: &str, m: &Spanned<Mode>) -> Result<()> {
    let span = m.span();
    let written = l.text.get(span.clone()).unwrap_or("");
    let is_int = written.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-');
    if span != (0..0) && is_int && !written.starts_with("0o") {
        let digits = written.trim_start_matches('+');
        bail!(
            "{}: {key}: mode {written} is a decimal number: write it as a string, mode = \"0{digits}\" \
             (or 0o{digits})",
            l.at(m)
        );
    }
    Ok(())
}

fn check_users(l: &Loaded, at: &dyn Fn(&str) -> String) -> Result<()> {
    let mut seen: BTreeMap<&str, &Spanned<String>> = BTreeMap::new();
    for (ui, u) in l.recipe.users.iter().enumerate() {
        let n = u.name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 32
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && !n.starts_with('-')
            && !n.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !ok || n == "root" {
            bail!(
                "{}: user.name {n:?} must be a lowercase login name other than root",
                l.at(&u.name)
            );
        }
        if let Some(first) = seen.insert(n, &u.name) {
            bail!(
                "{}: user {n} is already defined at {}: each [[user]] adds one account; merge the two",
                l.at(&u.name),
                l.at(first)
            );
        }
        if let Some(h) = &u.password_hash {
            let problem = if h.is_empty() || h.contains(':') || h.chars().any(char::is_whitespace) {
                Some("it must be one hash without ':' or spaces".to_string())
            } else {
                checks::password_hash_problem(h)
            };
            if let Some(p) = problem {
                bail!(
                    "{}: user {n}: password_hash: {p}. Make one with `mkpasswd -m yescrypt` or \
                     `openssl passwd -6`, or leave password_hash out for key-only login",
                    at(&format!("user[{ui}].password_hash"))
                );
            }
        }
        for g in &u.groups {
            if g.is_empty()
                || !g
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                bail!(
                    "{}: user {n}: group {g:?} is not a group name",
                    l.at(&u.name)
                );
            }
        }
        for (ki, k) in u.ssh_authorized_keys.iter().enumerate() {
            let problem = if k.contains('\n') {
                Some("it holds more than one line".to_string())
            } else {
                checks::ssh_key_problem(k)
            };
            if let Some(p) = problem {
                bail!(
                    "{}: user {n}: ssh_authorized_keys[{ki}] is not an OpenSSH public key line \
                     (`<type> <base64> [comment]`, e.g. the contents of ~/.ssh/id_ed25519.pub): {p}",
                    at(&format!("user[{ui}].ssh_authorized_keys[{ki}]"))
                );
            }
        }
        if u.ssh_authorized_keys.is_empty() && u.password_hash.is_none() {
            bail!(
                "{}: user {n} has neither ssh_authorized_keys nor password_hash, so nobody could \
                 log in as it: add a public key (e.g. ~/.ssh/id_ed25519.pub) or a password_hash",
                l.at(&u.name)
            );
        }
    }
    Ok(())
}

/// Two entries writing one path would leave only the later one, and a file
/// airlock writes itself would be replaced (or replace the recipe's) without
/// a word: refuse both, naming the entries.
fn check_destinations(l: &Loaded) -> Result<()> {
    let r = &l.recipe;
    let users: Vec<&str> = r.users.iter().map(|u| u.name.get_ref().as_str()).collect();
    let entries = r
        .files
        .iter()
        .map(|f| ("[[file]]", &f.path))
        .chain(r.templates.iter().map(|t| ("[[template]]", &t.path)));
    let mut seen: BTreeMap<String, (&str, &Spanned<String>)> = BTreeMap::new();
    for (kind, p) in entries {
        let dest = checks::norm_dest(p.get_ref());
        if let Some(hint) = checks::airlock_owned(&dest, &users) {
            bail!(
                "{}: {kind} path {dest} is a file airlock writes itself: {hint}",
                l.at(p)
            );
        }
        if let Some((first_kind, first)) = seen.insert(dest.clone(), (kind, p)) {
            bail!(
                "{}: {kind} path {dest} is also written by the {first_kind} at {}: only one entry \
                 may write a path; remove one",
                l.at(p),
                l.at(first)
            );
        }
    }
    Ok(())
}

fn check_disk(l: &Loaded) -> Result<()> {
    let d = &l.recipe.disk;
    let (size, esp) = (d.size.get_ref().0, d.esp_size.get_ref().0);
    crate::disk::layout::check_esp(esp)
        .with_context(|| format!("{}: disk.esp_size", l.at(&d.esp_size)))?;
    // Blame the size the recipe wrote; with only esp_size set, that one.
    let (key, at) = if d.size.span() == (0..0) && d.esp_size.span() != (0..0) {
        ("disk.esp_size", l.at(&d.esp_size))
    } else {
        ("disk.size", l.at(&d.size))
    };
    crate::disk::layout::check_sizes(size, esp).with_context(|| format!("{at}: {key}"))?;
    Ok(())
}

/// Values end up in line-oriented system files (shadow, boot entries,
/// unit files): a control character could add a line of its own there, so
/// none is accepted outside `[vars]`, whose use is up to the templates.
fn no_control_chars(l: &Loaded, spans: &spans::Spans) -> Result<()> {
    let found = spans.strings().find(|(path, _, v)| {
        !(*path == "vars" || path.starts_with("vars.") || path.starts_with("vars["))
            && v.chars().any(char::is_control)
    });
    if let Some((key, span, _)) = found {
        bail!(
            "{}: {key} contains a control character (newline, tab, ...): values are written into \
             line-oriented system files, so only [vars] may hold them",
            l.at_span(span)
        );
    }
    Ok(())
}

fn check_sha(l: &Loaded, key: &str, s: &Option<Spanned<String>>) -> Result<()> {
    let Some(s) = s else { return Ok(()) };
    let v = s.get_ref();
    if v.len() != 64
        || !v
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        bail!(
            "{}: {key} {v:?} is not a sha256 (64 lowercase hex digits); compute it with `sha256sum FILE`",
            l.at(s)
        );
    }
    Ok(())
}

fn check_dest(l: &Loaded, key: &str, s: &Spanned<String>) -> Result<()> {
    let v = s.get_ref();
    if !v.starts_with('/') {
        bail!(
            "{}: {key} {v:?} must be an absolute path inside the image",
            l.at(s)
        );
    }
    if v.split('/').any(|c| c == "..") {
        bail!("{}: {key} {v:?} must not contain '..'", l.at(s));
    }
    Ok(())
}

/// An owner as `user:group` names or numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Num(u32),
    Name(String),
}

pub fn parse_owner(s: &str) -> Result<(Id, Id)> {
    let (u, g) = s.split_once(':').with_context(|| {
        format!("owner {s:?} must be USER:GROUP, e.g. \"root:root\" or \"0:0\"")
    })?;
    let id = |x: &str| -> Result<Id> {
        if x.is_empty() {
            bail!("owner {s:?} has an empty part");
        }
        Ok(match x.parse::<u32>() {
            Ok(n) => Id::Num(n),
            Err(_) => Id::Name(x.to_string()),
        })
    };
    Ok((id(u)?, id(g)?))
}

/// One input of the recipe, in recipe order: base, files, archives.
#[derive(Debug, Clone)]
pub struct InputRef {
    /// Stable description, also the lock file key: "base", "file /usr/bin/x".
    pub what: String,
    /// The source as written in the recipe.
    pub source: String,
    pub resolved: crate::inputs::Source,
    /// The recipe's own pin, if any.
    pub sha256: Option<String>,
    /// Where to point in messages about this input.
    pub at: String,
    /// Where it lands in the image.
    pub dest: String,
}

impl Loaded {
    pub fn inputs(&self) -> Vec<InputRef> {
        use crate::inputs::Source;
        let r = &self.recipe;
        let src = |s: &str| {
            if is_url(s) {
                Source::Url(s.to_string())
            } else {
                Source::Path(self.resolve(Path::new(s)))
            }
        };
        let sha = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.get_ref().clone());
        let at = |s: &Option<Spanned<String>>, fallback: String| {
            s.as_ref().map(|s| self.at(s)).unwrap_or(fallback)
        };
        let mut out = Vec::new();
        let (source, at_src) = match (&r.base.path, &r.base.url, &r.base.image) {
            (Some(p), _, _) => (p.get_ref().display().to_string(), self.at(p)),
            (_, Some(u), _) => (u.get_ref().clone(), self.at(u)),
            (_, _, Some(i)) => (i.get_ref().clone(), self.at(i)),
            _ => unreachable!("validated"),
        };
        out.push(InputRef {
            what: "base".into(),
            resolved: match &r.base.image {
                Some(_) => Source::Image(crate::registry::ImageSource::new(
                    &source,
                    &[r.base.platform()],
                )),
                None => src(&source),
            },
            sha256: match &r.base.image {
                Some(_) => crate::registry::reference::Reference::parse(&source)
                    .ok()
                    .and_then(|r| r.digest)
                    .map(|d| crate::registry::reference::hex_of(&d).to_string()),
                None => sha(&r.base.sha256),
            },
            source,
            at: at(&r.base.sha256, at_src),
            dest: "/".into(),
        });
        for f in &r.files {
            out.push(InputRef {
                what: format!("file {}", f.path.get_ref()),
                source: f.source.get_ref().clone(),
                resolved: src(f.source.get_ref()),
                sha256: sha(&f.sha256),
                at: at(&f.sha256, self.at(&f.source)),
                dest: f.path.get_ref().clone(),
            });
        }
        for (i, a) in r.archives.iter().enumerate() {
            out.push(InputRef {
                what: format!("archive[{i}] {}", a.dest.get_ref()),
                source: a.source.get_ref().clone(),
                resolved: src(a.source.get_ref()),
                sha256: sha(&a.sha256),
                at: at(&a.sha256, self.at(&a.source)),
                dest: a.dest.get_ref().clone(),
            });
        }
        out.extend(crate::kube::spec::inputs(self));
        out
    }

    /// The pinned digest of an input: the recipe's, else the lock's.
    pub fn pinned(&self, i: &InputRef) -> Result<String> {
        if let Some(s) = &i.sha256 {
            return Ok(s.clone());
        }
        match self.lock.get(&i.what, &i.source) {
            Some(s) => Ok(s.to_string()),
            None => bail!(
                "{}: {} ({}) is not pinned: add `sha256 = \"...\"` to the recipe, or run `airlock lock {}` and review {}",
                i.at,
                i.what,
                i.source,
                self.path.display(),
                lock::path_for(&self.path).display()
            ),
        }
    }
}

/// Whether a source string is a URL (else a path relative to the recipe).
pub fn is_url(s: &str) -> bool {
    checks::SCHEMES
        .iter()
        .any(|scheme| s.strip_prefix(scheme).is_some_and(|r| r.starts_with("://")))
}

#[cfg(test)]
mod tests;
