//! `fixed_quantize` against the reference's golden vectors (tests/data/golden/fixed_fn.json):
//! values bit-identical, gradients within 1e-5 relative / 1e-6 absolute, on the CPU bridge, on
//! the torch-ops path on CPU and, when a GPU is present, on the torch-ops path on CUDA. The
//! float32 cases: `fixed_quantize` takes float32; the float64, float16 and bfloat16 cases run
//! through `golden::TorchBackend` (tests/golden_backend.rs).
mod common;

use std::path::PathBuf;

use hgq_golden::{close_grad, same_value};
use hgq_torch::hgq_core::{FixedGrads, FixedPoint, TensorRef};
use hgq_torch::{fixed_quantize, ops::fixed_quantize_ops};
use serde_json::Value;
use tch::{Device, Tensor};

fn golden() -> Value {
    // HGQ_GOLDEN_DIR: for a test binary run away from its checkout (the GPU machine).
    let dir = std::env::var_os("HGQ_GOLDEN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden"),
        PathBuf::from,
    );
    let p = dir.join("fixed_fn.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    hgq_golden::json::parse(&text).expect("fixed_fn.json parses")
}

fn f32s(c: &Value, key: &str) -> Vec<f32> {
    hgq_golden::json::f32s(c, key).unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// A gradient as a vector; an undefined one (the input did not take part) is zeros.
fn grad_of(t: &Tensor) -> Vec<f32> {
    let g = t.grad();
    if g.defined() {
        vec_of(&g)
    } else {
        vec![0.0; t.numel()]
    }
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_device(Device::Cpu).contiguous().view(-1)).expect("f32 vector")
}

type Quantize =
    fn(&FixedPoint, &Tensor, &Tensor, &Tensor, &Tensor, bool) -> hgq_torch::Result<Tensor>;

/// Runs every case through `quantize` on `device`; returns the mismatch descriptions.
fn check_all(quantize: Quantize, device: Device) -> (usize, Vec<String>) {
    let g = golden();
    let cases = g["cases"].as_array().expect("cases");
    let mut bad = Vec::new();
    let mut checked = 0;
    for c in cases.iter().filter(|c| c.get("dtype").is_none()) {
        checked += 1;
        let name = c["name"].as_str().unwrap();
        let q = FixedPoint::new(
            c["round_mode"].as_str().unwrap().parse().unwrap(),
            c["overflow_mode"].as_str().unwrap().parse().unwrap(),
        )
        .unwrap();
        let training = c["training"].as_bool().unwrap();
        let shape: Vec<i64> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let t = |key: &str, grad: bool| {
            Tensor::from_slice(&f32s(c, key))
                .view(shape.as_slice())
                .to_device(device)
                .set_requires_grad(grad)
        };
        let (x, k, i, f, dy) = (
            t("x", true),
            t("k", false),
            t("i", true),
            t("f", true),
            t("dy", false),
        );
        let y = quantize(&q, &x, &k, &i, &f, training).unwrap_or_else(|e| panic!("{name}: {e}"));
        (&y * &dy).sum(tch::Kind::Float).backward();
        let mut compare =
            |what: &str, got: Vec<f32>, want: Vec<f32>, same: fn(f32, f32) -> bool| {
                let n = got
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| !same(**a, **b))
                    .count();
                if n > 0 || got.len() != want.len() {
                    let first = got
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| !same(*a, *b))
                        .unwrap_or(0);
                    bad.push(format!(
                        "{name} {what}: {n} of {} differ, first at {first}: got {:?} want {:?}",
                        want.len(),
                        got.get(first),
                        want.get(first)
                    ));
                }
            };
        compare("y", vec_of(&y), f32s(c, "y"), same_value);
        let gr = &c["grad"];
        compare("dx", grad_of(&x), f32s(gr, "x"), close_grad);
        compare("di", grad_of(&i), f32s(gr, "i"), close_grad);
        compare("df", grad_of(&f), f32s(gr, "f"), close_grad);
    }
    (checked, bad)
}

fn assert_clean(what: &str, (n, bad): (usize, Vec<String>)) {
    assert!(n >= 50, "{what}: only {n} golden cases");
    assert!(
        bad.is_empty(),
        "{what}: {} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn bridge_cpu_matches_golden() {
    assert_clean("bridge (CPU)", check_all(fixed_quantize, Device::Cpu));
}

#[test]
fn torch_ops_cpu_matches_golden() {
    assert_clean(
        "torch ops (CPU)",
        check_all(fixed_quantize_ops, Device::Cpu),
    );
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn torch_ops_cuda_matches_golden() {
    common::cuda();
    let d = Device::Cuda(0);
    assert_clean("fixed_quantize (CUDA)", check_all(fixed_quantize, d));
}

/// Per-column bit widths broadcast over rows: the bridge's gradients for `i` and `f` are summed
/// over the broadcast rows, as hgq-core computes them, and the torch-ops path agrees.
#[test]
fn broadcast_bit_widths() {
    let (rows, cols) = (7usize, 5usize);
    let xs: Vec<f32> = (0..rows * cols)
        .map(|j| (j as f32 * 0.37).sin() * 6.0)
        .collect();
    let is = [0.0f32, 1.0, 2.0, -1.0, 3.0];
    let fs = [2.0f32, 0.0, 3.0, 4.0, 1.0];
    let dys: Vec<f32> = (0..rows * cols).map(|j| (j as f32 * 0.11).cos()).collect();
    for training in [false, true] {
        let q = FixedPoint::new("RND".parse().unwrap(), "SAT".parse().unwrap()).unwrap();
        // hgq-core directly.
        let (xs_shape, p_shape) = ([rows, cols], [1, cols]);
        let (mut y, mut dx, mut di, mut df) = (
            vec![0.0; rows * cols],
            vec![0.0; rows * cols],
            vec![0.0; cols],
            vec![0.0; cols],
        );
        q.forward_backward(
            TensorRef::new(&xs, &xs_shape).unwrap(),
            TensorRef::new(&[1.0f32], &[1]).unwrap(),
            TensorRef::new(&is, &p_shape).unwrap(),
            TensorRef::new(&fs, &p_shape).unwrap(),
            training,
            &dys,
            &mut y,
            FixedGrads {
                dx: &mut dx,
                di: &mut di,
                df: &mut df,
            },
        )
        .unwrap();
        for quantize in [fixed_quantize as Quantize, fixed_quantize_ops] {
            let x = Tensor::from_slice(&xs)
                .view([rows as i64, cols as i64])
                .set_requires_grad(true);
            let i = Tensor::from_slice(&is)
                .view([1, cols as i64])
                .set_requires_grad(true);
            let f = Tensor::from_slice(&fs)
                .view([1, cols as i64])
                .set_requires_grad(true);
            let k = Tensor::from(1.0f32);
            let dy = Tensor::from_slice(&dys).view([rows as i64, cols as i64]);
            let yt = quantize(&q, &x, &k, &i, &f, training).unwrap();
            (&yt * &dy).sum(tch::Kind::Float).backward();
            assert_eq!(vec_of(&yt), y);
            for (got, want) in [(grad_of(&x), &dx), (grad_of(&i), &di), (grad_of(&f), &df)] {
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(want.iter()) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs() + 1e-5,
                        "{got:?} vs {want:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn errors_are_reported() {
    let q = FixedPoint::new("RND".parse().unwrap(), "SAT".parse().unwrap()).unwrap();
    let x = Tensor::from_slice(&[1.0f32, 2.0]);
    let one = Tensor::from(1.0f32);
    // k must be 0 or 1: the kernel's error comes back through the C++ bridge.
    let e = fixed_quantize(&q, &x, &Tensor::from(0.5f32), &one, &one, false).unwrap_err();
    assert!(e.to_string().contains("0.5"), "{e}");
    // float64 x is refused with the kind in the message.
    let e = fixed_quantize(&q, &x.to_kind(tch::Kind::Double), &one, &one, &one, false).unwrap_err();
    assert!(e.to_string().contains("Double"), "{e}");
}

/// What this machine offers (printed, never fails): CUDA checks above skip without a GPU.
#[test]
fn report_devices() {
    eprintln!(
        "libtorch_cuda linked: {}, CUDA available: {}, devices: {}",
        hgq_torch::cuda_linked(),
        hgq_torch::cuda_available(),
        tch::Cuda::device_count()
    );
}
