// SPDX-License-Identifier: Apache-2.0
//! Airlock builds bootable disk images for air-gapped Kubernetes nodes.

pub mod boot;
pub mod cli;
pub(crate) mod cmd;
pub mod disk;
pub mod fs;
pub mod identity;
pub mod inputs;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod recipe;
pub mod render;
pub mod tree;
pub mod units;
pub mod vm;
