//! A program of your own on hgq: a quantized classifier trained with hgq's `Sequential` and
//! exported for hgq2, then a `QDense` inside tch's own `nn::seq_t()` beside tch layers.
//!
//! `cargo run --release -- [OUT]` (default `out`): writes `OUT/model.json` and
//! `OUT/weights.safetensors`; exits with an error if either model does not learn the task.
use std::path::PathBuf;

use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, EbopsTape, Names, QDense, Sequential};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor, nn};

type Error = Box<dyn std::error::Error>;

/// The share of rows whose largest logit is their label.
fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    logits
        .argmax(-1, false)
        .eq_tensor(labels)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

fn main() -> Result<(), Error> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "out".into()));
    std::fs::create_dir_all(&out)?;
    let device = Device::cuda_if_available();
    tch::manual_seed(0);
    // A task: is the sum of 16 features in [-1, 1) above 0?
    let x = Tensor::rand([1024, 16], (Kind::Float, device)) * 2.0 - 1.0;
    let labels = x
        .sum_dim_intlist(1, false, Kind::Float)
        .gt(0.0)
        .to_kind(Kind::Int64);

    // 1. hgq's Sequential: every input, weight and bias with its own trainable bit width, EBOPs
    //    in the loss; `train_step` runs the whole step (natively on the CPU).
    let vs = nn::VarStore::new(device);
    let mut model = Sequential::new();
    model.add(
        &vs.root(),
        QDense::builder(16, 16)
            .activation(Activation::Relu)
            .beta(1e-5),
    )?;
    model.add(&vs.root(), QDense::builder(16, 2).beta(1e-5))?;
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?;
    for _epoch in 0..30 {
        for start in (0..1024).step_by(64) {
            let (xb, yb) = (x.narrow(0, start, 64), labels.narrow(0, start, 64));
            model.train_step(&xb, &yb, &mut opt)?;
        }
    }
    let ebops = model.trace_minmax([&x])?; // the integer bits the data needs
    let logits = tch::no_grad(|| model.forward(&x, CallMode::Inference))?.y;
    let acc = accuracy(&logits, &labels);
    println!("hgq Sequential: accuracy {acc:.3}, EBOPs {ebops}");
    std::fs::write(out.join("model.json"), model.to_keras_json()?)?;
    Tensor::write_safetensors(&model.keras_variables(), out.join("weights.safetensors"))?;

    // 2. A QDense among tch's layers: tch's Linear and an activation, then a quantized output
    //    layer; its EBOPs term reaches the loss through a tape.
    let vs2 = nn::VarStore::new(device);
    let tape = EbopsTape::new();
    let q = QDense::builder(32, 2).beta(1e-5).ebops_tape(&tape);
    let net = nn::seq_t()
        .add(nn::linear(
            vs2.root() / "hidden",
            16,
            32,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(q.build(&vs2.root(), &mut Names::default())?);
    let mut opt2 = Adam::new(&vs2, AdamConfig::default().learning_rate(3e-3))?;
    for _step in 0..300 {
        let loss = net.forward_t(&x, true).cross_entropy_for_logits(&labels) + tape.take()?;
        opt2.backward_step(&loss)?;
    }
    let acc2 = accuracy(&tch::no_grad(|| net.forward_t(&x, false)), &labels);
    println!("tch Linear + hgq QDense: accuracy {acc2:.3}");

    if acc < 0.8 || acc2 < 0.8 {
        return Err(format!("the models did not learn the task ({acc:.3}, {acc2:.3})").into());
    }
    println!("wrote {}", out.display());
    Ok(())
}
