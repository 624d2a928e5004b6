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
        let out = model.forward(&x, CallMode::Training)?; // bit widths train too
        let loss = out.y.cross_entropy_for_logits(&labels) + out.ebops_loss;
        opt.backward_step(&loss)?;
        model.apply_constraints()?; // keep bit widths in range after each step
        if step % 50 == 0 {
            println!(
                "step {step}: loss {:.4}, EBOPs {}",
                loss.double_value(&[]),
                model.ebops()
            );
        }
    }
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
