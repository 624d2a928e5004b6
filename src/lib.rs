//! # hgq
//!
//! High Granularity Quantization in Rust: quantization-aware training where every weight and
//! every activation can have its own trainable bit width, bit-exact with the `ap_fixed` types of
//! FPGA firmware. This facade re-exports the workspace crates.
pub use hgq_config as config;
pub use hgq_core as core;
