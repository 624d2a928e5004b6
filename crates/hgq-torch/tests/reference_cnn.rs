//! Convolution, pooling and Flatten layers against hgq2 itself: the values of
//! `tests/data/reference/cnn.json`, made by `tests/data/reference/gen_cnn.py` running hgq2
//! 0.2.0 on Keras' torch backend. Per model (QConv1D/2D with strides, `same`/`causal`
//! padding, dilation and groups; max/average pools, windowed and global; Flatten; QDense on
//! their outputs): a training step (outputs bit for bit, EBOPs per layer, the loss terms,
//! every gradient, the input's included, the WRAP integer bits tracked), `trace_minmax` over
//! two batches, inference; and the Keras JSON hgq2 wrote, written again by us byte for byte.
//!
//! The checks are `hgq_torch::golden::reference`'s (feature `golden`, which the dev-dependency
//! on hgq-torch itself turns on; `cargo xtask golden --backend torch --family cnn` runs the
//! same); these tests assert that every case passed, on the CPU.
#![cfg(feature = "golden")]

use hgq_torch::golden::reference::{self, Checked};
use serde_json::Value;
use tch::Device;

/// `cnn.json` of the checkout's `tests/data/reference` (or `$HGQ_GOLDEN_ROOT/reference`, as
/// golden_backend.rs reads its sets, for a test binary run away from its checkout).
fn data() -> Value {
    let dir = std::env::var_os("HGQ_GOLDEN_ROOT").map_or_else(reference::reference_dir, |r| {
        std::path::PathBuf::from(r).join("reference")
    });
    reference::read_reference(&dir, "cnn").unwrap_or_else(|e| panic!("{e}"))
}

/// Every case passed and the document covers what it must; otherwise every failure.
fn assert_passed(c: &Checked) {
    assert!(!c.cases.is_empty(), "{}: no cases", c.family);
    assert!(c.passed(), "{c}:\n{}", c.failures().join("\n"));
}

#[test]
fn cnn_models_match_hgq2() {
    assert_passed(&reference::cnn_models(&data(), Device::Cpu));
}

/// The Keras JSON: what we write for each model is hgq2's `model.to_json()` byte for byte;
/// the model read from hgq2's JSON writes it back unchanged and, with hgq2's variables after
/// tracing, gives hgq2's inference outputs bit for bit.
#[test]
fn cnn_keras_json_is_hgq2s() {
    assert_passed(&reference::cnn_keras_json(&data(), Device::Cpu));
}
