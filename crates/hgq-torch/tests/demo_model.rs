//! The demo's model as hgq2 sees it: the Keras JSON is the reference's bytes for the same
//! model (crates/hgq-config/tests/data/models/demo.json, written by hgq2 0.2.0), and the
//! variables carry the reference's Keras paths and shapes (as `model.variables` lists them in
//! hgq2 0.2.0 for Input(64) -> QDense(32, relu) -> QDense(10)).
use hgq_torch::layers::{Activation, QDense, Sequential};
use tch::{Device, nn};

fn demo_model(vs: &nn::VarStore) -> Sequential {
    let mut m = Sequential::new();
    m.add(
        &vs.root(),
        QDense::builder(64, 32).activation(Activation::Relu),
    )
    .expect("layer 1");
    m.add(&vs.root(), QDense::builder(32, 10)).expect("layer 2");
    m
}

#[test]
fn keras_json_is_the_references() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = demo_model(&vs);
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../hgq-config/tests/data/models/demo.json"
    ))
    .expect("demo.json");
    assert_eq!(m.to_keras_json().expect("json"), want.trim_end());
}

#[test]
fn variables_have_the_reference_paths_and_shapes() {
    // hgq2 0.2.0's `[(v.path, v.shape) for v in model.variables]`, without the beta and
    // ebops bookkeeping variables (check_keras.py skips those).
    let want: &[(&str, &[i64])] = &[
        ("q_dense/kernel", &[64, 32]),
        ("q_dense/bias", &[32]),
        ("q_dense/q_dense_iq/fixed_point_quantizer_kif/f", &[1, 64]),
        ("q_dense/q_dense_iq/fixed_point_quantizer_kif/k", &[1, 64]),
        ("q_dense/q_dense_iq/fixed_point_quantizer_kif/i", &[1, 64]),
        (
            "q_dense/q_dense_iq/fixed_point_quantizer_kif/i_decay_speed",
            &[],
        ),
        ("q_dense/q_dense_kq/fixed_point_quantizer_kbi/b", &[64, 32]),
        ("q_dense/q_dense_kq/fixed_point_quantizer_kbi/i", &[64, 32]),
        ("q_dense/q_dense_kq/fixed_point_quantizer_kbi/k", &[64, 32]),
        ("q_dense/q_dense_bq/fixed_point_quantizer_kbi_1/b", &[32]),
        ("q_dense/q_dense_bq/fixed_point_quantizer_kbi_1/k", &[32]),
        ("q_dense/q_dense_bq/fixed_point_quantizer_kbi_1/i", &[32]),
        (
            "q_dense/q_dense_bq/fixed_point_quantizer_kbi_1/i_decay_speed",
            &[],
        ),
        ("q_dense_1/kernel", &[32, 10]),
        ("q_dense_1/bias", &[10]),
        (
            "q_dense_1/q_dense_1_iq/fixed_point_quantizer_kif_1/f",
            &[1, 32],
        ),
        (
            "q_dense_1/q_dense_1_iq/fixed_point_quantizer_kif_1/k",
            &[1, 32],
        ),
        (
            "q_dense_1/q_dense_1_iq/fixed_point_quantizer_kif_1/i",
            &[1, 32],
        ),
        (
            "q_dense_1/q_dense_1_iq/fixed_point_quantizer_kif_1/i_decay_speed",
            &[],
        ),
        (
            "q_dense_1/q_dense_1_kq/fixed_point_quantizer_kbi_2/b",
            &[32, 10],
        ),
        (
            "q_dense_1/q_dense_1_kq/fixed_point_quantizer_kbi_2/i",
            &[32, 10],
        ),
        (
            "q_dense_1/q_dense_1_kq/fixed_point_quantizer_kbi_2/k",
            &[32, 10],
        ),
        (
            "q_dense_1/q_dense_1_bq/fixed_point_quantizer_kbi_3/b",
            &[10],
        ),
        (
            "q_dense_1/q_dense_1_bq/fixed_point_quantizer_kbi_3/k",
            &[10],
        ),
        (
            "q_dense_1/q_dense_1_bq/fixed_point_quantizer_kbi_3/i",
            &[10],
        ),
        (
            "q_dense_1/q_dense_1_bq/fixed_point_quantizer_kbi_3/i_decay_speed",
            &[],
        ),
    ];
    let vs = nn::VarStore::new(Device::Cpu);
    let m = demo_model(&vs);
    let mut got: Vec<(String, Vec<i64>)> = m
        .keras_variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    let mut want: Vec<(String, Vec<i64>)> = want
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}
