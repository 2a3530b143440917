// SPDX-License-Identifier: Apache-2.0
//! Filesystems written into the disk image.

pub mod ext4;
pub mod fat;
