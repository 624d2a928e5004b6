//! Where the time of one training step of the demo model goes, phase by phase.
//!
//! `cargo run --release -p hgq-torch --example demo_step [-- STEPS]` builds the demo's model
//! (Input(64) -> QDense(32, relu) -> QDense(10), hgq2's default quantizers, Keras' Adam), runs
//! STEPS (default 2000) training steps on one random batch of 64 after 200 warm-up steps, one
//! thread, and prints the mean time per step of each phase, then of each part of the forward.
//! The demo's steps are small, so these are mostly libtorch's per-operation costs: what to
//! shrink to make training faster (`benches/RESULTS.md`, "The demo's training step").
use std::time::Instant;

use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, QDense, Sequential};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn};

type Error = Box<dyn std::error::Error>;

const WARM_UP: usize = 200;

/// Mean microseconds per step of each named phase.
struct Phases {
    names: &'static [&'static str],
    total: Vec<f64>,
}

impl Phases {
    fn new(names: &'static [&'static str]) -> Self {
        Phases {
            names,
            total: vec![0.0; names.len()],
        }
    }

    /// Adds the spans between consecutive instants (one per phase) unless warming up.
    fn add(&mut self, step: usize, marks: &[Instant]) {
        if step < WARM_UP {
            return;
        }
        for (t, w) in self.total.iter_mut().zip(marks.windows(2)) {
            *t += (w[1] - w[0]).as_secs_f64();
        }
    }

    fn print(&self, title: &str, steps: usize) {
        println!("{title}");
        for (n, t) in self.names.iter().zip(&self.total) {
            println!("  {n:<12} {:8.1} us/step", t / steps as f64 * 1e6);
        }
        let sum: f64 = self.total.iter().sum();
        println!("  {:<12} {:8.1} us/step", "total", sum / steps as f64 * 1e6);
    }
}

fn main() -> Result<(), Error> {
    let steps: usize = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 2000,
    };
    if steps == 0 {
        return Err("STEPS must be positive".into());
    }
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Sequential::new();
    let dense = QDense::builder(64, 32).activation(Activation::Relu);
    model.add(&vs.root(), dense.beta(1e-5))?;
    model.add(&vs.root(), QDense::builder(32, 10).beta(1e-5))?;
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?;
    let x = Tensor::rand([64, 64], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(10, [64], (Kind::Int64, Device::Cpu));

    let mut step_phases = Phases::new(&[
        "forward",
        "loss",
        "backward",
        "optimizer",
        "constraints",
        "metrics",
    ]);
    for step in 0..steps + WARM_UP {
        let t0 = Instant::now();
        let out = model.forward(&x, CallMode::Training)?;
        let t1 = Instant::now();
        let loss = out.y.cross_entropy_for_logits(&labels) + &out.ebops_loss;
        let t2 = Instant::now();
        opt.zero_grad();
        loss.f_backward()?;
        let t3 = Instant::now();
        opt.step()?;
        let t4 = Instant::now();
        model.apply_constraints()?;
        let t5 = Instant::now();
        let _ = loss.double_value(&[]);
        let _ = out.y.argmax(-1, false).eq_tensor(&labels).sum(Kind::Int64);
        let t6 = Instant::now();
        step_phases.add(step, &[t0, t1, t2, t3, t4, t5, t6]);
    }
    step_phases.print("training step", steps);

    // The forward's parts, both layers together (no backward: the quantizers' state moves as
    // in training, the graph is dropped).
    let mut parts = Phases::new(&["iq", "kq", "bq", "matmul", "ebops"]);
    for step in 0..steps + WARM_UP {
        let mut y = x.shallow_clone();
        let mut spans = vec![0.0; 5];
        for l in model
            .layers()
            .iter()
            .filter_map(|l| l.downcast_ref::<QDense>())
        {
            let t0 = Instant::now();
            let xq = l
                .iq()
                .ok_or("no input quantizer")?
                .q
                .forward(&y, CallMode::Training)?;
            let t1 = Instant::now();
            let k = l.kq().q.forward(l.kernel(), CallMode::Training)?;
            let t2 = Instant::now();
            let b = match (l.bq(), l.bias()) {
                (Some(bq), Some(b)) => Some(bq.q.forward(b, CallMode::Training)?),
                _ => None,
            };
            let t3 = Instant::now();
            let mut z = xq.matmul(&k);
            if let Some(b) = b {
                z += b;
            }
            y = l.activation().apply(z);
            let t4 = Instant::now();
            let _ = l.compute_ebops()?.double_value(&[]);
            let t5 = Instant::now();
            for (s, w) in spans.iter_mut().zip([t0, t1, t2, t3, t4, t5].windows(2)) {
                *s += (w[1] - w[0]).as_secs_f64();
            }
        }
        if step >= WARM_UP {
            for (t, s) in parts.total.iter_mut().zip(&spans) {
                *t += s;
            }
        }
    }
    parts.print("forward, by part (both layers)", steps);
    Ok(())
}
