//! `Sequential::train_step`: the native step (no autograd) trains as the autograd step does,
//! says why where it cannot run, and refuses bad input before any state moves.
mod common;

use common::seeded;
use hgq_torch::TorchError;
use hgq_torch::layers::{Activation, QDense, Sequential, StepPath};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn};

/// The digits demo's shape on 12 features: QDense(16, relu) -> QDense(5), hgq2's defaults,
/// a beta large enough for the EBOPs to move the bit widths.
fn model(seed: i64) -> (nn::VarStore, Sequential, Adam) {
    seeded(seed, build)
}

fn build() -> (nn::VarStore, Sequential, Adam) {
    mlp([12, 16, 5], 1e-3)
}

/// QDense(hidden, relu) -> QDense(classes) on `inputs` features, hgq2's defaults, `beta`
/// for both; Adam at 3e-3.
fn mlp([inputs, hidden, classes]: [usize; 3], beta: f64) -> (nn::VarStore, Sequential, Adam) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Sequential::new();
    m.add(
        &vs.root(),
        QDense::builder(inputs, hidden)
            .activation(Activation::Relu)
            .beta(beta),
    )
    .unwrap();
    m.add(&vs.root(), QDense::builder(hidden, classes).beta(beta))
        .unwrap();
    let opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    (vs, m, opt)
}

fn batches(n: usize) -> Vec<(Tensor, Tensor)> {
    seeded(100, || {
        (0..n)
            .map(|_| {
                (
                    Tensor::rand([32, 12], (Kind::Float, Device::Cpu)) * 4.0 - 2.0,
                    Tensor::randint(5, [32], (Kind::Int64, Device::Cpu)),
                )
            })
            .collect()
    })
}

fn values(vs: &nn::VarStore) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Thirty steps on each path from the same initial state: the losses, the accuracy counts
/// and the EBOPs follow each other (the paths differ only in the order of float32 sums of the
/// matrix products, which Adam's normalized steps amplify slowly).
#[test]
fn native_steps_train_as_autograd_steps() {
    hgq_torch::hgq_core::scratch::poison();
    let data = batches(30);
    let (vs_n, m_n, mut opt_n) = model(7);
    let (vs_a, m_a, mut opt_a) = model(7);
    assert_eq!(values(&vs_n), values(&vs_a));
    let (mut worst, mut correct) = (0.0f64, (0i64, 0i64));
    for (x, y) in &data {
        let n = m_n
            .train_step_on(StepPath::Native, x, y, &mut opt_n)
            .unwrap();
        let a = m_a
            .train_step_on(StepPath::Autograd, x, y, &mut opt_a)
            .unwrap();
        let (ln, la) = (n.loss.double_value(&[]), a.loss.double_value(&[]));
        worst = worst.max((ln - la).abs() / la.abs());
        correct.0 += n.correct.int64_value(&[]);
        correct.1 += a.correct.int64_value(&[]);
    }
    assert!(worst < 1e-5, "losses apart by {worst:e} (relative)");
    assert!((correct.0 - correct.1).abs() <= 3, "{correct:?} correct");
    let (en, ea) = (m_n.ebops() as f64, m_a.ebops() as f64);
    assert!((en - ea).abs() <= 1e-3 * ea, "EBOPs {en} and {ea}");
    assert_eq!(opt_n.iterations(), 30);
    // The state after: close everywhere.
    for ((name, a), (_, b)) in values(&vs_n).iter().zip(&values(&vs_a)) {
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 2e-3 * (1.0 + y.abs()),
                "{name}: {x} and {y}"
            );
        }
    }
}

/// Kernel bit widths that the EBOPs push down stop at their constraint's bound (hgq2's KBI
/// default `bc`: `MinMax(0, 23)`): the native step applies each variable's constraint after
/// Adam's update, in the update's pass; the autograd step (constraints after the optimizer)
/// ends in the same place.
#[test]
fn native_steps_apply_the_bit_width_constraints() {
    let data = batches(12);
    let bits = |m: &Sequential| -> Vec<f32> {
        let q = m.layer::<QDense>(0).unwrap().kq();
        let b = q.q.variable(hgq_core::quantizer::VarName::B).unwrap();
        Vec::<f32>::try_from(b.flatten(0, -1)).unwrap()
    };
    let mut ends = Vec::new();
    for path in [StepPath::Native, StepPath::Autograd] {
        let (vs, m, _) = model(5);
        m.set_beta(1.0).unwrap();
        let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1.0)).unwrap();
        for (x, y) in &data {
            m.train_step_on(path, x, y, &mut opt).unwrap();
        }
        let b = bits(&m);
        assert!(
            b.iter().all(|&v| (0.0..=23.0).contains(&v)),
            "{path:?}: {b:?}"
        );
        let at_bound = b.iter().filter(|&&v| v == 0.0).count();
        assert!(
            at_bound > b.len() / 2,
            "{path:?}: {at_bound} of {} at 0",
            b.len()
        );
        ends.push(b);
    }
    assert_eq!(ends[0], ends[1]);
}

/// `train_step` takes the native path on float32 CPU tensors: the same result as asking for
/// it.
#[test]
fn train_step_is_the_native_step_here() {
    let data = batches(3);
    let (vs_auto, m_auto, mut opt_auto) = model(3);
    let (vs_nat, m_nat, mut opt_nat) = model(3);
    for (x, y) in &data {
        let a = m_auto.train_step(x, y, &mut opt_auto).unwrap();
        let n = m_nat
            .train_step_on(StepPath::Native, x, y, &mut opt_nat)
            .unwrap();
        assert_eq!(a.loss.double_value(&[]), n.loss.double_value(&[]));
    }
    assert_eq!(values(&vs_auto), values(&vs_nat));
}

/// The native step on two threads (its passes, products and Adam's update split over a
/// spinning team) gives the one-thread step's variables bit for bit: every split is
/// elementwise, or a product's rows or columns, or a reduction in the shapes' order. The model
/// is large enough for every kind of split (a 64x256 kernel, 128 x 256 activations).
#[test]
fn native_steps_are_the_same_on_one_and_two_threads() {
    // Buffers from `hgq_core::scratch` hold NaN: an output a step leaves partly unwritten
    // makes its losses NaN (and unequal).
    hgq_torch::hgq_core::scratch::poison();
    let build = || mlp([64, 256, 10], 1e-4);
    let data = || -> Vec<(Tensor, Tensor)> {
        seeded(7, || {
            (0..3)
                .map(|_| {
                    (
                        Tensor::rand([128, 64], (Kind::Float, Device::Cpu)) * 4.0 - 2.0,
                        Tensor::randint(10, [128], (Kind::Int64, Device::Cpu)),
                    )
                })
                .collect()
        })
    };
    // Everything on the pool's thread: the step's thread count is its pool's.
    let run = |threads: usize| {
        let pool = hgq_torch::hgq_core::kernels::thread_pool(threads).expect("a thread pool");
        pool.install(|| {
            let (vs, m, mut opt) = seeded(11, build);
            let losses: Vec<f64> = data()
                .iter()
                .map(|(x, y)| {
                    m.train_step_on(StepPath::Native, x, y, &mut opt)
                        .unwrap()
                        .loss
                        .double_value(&[])
                })
                .collect();
            (losses, values(&vs))
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0, two.0);
    for ((name, a), (_, b)) in one.1.iter().zip(&two.1) {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs between one and two threads");
    }
}

/// An input the native step cannot read in place: `Native` says so, `Auto` trains through
/// autograd.
#[test]
fn native_step_says_why_not() {
    let (_vs, m, mut opt) = model(1);
    let (x, y) = seeded(11, || {
        (
            (Tensor::rand([12, 32], (Kind::Float, Device::Cpu)) - 0.5).tr(),
            Tensor::randint(5, [32], (Kind::Int64, Device::Cpu)),
        )
    });
    assert!(!x.is_contiguous());
    let err = m
        .train_step_on(StepPath::Native, &x, &y, &mut opt)
        .unwrap_err();
    assert!(
        matches!(&err, TorchError::Unsupported(why) if why.contains("contiguous")),
        "{err}"
    );
    assert_eq!(opt.iterations(), 0);
    let out = m.train_step(&x, &y, &mut opt).unwrap();
    assert!(out.loss.double_value(&[]).is_finite());
    assert_eq!(opt.iterations(), 1);
}

/// Labels out of range, of another length, an empty batch, an input of the wrong width: an
/// error that names it, and every variable (the WRAP integer bits included) and the
/// optimizer's step count as before.
#[test]
fn bad_input_is_refused_before_any_state_moves() {
    let (vs, m, mut opt) = model(2);
    let (x, ok, x11) = seeded(12, || {
        (
            Tensor::rand([8, 12], (Kind::Float, Device::Cpu)),
            Tensor::randint(5, [8], (Kind::Int64, Device::Cpu)),
            Tensor::rand([8, 11], (Kind::Float, Device::Cpu)),
        )
    });
    m.train_step(&x, &ok, &mut opt).unwrap();
    let before = values(&vs);
    let labels = |v: &[i64]| Tensor::from_slice(v);
    let cases: Vec<(&str, Tensor, Tensor)> = vec![
        (
            "label 5",
            x.shallow_clone(),
            labels(&[0, 1, 2, 3, 4, 5, 0, 1]),
        ),
        (
            "label -1",
            x.shallow_clone(),
            labels(&[0, 1, 2, 3, 4, -1, 0, 1]),
        ),
        (
            "7 labels",
            x.shallow_clone(),
            labels(&[0, 1, 2, 3, 4, 0, 1]),
        ),
        (
            "no rows",
            Tensor::zeros([0, 12], (Kind::Float, Device::Cpu)),
            labels(&[]),
        ),
        ("11 features", x11, ok.shallow_clone()),
    ];
    let empty = Sequential::new();
    let err = empty.train_step(&x, &ok, &mut opt).unwrap_err();
    assert!(
        matches!(err, TorchError::Invalid { what: "model", .. }),
        "{err}"
    );
    for (what, x, y) in cases {
        let err = m.train_step(&x, &y, &mut opt).unwrap_err();
        let named = match &err {
            TorchError::Invalid { what: w, .. } => {
                ["label", "labels", "training batch"].contains(w)
            }
            TorchError::Shape { got, .. } => got == &[8, 11],
            _ => false,
        };
        assert!(named, "{what}: {err}");
        assert_eq!(values(&vs), before, "{what}: the state moved");
        assert_eq!(opt.iterations(), 1, "{what}");
    }
}
