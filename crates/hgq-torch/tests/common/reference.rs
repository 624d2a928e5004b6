//! Reading hgq2's reference values (the JSON of `tests/data/reference/*.py`) and comparing
//! with them: values bit for bit, gradients within float32 rounding.
use serde_json::Value;
use tch::{Kind, Tensor};

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

pub fn tensor(v: &Value, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&f32s(v)).reshape(shape)
}

pub fn values(t: &Tensor) -> Vec<f32> {
    let t = t.detach().to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&t).expect("float values")
}

/// Bit for bit (zeros of either sign equal).
pub fn same(got: &Tensor, want: &Value, what: &str) {
    let (g, w) = (values(got), f32s(want));
    assert_eq!(g.len(), w.len(), "{what}: length");
    for (j, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0),
            "{what}[{j}]: {a} (ours) != {b} (hgq2)"
        );
    }
}

/// Gradients: sums in another order than hgq2's, so within float32 rounding.
pub fn close(got: &Tensor, want: &Value, what: &str) {
    let (g, w) = (values(got), f32s(want));
    assert_eq!(g.len(), w.len(), "{what}: length");
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (j, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale + 1e-5 * b.abs(),
            "{what}[{j}]: {a} (ours) != {b} (hgq2)"
        );
    }
}
