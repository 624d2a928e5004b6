//! `hgq-bench-cuda [--reps N] [--rows R[,R...]] [--device cuda|cpu]`: the fixed-point quantizer on a GPU, on x of
//! R x 4096 float32 (normal, sigma 4; R = 1024 and 16384 by default), KIF k = 1, i = 2, f = 4,
//! RND with SAT or WRAP, bit widths per column or per element, timed against a device copy of
//! x (`dst.copy_(x)`) in the same run. One JSON object per line:
//! `{"case": "cuda/{route}/{work}/{layout}/{overflow}", "rows", "cols", "ms", "copy_ms",
//! "ratio"}`, medians of `--reps` repetitions (default 20) after three warm-ups, each timed
//! between two device synchronizations. `--device cpu` runs the same cases on the CPU (a check
//! of this program where there is no GPU; the `kernel` route is then hgq-core's CPU pass).
//!
//! Routes: `module` (the KIF quantizer module, `Quantizer::forward`, as a layer runs it: its raw
//! `i`, `f` rounded, WRAP's integer bits tracked; what `hgq2_ref.py --device cuda` times of
//! hgq2), `kernel` (`fixed_quantize` on CUDA tensors: our NVRTC kernel, see `hgq_torch::cuda`),
//! `torch-ops` (`ops::fixed_quantize_ops`, the same formulas as torch operations) and `fake`
//! (torch's `fake_quantize_per_channel_affine` with the same grid, per column only: what
//! PyTorch's own QAT runs). Works: `infer` (the forward under `no_grad`) and `train` (the
//! forward in training, `sum(y)`, and the gradients of x and of the trainable bit widths; for
//! `fake`, of x).
use std::process::ExitCode;
use std::time::Instant;

use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::KifSpec;
use hgq_torch::hgq_core::{CallMode, FixedPoint, OverflowMode, RoundMode};
use hgq_torch::ops::fixed_quantize_ops;
use hgq_torch::quantizer::Quantizer;
use hgq_torch::{Result, fixed_quantize};
use tch::{Device, Kind, Tensor, nn};

#[path = "shared/stats.rs"]
mod stats;
use stats::median;

const COLS: i64 = 4096;

/// Milliseconds of `f`, between two synchronizations of the device (`dev`).
fn timed(dev: Device, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    let sync = || {
        if let Device::Cuda(d) = dev {
            tch::Cuda::synchronize(d as i64);
        }
    };
    sync();
    let t = Instant::now();
    f()?;
    sync();
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn time(dev: Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        timed(dev, &mut f)?;
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        v.push(timed(dev, &mut f)?);
    }
    Ok(median(v))
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Module,
    Kernel,
    TorchOps,
    Fake,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Module => "module",
            Route::Kernel => "kernel",
            Route::TorchOps => "torch-ops",
            Route::Fake => "fake",
        }
    }
}

struct Case<'a> {
    route: Route,
    q: FixedPoint,
    /// The module (`module`) and its trainable variables.
    module: &'a Quantizer,
    trainable: &'a [Tensor],
    x: &'a Tensor,
    k: &'a Tensor,
    i: &'a Tensor,
    f: &'a Tensor,
}

impl Case<'_> {
    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        match self.route {
            Route::Module => {
                let mode = if training {
                    CallMode::Training
                } else {
                    CallMode::Inference
                };
                self.module.forward(x, mode)
            }
            Route::Kernel => fixed_quantize(&self.q, x, self.k, self.i, self.f, training),
            Route::TorchOps => fixed_quantize_ops(&self.q, x, self.k, self.i, self.f, training),
            Route::Fake => {
                // The same grid: steps of 2^-4, integers in [-64, 63] (k = 1, i = 2, f = 4).
                let scale = Tensor::full([COLS], 1.0 / 16.0, (Kind::Float, x.device()));
                let zero = Tensor::zeros([COLS], (Kind::Int, x.device()));
                Ok(x.f_fake_quantize_per_channel_affine(&scale, &zero, 1, -64, 63)?)
            }
        }
    }

    fn infer(&self) -> Result<()> {
        tch::no_grad(|| self.forward(self.x, false)).map(drop)
    }

    fn train(&self) -> Result<()> {
        let xg = self.x.detach().set_requires_grad(true);
        let y = self.forward(&xg, true)?;
        let mut inputs = vec![&xg];
        match self.route {
            Route::Module => inputs.extend(self.trainable),
            Route::Fake => {}
            _ => inputs.extend([self.i, self.f]),
        }
        Tensor::f_run_backward(&[y.f_sum(Kind::Float)?], &inputs, false, false)?;
        Ok(())
    }
}

fn run(dev: Device, reps: usize, rows_list: &[i64]) -> Result<()> {
    let prefix = if dev == Device::Cpu { "cpu" } else { "cuda" };
    for &rows in rows_list {
        tch::manual_seed(0);
        let x = (Tensor::f_randn([rows, COLS], (Kind::Float, dev))? * 4.0).f_contiguous()?;
        let dst = x.f_empty_like()?;
        for (layout, bw) in [
            ("per_column", vec![1, COLS]),
            ("per_element", vec![rows, COLS]),
        ] {
            let full = |v: f64| Tensor::full(bw.as_slice(), v, (Kind::Float, dev));
            let k = full(1.0);
            let i = full(2.0).set_requires_grad(true);
            let f = full(4.0).set_requires_grad(true);
            for (oname, overflow) in [("SAT", OverflowMode::Sat), ("WRAP", OverflowMode::Wrap)] {
                let q = FixedPoint::new(RoundMode::Rnd, overflow)?;
                let axes = if layout == "per_column" {
                    Axes::Homogeneous(vec![0])
                } else {
                    Axes::Homogeneous(vec![])
                };
                let vs = nn::VarStore::new(dev);
                let core = CoreQuantizer {
                    spec: QuantizerSpec::Kif(
                        KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, overflow).with_axes(axes),
                    ),
                    scaler: None,
                    qnoise_factor: None,
                    affine: None,
                };
                let module = Quantizer::new(
                    &vs.root(),
                    &core,
                    &[Some(rows as usize), Some(COLS as usize)],
                )?;
                let names = module.trainable_names();
                let trainable: Vec<Tensor> = module
                    .variables()
                    .into_iter()
                    .filter(|(n, _)| names.contains(n))
                    .map(|(_, t)| t)
                    .collect();
                for route in [Route::Module, Route::Kernel, Route::TorchOps, Route::Fake] {
                    if route == Route::Fake && (layout != "per_column" || oname != "SAT") {
                        continue;
                    }
                    let c = Case {
                        route,
                        q,
                        module: &module,
                        trainable: &trainable,
                        x: &x,
                        k: &k,
                        i: &i,
                        f: &f,
                    };
                    for (work, train) in [("infer", false), ("train", true)] {
                        let copy_ms = time(dev, reps, || {
                            let mut d = dst.shallow_clone();
                            d.f_copy_(&x)?;
                            Ok(())
                        })?;
                        let ms = if train {
                            time(dev, reps, || c.train())?
                        } else {
                            time(dev, reps, || c.infer())?
                        };
                        println!(
                            "{{\"case\":\"{prefix}/{}/{work}/{layout}/{oname}\",\"rows\":{rows},\"cols\":{COLS},\"ms\":{ms:.4},\"copy_ms\":{copy_ms:.4},\"ratio\":{:.3}}}",
                            route.name(),
                            ms / copy_ms
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut reps = 20;
    let mut rows = vec![1024, 16384];
    let mut dev = Device::Cuda(0);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--reps", Some(v)) if v.parse::<usize>().is_ok_and(|r| r > 0) => {
                reps = v.parse().unwrap_or(reps)
            }
            ("--rows", Some(v)) if v.split(',').all(|r| r.parse::<i64>().is_ok_and(|r| r > 0)) => {
                rows = v.split(',').filter_map(|r| r.parse().ok()).collect()
            }
            // The same cases on the CPU: a check of this program on machines without a GPU.
            ("--device", Some(v)) if v == "cpu" => dev = Device::Cpu,
            ("--device", Some(v)) if v == "cuda" => dev = Device::Cuda(0),
            _ => {
                eprintln!("usage: hgq-bench-cuda [--reps N] [--rows R[,R...]] [--device cuda|cpu]");
                return ExitCode::from(2);
            }
        }
    }
    if dev != Device::Cpu && !hgq_torch::cuda_available() {
        eprintln!("hgq-bench-cuda: no CUDA device (libtorch with CUDA, a driver and a GPU)");
        return ExitCode::from(2);
    }
    match run(dev, reps, &rows) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hgq-bench-cuda: {e}");
            ExitCode::FAILURE
        }
    }
}
