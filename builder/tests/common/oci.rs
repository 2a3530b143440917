// SPDX-License-Identifier: Apache-2.0
//! Small but real container image archives for tests: OCI image layout
//! tarballs (one image per reference, optionally a multi-platform index whose
//! other platforms' blobs are missing) and `docker save` archives. Each image
//! has one uncompressed layer holding `/hello-<name>`, so containerd can
//! import and unpack it. Used by the unit tests (via #[path]) and the
//! integration tests.
#![allow(dead_code)]

use std::io::Write;

use sha2::{Digest, Sha256};

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn blob_path(d: &str) -> String {
    format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))
}

/// A tar archive from (name, bytes), in order, with fixed metadata.
pub fn tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

pub fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

/// The blobs of one single-platform image: (manifest digest, manifest
/// size, [(digest, bytes)] for layer, config and manifest).
fn image_blobs(tag: &str, platform: &str) -> (String, usize, Vec<(String, Vec<u8>)>) {
    let (os, arch) = platform.split_once('/').unwrap();
    let arch = arch.split('/').next().unwrap();
    let safe: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let layer = tar(&[(
        format!("hello-{safe}"),
        format!("{tag} {platform}\n").into_bytes(),
    )]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": { "Cmd": ["/hello"] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len() }],
    }))
    .unwrap();
    let md = digest(&manifest);
    let n = manifest.len();
    (
        md,
        n,
        vec![
            (digest(&layer), layer),
            (digest(&config), config),
            (digest(&manifest), manifest),
        ],
    )
}

/// An OCI image layout tarball holding one image per reference for
/// `platform`, named by both `io.containerd.image.name` and
/// `org.opencontainers.image.ref.name` (as `ctr export` writes them).
pub fn oci_layout(refs: &[&str], platform: &str) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut descs = Vec::new();
    for r in refs {
        let (md, n, blobs) = image_blobs(r, platform);
        for (d, b) in blobs {
            files.push((blob_path(&d), b));
        }
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": n,
            "annotations": { "io.containerd.image.name": r, "org.opencontainers.image.ref.name": r },
        }));
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs });
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    tar(&files)
}

/// An OCI layout whose one image is a multi-platform index listing
/// `present` and `missing` platforms; only `present`'s blobs are included
/// (what `ctr export --platform` or `skopeo copy` of one platform leaves).
pub fn oci_multi_platform(reference: &str, present: &str, missing: &[&str]) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut children = Vec::new();
    for p in std::iter::once(&present).chain(missing.iter()) {
        let (md, n, blobs) = image_blobs(reference, p);
        if *p == present {
            for (d, b) in blobs {
                files.push((blob_path(&d), b));
            }
        }
        let (os, arch) = p.split_once('/').unwrap();
        let mut plat =
            serde_json::json!({ "os": os, "architecture": arch.split('/').next().unwrap() });
        if let Some(v) = arch.split('/').nth(1) {
            plat["variant"] = v.into();
        }
        children.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": n, "platform": plat,
        }));
    }
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children,
    }))
    .unwrap();
    files.push((blob_path(&digest(&inner)), inner.clone()));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest(&inner), "size": inner.len(),
            "annotations": { "io.containerd.image.name": reference, "org.opencontainers.image.ref.name": reference },
        }],
    });
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    tar(&files)
}

/// A `docker save` archive (manifest.json with RepoTags, legacy layout).
pub fn docker_save(repo_tags: &[&str], platform: &str) -> Vec<u8> {
    let (_, _, blobs) = image_blobs(repo_tags.first().copied().unwrap_or("untagged"), platform);
    let (layer_d, layer) = &blobs[0];
    let (config_d, config) = &blobs[1];
    let layer_dir = layer_d.trim_start_matches("sha256:");
    let config_name = format!("{}.json", config_d.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]);
    tar(&[
        (config_name.clone(), config.clone()),
        (format!("{layer_dir}/layer.tar"), layer.clone()),
        (
            "manifest.json".into(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
    ])
}
