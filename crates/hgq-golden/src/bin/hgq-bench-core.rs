//! `hgq-bench-core [--reps N] [--threads N]`: the core kernel timings of `cargo xtask bench`, as
//! ratios against a plain copy of the same bytes measured in the same run. It prints one JSON
//! object per row, `{"case", "threads", "ms", "copy_ms", "ratio"}` (full precision), as soon as
//! it is measured; `cargo xtask bench` runs it and prints the rows as a table, or rounded as
//! JSON with `--json`. It lives in hgq-golden, beside the golden checker, so that xtask links no
//! crate of the project.
//!
//! The work is the one of `benches/core.rs` and of the reference's `hgq2_ref.py`: x of shape
//! 1024 x 4096 float32, a KIF quantizer with k = 1, i = 2, f = 4, RND, SAT, bit widths per
//! column (`[1, 4096]`) or per element (`[1024, 4096]`).
//! - `infer`: `FixedPoint::forward` with the zero mask (what the layer quantizer does).
//! - `train`: `FixedPoint::forward_backward` in training, writing y, dx and di/df reduced to the
//!   bit-width shape.
//!
//! Every case runs once on one thread and once on all threads (`--threads N`: on N threads
//! only), in a rayon pool each (`install`). Each repetition (`--reps`, default 15) times
//! `dst.copy_from_slice(&x)` (one thread; split over the pool's threads otherwise) and then the
//! case; `ms` and `copy_ms` are the medians, `ratio` the median of the per-repetition ratios
//! (the machine's load may change between repetitions, not within one).
use std::process::ExitCode;
use std::time::Instant;

use hgq_core::{FixedGrads, FixedPoint, OverflowMode, RoundMode, TensorRef};
use rayon::prelude::*;

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

impl Row {
    /// Prints the row as one JSON line (flushed: standard output is line-buffered).
    fn print(&self) {
        let v = serde_json::json!({
            "case": self.case,
            "threads": self.threads,
            "ms": self.ms,
            "copy_ms": self.copy_ms,
            "ratio": self.ratio,
        });
        println!("{v}");
    }
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

/// Runs the cases for one thread count inside a pool of that many threads, printing each row
/// when it is measured.
fn measure(threads: usize, reps: usize, w: &mut Work) -> Result<(), String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| format!("cannot build a pool of {threads} threads: {e}"))?;
    pool.install(|| {
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
        Row {
            case: "copy".into(),
            threads,
            ms: cm,
            copy_ms: cm,
            ratio: 1.0,
        }
        .print();
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
            Row {
                case: format!("infer/{layout}"),
                threads,
                ms,
                copy_ms,
                ratio,
            }
            .print();
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
            Row {
                case: format!("train/{layout}"),
                threads,
                ms,
                copy_ms,
                ratio,
            }
            .print();
        }
        Ok(())
    })
}

fn main() -> ExitCode {
    let mut reps = 15;
    let mut threads: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let positive = |v: Option<String>| v.and_then(|v| v.parse().ok()).filter(|&v| v > 0);
        match a.as_str() {
            "--reps" => match positive(args.next()) {
                Some(n) => reps = n,
                None => return usage("--reps needs a positive integer"),
            },
            "--threads" => match positive(args.next()) {
                Some(n) => threads = Some(n),
                None => return usage("--threads needs a positive integer"),
            },
            "-h" | "--help" => return usage("times the core kernels against a plain copy"),
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let counts = match threads {
        Some(n) => vec![n],
        None => {
            let all = std::thread::available_parallelism().map_or(1, |n| n.get());
            if all > 1 { vec![1, all] } else { vec![1] }
        }
    };
    let mut w = Work::new();
    for threads in counts {
        if let Err(e) = measure(threads, reps, &mut w) {
            eprintln!("hgq-bench-core: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Prints `msg` and the usage on standard error; exit code 2.
fn usage(msg: &str) -> ExitCode {
    eprintln!("hgq-bench-core: {msg}\nusage: hgq-bench-core [--reps N] [--threads N]");
    ExitCode::from(2)
}
