//! One quantizer logic on every backend: hgq-core's CPU buffers, tensors through the fused
//! kernel (CPU float32) and tensors through torch operations (float64 here, CUDA elsewhere)
//! give the same values, the same state and the same errors, and no call leaves state half
//! written.
mod common;

use common::{bits, f32s, f64s, var};
use hgq_torch::TorchError;
use hgq_torch::fixed_quantize;
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::{CpuQuantizer, KbiSpec, KifSpec, VarName};
use hgq_torch::hgq_core::{
    BitWidths, CallMode, CoreError, FixedPoint, OverflowMode, RoundMode, Stochastic, TensorRef,
};
use hgq_torch::layers::{QDense, Sequential};
use hgq_torch::ops::fixed_quantize_ops;
use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor, nn};

fn torch_q(vs: &nn::VarStore, spec: QuantizerSpec, shape: &[Option<usize>]) -> Quantizer {
    let core = CoreQuantizer {
        spec,
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    Quantizer::new(&vs.root(), &core, shape).unwrap()
}

fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            (u - 0.5) * 12.0
        })
        .collect()
}

fn srnd_spec() -> QuantizerSpec {
    let mut s = KifSpec::new(1.0, 3.0, 2.0, RoundMode::SRnd, OverflowMode::Sat)
        .with_axes(Axes::Homogeneous(vec![0]));
    s.fixed.stochastic = Stochastic::Seeded(42);
    QuantizerSpec::Kif(s)
}

/// Seeded stochastic rounding in training: the torch-ops path (float64) and the fused kernel
/// (float32) draw hgq-core's noise, element for element, and advance the same call counter.
#[test]
fn seeded_stochastic_rounding_is_the_same_on_every_path() {
    let (rows, cols) = (64, 16);
    let xv = data(rows * cols, 3);
    let shape = [None, Some(cols)];
    for step in 0..3 {
        // float64 through torch operations against hgq-core in f64.
        let vs = nn::VarStore::new(Device::Cpu);
        let tq = torch_q(&vs, srnd_spec(), &shape);
        let mut cq = CpuQuantizer::<f64>::new(srnd_spec(), &shape).unwrap();
        let x64 = Tensor::from_slice(&xv).view([rows as i64, cols as i64]);
        let x32v: Vec<f32> = xv.iter().map(|&v| v as f32).collect();
        let x32 = Tensor::from_slice(&x32v).view([rows as i64, cols as i64]);
        let vs32 = nn::VarStore::new(Device::Cpu);
        let tq32 = torch_q(&vs32, srnd_spec(), &shape);
        let mut cq32 = CpuQuantizer::<f32>::new(srnd_spec(), &shape).unwrap();
        let mut want = vec![0.0f64; xv.len()];
        let mut want32 = vec![0.0f32; xv.len()];
        let dims = [rows, cols];
        for _ in 0..=step {
            let xt = TensorRef::new(&xv, &dims).unwrap();
            cq.forward(xt, CallMode::Training, &mut want).unwrap();
            let xt = TensorRef::new(&x32v, &dims).unwrap();
            cq32.forward(xt, CallMode::Training, &mut want32).unwrap();
        }
        let mut got = None;
        let mut got32 = None;
        for _ in 0..=step {
            got = Some(tq.forward(&x64, CallMode::Training).unwrap());
            got32 = Some(tq32.forward(&x32, CallMode::Training).unwrap());
        }
        let got: Vec<u64> = f64s(&got.unwrap()).into_iter().map(f64::to_bits).collect();
        let want: Vec<u64> = want.into_iter().map(f64::to_bits).collect();
        assert_eq!(got, want, "float64 (torch ops), call {step}");
        let want32: Vec<u32> = want32.into_iter().map(f32::to_bits).collect();
        assert_eq!(
            bits(&got32.unwrap()),
            want32,
            "float32 (fused kernel), call {step}"
        );
        let calls = |q: &Quantizer| f32s(&var(q, "seed_generator_state"))[1];
        assert_eq!(calls(&tq), (step + 1) as f32);
        let cpu_calls = cq.variable(VarName::SeedState).unwrap().value[1];
        assert_eq!(cpu_calls, (step + 1) as f64);
    }
}

/// A call that fails changes no state, on any backend: the call counter of seeded rounding
/// stays where it was.
#[test]
fn a_failed_call_advances_no_counter() {
    let shape = [None, Some(16)];
    let vs = nn::VarStore::new(Device::Cpu);
    let tq = torch_q(&vs, srnd_spec(), &shape);
    let mut cq = CpuQuantizer::<f32>::new(srnd_spec(), &shape).unwrap();
    let bad = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
    assert!(matches!(
        tq.forward(&bad, CallMode::Training),
        Err(TorchError::Core(CoreError::InputShape { .. }))
    ));
    let x = [0.0f32; 10];
    let mut y = [0.0f32; 10];
    let r = cq.forward(
        TensorRef::new(&x, &[2, 5]).unwrap(),
        CallMode::Training,
        &mut y,
    );
    assert!(matches!(r, Err(CoreError::InputShape { .. })), "{r:?}");
    assert_eq!(f32s(&var(&tq, "seed_generator_state"))[1], 0.0);
    assert_eq!(cq.variable(VarName::SeedState).unwrap().value[1], 0.0);
}

/// The torch-ops path checks bit widths as hgq-core does, with hgq-core's errors: `k` not 0
/// or 1, non-integer or non-finite bit widths, shapes that do not broadcast.
#[test]
fn the_torch_ops_path_refuses_what_the_kernels_refuse() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let x32 = Tensor::from_slice(&[0.3f32, -1.2, 2.5, 0.7]);
    let x64 = x32.to_kind(Kind::Double);
    let one = |v: f32| Tensor::from_slice(&[v]);
    type Case = (Tensor, Tensor, Tensor, fn(&CoreError) -> bool);
    let cases: [Case; 4] = [
        (
            one(0.5),
            one(1.0),
            one(2.0),
            |e| matches!(e, CoreError::InvalidK(k) if *k == 0.5),
        ),
        (one(1.0), one(1.5), one(2.0), |e| {
            matches!(e, CoreError::InvalidParameter { name: "i", .. })
        }),
        (one(1.0), one(1.0), one(f32::INFINITY), |e| {
            matches!(e, CoreError::InvalidParameter { name: "f", .. })
        }),
        (
            one(1.0),
            Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
            one(2.0),
            |e| matches!(e, CoreError::Broadcast { .. }),
        ),
    ];
    for (k, i, f, want) in &cases {
        for (path, r) in [
            ("kernel", fixed_quantize(&q, &x32, k, i, f, false)),
            ("ops f32", fixed_quantize_ops(&q, &x32, k, i, f, false)),
            ("ops f64", fixed_quantize_ops(&q, &x64, k, i, f, false)),
        ] {
            match r {
                Err(TorchError::Core(e)) => assert!(want(&e), "{path}: {e}"),
                other => panic!("{path}: want hgq-core's error, got {other:?}"),
            }
        }
    }
    // KBI's raw b and i: the same rule on both paths.
    let kbi = q.with_bit_widths(BitWidths::KbiRaw);
    let (k, b, i) = (one(1.0), one(f32::NAN), one(1.0));
    let e1 = fixed_quantize(&kbi, &x32, &k, &b, &i, true).unwrap_err();
    let e2 = fixed_quantize_ops(&kbi, &x64, &k, &b, &i, true).unwrap_err();
    assert_eq!(e1.to_string(), e2.to_string());
}

/// An empty batch under WRAP tracking is a call without state change, on every dtype.
#[test]
fn an_empty_batch_changes_no_wrap_state() {
    let spec = QuantizerSpec::Kif(
        KifSpec::new(1.0, 2.0, 3.0, RoundMode::Rnd, OverflowMode::Wrap)
            .with_axes(Axes::Homogeneous(vec![0])),
    );
    for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
        let vs = nn::VarStore::new(Device::Cpu);
        let q = torch_q(&vs, spec.clone(), &[None, Some(3)]);
        let before = f32s(&var(&q, "i"));
        for mode in [CallMode::Training, CallMode::Tracing] {
            let x = Tensor::zeros([0, 3], (kind, Device::Cpu));
            let y = q.forward(&x, mode).unwrap();
            assert_eq!(y.size(), [0, 3]);
            assert_eq!(f32s(&var(&q, "i")), before, "{kind:?} {mode:?}");
        }
    }
    let mut cq = CpuQuantizer::<f64>::new(spec, &[None, Some(3)]).unwrap();
    let before = cq.variables().to_vec();
    let mut y: [f64; 0] = [];
    cq.forward(
        TensorRef::new(&[], &[0, 3]).unwrap(),
        CallMode::Training,
        &mut y,
    )
    .unwrap();
    assert_eq!(cq.variables(), &before[..]);
}

/// Values that mean nothing in a configuration are errors when the quantizer is made.
#[test]
fn meaningless_config_values_are_errors() {
    let mut s = KbiSpec::new(1.0, 4.0, 2.0, RoundMode::Rnd, OverflowMode::Wrap);
    s.fixed.i_decay_speed = f64::NAN;
    let spec = QuantizerSpec::Kbi(s);
    assert!(matches!(
        CpuQuantizer::<f32>::new(spec.clone(), &[Some(2)]),
        Err(CoreError::InvalidParameter {
            name: "i_decay_speed",
            ..
        })
    ));
    let vs = nn::VarStore::new(Device::Cpu);
    let core = CoreQuantizer {
        spec,
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    assert!(matches!(
        Quantizer::new(&vs.root(), &core, &[Some(2)]),
        Err(TorchError::Core(CoreError::InvalidParameter {
            name: "i_decay_speed",
            ..
        }))
    ));
    let ok = QuantizerSpec::Kbi(KbiSpec::new(
        1.0,
        4.0,
        2.0,
        RoundMode::Rnd,
        OverflowMode::Sat,
    ));
    for (scaler, qnoise, affine) in [
        (Some(f64::NAN), None, None),
        (Some(0.0), None, None),
        (None, Some(f64::INFINITY), None),
        (None, None, Some((1.0, f64::NAN))),
    ] {
        let core = CoreQuantizer {
            spec: ok.clone(),
            scaler,
            qnoise_factor: qnoise,
            affine,
        };
        assert!(
            matches!(
                Quantizer::new(&vs.root(), &core, &[Some(2)]),
                Err(TorchError::Config(_))
            ),
            "{scaler:?} {qnoise:?} {affine:?}"
        );
    }
    let mut s = KbiSpec::new(1.0, 4.0, 2.0, RoundMode::Rnd, OverflowMode::Sat);
    s.br = Some(hgq_torch::hgq_core::quantizer::Regularizer::L1(
        f64::INFINITY,
    ));
    assert!(matches!(
        CpuQuantizer::<f32>::new(QuantizerSpec::Kbi(s), &[Some(2)]),
        Err(CoreError::InvalidRule { var: "b", .. })
    ));
}

fn model(vs: &nn::VarStore) -> Sequential {
    let mut m = Sequential::new();
    m.add(&vs.root(), QDense::builder(4, 3)).unwrap();
    m.add(&vs.root(), QDense::builder(3, 2)).unwrap();
    m
}

fn snapshot(m: &Sequential) -> Vec<(String, Vec<u32>)> {
    m.layers()
        .iter()
        .flat_map(|l| l.keras_variables())
        .map(|(n, t)| (n, bits(&t)))
        .collect()
}

/// A layer call that fails leaves every quantizer as it was (the input quantizer does not
/// track its integer bits for a call whose matrix product then fails).
#[test]
fn a_failed_layer_call_changes_no_state() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = model(&vs);
    let good = Tensor::rand([5, 4], (Kind::Float, Device::Cpu));
    m.forward(&good, CallMode::Training).unwrap();
    let before = snapshot(&m);
    // A float64 input is refused for its element type, the others for their shape, before any
    // quantizer sees them.
    for (bad, of_shape) in [
        (Tensor::rand([5, 4], (Kind::Double, Device::Cpu)), false),
        (Tensor::rand([5, 3], (Kind::Float, Device::Cpu)), true),
        (Tensor::rand([4], (Kind::Float, Device::Cpu)), true),
    ] {
        for mode in [CallMode::Training, CallMode::Tracing] {
            let r = m.forward(&bad, mode).map(|_| ());
            let right = match &r {
                Err(TorchError::Kind {
                    what: "QDense input",
                    kind: Kind::Double,
                }) => !of_shape,
                Err(TorchError::Shape { built, got }) => {
                    of_shape && built[..] == [None, Some(4)] && *got == bad.size()
                }
                _ => false,
            };
            assert!(right, "{mode:?} {:?}: {r:?}", bad.size());
            assert_eq!(snapshot(&m), before, "{mode:?} {:?}", bad.size());
        }
    }
}

/// `trace_minmax` over no batch is an error; a bad batch after a good one leaves every
/// variable as before the call.
#[test]
fn trace_minmax_is_all_or_nothing() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = model(&vs);
    let good = Tensor::rand([5, 4], (Kind::Float, Device::Cpu));
    m.forward(&good, CallMode::Training).unwrap();
    let before = snapshot(&m);
    let r = m.trace_minmax(std::iter::empty::<&Tensor>());
    assert!(
        matches!(&r, Err(TorchError::Invalid { what: "trace_minmax batches", why }) if why.contains("none given")),
        "{r:?}"
    );
    assert_eq!(snapshot(&m), before);
    let mut bad = Tensor::rand([5, 4], (Kind::Float, Device::Cpu));
    let _ = bad.get(0).get(0).fill_(f64::NAN);
    let r = m.trace_minmax([&good, &bad]);
    assert!(
        matches!(
            &r,
            Err(TorchError::Core(CoreError::InvalidParameter {
                name: "x",
                value,
                ..
            })) if value.is_nan()
        ),
        "{r:?}"
    );
    assert_eq!(snapshot(&m), before);
    let _ = bad.fill_(0.5);
    m.trace_minmax([&good, &bad]).unwrap();
    assert_ne!(snapshot(&m), before, "a good trace records integer bits");
}

/// Types wider than float32 holds: the fused kernel and the torch-ops path both compute them
/// in float64 and give `ap_fixed`'s values (here `ap_fixed<28, 20, AP_RND, AP_WRAP>`, which
/// keeps every input below 2^19 on its 2^-8 grid); wider than float64 holds is an error.
#[test]
fn wide_types_are_exact_on_every_path() {
    let xv: Vec<f32> = (0..512)
        .map(|j| ((j * 7919) % 65536 - 32768) as f32 / 256.0)
        .collect();
    let x = Tensor::from_slice(&xv);
    let one = |v: f32| Tensor::from_slice(&[v]);
    for overflow in [OverflowMode::Wrap, OverflowMode::Sat] {
        let q = FixedPoint::new(RoundMode::Rnd, overflow).unwrap();
        let (k, i, f) = (one(1.0), one(19.0), one(8.0));
        let kernel = fixed_quantize(&q, &x, &k, &i, &f, false).unwrap();
        let ops = fixed_quantize_ops(&q, &x, &k, &i, &f, false).unwrap();
        assert_eq!(bits(&kernel), bits(&ops), "{overflow}");
        assert_eq!(f32s(&kernel), xv, "{overflow}");
    }
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let (k, i, f) = (one(1.0), one(29.0), one(30.0));
    for r in [
        fixed_quantize(&q, &x, &k, &i, &f, false),
        fixed_quantize_ops(&q, &x, &k, &i, &f, false),
    ] {
        assert!(
            matches!(r, Err(TorchError::Core(CoreError::TooWide { .. }))),
            "{r:?}"
        );
    }
}

/// The bit-width gradients a native step computes without autograd (hgq-core's `DualArith`:
/// `bits_backward`, `regularization_backward`) are the ones torch's autograd takes through
/// the same logic on tensors, for every kind of quantizer.
#[test]
fn bit_width_gradients_without_autograd_are_autograds() {
    use hgq_torch::hgq_core::quantizer::{FloatSpec, Regularizer};
    let mut specs: Vec<QuantizerSpec> = Vec::new();
    for om in [
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::Wrap,
        OverflowMode::WrapSm,
    ] {
        let mut kif = KifSpec::new(1.0, 2.0, 3.0, RoundMode::Rnd, om);
        kif.fixed.axes = Axes::Homogeneous(vec![0]);
        kif.fixed.trainable = true;
        kif.ir = Some(Regularizer::L2(0.25));
        kif.fr = Some(Regularizer::L1(0.5));
        specs.push(QuantizerSpec::Kif(kif));
        let mut kbi = KbiSpec::new(1.0, 5.0, 2.0, RoundMode::Rnd, om);
        kbi.fixed.axes = Axes::Homogeneous(vec![0]);
        kbi.br = Some(Regularizer::MonoL1(0.125));
        specs.push(QuantizerSpec::Kbi(kbi));
    }
    let mut fl = FloatSpec::new(2.0, 3.0, 1.0).with_axes(Axes::Homogeneous(vec![0]));
    fl.mr = Some(Regularizer::L2(0.5));
    specs.push(QuantizerSpec::Float(fl));
    specs.push(QuantizerSpec::Dummy);
    let shape = [None, Some(6)];
    for (n, spec) in specs.into_iter().enumerate() {
        let mut core = CpuQuantizer::<f32>::new(spec.clone(), &shape).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let tq = torch_q(&vs, spec.clone(), &shape);
        // Raw values around the integers and below zero (relu's kink), the same on both.
        for (j, v) in core.variables_mut().iter_mut().enumerate() {
            if matches!(
                v.name,
                VarName::B | VarName::I | VarName::F | VarName::M | VarName::E
            ) {
                let d = data(v.value.len(), (n * 10 + j) as u64);
                for (e, r) in v.value.iter_mut().zip(d) {
                    *e = (r * 0.6) as f32;
                }
            }
        }
        tch::no_grad(|| {
            for (name, t) in tq.variables() {
                let v = core.variable(name).unwrap();
                t.shallow_clone()
                    .copy_(&Tensor::from_slice(&v.value).reshape(t.size()));
            }
        });
        let bits = tq.bits().unwrap();
        let up: Vec<f32> = data(bits.numel(), 99 + n as u64)
            .iter()
            .map(|&u| u as f32)
            .collect();
        let ours = core.bits_backward(&up).unwrap();
        let loss = (&bits * Tensor::from_slice(&up).reshape(bits.size())).sum(Kind::Float)
            + tq.regularization_loss().unwrap();
        let reg = core.regularization_backward().unwrap();
        let trainable = tq.trainable_names();
        if !trainable.is_empty() && loss.requires_grad() {
            loss.backward();
        }
        for (name, t) in tq.variables() {
            let got_bits = ours.get(name);
            let got_reg = reg.get(name);
            if !trainable.contains(&name) {
                assert!(got_bits.is_none() && got_reg.is_none(), "{spec:?} {name:?}");
                continue;
            }
            let g = t.grad();
            let want = if g.defined() {
                f32s(&g)
            } else {
                vec![0.0; t.numel()]
            };
            let mut got = got_bits.map_or(vec![0.0; want.len()], <[f32]>::to_vec);
            if let Some(r) = got_reg {
                got.iter_mut().zip(r).for_each(|(a, &b)| *a += b);
            }
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{spec:?} {name:?}[{j}]: {a} (native) != {b} (autograd)"
                );
            }
        }
    }
}

/// The seed counter of seeded stochastic rounding, read and advanced by every training call:
/// on a device (rehearsed here) the logic reads back what it wrote from the values it keeps,
/// not from the device; the noise and the counter are the host's.
#[test]
fn the_seed_counter_is_not_read_back_from_a_device() {
    use hgq_torch::cuda::{Route, rehearse};
    let (rows, cols) = (64, 16);
    let xv: Vec<f32> = data(rows * cols, 5).iter().map(|&v| v as f32).collect();
    let x = Tensor::from_slice(&xv).view([rows as i64, cols as i64]);
    let shape = [None, Some(cols)];
    let (host_vs, dev_vs) = (
        nn::VarStore::new(Device::Cpu),
        nn::VarStore::new(Device::Cpu),
    );
    let (host_q, dev_q) = (
        torch_q(&host_vs, srnd_spec(), &shape),
        torch_q(&dev_vs, srnd_spec(), &shape),
    );
    for call in 0..4 {
        let want = host_q.forward(&x, CallMode::Training).unwrap();
        for route in [Route::Kernel, Route::TorchOps] {
            let (got, reads) = rehearse(route, || dev_q.forward(&x, CallMode::Training).unwrap());
            // The first call reads the counter once; later ones know it.
            if call > 0 && route == Route::Kernel {
                assert_eq!(reads.total(), 0, "call {call}: {reads:?}");
            }
            assert_eq!(
                reads.of("quantizer variable"),
                u64::from(call == 0 && route == Route::Kernel)
            );
            // Each route's call advances the counter: compare the Kernel call with the host's.
            if route == Route::Kernel {
                assert_eq!(bits(&got), bits(&want), "call {call}");
            }
        }
        let _ = host_q.forward(&x, CallMode::Training).unwrap();
    }
}
