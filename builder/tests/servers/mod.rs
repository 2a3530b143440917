// SPDX-License-Identifier: Apache-2.0
//! Servers the connected-side tests start on 127.0.0.1: an HTTP file
//! server with faults on demand, Debian's docker-registry, and small OCI
//! images to push into them.
#![allow(dead_code)]

pub mod http;
pub mod oci;
pub mod registry;
