//! `hgq-bench-step [--path P] [--threads T] [--epochs E] [--filter S] [--no-floor]`: the steady-state training step of
//! small QDense MLPs, timed as whole epochs (what `cargo xtask bench --step` runs, once on one
//! thread and once on all, against `benches/hgq2_step.py`, hgq2 on jax, on the same work).
//!
//! Models (hgq2's default quantizers, QDense's defaults; EBOPs in the loss times beta = 1e-5;
//! Keras' Adam at 3e-3): `step/mlp/h{h}/b{batch}`, Input(64) -> QDense(h, relu) -> QDense(h,
//! relu) -> QDense(10), for h in 16, 32, 128, 512 and batch 64 and 1024; `step/demo/b64`, the
//! digits demo's model, Input(64) -> QDense(32, relu) -> QDense(10), batch 64; `step/cnn/b64`,
//! the CNN demo's, Input(64) -> Reshape(8, 8, 1) -> QConv2D(8, 3x3, relu) -> QMaxPooling2D(2x2)
//! -> Flatten -> QDense(10), batch 64 (without a floor: `products_ms_per_step` is `null`).
//!
//! Data: 1438 rows (the digits demo's training split) of 64 features and a label of 10 classes
//! from SplitMix64 seeded with 0 (per row 64 draws, pixel = draw % 17 / 16 as the digits' 0..16
//! scaled, then label = draw % 10; `hgq2_step.py` draws the same numbers). Each epoch runs every
//! batch in order (the last one partial, as Keras' `fit(shuffle=False)`): the forward in
//! `Sequential::train_step_on` (the forward in training mode, cross entropy + the EBOPs loss +
//! the regularization, the gradients, Keras' Adam, the constraints) on `--path` (`auto`, the
//! default, as `train_step`: the native step here; `native`; `autograd`: libtorch's autograd
//! through the layers); the mean loss is summed on the host and reported once per epoch. The first epoch is timed apart
//! (`first_epoch_ms`); `epoch_ms` is the median of the others, `ms_per_step` that over the steps
//! of an epoch. One JSON line per model:
//! `{"case","path","threads","ms_per_step","epoch_ms","first_epoch_ms","steps","loss",
//! "products_ms_per_step"}`.
//!
//! `products_ms_per_step` is a floor under any implementation of the step on this machine: the
//! matrix products a step of the model must do (per layer the forward `x @ W`, the kernel's
//! gradient `x^T @ dz` and the input's `dz @ W^T`, the first layer's included: its input
//! quantizer's bit widths need it), each timed alone on the same threads (the median of many
//! calls on data in cache, the fastest of libtorch's `mm` (MKL on x86 wheels), `matrixmultiply`
//! and the native step's own product), summed over an epoch's batches and divided by
//! its steps. A step that did nothing else would take this long, so `jax_ms / products_ms` is
//! the largest speedup over the reference that the products leave room for.
//!
//! `--path P` (`auto`, `native` or `autograd`; printed as `"path"`); `--threads T` (default 1)
//! sets libtorch's threads and the size of the rayon pool that hgq-core's kernels run in;
//! `--epochs E` (default 30, at least 2: the batch-1024 cases have two steps an epoch, so a few
//! epochs give a noisy median); `--filter S` runs only the cases whose name contains S;
//! `--no-floor` skips timing the products (`products_ms_per_step` is then `null`), so that a
//! profiler's samples are the step's alone. Freed
//! CPU memory is kept in the process (`hgq_torch::retain_cpu_memory`), as in `hgq-bench-torch`.
use std::process::ExitCode;
use std::time::Instant;

use hgq_torch::layers::{
    Activation, Flatten, PoolKind, QConv, QDense, QPool, Reshape, Sequential, StepPath,
};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Tensor, nn};

#[path = "shared/stats.rs"]
mod stats;
use stats::median;

type Error = Box<dyn std::error::Error>;

/// Rows of the data set: the digits demo's training split (80 % of 1797).
const ROWS: usize = 1438;
/// Features per row.
const FEATURES: usize = 64;
/// Classes.
const CLASSES: u64 = 10;
/// EBOPs' weight in the loss.
const BETA: f64 = 1e-5;
/// Adam's learning rate.
const LEARNING_RATE: f64 = 3e-3;

/// One model and batch size.
struct Case {
    name: String,
    net: Net,
    batch: usize,
}

/// A case's model.
enum Net {
    /// Hidden layers' units (all with relu), in order; a QDense(10) follows.
    Mlp(Vec<usize>),
    /// The CNN demo's model: Reshape(8, 8, 1) -> QConv2D(8, 3x3, relu) -> QMaxPooling2D(2x2)
    /// -> Flatten -> QDense(10).
    Cnn,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for h in [16, 32, 128, 512] {
        for batch in [64, 1024] {
            v.push(Case {
                name: format!("step/mlp/h{h}/b{batch}"),
                net: Net::Mlp(vec![h, h]),
                batch,
            });
        }
    }
    v.push(Case {
        name: "step/demo/b64".into(),
        net: Net::Mlp(vec![32]),
        batch: 64,
    });
    v.push(Case {
        name: "step/cnn/b64".into(),
        net: Net::Cnn,
        batch: 64,
    });
    v
}

/// SplitMix64 (as the demo's), so that `hgq2_step.py` can draw the same numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The data set: x `[ROWS, FEATURES]` float32, y `[ROWS]` int64.
fn data() -> (Tensor, Tensor) {
    let mut rng = Rng(0);
    let (mut x, mut y) = (
        Vec::with_capacity(ROWS * FEATURES),
        Vec::with_capacity(ROWS),
    );
    for _ in 0..ROWS {
        for _ in 0..FEATURES {
            x.push((rng.next() % 17) as f32 / 16.0);
        }
        y.push((rng.next() % CLASSES) as i64);
    }
    (
        Tensor::from_slice(&x).reshape([ROWS as i64, FEATURES as i64]),
        Tensor::from_slice(&y),
    )
}

/// A matrix product `m x k` by `k x n` into a row-major `m x n`, its left operand stored
/// transposed (`k x m`, as `x^T` in the kernel's gradient) or its right one (`n x k`, as `W^T`
/// in the input's).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Product {
    m: usize,
    k: usize,
    n: usize,
    a_t: bool,
    b_t: bool,
}

/// The products of one training step on `rows` rows of a QDense MLP whose layers' widths are
/// `widths` (input first): per layer the forward, the kernel's gradient and the input's.
fn step_products(widths: &[usize], rows: usize) -> Vec<Product> {
    let p = |m, k, n, a_t, b_t| Product { m, k, n, a_t, b_t };
    widths
        .windows(2)
        .flat_map(|w| {
            let (i, o) = (w[0], w[1]);
            [
                p(rows, i, o, false, false),
                p(i, rows, o, true, false),
                p(rows, o, i, false, true),
            ]
        })
        .collect()
}

/// The median time in seconds of `f` after a warm-up: at least 15 calls, more (up to 200)
/// while under 50 ms have passed.
fn median_secs(mut f: impl FnMut() -> Result<(), Error>) -> Result<f64, Error> {
    for _ in 0..3 {
        f()?;
    }
    let (start, mut t) = (Instant::now(), Vec::new());
    while t.len() < 15 || (t.len() < 200 && start.elapsed().as_secs_f64() < 0.05) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// One product's time in seconds: the fastest of libtorch's `mm` (into a kept output, the
/// transposes as views), `matrixmultiply::sgemm` and the native step's product (the transposes
/// as strides; the step's output buffer given back as the step does).
fn time_product(p: Product) -> Result<f64, Error> {
    let Product { m, k, n, a_t, b_t } = p;
    let dims = |r: usize, c: usize, t: bool| {
        if t {
            [c as i64, r as i64]
        } else {
            [r as i64, c as i64]
        }
    };
    let opts = (tch::Kind::Float, Device::Cpu);
    let a = Tensor::full(dims(m, k, a_t), 0.5, opts);
    let b = Tensor::full(dims(k, n, b_t), 0.25, opts);
    let (a, b) = (if a_t { a.tr() } else { a }, if b_t { b.tr() } else { b });
    let out = Tensor::zeros([m as i64, n as i64], opts);
    let torch = median_secs(|| {
        // The result is `out` itself (a handle to it); it is the kept output that matters.
        let _ = a.f_mm_out(&out, &b)?;
        Ok(())
    })?;
    let (av, bv) = (vec![0.5f32; m * k], vec![0.25f32; k * n]);
    let mut c = vec![0.0f32; m * n];
    let (rsa, csa) = if a_t { (1, m) } else { (k, 1) };
    let (rsb, csb) = if b_t { (1, k) } else { (n, 1) };
    let mm = median_secs(|| {
        // SAFETY: `av` holds m x k values and `bv` k x n at these strides, `c` m x n rows.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                av.as_ptr(),
                rsa as isize,
                csa as isize,
                bv.as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        Ok(())
    })?;
    let native = median_secs(|| {
        let c = hgq_torch::layers::native_product((m, k, n), (&av, rsa, csa), (&bv, rsb, csb))?;
        hgq_torch::hgq_core::scratch::give(c);
        Ok(())
    })?;
    Ok(torch.min(mm).min(native))
}

/// The floor of an MLP case's step in ms: its products alone over an epoch, per step (`None`
/// for the CNN, whose step is not mostly products).
fn products_ms_per_step(case: &Case) -> Result<Option<f64>, Error> {
    let Net::Mlp(hidden) = &case.net else {
        return Ok(None);
    };
    let mut widths = vec![FEATURES];
    widths.extend(hidden);
    widths.push(CLASSES as usize);
    let (mut epoch, mut steps) = (0.0, 0usize);
    let mut timed: Vec<(Product, f64)> = Vec::new();
    for start in (0..ROWS).step_by(case.batch) {
        for p in step_products(&widths, case.batch.min(ROWS - start)) {
            let t = match timed.iter().find(|(q, _)| *q == p) {
                Some(&(_, t)) => t,
                None => {
                    let t = time_product(p)?;
                    timed.push((p, t));
                    t
                }
            };
            epoch += t;
        }
        steps += 1;
    }
    Ok(Some(epoch * 1e3 / steps as f64))
}

/// What one case measured.
struct Row {
    /// Every epoch's time, in ms, the first included.
    epochs_ms: Vec<f64>,
    steps: usize,
    /// The last epoch's mean loss (so that the loss is read, and is seen to be finite).
    loss: f64,
}

/// Trains the case's model from scratch for `epochs` epochs, timing each.
fn run_case(
    case: &Case,
    path: StepPath,
    epochs: usize,
    x: &Tensor,
    y: &Tensor,
) -> Result<Row, Error> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Sequential::new();
    let root = vs.root();
    match &case.net {
        Net::Mlp(hidden) => {
            let mut prev = FEATURES;
            for &h in hidden {
                let layer = QDense::builder(prev, h)
                    .activation(Activation::Relu)
                    .beta(BETA);
                model.add(&root, layer)?;
                prev = h;
            }
            model.add(&root, QDense::builder(prev, CLASSES as usize).beta(BETA))?;
        }
        Net::Cnn => {
            model.add(&root, Reshape::new(&[FEATURES], &[8, 8, 1])?)?;
            let conv = QConv::builder_2d([8, 8, 1], 8, [3, 3]).activation(Activation::Relu);
            model.add(&root, conv.beta(BETA))?;
            let pool = QPool::builder_2d(PoolKind::Max, [6, 6, 8], [2, 2]).beta(BETA);
            model.add(&root, pool)?;
            model.add(&root, Flatten::new(&[3, 3, 8])?)?;
            model.add(&root, QDense::builder(72, CLASSES as usize).beta(BETA))?;
        }
    }
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(LEARNING_RATE))?;
    let batches: Vec<(Tensor, Tensor, f64)> = (0..ROWS)
        .step_by(case.batch)
        .map(|start| {
            let n = case.batch.min(ROWS - start);
            (
                x.narrow(0, start as i64, n as i64),
                y.narrow(0, start as i64, n as i64),
                n as f64,
            )
        })
        .collect();
    let mut epochs_ms = Vec::with_capacity(epochs);
    let mut loss = f64::NAN;
    for _ in 0..epochs {
        let t = Instant::now();
        let mut sum = 0.0;
        for (xb, yb, n) in &batches {
            let out = model.train_step_on(path, xb, yb, &mut opt)?;
            sum += out.loss.double_value(&[]) * *n;
        }
        loss = sum / ROWS as f64;
        epochs_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if !loss.is_finite() {
        return Err(format!("{}: the loss is {loss}", case.name).into());
    }
    Ok(Row {
        epochs_ms,
        steps: batches.len(),
        loss,
    })
}

/// `{:?}` of `v` rounded to `digits` decimals (floats as `1.0`, as serde_json prints them).
fn round(v: f64, digits: i32) -> String {
    let s = 10f64.powi(digits);
    format!("{:?}", (v * s).round() / s)
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "hgq-bench-step: {msg}\nusage: hgq-bench-step [--path auto|native|autograd] [--threads T] [--epochs E] [--filter S] [--no-floor]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let (mut threads, mut epochs, mut filter) = (1usize, 30usize, String::new());
    let mut floor = true;
    let mut path = StepPath::Auto;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--filter" => match args.next() {
                Some(v) => filter = v,
                None => return usage("--filter needs a case name or part of one"),
            },
            "--no-floor" => floor = false,
            "--path" => {
                path = match args.next().as_deref() {
                    Some("auto") => StepPath::Auto,
                    Some("native") => StepPath::Native,
                    Some("autograd") => StepPath::Autograd,
                    _ => return usage("--path needs auto, native or autograd"),
                }
            }
            "--threads" | "--epochs" => {
                let Some(v) = args.next().and_then(|v| v.parse().ok()) else {
                    return usage(&format!("{a} needs a positive integer"));
                };
                if a == "--threads" {
                    threads = v;
                } else {
                    epochs = v;
                }
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if threads == 0 || epochs < 2 {
        return usage("--threads must be positive and --epochs at least 2 (the first is dropped)");
    }
    // Before any thread or tensor exists: the allocator settings apply to what follows.
    hgq_torch::retain_cpu_memory();
    tch::set_num_threads(threads as i32);
    let pool = match hgq_torch::hgq_core::kernels::thread_pool(threads) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hgq-bench-step: cannot build a pool of {threads} threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .collect();
    if selected.is_empty() {
        return usage(&format!("no case matches --filter {filter:?}"));
    }
    // hgq-core's kernels run on the pool's threads; the tensors are made inside it.
    let result: Result<(), String> = pool.install(|| {
        let (x, y) = data();
        for case in &selected {
            let row = run_case(case, path, epochs, &x, &y)
                .map_err(|e| format!("{}: {e}", case.name))?;
            let epoch_ms = median(row.epochs_ms[1..].to_vec());
            let floor = if floor {
                let ms = products_ms_per_step(case).map_err(|e| format!("{}: {e}", case.name))?;
                ms.map_or_else(|| "null".into(), |ms| round(ms, 4))
            } else {
                "null".into()
            };
            println!(
                "{{\"case\":\"{}\",\"path\":\"{}\",\"threads\":{threads},\"ms_per_step\":{},\"epoch_ms\":{},\
                 \"first_epoch_ms\":{},\"steps\":{},\"loss\":{},\"products_ms_per_step\":{}}}",
                case.name,
                format!("{path:?}").to_lowercase(),
                round(epoch_ms / row.steps as f64, 4),
                round(epoch_ms, 3),
                round(row.epochs_ms[0], 3),
                row.steps,
                round(row.loss, 5),
                floor,
            );
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hgq-bench-step: {e}");
            ExitCode::FAILURE
        }
    }
}
