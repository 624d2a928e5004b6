//! `QDense` as users build with it: inside tch's `nn::seq_t()` (`nn::ModuleT`, EBOPs through an
//! `EbopsTape`), on inputs of more than two dimensions (Keras' `Dense` on the last axis), with a
//! `beta` schedule, and a `Sequential` that refuses layers that do not fit.
mod common;

use common::seeded;
use hgq_torch::TorchError;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, EbopsTape, Layer, Names, QDense, Sequential, StepPath};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor, nn};

fn rand(shape: &[i64], seed: i64) -> Tensor {
    seeded(seed, || {
        Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 4.0 - 2.0
    })
}

/// In `nn::seq_t()` after a tch `Linear`: the output is the layer's own forward of the linear's
/// output, the tape holds `beta * ebops`, and one backward reaches the tch weights and the
/// bit widths alike.
#[test]
fn qdense_in_a_tch_sequence() {
    let vs = nn::VarStore::new(Device::Cpu);
    let (mut names, tape) = (Names::default(), EbopsTape::new());
    let (net, q) = seeded(1, || {
        let lin = nn::linear(vs.root() / "lin", 4, 16, Default::default());
        let q = QDense::builder(16, 3)
            .activation(Activation::Relu)
            .beta(1e-2)
            .ebops_tape(&tape)
            .build(&vs.root(), &mut names)
            .unwrap();
        // A second layer sharing the variables, to read the forward without the sequence.
        (nn::seq_t().add(lin), q)
    });
    let x = rand(&[8, 4], 2);
    let h = net.forward_t(&x, true);
    let y = q.forward_t(&h, true);
    let e = q.ebops();
    let from_tape = tape.take().unwrap();
    assert!((from_tape.double_value(&[]) - 1e-2 * e as f64).abs() < 1e-3 * e as f64 + 1e-3);
    assert_eq!(
        tape.take().unwrap().double_value(&[]),
        0.0,
        "take empties the tape"
    );
    let direct = q.forward(&h, CallMode::Training).unwrap();
    assert!(direct.y.equal(&y));
    // Every training forward records, this one too.
    let again = tape.take().unwrap().double_value(&[]);
    assert!((again - 1e-2 * e as f64).abs() < 1e-3 * e as f64 + 1e-3);

    let loss = y.square().mean(Kind::Float) + from_tape;
    loss.backward();
    let vars = vs.variables();
    assert!(vars["lin.weight"].grad().defined(), "the tch layer trains");
    let f = vars
        .iter()
        .find(|(n, _)| n.ends_with("fixed_point_quantizer_kif.f"))
        .map(|(_, t)| t.grad())
        .unwrap();
    assert!(f.defined() && f.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Inference through the same interface records nothing.
    let _ = q.forward_t(&h, false);
    assert_eq!(tape.take().unwrap().double_value(&[]), 0.0);
}

/// A refused input panics through `nn::ModuleT` (its signature has no `Result`) with the
/// error `forward` returns.
#[test]
#[should_panic(expected = "input of shape [8, 5]")]
fn module_t_panics_with_the_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    let q = QDense::builder(4, 2)
        .build(&vs.root(), &mut Names::default())
        .unwrap();
    let _ = q.forward_t(&rand(&[8, 5], 3), true);
}

/// `[batch, 3, 4]` inputs, `Dense(5)` on the last axis: the output is the quantized input times
/// the quantized kernel plus the quantized bias per position, and the EBOPs count every
/// position (input bit widths per position and feature) as hgq2 does.
#[test]
fn qdense_on_the_last_axis() {
    let vs = nn::VarStore::new(Device::Cpu);
    let q = seeded(4, || {
        QDense::builder(4, 5)
            .input_dims(&[3, 4])
            .build(&vs.root(), &mut Names::default())
            .unwrap()
    });
    assert_eq!(q.output_dims(), vec![3, 5]);
    let x = rand(&[6, 3, 4], 5);
    let out = q.forward(&x, CallMode::Training).unwrap();
    assert_eq!(out.y.size(), [6, 3, 5]);
    let xq = q.iq().unwrap().q.forward(&x, CallMode::Inference).unwrap();
    let k = q.kq().q.forward(q.kernel(), CallMode::Inference).unwrap();
    let b = q
        .bq()
        .unwrap()
        .q
        .forward(q.bias().unwrap(), CallMode::Inference)
        .unwrap();
    assert!(out.y.allclose(&(xq.matmul(&k) + b), 1e-6, 1e-6, false));

    let bits_in = q.iq().unwrap().q.bits_like(&[1, 3, 4]).unwrap(); // one per position and feature
    let bits_k = q.kq().q.bits_like(&[4, 5]).unwrap();
    let bits_b = q.bq().unwrap().q.bits_like(&[5]).unwrap();
    // hgq2's QDense: the bias term once per output, `prod(shape[:-1]) * units` of the
    // one-sample shape (1, 3, 4): 3 positions times 5 units.
    let want = bits_in.matmul(&bits_k).sum(Kind::Float).double_value(&[])
        + bits_b.mean(Kind::Float).double_value(&[]) * 15.0;
    assert_eq!(q.ebops(), want as u32);
    assert!(
        q.iq()
            .unwrap()
            .q
            .bits()
            .unwrap()
            .size()
            .iter()
            .product::<i64>()
            == 12
    );

    let err = q
        .forward(&rand(&[6, 4], 6), CallMode::Training)
        .unwrap_err();
    assert!(matches!(err, TorchError::Shape { .. }), "{err}");
}

/// A model on 3-D inputs with logits per position trains through autograd (`train_step`),
/// says why the native step does not take it (not the input's rank: dense layers over
/// positions are native), and has no Keras JSON yet.
#[test]
fn models_on_more_dimensions_train_through_autograd() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Sequential::new();
    seeded(7, || {
        m.add(
            &vs.root(),
            QDense::builder(4, 8)
                .input_dims(&[3, 4])
                .activation(Activation::Relu),
        )
        .unwrap();
        m.add(&vs.root(), QDense::builder(8, 2).input_dims(&[3, 8]))
            .unwrap();
    });
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    let x = rand(&[5, 3, 4], 8);
    // Per position logits: [5, 3, 2] against one label per row does not fit a classifier
    // step (a `Flatten` would). The native refusal comes first.
    let labels = Tensor::zeros([5], (Kind::Int64, Device::Cpu));
    let err = m
        .train_step_on(StepPath::Native, &x, &labels, &mut opt)
        .unwrap_err();
    assert!(
        matches!(&err, TorchError::Unsupported(w) if w.contains("not one row of logits")),
        "{err}"
    );
    // Its Keras JSON (Dense on the last axis, `parallelization_factor` the positions) reads
    // back to the same model.
    let json = m.to_keras_json().unwrap();
    assert!(json.contains(r#""parallelization_factor": 3}"#), "{json}");
    let vs2 = nn::VarStore::new(Device::Cpu);
    let read = Sequential::from_keras_json(&vs2.root(), &json).unwrap();
    assert_eq!(read.to_keras_json().unwrap(), json);
    assert_eq!(read.layers()[0].input_dims(), [3, 4]);
    let out = m.forward(&x, CallMode::Training).unwrap();
    assert_eq!(out.y.size(), [5, 3, 2]);
}

/// `set_beta` takes finite values `>= 0` and nothing else (the old value stays); the EBOPs
/// term follows it.
#[test]
fn beta_schedule() {
    let vs = nn::VarStore::new(Device::Cpu);
    let q = QDense::builder(4, 2)
        .beta(1e-3)
        .build(&vs.root(), &mut Names::default())
        .unwrap();
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            q.set_beta(bad).unwrap_err(),
            TorchError::Invalid { what: "beta", .. }
        ));
        assert_eq!(q.beta(), Some(1e-3));
    }
    let x = rand(&[3, 4], 9);
    let l1 = q.forward(&x, CallMode::Training).unwrap().ebops_loss;
    q.set_beta(2e-3).unwrap();
    let l2 = q.forward(&x, CallMode::Training).unwrap().ebops_loss;
    let (l1, l2) = (l1.double_value(&[]), l2.double_value(&[]));
    assert!(l1 > 0.0 && (l2 - 2.0 * l1).abs() < 1e-6 * l2, "{l1} {l2}");
    q.set_beta(0.0).unwrap();
    let l0 = q.forward(&x, CallMode::Training).unwrap().ebops_loss;
    assert_eq!(l0.double_value(&[]), 0.0);
}

/// A layer whose input is not the last layer's output: an error before any variable exists.
#[test]
fn sequential_refuses_a_layer_that_does_not_fit() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Sequential::new();
    m.add(&vs.root(), QDense::builder(4, 8)).unwrap();
    let before = vs.variables().len();
    let err = m.add(&vs.root(), QDense::builder(7, 2)).unwrap_err();
    assert!(
        matches!(
            &err,
            TorchError::Invalid {
                what: "layer input",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(vs.variables().len(), before);
    assert_eq!(m.layers().len(), 1);
}

/// A frozen layer (`trainable(false)`, Keras' `trainable=False`): Adam moves its bit widths
/// (hgq2 keeps the quantizers trainable) and the next layer's weights, never its kernel or
/// bias; its JSON says `"trainable": false`; the native step refuses it and `Auto` trains it
/// through autograd.
#[test]
fn frozen_layers_keep_their_weights() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Sequential::new();
    seeded(4, || {
        m.add(
            &vs.root(),
            QDense::builder(6, 5)
                .activation(Activation::Relu)
                .trainable(false),
        )
        .unwrap();
        m.add(&vs.root(), QDense::builder(5, 3)).unwrap();
    });
    let frozen = m.layer::<QDense>(0).unwrap();
    assert!(!frozen.trainable() && m.layer::<QDense>(1).unwrap().trainable());
    let before: Vec<Tensor> = [frozen.kernel(), frozen.bias().unwrap()]
        .iter()
        .map(|t| t.detach().copy())
        .collect();
    let bits_before: Vec<Tensor> = frozen
        .kq()
        .q
        .variables()
        .iter()
        .map(|(_, t)| t.detach().copy())
        .collect();
    let next_before = m.layer::<QDense>(1).unwrap().kernel().detach().copy();
    let x = rand(&[16, 6], 5);
    let labels = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2)).unwrap();
    assert!(
        m.train_step_on(StepPath::Native, &x, &labels, &mut opt)
            .is_err()
    );
    for _ in 0..3 {
        m.train_step_on(StepPath::Auto, &x, &labels, &mut opt)
            .unwrap();
    }
    let frozen = m.layer::<QDense>(0).unwrap();
    for (t, b) in [frozen.kernel(), frozen.bias().unwrap()]
        .iter()
        .zip(&before)
    {
        assert!(t.equal(b), "a frozen weight moved");
    }
    let bits_moved = frozen
        .kq()
        .q
        .variables()
        .iter()
        .zip(&bits_before)
        .any(|((_, t), b)| !t.equal(b));
    assert!(bits_moved, "bit widths still train");
    assert!(!m.layer::<QDense>(1).unwrap().kernel().equal(&next_before));
    let json = m.to_keras_json().unwrap();
    assert!(
        json.contains(r#""name": "q_dense", "trainable": false"#),
        "{json}"
    );
    let vs2 = nn::VarStore::new(Device::Cpu);
    let back = Sequential::from_keras_json(&vs2.root(), &json).unwrap();
    assert!(!back.layers()[0].trainable() && back.layers()[1].trainable());
}
