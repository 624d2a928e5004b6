//! The README's training example: a quantized two-layer network on random data.
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, QDense, Sequential};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vs = nn::VarStore::new(Device::cuda_if_available());
    let mut model = Sequential::new();
    model.add(
        &vs.root(),
        QDense::builder(16, 8)
            .activation(Activation::Relu)
            .beta(1e-5),
    )?;
    model.add(&vs.root(), QDense::builder(8, 2).beta(1e-5))?;
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?; // Keras' Adam
    let x = Tensor::rand([256, 16], (Kind::Float, vs.device()));
    let labels = x
        .sum_dim_intlist(1, false, Kind::Float)
        .gt(8.0)
        .to_kind(Kind::Int64);
    for step in 0..200 {
        // Forward, cross entropy + beta * EBOPs, gradients (bit widths train too), Adam,
        // constraints.
        let out = model.train_step(&x, &labels, &mut opt)?;
        if step % 50 == 0 {
            println!(
                "step {step}: loss {:.4}, EBOPs {}",
                out.loss.double_value(&[]),
                model.ebops()
            );
        }
    }
    // A loss of your own: the forward gives the output and `beta * EBOPs` (autograd tracks
    // both), the optimizer and the constraints are called by hand.
    let out = model.forward(&x, CallMode::Training)?;
    let loss = out.y.cross_entropy_for_logits(&labels) * 0.5 + out.ebops_loss;
    opt.backward_step(&loss)?;
    model.apply_constraints()?;
    let ebops = model.trace_minmax([&x])?; // integer bits the data needs (WRAP inputs)
    let y = model.forward(&x, CallMode::Inference)?.y; // the firmware's arithmetic
    let acc = y
        .argmax(-1, false)
        .eq_tensor(&labels)
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    println!("accuracy {:.3}, EBOPs {ebops}", acc.double_value(&[]));
    Ok(())
}
