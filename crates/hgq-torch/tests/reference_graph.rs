//! Functional graphs against hgq2 itself: the values of `tests/data/reference/graph.json`,
//! made by `tests/data/reference/gen_graph.py` running hgq2 0.2.0. Residual blocks, the merge
//! layers (`QAdd`, `QSubtract`, `QMultiply`, `QMaximum`, `QMinimum`, `QAveragePow2`), two inputs
//! and two outputs, `QBatchNormalization` after dense and convolution layers. Per model, built
//! from hgq2's own Keras JSON (and written back byte for byte): a training step (outputs bit
//! for bit, EBOPs per layer, the loss terms, every gradient, the inputs' too, the WRAP integer
//! bits and the moving statistics after), `trace_minmax` over two batches, inference. The same
//! checks on `more.json`: QEinsumDense, QBatchNormDense, QUnaryFunctionLUT, QSoftmax.
//!
//! The checks are `hgq_torch::golden::reference`'s (feature `golden`, which the dev-dependency
//! on hgq-torch itself turns on; `cargo xtask golden --backend torch --family graph --family
//! more` runs the same); these tests assert that every case passed, on the CPU.
#![cfg(feature = "golden")]

use hgq_torch::golden::reference::{self, Checked};
use serde_json::Value;
use tch::Device;

/// `FAMILY.json` of the checkout's `tests/data/reference` (or `$HGQ_GOLDEN_ROOT/reference`, as
/// golden_backend.rs reads its sets, for a test binary run away from its checkout).
fn data(family: &str) -> Value {
    let dir = std::env::var_os("HGQ_GOLDEN_ROOT").map_or_else(reference::reference_dir, |r| {
        std::path::PathBuf::from(r).join("reference")
    });
    reference::read_reference(&dir, family).unwrap_or_else(|e| panic!("{e}"))
}

/// Every case passed and the document covers what it must; otherwise every failure.
fn assert_passed(c: &Checked) {
    assert!(!c.cases.is_empty(), "{}: no cases", c.family);
    assert!(c.passed(), "{c}:\n{}", c.failures().join("\n"));
}

#[test]
fn graphs_match_hgq2() {
    assert_passed(&reference::graph(&data("graph"), Device::Cpu));
}

/// QEinsumDense, QBatchNormDense, QUnaryFunctionLUT and QSoftmax in graphs: the values of
/// `tests/data/reference/more.json`, made by `tests/data/reference/gen_more.py` running hgq2.
#[test]
fn more_layers_match_hgq2() {
    assert_passed(&reference::more(&data("more"), Device::Cpu));
}

/// The checks see a change: one output value of `more/lut` moved by a step makes that case,
/// and only it, a mismatch that says where.
#[test]
fn a_changed_output_is_a_mismatch() {
    let mut d = data("more");
    let case = d["graph"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "more/lut")
        .expect("more/lut");
    let y = &mut case["calls"][0]["y"][0][1];
    *y = (y.as_f64().unwrap() + 0.5).into();
    let c = reference::more(&d, Device::Cpu);
    assert_eq!(c.mismatches(), 1, "{:?}", c.failures());
    let e = c.failures().remove(0);
    assert!(
        e.starts_with("more/lut: training y0[1]: ") && e.ends_with("(hgq2)"),
        "{e}"
    );
}
