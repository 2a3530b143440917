// SPDX-License-Identifier: Apache-2.0
//! Small OCI images made in the tests: layers (with whiteouts, opaque
//! directories, or a hostile path when asked), configs, manifests and
//! multi-platform indexes, as blobs ready to push or serve.

use std::io::Write;

use sha2::{Digest, Sha256};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: digest(&bytes),
            bytes,
        }
    }

    pub fn hex(&self) -> &str {
        &self.digest[7..]
    }

    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// One entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// A path written byte for byte into the header, unchecked (hostile).
    RawPath(&'a [u8], &'a [u8]),
}

/// A plain tar layer.
pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::RawPath(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// An image: gzip layers, a config naming `platform`, a manifest.
pub struct Image {
    pub platform: String,
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
}

impl Image {
    pub fn new(platform: &str, layers: &[Vec<u8>]) -> Image {
        let (os, rest) = platform.split_once('/').unwrap();
        let (arch, variant) = rest
            .split_once('/')
            .map(|(a, v)| (a, Some(v)))
            .unwrap_or((rest, None));
        let layer_blobs: Vec<Blob> = layers
            .iter()
            .map(|l| Blob::new(LAYER_GZIP, gzip(l)))
            .collect();
        let mut cfg = serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>() },
        });
        if let Some(v) = variant {
            cfg["variant"] = v.into();
        }
        let config = Blob::new(CONFIG, serde_json::to_vec(&cfg).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": layer_blobs.iter().map(|b| b.descriptor()).collect::<Vec<_>>(),
        });
        Image {
            platform: platform.into(),
            layers: layer_blobs,
            config,
            manifest: Blob::new(MANIFEST, serde_json::to_vec(&manifest).unwrap()),
        }
    }

    /// A one-file image, different per platform.
    pub fn hello(name: &str, platform: &str) -> Image {
        let text = format!("{name} for {platform}\n");
        Image::new(
            platform,
            &[layer(&[E::File(
                &format!("hello-{}", name.replace('/', "-")),
                text.as_bytes(),
            )])],
        )
    }

    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v: Vec<&Blob> = self.layers.iter().collect();
        v.push(&self.config);
        v
    }
}

/// A multi-platform index over `images`.
pub fn index(images: &[&Image]) -> Blob {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.descriptor();
            let (os, rest) = i.platform.split_once('/').unwrap();
            let (arch, variant) = rest
                .split_once('/')
                .map(|(a, v)| (a, Some(v)))
                .unwrap_or((rest, None));
            d["platform"] = serde_json::json!({ "os": os, "architecture": arch });
            if let Some(v) = variant {
                d["platform"]["variant"] = v.into();
            }
            d
        })
        .collect();
    let idx = serde_json::json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
    Blob::new(INDEX, serde_json::to_vec(&idx).unwrap())
}

/// An OCI image layout archive (plain tar) of `top` with `blobs`, named.
pub fn archive(top: &Blob, name: &str, blobs: &[&Blob]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut d = top.descriptor();
    d["annotations"] = serde_json::json!({ "io.containerd.image.name": name });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [d] });
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &serde_json::to_vec(&index).unwrap());
    add(&format!("blobs/sha256/{}", top.hex()), &top.bytes);
    for blob in blobs {
        add(&format!("blobs/sha256/{}", blob.hex()), &blob.bytes);
    }
    b.into_inner().unwrap()
}
