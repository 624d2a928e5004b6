//! `cargo xtask bench [--json] [--quick] [--reps N] [--no-torch] [--reference]
//! [--reference-python PATH]`: kernel timings as ratios against a plain copy of the same bytes,
//! measured in the same run.
//!
//! After the core cases it runs hgq-torch's `hgq-bench-torch` binary (xtask does not link
//! libtorch): the KIF quantizer module with autograd on the same work (`torch/...` through the
//! fused kernel in the C++ autograd function, `torch-ops/...` through plain torch ops), each
//! against a torch tensor copy measured in the same run, printed in the same format. `--no-torch`
//! skips it.
//!
//! `--reference` then times the Python reference on the same work in the same run:
//! `benches/hgq2_ref.py` (hgq2 on Keras 3, jax backend; see `reference.rs` for where its Python
//! comes from) and prints `vs-jax/...` rows: the reference's time, ours, and how many times
//! faster ours is; once with the reference pinned to one CPU against our one-thread rows, once
//! unpinned against our rows on all threads. Both sides use the reference's statistic, the
//! fastest of `reps` calls back to back after a warm-up (hgq-bench-torch's `min_ms`).
//!
//! The work is the one of `benches/core.rs` and of the reference's `hgq2_ref.py`: x of shape
//! 1024 x 4096 float32, a KIF quantizer with k = 1, i = 2, f = 4, RND, SAT, bit widths per
//! column (`[1, 4096]`) or per element (`[1024, 4096]`).
//! - `infer`: `FixedPoint::forward` with the zero mask (what the layer quantizer does).
//! - `train`: `FixedPoint::forward_backward` in training, writing y, dx and di/df reduced to the
//!   bit-width shape.
//!
//! Every case runs once on one thread and once on all threads (a rayon pool each, `install`).
//! Each repetition times `dst.copy_from_slice(&x)` (one thread; split over the pool's threads
//! otherwise) and then the case; `ms` and `copy_ms` are the medians, `ratio` the median of the
//! per-repetition ratios (the machine's load may change between repetitions, not within one).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use hgq_core::{FixedGrads, FixedPoint, OverflowMode, RoundMode, TensorRef};
use rayon::prelude::*;

use crate::reference::{Cpus, Run};

const ROWS: usize = 1024;
const COLS: usize = 4096;

/// A tiny deterministic generator (xorshift64*), for reproducible inputs without dependencies.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One benchmark case's buffers.
struct Work {
    x: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    copy: Vec<f32>,
}

impl Work {
    fn new() -> Work {
        let n = ROWS * COLS;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let x = (0..n).map(|_| (rng.normal() * 4.0) as f32).collect();
        Work {
            x,
            dy: vec![1.0; n],
            y: vec![0.0; n],
            dx: vec![0.0; n],
            copy: vec![0.0; n],
        }
    }
}

/// The bit widths of one layout.
struct Bits {
    shape: Vec<usize>,
    k: Vec<f32>,
    i: Vec<f32>,
    f: Vec<f32>,
    di: Vec<f32>,
    df: Vec<f32>,
}

impl Bits {
    fn new(shape: &[usize]) -> Bits {
        let n: usize = shape.iter().product();
        Bits {
            shape: shape.to_vec(),
            k: vec![1.0; n],
            i: vec![2.0; n],
            f: vec![4.0; n],
            di: vec![0.0; n],
            df: vec![0.0; n],
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Milliseconds of one run of `f`.
fn once_ms(f: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// `reps` pairs of (copy, case) runs after one warm-up of each: the medians of both times and
/// the median of the per-pair ratios (robust to load that changes between pairs).
fn time_pair(reps: usize, mut copy: impl FnMut(), mut f: impl FnMut()) -> (f64, f64, f64) {
    copy();
    f();
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

/// One row of the report.
struct Row {
    case: String,
    threads: usize,
    ms: f64,
    copy_ms: f64,
    ratio: f64,
}

fn infer(x: &[f32], y: &mut [f32], b: &Bits) -> Result<(), String> {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)
        .map_err(|e| e.to_string())?
        .with_zero_mask(true);
    let xs = [ROWS, COLS];
    q.forward(
        TensorRef::new(x, &xs).map_err(|e| e.to_string())?,
        TensorRef::new(&b.k, &b.shape).map_err(|e| e.to_string())?,
        TensorRef::new(&b.i, &b.shape).map_err(|e| e.to_string())?,
        TensorRef::new(&b.f, &b.shape).map_err(|e| e.to_string())?,
        false,
        y,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn train(x: &[f32], dy: &[f32], y: &mut [f32], dx: &mut [f32], b: &mut Bits) -> Result<(), String> {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).map_err(|e| e.to_string())?;
    let xs = [ROWS, COLS];
    q.forward_backward(
        TensorRef::new(x, &xs).map_err(|e| e.to_string())?,
        TensorRef::new(&b.k, &b.shape).map_err(|e| e.to_string())?,
        TensorRef::new(&b.i, &b.shape).map_err(|e| e.to_string())?,
        TensorRef::new(&b.f, &b.shape).map_err(|e| e.to_string())?,
        true,
        dy,
        y,
        FixedGrads {
            dx,
            di: &mut b.di,
            df: &mut b.df,
        },
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Runs the cases for one thread count inside a pool of that many threads.
fn measure(threads: usize, reps: usize, w: &mut Work) -> Result<Vec<Row>, String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("cannot build a pool of {threads} threads: {e}"))?;
    pool.install(|| {
        let mut rows = Vec::new();
        let copy_into = |dst: &mut [f32], src: &[f32]| {
            if threads == 1 {
                dst.copy_from_slice(src);
            } else {
                let chunk = src.len().div_ceil(threads);
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            }
        };
        let Work { x, dy, y, dx, copy } = w;
        let (cm, _, _) = time_pair(reps, || copy_into(copy, x), || copy_into(y, x));
        rows.push(Row {
            case: "copy".into(),
            threads,
            ms: cm,
            copy_ms: cm,
            ratio: 1.0,
        });
        for (layout, shape) in [
            ("per_column", vec![1, COLS]),
            ("per_element", vec![ROWS, COLS]),
        ] {
            let mut b = Bits::new(&shape);
            let mut err = Ok(());
            let (ms, copy_ms, ratio) = time_pair(
                reps,
                || copy_into(copy, x),
                || {
                    if err.is_ok() {
                        err = infer(x, y, &b);
                    }
                },
            );
            err?;
            rows.push(Row {
                case: format!("infer/{layout}"),
                threads,
                ms,
                copy_ms,
                ratio,
            });
            let mut err = Ok(());
            let (ms, copy_ms, ratio) = time_pair(
                reps,
                || copy_into(copy, x),
                || {
                    if err.is_ok() {
                        err = train(x, dy, y, dx, &mut b);
                    }
                },
            );
            err?;
            rows.push(Row {
                case: format!("train/{layout}"),
                threads,
                ms,
                copy_ms,
                ratio,
            });
        }
        Ok(rows)
    })
}

/// Entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut json = false;
    let mut reps = 15;
    let mut torch = true;
    let mut reference = false;
    let mut ref_python: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--quick" => reps = 5,
            "--no-torch" => torch = false,
            "--reference" => reference = true,
            "--reference-python" => {
                reference = true;
                ref_python = Some(
                    it.next()
                        .ok_or("--reference-python needs the path of a Python interpreter")?
                        .into(),
                );
            }
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| v > 0)
                    .ok_or("--reps needs a positive integer")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if reference && !torch {
        return Err(
            "--reference compares hgq-torch's timings with the reference: drop --no-torch".into(),
        );
    }
    // Before anything is timed: a missing reference is found (or installed) first.
    let ref_python = if reference {
        Some(crate::reference::python(ref_python.as_deref())?)
    } else {
        None
    };
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut w = Work::new();
    let mut counts = vec![1];
    if all > 1 {
        counts.push(all);
    }
    if !json {
        println!(
            "x: {ROWS} x {COLS} f32, KIF k=1 i=2 f=4 RND SAT; median of {reps}; ratio = ms / copy_ms"
        );
        println!(
            "{:<22} {:>7} {:>10} {:>10} {:>7}",
            "case", "threads", "ms", "copy_ms", "ratio"
        );
    }
    for threads in counts {
        for r in measure(threads, reps, &mut w)? {
            let ratio = r.ratio;
            if json {
                let v = serde_json::json!({
                    "case": r.case,
                    "threads": r.threads,
                    "ms": (r.ms * 1e4).round() / 1e4,
                    "copy_ms": (r.copy_ms * 1e4).round() / 1e4,
                    "ratio": (ratio * 1e3).round() / 1e3,
                });
                println!("{v}");
            } else {
                println!(
                    "{:<22} {:>7} {:>10.3} {:>10.3} {:>7.2}",
                    r.case, r.threads, r.ms, r.copy_ms, ratio
                );
            }
        }
    }
    if !torch {
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        println!();
    }
    match ref_python {
        None => run_torch(json, reps),
        Some(py) => {
            let ours = torch_rows(reps)?;
            print_torch(&ours, json, reps);
            for cpus in [Cpus::One, Cpus::All] {
                let theirs = crate::reference::time(&py, reps, cpus)?;
                compare(&ours, &theirs, cpus, json, reps)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One row of `hgq-bench-torch --json`.
struct TorchRow {
    case: String,
    threads: u64,
    ms: f64,
    copy_ms: f64,
    ratio: f64,
    min_ms: f64,
}

/// hgq-bench-torch's rows (`--json`, captured).
fn torch_rows(reps: usize) -> Result<Vec<TorchRow>, String> {
    let out = crate::torch::output(
        &["--bin", "hgq-bench-torch"],
        ["--reps".into(), reps.to_string().into(), "--json".into()],
    )?;
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| format!("hgq-bench-torch printed {l:?}, not JSON: {e}"))?;
            let missing = |k: &str| format!("hgq-bench-torch printed {l:?}: no {k}");
            let num = |k: &str| v[k].as_f64().ok_or_else(|| missing(k));
            Ok(TorchRow {
                case: v["case"]
                    .as_str()
                    .ok_or_else(|| missing("case"))?
                    .to_string(),
                threads: v["threads"].as_u64().ok_or_else(|| missing("threads"))?,
                ms: num("ms")?,
                copy_ms: num("copy_ms")?,
                ratio: num("ratio")?,
                min_ms: num("min_ms")?,
            })
        })
        .collect()
}

/// Prints hgq-bench-torch's rows as it prints them itself.
fn print_torch(rows: &[TorchRow], json: bool, reps: usize) {
    if !json {
        println!(
            "hgq-torch: median of {reps}; ratio = ms / copy_ms (torch copy_); min_ms = fastest of \
             {reps} calls back to back"
        );
        println!(
            "{:<28} {:>7} {:>10} {:>10} {:>7} {:>10}",
            "case", "threads", "ms", "copy_ms", "ratio", "min_ms"
        );
    }
    for r in rows {
        if json {
            let v = serde_json::json!({
                "case": r.case,
                "threads": r.threads,
                "ms": r.ms,
                "copy_ms": r.copy_ms,
                "ratio": r.ratio,
                "min_ms": r.min_ms,
            });
            println!("{v}");
        } else {
            println!(
                "{:<28} {:>7} {:>10.3} {:>10.3} {:>7.2} {:>10.3}",
                r.case, r.threads, r.ms, r.copy_ms, r.ratio, r.min_ms
            );
        }
    }
}

/// The `vs-jax/...` rows of one run of the reference: for each case it timed, its time
/// against ours (`torch/<case>`, or `torch/copy` for its copy), both the fastest of `reps`
/// calls. [`Cpus::One`]: the reference on one CPU against our one-thread rows; [`Cpus::All`]:
/// the reference on every CPU against our rows with the most threads.
fn compare(
    ours: &[TorchRow],
    theirs: &Run,
    cpus: Cpus,
    json: bool,
    reps: usize,
) -> Result<(), String> {
    let threads = match cpus {
        Cpus::One => 1,
        Cpus::All => ours.iter().map(|r| r.threads).max().unwrap_or(1),
    };
    if !json {
        println!();
        println!(
            "against the reference (benches/hgq2_ref.py, hgq2 on jax) on {} CPU(s), ours on {threads} \
             thread(s): fastest of {reps} on both sides; speedup = jax_ms / ms; the reference's \
             process used {:.2} CPU s per wall s",
            theirs.cpus, theirs.cpu_per_wall
        );
        println!(
            "{:<28} {:>7} {:>10} {:>10} {:>8}",
            "case", "threads", "jax_ms", "ms", "speedup"
        );
    }
    for t in &theirs.timings {
        let name = format!("torch/{}", t.case);
        let Some(o) = ours.iter().find(|r| r.threads == threads && r.case == name) else {
            return Err(format!(
                "hgq-bench-torch has no {threads}-thread case {name} to compare with the \
                 reference's {}",
                t.case
            ));
        };
        let speedup = t.ms / o.min_ms;
        let case = format!("vs-jax/{}", t.case);
        if json {
            let v = serde_json::json!({
                "case": case,
                "threads": threads,
                "jax_ms": t.ms,
                "jax_cpus": theirs.cpus,
                "jax_cpu_per_wall": (theirs.cpu_per_wall * 1e3).round() / 1e3,
                "ms": o.min_ms,
                "speedup": (speedup * 1e3).round() / 1e3,
            });
            println!("{v}");
        } else {
            println!(
                "{case:<28} {threads:>7} {:>10.3} {:>10.3} {speedup:>8.2}",
                t.ms, o.min_ms
            );
        }
    }
    Ok(())
}

/// `cargo run --release -q -p hgq-torch --bin hgq-bench-torch -- [--json] --reps N`, after
/// `setup::ensure()`; its exit code passes on.
fn run_torch(json: bool, reps: usize) -> Result<ExitCode, String> {
    let mut args = vec!["--reps".into(), reps.to_string().into()];
    if json {
        args.push("--json".into());
    }
    crate::torch::run(&["--bin", "hgq-bench-torch"], args)
}
