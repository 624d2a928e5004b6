//! KBI's raw bit widths on the CPU: the pass forms `i = rc(i)`, `f = rc(b) - rc(i)` and the
//! gradients through them itself (no tensor operations). Against the same formula written as
//! tensor operations and differentiated by autograd: identical outputs and gradients, bit for
//! bit, for raw values on and between the ties of half-to-even rounding, in training and
//! inference, for SAT, SAT_SYM and WRAP (training tracks i), float32 and bfloat16 inputs.
mod common;

use common::{bits, var};
use hgq_torch::fixed_quantize;
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::KbiSpec;
use hgq_torch::hgq_core::{CallMode, FixedPoint, OverflowMode, RoundMode};
use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor, nn};

/// Raw b, i with ties (x.5) of both parities, negatives and a zero.
const B: [f32; 6] = [2.5, 3.5, 4.0, 0.5, 1.5, 6.0];
const I: [f32; 6] = [0.5, 1.5, -1.0, 2.5, -0.5, 0.0];

fn set(t: &Tensor, v: &[f32]) {
    tch::no_grad(|| t.shallow_clone().copy_(&Tensor::from_slice(v)));
}

/// `round(v) + (v - stop_gradient(v))`.
fn rc(v: &Tensor) -> Tensor {
    let d = v.detach();
    d.round() + (v - &d)
}

fn inputs(kind: Kind) -> (Tensor, Tensor) {
    common::seeded(3, || {
        let x = (Tensor::rand([16, 6], (Kind::Float, Device::Cpu)) * 40.0 - 20.0).to_kind(kind);
        let w = Tensor::randn([16, 6], (Kind::Float, Device::Cpu));
        (x, w)
    })
}

fn check(overflow: OverflowMode, mode: CallMode, kind: Kind) {
    let what = format!("{overflow} {mode:?} {kind:?}");
    let vs = nn::VarStore::new(Device::Cpu);
    let spec =
        KbiSpec::new(1.0, 4.0, 2.0, RoundMode::Rnd, overflow).with_axes(Axes::Homogeneous(vec![0]));
    let core = CoreQuantizer {
        spec: QuantizerSpec::Kbi(spec),
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    let q = Quantizer::new(&vs.root(), &core, &[None, Some(6)]).expect("KBI");
    let (b, i) = (&var(&q, "b"), &var(&q, "i"));
    set(b, &B);
    set(i, &I);
    let (x, w) = inputs(kind);
    let x = x.set_requires_grad(true);
    let y = q.forward(&x, mode).expect("forward");
    let tracked_i = bits(i);
    (y.to_kind(Kind::Float) * &w).sum(Kind::Float).backward();

    // The formula as tensor operations, on copies of the raw values.
    let b2 = Tensor::from_slice(&B).view([1, 6]).set_requires_grad(true);
    let i2 = Tensor::from_slice(&I).view([1, 6]).set_requires_grad(true);
    let x2 = x.detach().set_requires_grad(true);
    let k = Tensor::ones([1, 6], (Kind::Float, Device::Cpu));
    let wrap_training = overflow == OverflowMode::Wrap && mode == CallMode::Training;
    let (fq, iu) = if wrap_training {
        // Training tracks i (not trained): the pass uses the new i, rounded, as a constant.
        let iu = Tensor::from_slice(
            &Vec::<f32>::try_from(&i.detach().view(-1))
                .unwrap()
                .iter()
                .map(|v| v.round_ties_even())
                .collect::<Vec<_>>(),
        )
        .view([1, 6]);
        (
            FixedPoint::new(RoundMode::Rnd, OverflowMode::Wrap).unwrap(),
            iu,
        )
    } else {
        (
            FixedPoint::new(RoundMode::Rnd, overflow)
                .unwrap()
                .with_zero_mask(true),
            rc(&i2),
        )
    };
    let f = rc(&b2) - &iu;
    let training = mode == CallMode::Training || wrap_training;
    // Computed in float32 and stored in x's kind, as the quantizer does for half types.
    let y2 = fixed_quantize(&fq, &x2.to_kind(Kind::Float), &k, &iu, &f, training)
        .expect("reference")
        .to_kind(kind);
    (y2.to_kind(Kind::Float) * &w).sum(Kind::Float).backward();

    assert_eq!(bits(&y), bits(&y2), "{what}: y");
    assert_eq!(bits(&x.grad()), bits(&x2.grad()), "{what}: dx");
    if mode == CallMode::Training {
        assert_eq!(bits(&b.grad()), bits(&b2.grad().view(-1)), "{what}: db");
        if wrap_training {
            assert!(!i.grad().defined(), "{what}: i is tracked, not trained");
            assert_ne!(tracked_i, bits(&i2.detach().view(-1)), "{what}: i tracked");
        } else {
            assert_eq!(bits(&i.grad()), bits(&i2.grad().view(-1)), "{what}: di");
        }
    }
}

#[test]
fn sat_modes_match_the_tensor_formula() {
    for overflow in [OverflowMode::Sat, OverflowMode::SatSym] {
        for mode in [CallMode::Training, CallMode::Inference] {
            for kind in [Kind::Float, Kind::BFloat16] {
                check(overflow, mode, kind);
            }
        }
    }
}

#[test]
fn wrap_training_matches_the_tensor_formula() {
    for kind in [Kind::Float, Kind::BFloat16] {
        check(OverflowMode::Wrap, CallMode::Training, kind);
    }
}
