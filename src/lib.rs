#![doc = include_str!("../README.md")]
//!
//! This facade re-exports the workspace crates.

/// The CPU core: modes, kernels, quantizers (`hgq-core`).
pub use hgq_core as core;

/// The Keras JSON of hgq2 (`hgq-config`).
pub use hgq_config as config;
