//! `hgq-bench-torch [--json] [--reps N] [--quick] [--threads N] [--breakdown] [--filter S]
//! [--glibc-default]`: hgq-torch's KIF quantizer
//! module with autograd on the work of `cargo xtask bench` (see `work.rs`), timed against a plain
//! copy of x (`dst.copy_(x)`, a torch tensor copy) measured in the same run.
//!
//! Cases: `torch/{infer,train}/{per_column,per_element}` (the module: on CPU, hgq-core's fused
//! kernel inside the C++ autograd function) and `torch-ops/...` (the same through
//! `ops::fixed_quantize_ops`), `torch-fn/...` and `torch-coef/train/...` (the kernel under
//! autograd through the C++ function, and through zero-valued terms with the kernel's
//! coefficients; see `work.rs`: the two ways, measured side by side, after a check that
//! they compute the same). Each runs on one thread (`tch::set_num_threads(1)` and a one-thread
//! rayon pool for hgq-core's kernels) and then on all threads (`--threads N`: only N). Each
//! repetition times the copy and then the case; `ms` and `copy_ms` are the medians, `ratio` the
//! median of the per-repetition ratios. Then the case runs alone, `reps` calls back to back:
//! `min_ms` is the fastest, timed as the reference's `hgq2_ref.py` times its cases (what
//! `cargo xtask bench --reference` compares with it). `--json` prints one JSON object per line, as
//! `cargo xtask bench --json` does for the core cases (which runs this binary after them).
//! `--breakdown` adds `.../train-forward/...`, the forward pass of training alone, and
//! `.../train-forward-sum/...`, that and `sum(y)` (what `train` adds on top of it is the
//! backward pass through autograd). `--filter S`
//! runs only the cases whose name contains `S` (for a profiler). Freed CPU memory is kept in the
//! process (`hgq_torch::retain_cpu_memory`), as a caching allocator does (jax's, in the
//! reference's timings); `--glibc-default` leaves glibc's `malloc` as it is, so that large
//! tensors page-fault in again on every call.
mod work;

use std::process::ExitCode;
use std::time::Instant;

use tch::Tensor;
use work::{COLS, Case, Layout, Path, ROWS};

#[path = "../shared/stats.rs"]
mod stats;
use stats::median;

fn once_ms(f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// `reps` pairs of (copy, case) after three warm-ups of each (the heap grows to the case's peak
/// during the first calls): medians of both and of the ratios.
fn time_pair(reps: usize, mut copy: impl FnMut(), mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..3 {
        copy();
        f();
    }
    let (mut cs, mut ts, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let c = once_ms(&mut copy);
        let t = once_ms(&mut f);
        cs.push(c);
        ts.push(t);
        rs.push(t / c);
    }
    (median(ts), median(cs), median(rs))
}

/// What one case times (the middle part of its name).
#[derive(Clone, Copy)]
enum Work {
    /// `infer`: the forward pass under `no_grad`.
    Infer,
    /// `train`: forward, `sum(y)`, backward through autograd.
    Train,
    /// `train-forward` (`--breakdown`): the forward pass of training alone.
    TrainForward,
    /// `train-forward-sum` (`--breakdown`): the forward pass of training and `sum(y)`.
    TrainForwardSum,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Infer => "infer",
            Work::Train => "train",
            Work::TrainForward => "train-forward",
            Work::TrainForwardSum => "train-forward-sum",
        }
    }
}

struct Row {
    case: String,
    threads: usize,
    ms: f64,
    copy_ms: f64,
    ratio: f64,
    /// The case alone, `reps` calls back to back after one warm-up: the fastest (the statistic
    /// and the order of `hgq2_ref.py`, for the comparison with the reference).
    min_ms: f64,
}

/// `reps` calls of `f` back to back after one warm-up, as `hgq2_ref.py` times the reference:
/// the fastest, in ms.
fn time_alone(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| once_ms(&mut f))
        .fold(f64::INFINITY, f64::min)
}

/// `torch-coef` computes what `torch-fn` does: for both layouts, the same y (by value: the added
/// `+0.0` terms turn a `-0.0` into `+0.0`), dx bit for bit (a unit upstream times dy/dx), and
/// the same di, df up to the order of the sums (autograd's against the kernel's blocked one).
/// Exits with an error where they differ: the comparison of the two ways is only worth
/// reading if they do the same work.
fn check_coef(x: &Tensor) -> Result<(), String> {
    for layout in Layout::ALL {
        let run = |path| {
            Case::new(layout, path, x)
                .and_then(|c| c.train())
                .map_err(|e| e.to_string())
        };
        let (coef, fused) = (run(Path::TorchCoef)?, run(Path::TorchFn)?);
        let same = |a: &Tensor, b: &Tensor| a.equal(b);
        // Sums of 1024 (per column) float32 terms in another order: within 1e-5 of the
        // largest sum (measured: 3e-7 of it).
        let close = |a: &Tensor, b: &Tensor| {
            let max = |t: Tensor| t.abs().max().double_value(&[]);
            max(a - b) <= 1e-5 * max(b.shallow_clone())
        };
        let ok = same(&coef[0], &fused[0])
            && same(&coef[1], &fused[1])
            && close(&coef[2], &fused[2])
            && close(&coef[3], &fused[3]);
        if !ok {
            return Err(format!(
                "torch-coef and torch-fn differ on {} (y, dx, di, df)",
                layout.name()
            ));
        }
    }
    Ok(())
}

fn measure(
    threads: usize,
    reps: usize,
    breakdown: bool,
    filter: &str,
    x: Tensor,
) -> Result<Vec<Row>, String> {
    tch::set_num_threads(threads as i32);
    let pool = hgq_torch::hgq_core::kernels::thread_pool(threads)
        .map_err(|e| format!("cannot build a pool of {threads} threads: {e}"))?;
    // The kernels run on the pool's threads; tensors are `Send`, not `Sync`: x moves in.
    pool.install(move || {
        let x = &x;
        let mut dst = x.empty_like();
        let mut copy = || {
            dst.copy_(x);
        };
        let mut rows = Vec::new();
        let mut dst2 = x.empty_like();
        let (cm, _, _) = time_pair(reps, &mut copy, || {
            dst2.copy_(x);
        });
        rows.push(Row {
            case: "torch/copy".into(),
            threads,
            ms: cm,
            copy_ms: cm,
            ratio: 1.0,
            min_ms: time_alone(reps, || {
                dst2.copy_(x);
            }),
        });
        for path in Path::ALL {
            for layout in Layout::ALL {
                let case = Case::new(layout, path, x).map_err(|e| e.to_string())?;
                let mut works = if path.infers() {
                    vec![Work::Infer, Work::Train]
                } else {
                    vec![Work::Train]
                };
                if breakdown {
                    works.extend([Work::TrainForward, Work::TrainForwardSum]);
                }
                for work in works {
                    let name = format!("{}/{}/{}", path.name(), work.name(), layout.name());
                    if !name.contains(filter) {
                        continue;
                    }
                    let mut err = Ok(());
                    let mut call = || {
                        if err.is_ok() {
                            err = match work {
                                Work::Infer => case.infer().map(drop),
                                Work::Train => case.train().map(drop),
                                Work::TrainForward => case.train_forward().map(drop),
                                Work::TrainForwardSum => case.train_forward_sum().map(drop),
                            };
                        }
                    };
                    let (ms, copy_ms, ratio) = time_pair(reps, &mut copy, &mut call);
                    let min_ms = time_alone(reps, &mut call);
                    err.map_err(|e| e.to_string())?;
                    rows.push(Row {
                        case: name,
                        threads,
                        ms,
                        copy_ms,
                        ratio,
                        min_ms,
                    });
                }
            }
        }
        Ok(rows)
    })
}

fn main() -> ExitCode {
    let mut json = false;
    let mut reps = 15;
    let mut only: Option<usize> = None;
    let mut breakdown = false;
    let mut filter = String::new();
    let mut retain = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--quick" => reps = 5,
            "--breakdown" => breakdown = true,
            "--glibc-default" => retain = false,
            "--filter" => match args.next() {
                Some(v) => filter = v,
                None => {
                    eprintln!("hgq-bench-torch: --filter needs a case name or part of one");
                    return ExitCode::from(2);
                }
            },
            "--reps" | "--threads" => {
                let Some(v) = args.next().and_then(|v| v.parse().ok()).filter(|&v| v > 0) else {
                    eprintln!("hgq-bench-torch: {a} needs a positive integer");
                    return ExitCode::from(2);
                };
                if a == "--reps" {
                    reps = v;
                } else {
                    only = Some(v);
                }
            }
            other => {
                eprintln!(
                    "hgq-bench-torch: unknown argument {other:?}\n\
                     usage: hgq-bench-torch [--json] [--reps N] [--quick] [--threads N] [--breakdown] \
                     [--filter S] [--glibc-default]"
                );
                return ExitCode::from(2);
            }
        }
    }
    // Before any thread or tensor exists: the allocator settings apply to what follows.
    let retained = retain && hgq_torch::retain_cpu_memory();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let counts = match only {
        Some(n) => vec![n],
        None if all > 1 => vec![1, all],
        None => vec![1],
    };
    let x = work::normal_x();
    if let Err(e) = check_coef(&x) {
        eprintln!("hgq-bench-torch: {e}");
        return ExitCode::FAILURE;
    }
    if !json {
        println!(
            "hgq-torch: x {ROWS} x {COLS} f32, KIF k=1 i=2 f=4 RND SAT, autograd; median of \
             {reps}; ratio = ms / copy_ms (torch copy_); min_ms = fastest of {reps} calls back to \
             back (hgq2_ref.py's statistic); freed memory {}",
            if retained {
                "kept (retain_cpu_memory)"
            } else {
                "returned (glibc default)"
            }
        );
        println!(
            "{:<28} {:>7} {:>10} {:>10} {:>7} {:>10}",
            "case", "threads", "ms", "copy_ms", "ratio", "min_ms"
        );
    }
    for threads in counts {
        let rows = match measure(threads, reps, breakdown, &filter, x.shallow_clone()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("hgq-bench-torch: {e}");
                return ExitCode::FAILURE;
            }
        };
        for r in rows {
            if json {
                // The same fields as `cargo xtask bench --json` (`{:?}`: floats as `1.0`, as serde_json).
                println!(
                    "{{\"case\":\"{}\",\"threads\":{},\"ms\":{:?},\"copy_ms\":{:?},\"ratio\":{:?},\"min_ms\":{:?}}}",
                    r.case,
                    r.threads,
                    (r.ms * 1e4).round() / 1e4,
                    (r.copy_ms * 1e4).round() / 1e4,
                    (r.ratio * 1e3).round() / 1e3,
                    (r.min_ms * 1e4).round() / 1e4
                );
            } else {
                println!(
                    "{:<28} {:>7} {:>10.3} {:>10.3} {:>7.2} {:>10.3}",
                    r.case, r.threads, r.ms, r.copy_ms, r.ratio, r.min_ms
                );
            }
        }
    }
    ExitCode::SUCCESS
}
