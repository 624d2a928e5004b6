//! Training and persistence of the tensor quantizers: tch's Adam moves KIF's fractional bits
//! the way the gradient says (up for a reconstruction loss, down for MonoL1 or a bit-count
//! loss) and `apply_constraints` keeps them in range; a `VarStore` saved after training and
//! loaded into freshly built modules gives bit-identical inference outputs (a quantizer and a
//! `Sequential` of `QDense`). Each test runs on the CPU and, where one is present, on CUDA.
mod common;

use common::{bits, cuda, f32s, var};
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::CallMode;
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::{Constraint, KifSpec, Regularizer};
use hgq_torch::hgq_core::{OverflowMode, RoundMode};
use hgq_torch::layers::{Activation, QDense, Sequential};
use hgq_torch::quantizer::Quantizer;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor, nn};

const LN2: f64 = std::f64::consts::LN_2;

/// KIF k0 = 1, i0 = 2, f0 = 6, RND, SAT, one bit width per feature (axis 0 shares), for
/// inputs `[None, 4]`; `f` constrained to `[f_min, 7.5]`, `i` to `[-4, 4]`.
fn kif(path: &nn::Path, f_min: f64, fr: Option<Regularizer>) -> Quantizer {
    let mut spec = KifSpec::new(1.0, 2.0, 6.0, RoundMode::Rnd, OverflowMode::Sat)
        .with_axes(Axes::Homogeneous(vec![0]));
    spec.fc = Some(Constraint::MinMax {
        min: f_min,
        max: 7.5,
    });
    spec.ic = Some(Constraint::MinMax {
        min: -4.0,
        max: 4.0,
    });
    spec.fr = fr;
    let core = CoreQuantizer {
        spec: QuantizerSpec::Kif(spec),
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    Quantizer::new(path, &core, &[None, Some(4)]).expect("a KIF quantizer")
}

/// x in [-3, 3): inside the SAT range of i = 2, so only f gets gradients.
fn inputs(device: Device) -> Tensor {
    common::seeded(0, || {
        Tensor::rand([64, 4], (Kind::Float, Device::Cpu)) * 6.0 - 3.0
    })
    .to_device(device)
}

/// `mean((q(x) - x)^2)` falls as f grows: `d/df = -2 ln2 mean_rows((x - q)^2) < 0`, so Adam
/// raises f every step, until the constraint's maximum holds it at 7.5.
fn adam_raises_f(device: Device) {
    let vs = nn::VarStore::new(device);
    let q = kif(&vs.root(), 0.0, None);
    let mut opt = nn::Adam::default().build(&vs, 0.1).expect("Adam");
    let x = inputs(device);
    let (f, i) = (&var(&q, "f"), &var(&q, "i"));
    let mut prev = f32s(f);
    for step in 0..25 {
        opt.zero_grad();
        let y = q.forward(&x, CallMode::Training).expect("forward");
        let loss = (&y - &x).square().mean(Kind::Float);
        loss.backward();
        // The gradient the formula gives, per feature.
        let err = (&x - &y)
            .detach()
            .square()
            .sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
        let want = f32s(&(err * (-2.0 * LN2 / 256.0)));
        let got = f32s(&f.grad());
        for (g, w) in got.iter().zip(&want) {
            assert!(*g < 0.0, "step {step}: df = {g} is not negative");
            assert!(
                (g - w).abs() <= 1e-5 * w.abs() + 1e-7,
                "step {step}: df = {g}, formula {w}"
            );
        }
        opt.step();
        q.apply_constraints().unwrap();
        let now = f32s(f);
        for (n, p) in now.iter().zip(&prev) {
            assert!(n >= p, "step {step}: f fell from {p} to {n}");
            assert!(
                (0.0..=7.5).contains(n),
                "step {step}: f = {n} out of [0, 7.5]"
            );
        }
        prev = now;
    }
    assert_eq!(prev, vec![7.5; 4], "f ends at the constraint's maximum");
    assert_eq!(
        f32s(i),
        vec![2.0; 4],
        "i had no gradient (no clipping) and stays"
    );
}

/// MonoL1 on f (`loss = l * sum(f)`, gradient `l`): Adam lowers f by about its learning rate
/// per step until the constraint's minimum (5) holds it.
fn adam_lowers_f_monol1(device: Device) {
    let vs = nn::VarStore::new(device);
    let q = kif(&vs.root(), 5.0, Some(Regularizer::MonoL1(0.5)));
    let mut opt = nn::Adam::default().build(&vs, 0.1).expect("Adam");
    let f = &var(&q, "f");
    let mut prev = f32s(f);
    for step in 0..25 {
        opt.zero_grad();
        let loss = q.regularization_loss().unwrap();
        assert!(
            (loss.double_value(&[]) - 0.5 * prev.iter().map(|&v| v as f64).sum::<f64>()).abs()
                < 1e-5
        );
        loss.backward();
        assert_eq!(
            f32s(&f.grad()),
            vec![0.5; 4],
            "step {step}: d(l sum f)/df = l"
        );
        opt.step();
        q.apply_constraints().unwrap();
        let now = f32s(f);
        for (n, p) in now.iter().zip(&prev) {
            assert!(n <= p, "step {step}: f rose from {p} to {n}");
            assert!(
                (5.0..=7.5).contains(n),
                "step {step}: f = {n} out of [5, 7.5]"
            );
        }
        prev = now;
    }
    assert_eq!(prev, vec![5.0; 4], "f ends at the constraint's minimum");
}

/// A loss on the bit count (`sum(bits)`, bits = relu(i + f) + k, what EBOPs train through):
/// gradient 1 for i and f (straight through the rounding), so Adam (learning rate 1: steps of
/// about 1 for a constant gradient) lowers both by one bit a step, the bit count by two.
fn adam_lowers_bits(device: Device) {
    let vs = nn::VarStore::new(device);
    let q = kif(&vs.root(), 0.0, None);
    let mut opt = nn::Adam::default().build(&vs, 1.0).expect("Adam");
    let (f, i) = (&var(&q, "f"), &var(&q, "i"));
    for step in 0..4 {
        opt.zero_grad();
        let bits = q.props().unwrap().bits;
        assert_eq!(f32s(&bits), vec![(9 - 2 * step) as f32; 4], "step {step}");
        let loss = bits.sum(Kind::Float);
        loss.backward();
        assert_eq!(f32s(&f.grad()), vec![1.0; 4], "step {step}: d bits / d f");
        assert_eq!(f32s(&i.grad()), vec![1.0; 4], "step {step}: d bits / d i");
        opt.step();
        q.apply_constraints().unwrap();
    }
    let (fv, iv) = (f32s(f), f32s(i));
    assert!(fv.iter().all(|&v| (v - 2.0).abs() < 1e-3), "f: {fv:?}");
    assert!(iv.iter().all(|&v| (v + 2.0).abs() < 1e-3), "i: {iv:?}");
}

#[test]
fn adam_raises_f_cpu() {
    adam_raises_f(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn adam_raises_f_cuda() {
    let d = cuda();
    adam_raises_f(d);
}

#[test]
fn adam_lowers_f_monol1_cpu() {
    adam_lowers_f_monol1(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn adam_lowers_f_monol1_cuda() {
    let d = cuda();
    adam_lowers_f_monol1(d);
}

#[test]
fn adam_lowers_bits_cpu() {
    adam_lowers_bits(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn adam_lowers_bits_cuda() {
    let d = cuda();
    adam_lowers_bits(d);
}

fn temp_path(what: &str, device: Device) -> std::path::PathBuf {
    let dev = if device == Device::Cpu { "cpu" } else { "cuda" };
    std::env::temp_dir().join(format!("hgq-torch-{what}-{dev}-{}.ot", std::process::id()))
}

/// A WRAP datalane quantizer (its integer bits tracked from the data, a non-trainable
/// variable) and a SAT one, trained a few steps, saved, loaded into fresh ones.
fn save_load_quantizer(device: Device) {
    let build = |vs: &nn::VarStore| {
        let mut spec = KifSpec::new(1.0, 2.0, 6.0, RoundMode::Rnd, OverflowMode::Wrap)
            .with_axes(Axes::Homogeneous(vec![0]));
        spec.fixed.i_decay_speed = 0.25;
        let core = |spec| CoreQuantizer {
            spec,
            scaler: None,
            qnoise_factor: None,
            affine: None,
        };
        let wrap = Quantizer::new(
            &(vs.root() / "wrap"),
            &core(QuantizerSpec::Kif(spec)),
            &[None, Some(4)],
        )
        .expect("WRAP quantizer");
        let sat = kif(&(vs.root() / "sat"), 0.0, Some(Regularizer::MonoL1(1e-3)));
        (wrap, sat)
    };
    let vs = nn::VarStore::new(device);
    let (wrap, sat) = build(&vs);
    let mut opt = nn::Adam::default().build(&vs, 0.05).expect("Adam");
    let x = inputs(device) * 1.7;
    for _ in 0..4 {
        let y = sat.forward(
            &wrap.forward(&x, CallMode::Training).unwrap(),
            CallMode::Training,
        );
        let loss =
            (y.unwrap() - &x).square().mean(Kind::Float) + sat.regularization_loss().unwrap();
        opt.backward_step(&loss);
        wrap.apply_constraints().unwrap();
        sat.apply_constraints().unwrap();
    }
    let path = temp_path("quantizer", device);
    vs.save(&path).expect("save");

    let mut vs2 = nn::VarStore::new(device);
    let (wrap2, sat2) = build(&vs2);
    // Training moved the variables away from a fresh build's.
    assert_ne!(bits(&var(&sat, "f")), bits(&var(&sat2, "f")));
    assert_ne!(bits(&var(&wrap, "i")), bits(&var(&wrap2, "i")));
    vs2.load(&path).expect("load");
    let _ = std::fs::remove_file(&path);
    for (a, b) in [(&wrap, &wrap2), (&sat, &sat2)] {
        for ((n, t), (_, t2)) in a.variables().into_iter().zip(b.variables()) {
            assert_eq!(bits(&t), bits(&t2), "variable {n}");
        }
    }
    let x2 = inputs(device) * 2.3 - 0.4;
    let run = |w: &Quantizer, s: &Quantizer| {
        let y = s
            .forward(
                &w.forward(&x2, CallMode::Inference).unwrap(),
                CallMode::Inference,
            )
            .unwrap();
        bits(&y)
    };
    assert_eq!(run(&wrap, &sat), run(&wrap2, &sat2), "inference after load");
}

fn model(vs: &nn::VarStore) -> Sequential {
    let mut m = Sequential::new();
    m.add(
        &vs.root(),
        QDense::builder(4, 8)
            .activation(Activation::Relu)
            .beta(1e-4),
    )
    .expect("layer 1");
    m.add(&vs.root(), QDense::builder(8, 3).beta(1e-4))
        .expect("layer 2");
    m
}

/// Two `QDense` layers (hgq2's default quantizers: WRAP inputs, KBI weights), trained a few
/// steps with Adam, saved, loaded into a freshly built (differently initialized) model.
fn save_load_sequential(device: Device) {
    let vs = nn::VarStore::new(device);
    let m = common::seeded(3, || model(&vs));
    let mut opt = nn::Adam::default().build(&vs, 1e-2).expect("Adam");
    let x = inputs(device);
    let target = x.narrow(1, 0, 3).sin();
    for _ in 0..5 {
        let out = m.forward(&x, CallMode::Training).expect("forward");
        let loss = (out.y - &target).square().mean(Kind::Float) + out.ebops_loss;
        opt.backward_step(&loss);
        m.apply_constraints().unwrap();
    }
    let path = temp_path("sequential", device);
    vs.save(&path).expect("save");
    let mut vs2 = nn::VarStore::new(device);
    let m2 = common::seeded(4, || model(&vs2));
    let x2 = inputs(device) * 1.3;
    let infer = |m: &Sequential| bits(&m.forward(&x2, CallMode::Inference).unwrap().y);
    assert_ne!(
        infer(&m),
        infer(&m2),
        "a fresh model differs before loading"
    );
    vs2.load(&path).expect("load");
    let _ = std::fs::remove_file(&path);
    let (v1, v2) = (m.keras_variables(), m2.keras_variables());
    assert_eq!(v1.len(), v2.len());
    for ((n1, t1), (n2, t2)) in v1.iter().zip(&v2) {
        assert_eq!(n1, n2);
        assert_eq!(bits(t1), bits(t2), "variable {n1}");
    }
    assert_eq!(infer(&m), infer(&m2), "inference after load");
}

#[test]
fn save_load_quantizer_cpu() {
    save_load_quantizer(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn save_load_quantizer_cuda() {
    let d = cuda();
    save_load_quantizer(d);
}

#[test]
fn save_load_sequential_cpu() {
    save_load_sequential(Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn save_load_sequential_cuda() {
    let d = cuda();
    save_load_sequential(d);
}
