//! Element types and bad input for the tensor quantizers.
//!
//! - float64, float16 and bfloat16 inputs give hgq-core's values (the layer quantizer
//!   `FixedPointQuantizerKIF` with the same spec on the same data: `f64` computes in f64, the
//!   half types in f32 and round to their type), and the half types the float32 result of the
//!   same module rounded to their type; gradients reach x (in its type) and the bit widths.
//! - A wrong shape, an integer tensor, NaN into a WRAP quantizer that tracks its integer bits
//!   (training and tracing: an error, variables unchanged), and bad configurations (k0 = 2, an
//!   unknown mode) are `TorchError`s, not panics.
mod common;

use common::{cuda, var};
use half::{bf16, f16};
use hgq_torch::TorchError;
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_config::{Place, QType, QuantizerConfig};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::{CpuQuantizer, KifSpec, VarName};
use hgq_torch::hgq_core::{CallMode, CoreError, Element, OverflowMode, RoundMode, TensorRef};
use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor, nn};

const SHAPE: [usize; 2] = [4, 4];

/// Off-grid values, ties, values past the SAT range of i = 2 (and exact ones).
fn x_values() -> Vec<f64> {
    vec![
        0.3, -9.0, 1.01, 0.5, 3.99, -4.0, 0.03125, -0.09375, 2.71, -3.15, 4.5, -0.015625, 1.0e-3,
        7.25, -1.96875, 0.0,
    ]
}

fn spec(overflow: OverflowMode) -> KifSpec {
    KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, overflow).with_axes(Axes::Homogeneous(vec![0]))
}

fn module(vs: &nn::VarStore, spec: KifSpec) -> Quantizer {
    let core = CoreQuantizer {
        spec: QuantizerSpec::Kif(spec),
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    Quantizer::new(&vs.root(), &core, &[None, Some(4)]).expect("a KIF quantizer")
}

fn values<T: tch::kind::Element + Default + Clone>(t: &Tensor) -> Vec<T> {
    let t = t.detach().to_device(Device::Cpu).contiguous().view(-1);
    let mut v = vec![T::default(); t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

/// hgq-core's layer quantizer on the same data: (y inference, y training, dx, df, di) for
/// dy = 1.
#[allow(clippy::type_complexity)]
fn core_run<T: Element<C = C>, C: hgq_torch::hgq_core::Real + Element<C = C>>(
    x: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<C>, Vec<C>) {
    let mut q = CpuQuantizer::<C>::new(
        QuantizerSpec::Kif(spec(OverflowMode::Sat)),
        &[None, Some(4)],
    )
    .unwrap();
    let xt = TensorRef::new(x, &SHAPE).unwrap();
    let mut y_inf = vec![T::default(); x.len()];
    q.forward(xt, CallMode::Inference, &mut y_inf).unwrap();
    let (mut y, mut dx) = (vec![T::default(); x.len()], vec![T::default(); x.len()]);
    let one = T::from_c(C::from_f64(1.0));
    let grads = q
        .forward_backward(xt, &vec![one; x.len()], &mut y, &mut dx)
        .unwrap();
    let df = grads.f.unwrap();
    let di = grads.i.unwrap();
    (y_inf, y, dx, df, di)
}

/// The module on `x` of `kind`: (y inference, y training, dx as float64 values, df, di).
#[allow(clippy::type_complexity)]
fn torch_run(x: &Tensor, device: Device) -> (Tensor, Tensor, Tensor, Vec<f32>, Vec<f32>) {
    let vs = nn::VarStore::new(device);
    let q = module(&vs, spec(OverflowMode::Sat));
    let x = x.to_device(device);
    let y_inf = q.forward(&x, CallMode::Inference).expect("inference");
    assert_eq!(y_inf.kind(), x.kind(), "inference keeps the element type");
    let xg = x.detach().set_requires_grad(true);
    let y = q.forward(&xg, CallMode::Training).expect("training");
    assert_eq!(y.kind(), x.kind(), "training keeps the element type");
    y.to_kind(Kind::Double).sum(Kind::Double).backward();
    let dx = xg.grad();
    assert!(dx.defined(), "a gradient reaches x");
    assert_eq!(dx.kind(), x.kind(), "dx has x's type");
    let (f, i) = (var(&q, "f").grad(), var(&q, "i").grad());
    assert!(f.defined() && i.defined(), "gradients reach i and f");
    (
        y_inf,
        y,
        dx,
        values::<f32>(&f.to_kind(Kind::Float)),
        values::<f32>(&i.to_kind(Kind::Float)),
    )
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs() + 1e-6,
            "{what}: {got:?} vs {want:?}"
        );
    }
}

fn float64(device: Device) {
    let xs = x_values();
    let x = Tensor::from_slice(&xs).view([4, 4]);
    let (y_inf, y, dx, df, di) = torch_run(&x, device);
    let (cy_inf, cy, cdx, cdf, cdi) = core_run::<f64, f64>(&xs);
    let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(values(&y_inf)), bits(cy_inf), "f64 inference");
    assert_eq!(bits(values(&y)), bits(cy), "f64 training");
    assert_eq!(bits(values(&dx)), bits(cdx), "f64 dx");
    let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
    close(&df, &f32s(cdf), "f64 df");
    close(&di, &f32s(cdi), "f64 di");
}

/// A half type: the same as hgq-core (computing in f32) and as the float32 module rounded.
/// Tensors are made and read through float32 (exact for these types: tch 0.24 gives
/// `from_slice(&[bf16])` the kind `Half`).
fn half_type<H: Element<C = f32> + PartialEq>(device: Device, kind: Kind, to_bits: fn(H) -> u16) {
    let xs: Vec<H> = x_values()
        .into_iter()
        .map(|v| H::from_c(v as f32))
        .collect();
    let wide: Vec<f32> = xs.iter().map(|v| v.to_c()).collect();
    let x = Tensor::from_slice(&wide).view([4, 4]).to_kind(kind);
    assert_eq!(x.kind(), kind);
    let (y_inf, y, dx, df, di) = torch_run(&x, device);
    let (cy_inf, cy, cdx, cdf, cdi) = core_run::<H, f32>(&xs);
    let read = |t: &Tensor| -> Vec<u16> {
        assert_eq!(t.kind(), kind);
        values::<f32>(&t.to_kind(Kind::Float))
            .into_iter()
            .map(|v| to_bits(H::from_c(v)))
            .collect()
    };
    let b = |v: Vec<H>| v.into_iter().map(to_bits).collect::<Vec<_>>();
    assert_eq!(read(&y_inf), b(cy_inf), "{kind:?} inference");
    assert_eq!(read(&y), b(cy), "{kind:?} training");
    assert_eq!(read(&dx), b(cdx), "{kind:?} dx");
    close(&df, &cdf, "df");
    close(&di, &cdi, "di");
    // The float32 module on the widened values, rounded to the type.
    let (y32_inf, y32, ..) = torch_run(&x.to_kind(Kind::Float), device);
    assert_eq!(
        read(&y_inf),
        read(&y32_inf.to_kind(kind)),
        "{kind:?} vs float32 inference"
    );
    assert_eq!(
        read(&y),
        read(&y32.to_kind(kind)),
        "{kind:?} vs float32 training"
    );
}

#[test]
fn float64_cpu() {
    float64(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn float64_cuda() {
    let d = cuda();
    float64(d);
}

#[test]
fn float16_cpu() {
    half_type::<f16>(Device::Cpu, Kind::Half, f16::to_bits);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn float16_cuda() {
    let d = cuda();
    half_type::<f16>(d, Kind::Half, f16::to_bits);
}

#[test]
fn bfloat16_cpu() {
    half_type::<bf16>(Device::Cpu, Kind::BFloat16, bf16::to_bits);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn bfloat16_cuda() {
    let d = cuda();
    half_type::<bf16>(d, Kind::BFloat16, bf16::to_bits);
}

fn bad_shape_and_kind(device: Device) {
    let vs = nn::VarStore::new(device);
    let q = module(&vs, spec(OverflowMode::Sat));
    for mode in [CallMode::Training, CallMode::Inference, CallMode::Tracing] {
        let x = Tensor::zeros([2, 5], (Kind::Float, device));
        match q.forward(&x, mode) {
            Err(e @ TorchError::Core(CoreError::InputShape { .. })) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("[2, 5]") && msg.contains("[None, Some(4)]"),
                    "{msg}"
                );
            }
            other => panic!("{mode:?}: want a shape error, got {other:?}"),
        }
        let x = Tensor::zeros([4], (Kind::Float, device));
        assert!(matches!(
            q.forward(&x, mode),
            Err(TorchError::Core(CoreError::InputShape { .. }))
        ));
        for kind in [Kind::Int64, Kind::Int, Kind::Bool, Kind::Uint8] {
            let x = Tensor::zeros([2, 4], (kind, device));
            match q.forward(&x, mode) {
                Err(e @ TorchError::Kind { .. }) => {
                    assert!(e.to_string().contains(&format!("{kind:?}")), "{e}")
                }
                other => panic!("{kind:?}: want a kind error, got {other:?}"),
            }
        }
    }
}

#[test]
fn bad_shape_and_kind_cpu() {
    bad_shape_and_kind(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn bad_shape_and_kind_cuda() {
    let d = cuda();
    bad_shape_and_kind(d);
}

/// A WRAP quantizer tracking its integer bits refuses NaN and inf in training and tracing
/// (the state would be poisoned for good) and keeps its variables; inference gives NaN there.
fn nan_wrap(device: Device) {
    let vs = nn::VarStore::new(device);
    let q = module(&vs, spec(OverflowMode::Wrap));
    let good = Tensor::from_slice(&[0.5f32, -1.25, 3.0, 0.1, 2.0, 0.0, -0.7, 1.5])
        .view([2, 4])
        .to_device(device);
    let _ = q.forward(&good, CallMode::Training).expect("finite input");
    let before: Vec<(VarName, Vec<u32>)> = q
        .variables()
        .into_iter()
        .map(|(n, t)| (n, values::<f32>(&t).into_iter().map(f32::to_bits).collect()))
        .collect();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let x = Tensor::from_slice(&[0.5f32, bad, 3.0, 0.1, 2.0, 0.0, -0.7, 1.5])
            .view([2, 4])
            .to_device(device);
        for mode in [CallMode::Training, CallMode::Tracing] {
            match q.forward(&x, mode) {
                Err(e @ TorchError::Core(CoreError::InvalidParameter { name: "x", .. })) => {
                    assert!(e.to_string().contains("finite"), "{e}")
                }
                other => panic!("{bad} in {mode:?}: want hgq-core's error, got {other:?}"),
            }
            let after: Vec<(VarName, Vec<u32>)> = q
                .variables()
                .into_iter()
                .map(|(n, t)| (n, values::<f32>(&t).into_iter().map(f32::to_bits).collect()))
                .collect();
            assert_eq!(before, after, "{bad} in {mode:?} changed the state");
        }
    }
    let x = Tensor::from_slice(&[0.5f32, f32::NAN, 3.0, 0.1])
        .view([1, 4])
        .to_device(device);
    let y = values::<f32>(&q.forward(&x, CallMode::Inference).expect("inference"));
    assert!(
        y[1].is_nan() && y.iter().filter(|v| v.is_nan()).count() == 1,
        "{y:?}"
    );
}

#[test]
fn nan_wrap_cpu() {
    nan_wrap(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn nan_wrap_cuda() {
    let d = cuda();
    nan_wrap(d);
}

#[test]
fn bad_config() {
    let vs = nn::VarStore::new(Device::Cpu);
    // k0 = 2 (k must be 0 or 1).
    let mut s = spec(OverflowMode::Sat);
    s.k0 = 2.0;
    let core = CoreQuantizer {
        spec: QuantizerSpec::Kif(s),
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    match Quantizer::new(&vs.root(), &core, &[None, Some(4)]) {
        Err(e @ TorchError::Core(_)) => println!("k0 = 2: {e}"),
        other => panic!("k0 = 2: want a core error, got {other:?}"),
    }
    // A mode the type does not have, in a Keras configuration.
    let good = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .build()
        .expect("a default KIF configuration");
    Quantizer::from_config(&(vs.root() / "ok"), &good, &[None, Some(4)]).expect("builds");
    let text = good.to_json();
    for (from, to) in [("\"RND\"", "\"ROUND_UP\""), ("\"WRAP\"", "\"CLAMP\"")] {
        assert!(text.contains(from), "{text}");
        let bad = text.replace(from, to);
        let built = (|| -> hgq_torch::Result<Quantizer> {
            let c = QuantizerConfig::from_json(&bad)?;
            Quantizer::from_config(&(vs.root() / "bad"), &c, &[None, Some(4)])
        })();
        match built {
            Err(e @ TorchError::Config(_)) => {
                let msg = e.to_string();
                assert!(msg.contains(to.trim_matches('"')), "{msg}");
            }
            other => panic!("{to}: want a configuration error, got {other:?}"),
        }
    }
}
