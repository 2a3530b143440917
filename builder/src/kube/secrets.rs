// SPDX-License-Identifier: Apache-2.0
//! Cluster secrets, made once per cluster and reused: the cluster CA (cert
//! and key) and a bootstrap token, under `out/<cluster>/secrets/` (0700
//! folder, 0600 files). Worker images built next month carry the same token
//! and CA hash, so they join the cluster the control-plane image made.
//! `--rotate-secrets` makes new ones (the old ones are kept in `previous/`).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use super::settings::is_token;

const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TOKEN: &str = "bootstrap-token";
/// kubeadm's CA lifetime.
const CA_DAYS: i64 = 3650;

/// The secrets of one cluster.
#[derive(Clone)]
pub struct Secrets {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub token: String,
    pub dir: PathBuf,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Whether the secrets were made now or found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Created,
    Reused,
    Rotated,
}

/// Loads the cluster's secrets from `dir`, or makes them when there are
/// none (or when `rotate`), and saves new ones at once.
pub fn load_or_create(dir: &Path, cluster: &str, rotate: bool) -> Result<(Secrets, Origin)> {
    let (s, origin) = load_or_make(dir, cluster, rotate)?;
    save(&s, origin)?;
    Ok((s, origin))
}

/// Like [`load_or_create`], but new secrets are only made in memory:
/// [`save`] them once the build that uses them has passed its checks, so a
/// failed build leaves no secrets behind that no image carries.
pub fn load_or_make(dir: &Path, cluster: &str, rotate: bool) -> Result<(Secrets, Origin)> {
    let present: Vec<&str> = [CA_CRT, CA_KEY, TOKEN]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !rotate && present.len() == 3 {
        return Ok((load(dir)?, Origin::Reused));
    }
    if !rotate && !present.is_empty() {
        bail!(
            "{} has {} but not all of {CA_CRT}, {CA_KEY}, {TOKEN}: restore the missing ones from your backup, \
             or make new ones with --rotate-secrets (existing nodes then no longer accept new workers)",
            dir.display(),
            present.join(", ")
        );
    }
    let origin = if present.is_empty() {
        Origin::Created
    } else {
        Origin::Rotated
    };
    let (ca_cert_pem, ca_key_pem) = make_ca(cluster)?;
    let token = make_token()?;
    Ok((
        Secrets {
            ca_cert_pem,
            ca_key_pem,
            token,
            dir: dir.to_path_buf(),
        },
        origin,
    ))
}

/// Writes secrets made by [`load_or_make`] to their folder (0700, files
/// 0600); rotated ones move the old set to `previous/`. Reused ones are
/// already there.
pub fn save(s: &Secrets, origin: Origin) -> Result<()> {
    let dir = &s.dir;
    match origin {
        Origin::Reused => return Ok(()),
        Origin::Created => make_private_dir(dir)?,
        Origin::Rotated => {
            make_private_dir(dir)?;
            let prev = dir.join("previous");
            make_private_dir(&prev)?;
            for f in [CA_CRT, CA_KEY, TOKEN] {
                if dir.join(f).exists() {
                    fs::rename(dir.join(f), prev.join(f))
                        .with_context(|| format!("moving old {f} to {}", prev.display()))?;
                }
            }
        }
    }
    write_private(&dir.join(CA_KEY), s.ca_key_pem.as_bytes())?;
    write_private(&dir.join(CA_CRT), s.ca_cert_pem.as_bytes())?;
    write_private(&dir.join(TOKEN), format!("{}\n", s.token).as_bytes())
}

fn load(dir: &Path) -> Result<Secrets> {
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is mode {:04o}: the cluster secrets folder must be 0700 (chmod 700 {})",
            dir.display(),
            meta.permissions().mode() & 0o7777,
            dir.display()
        );
    }
    let read = |f: &str| -> Result<String> {
        let p = dir.join(f);
        let mut file = fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let mode = file
            .metadata()
            .with_context(|| format!("reading {}", p.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is mode {:04o}: secrets must be 0600 (chmod 600 {})",
                p.display(),
                mode & 0o7777,
                p.display()
            );
        }
        let mut s = String::new();
        file.read_to_string(&mut s)
            .with_context(|| format!("reading {}", p.display()))?;
        Ok(s)
    };
    let s = Secrets {
        ca_cert_pem: read(CA_CRT)?,
        ca_key_pem: read(CA_KEY)?,
        token: read(TOKEN)?.trim().to_string(),
        dir: dir.to_path_buf(),
    };
    if !is_token(&s.token) {
        bail!(
            "{} is not a kubeadm bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})",
            dir.join(TOKEN).display()
        );
    }
    let spki = s
        .ca_spki()
        .with_context(|| format!("reading {}", dir.join(CA_CRT).display()))?;
    let key = KeyPair::from_pem(&s.ca_key_pem)
        .with_context(|| format!("reading {}", dir.join(CA_KEY).display()))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != spki {
        bail!(
            "{} does not belong to {}: restore the matching pair, or make new ones with --rotate-secrets",
            dir.join(CA_KEY).display(),
            dir.join(CA_CRT).display()
        );
    }
    Ok(s)
}

impl Secrets {
    /// The DER SubjectPublicKeyInfo of the CA certificate.
    fn ca_spki(&self) -> Result<Vec<u8>> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.ca_cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the CA certificate is not PEM: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| anyhow::anyhow!("the CA certificate does not parse: {e}"))?;
        if !cert.is_ca() {
            bail!("the CA certificate is not a CA (basicConstraints CA:FALSE)");
        }
        Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo: what kubeadm's
    /// `discovery.bootstrapToken.caCertHashes` checks.
    pub fn ca_cert_hash(&self) -> Result<String> {
        Ok(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(self.ca_spki()?))
        ))
    }
}

fn make_ca(cluster: &str) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the cluster CA key")?;
    let mut p = CertificateParams::new(Vec::<String>::new()).context("making the cluster CA")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kubernetes");
    dn.push(
        DnType::OrganizationalUnitName,
        format!("airlock cluster {cluster}"),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let now = time::OffsetDateTime::now_utc();
    // A little slack for nodes whose clock is behind the build machine's.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(CA_DAYS);
    let cert = p.self_signed(&key).context("signing the cluster CA")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`, from the kernel's CSPRNG.
fn make_token() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut f = fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    let mut chars = String::new();
    while chars.len() < 22 {
        let mut b = [0u8; 32];
        f.read_exact(&mut b).context("reading /dev/urandom")?;
        // Rejection sampling keeps the 36 symbols uniform (252 = 7 * 36).
        for x in b.iter().filter(|x| **x < 252).take(22 - chars.len()) {
            chars.push(ALPHABET[(*x % 36) as usize] as char);
        }
    }
    Ok(format!("{}.{}", &chars[..6], &chars[6..]))
}

fn make_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating secrets folder {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} 0700", dir.display()))
}

/// Writes a 0600 file under a temporary name and renames it into place.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file in a folder");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn made_once_reused_and_rotated() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("prod/secrets");
        let (a, o) = load_or_create(&dir, "prod", false).unwrap();
        assert_eq!(o, Origin::Created);
        assert!(is_token(&a.token));
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in [CA_CRT, CA_KEY, TOKEN] {
            assert_eq!(
                fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777,
                0o600,
                "{f}"
            );
        }
        let (b, o) = load_or_create(&dir, "prod", false).unwrap();
        assert_eq!(o, Origin::Reused);
        assert_eq!(
            (&a.token, a.ca_cert_hash().unwrap()),
            (&b.token, b.ca_cert_hash().unwrap())
        );
        let (c, o) = load_or_create(&dir, "prod", true).unwrap();
        assert_eq!(o, Origin::Rotated);
        assert_ne!(a.token, c.token);
        assert_ne!(a.ca_cert_hash().unwrap(), c.ca_cert_hash().unwrap());
        assert_eq!(
            fs::read_to_string(dir.join("previous").join(TOKEN))
                .unwrap()
                .trim(),
            a.token
        );
    }

    #[test]
    fn made_secrets_are_written_only_when_saved() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("prod/secrets");
        let (s, o) = load_or_make(&dir, "prod", false).unwrap();
        assert_eq!(o, Origin::Created);
        assert!(!dir.exists(), "made secrets were written before save");
        save(&s, o).unwrap();
        let (again, o) = load_or_make(&dir, "prod", false).unwrap();
        assert_eq!((o, &again.token), (Origin::Reused, &s.token));
        // A rotation not saved keeps the old set in place.
        let (_, o) = load_or_make(&dir, "prod", true).unwrap();
        assert_eq!(o, Origin::Rotated);
        assert!(!dir.join("previous").exists());
        let (kept, _) = load_or_make(&dir, "prod", false).unwrap();
        assert_eq!(kept.token, s.token);
    }

    #[test]
    fn loose_modes_partial_sets_and_mismatched_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("s");
        load_or_create(&dir, "c", false).unwrap();
        fs::set_permissions(dir.join(CA_KEY), fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", load_or_create(&dir, "c", false).unwrap_err());
        assert!(e.contains("must be 0600") && e.contains("chmod 600"), "{e}");
        fs::set_permissions(dir.join(CA_KEY), fs::Permissions::from_mode(0o600)).unwrap();
        // Another cluster's key.
        let other = d.path().join("o");
        load_or_create(&other, "o", false).unwrap();
        fs::copy(other.join(CA_KEY), dir.join(CA_KEY)).unwrap();
        let e = format!("{:#}", load_or_create(&dir, "c", false).unwrap_err());
        assert!(e.contains("does not belong to"), "{e}");
        fs::remove_file(dir.join(TOKEN)).unwrap();
        let e = format!("{:#}", load_or_create(&dir, "c", false).unwrap_err());
        assert!(e.contains("--rotate-secrets"), "{e}");
    }

    /// The hash equals what the kubeadm documentation computes with openssl:
    /// `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum`.
    #[test]
    fn ca_hash_matches_openssl() {
        if crate::cmd::which("openssl").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl is required in CI"
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (s, _) = load_or_create(&d.path().join("s"), "c", false).unwrap();
        let pubkey = Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(d.path().join("s").join(CA_CRT))
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
        assert!(der.status.success());
        assert_eq!(
            s.ca_cert_hash().unwrap(),
            format!("sha256:{}", hex::encode(Sha256::digest(&der.stdout)))
        );
        // And openssl agrees it is a CA that the key belongs to.
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(d.path().join("s").join(CA_CRT))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"));
    }

    #[test]
    fn tokens_are_well_formed_and_differ() {
        let a = make_token().unwrap();
        let b = make_token().unwrap();
        assert!(is_token(&a) && is_token(&b) && a != b, "{a} {b}");
    }
}
