// SPDX-License-Identifier: Apache-2.0
//! Kubernetes knowledge in one place: the recipe's node sections, versions,
//! kubeadm and containerd configuration, image archives and coverage, the
//! CNI manifest, cluster secrets and preflight. It hands the root tree a set
//! of files; the disk code knows nothing about Kubernetes.
//!
//! The build↔node contract is docs/first-boot.md; [`settings`] and
//! [`kubeadm::render`] are shared with `airlock node`.

pub mod cni;
pub mod containerd;
pub mod host;
pub mod images;
pub mod kubeadm;
pub mod net;
pub mod preflight;
pub mod secrets;
pub mod settings;
pub mod spec;
pub mod stage;
pub mod version;

/// The airlock binary in the image, run by the first-boot units.
pub const AIRLOCK_BIN: &str = "/usr/lib/airlock/airlock";
/// Preloaded image archives, named `<sha256>.<ext>`.
pub const IMAGES_DIR: &str = "/var/lib/airlock/images";
/// The archives and the references they carry ([`images::ImagesJson`]).
pub const IMAGES_JSON: &str = "/usr/lib/airlock/images.json";
/// The CNI manifest applied after `kubeadm init`.
pub const CNI_DIR: &str = "/usr/lib/airlock/cni";
/// The first-boot units.
pub const IMAGES_UNIT: &str = "airlock-images.service";
pub const KUBEADM_UNIT: &str = "airlock-kubeadm.service";
pub const ROUTE_UNIT: &str = "airlock-route.service";
pub const HOSTNAME_UNIT: &str = "airlock-hostname.service";
/// A recipe's shadowing `kube/` templates, for the node to render with.
pub const TEMPLATES_DIR: &str = "/usr/lib/airlock/templates/kube";

#[cfg(test)]
mod tests;
