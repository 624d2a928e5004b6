//! `hgq-bench-cuda [--reps N] [--rows R[,R...]]`: the fixed-point quantizer on a GPU, on x of
//! R x 4096 float32 (normal, sigma 4; R = 1024 and 16384 by default), KIF k = 1, i = 2, f = 4,
//! RND with SAT or WRAP, bit widths per column or per element, timed against a device copy of
//! x (`dst.copy_(x)`) in the same run. One JSON object per line:
//! `{"case": "cuda/{route}/{work}/{layout}/{overflow}", "rows", "cols", "ms", "copy_ms",
//! "ratio"}`, medians of `--reps` repetitions (default 20) after three warm-ups, each timed
//! between two device synchronizations.
//!
//! Routes: `kernel` (`fixed_quantize` on CUDA tensors: our NVRTC kernel, see `hgq_torch::cuda`),
//! `torch-ops` (`ops::fixed_quantize_ops`, the same formulas as torch operations) and `fake`
//! (torch's `fake_quantize_per_channel_affine` with the same grid, per column only: what
//! PyTorch's own QAT runs). Works: `infer` (the forward under `no_grad`) and `train` (the
//! forward in training, `sum(y)`, and the gradients of x and of the trainable bit widths; for
//! `fake`, of x).
use std::process::ExitCode;
use std::time::Instant;

use hgq_torch::hgq_core::{FixedPoint, OverflowMode, RoundMode};
use hgq_torch::ops::fixed_quantize_ops;
use hgq_torch::{Result, fixed_quantize};
use tch::{Device, Kind, Tensor};

const COLS: i64 = 4096;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Milliseconds of `f`, between two synchronizations of the device.
fn timed(f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    tch::Cuda::synchronize(0);
    let t = Instant::now();
    f()?;
    tch::Cuda::synchronize(0);
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        timed(&mut f)?;
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        v.push(timed(&mut f)?);
    }
    Ok(median(v))
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Kernel,
    TorchOps,
    Fake,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Kernel => "kernel",
            Route::TorchOps => "torch-ops",
            Route::Fake => "fake",
        }
    }
}

struct Case<'a> {
    route: Route,
    q: FixedPoint,
    x: &'a Tensor,
    k: &'a Tensor,
    i: &'a Tensor,
    f: &'a Tensor,
}

impl Case<'_> {
    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        match self.route {
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
        if self.route != Route::Fake {
            inputs.extend([self.i, self.f]);
        }
        Tensor::f_run_backward(&[y.f_sum(Kind::Float)?], &inputs, false, false)?;
        Ok(())
    }
}

fn run(reps: usize, rows_list: &[i64]) -> Result<()> {
    let dev = Device::Cuda(0);
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
                for route in [Route::Kernel, Route::TorchOps, Route::Fake] {
                    if route == Route::Fake && (layout != "per_column" || oname != "SAT") {
                        continue;
                    }
                    let c = Case {
                        route,
                        q,
                        x: &x,
                        k: &k,
                        i: &i,
                        f: &f,
                    };
                    for (work, train) in [("infer", false), ("train", true)] {
                        let copy_ms = time(reps, || {
                            let mut d = dst.shallow_clone();
                            d.f_copy_(&x)?;
                            Ok(())
                        })?;
                        let ms = if train {
                            time(reps, || c.train())?
                        } else {
                            time(reps, || c.infer())?
                        };
                        println!(
                            "{{\"case\":\"cuda/{}/{work}/{layout}/{oname}\",\"rows\":{rows},\"cols\":{COLS},\"ms\":{ms:.4},\"copy_ms\":{copy_ms:.4},\"ratio\":{:.3}}}",
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
            _ => {
                eprintln!("usage: hgq-bench-cuda [--reps N] [--rows R[,R...]]");
                return ExitCode::from(2);
            }
        }
    }
    if !hgq_torch::cuda_available() {
        eprintln!("hgq-bench-cuda: no CUDA device (libtorch with CUDA, a driver and a GPU)");
        return ExitCode::from(2);
    }
    match run(reps, &rows) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hgq-bench-cuda: {e}");
            ExitCode::FAILURE
        }
    }
}
