#![doc = include_str!("../README.md")]
//!
//! This facade re-exports the workspace crates.

/// The CPU core: modes, kernels, quantizers (`hgq-core`).
pub use hgq_core as core;

/// The Keras JSON of hgq2 (`hgq-config`).
pub use hgq_config as config;

/// Quantizer modules and layers on tch tensors with autograd, CPU and CUDA (`hgq-torch`;
/// feature `torch`, which needs libtorch from `cargo xtask setup`).
#[cfg(feature = "torch")]
pub use hgq_torch as torch;
