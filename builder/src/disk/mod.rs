// SPDX-License-Identifier: Apache-2.0
//! The GPT disk: a pure partition plan and the code that writes it.

pub mod gpt;
pub mod layout;
