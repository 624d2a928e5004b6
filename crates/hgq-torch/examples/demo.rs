//! The main job: train a heterogeneously quantized network on the digits data set, trace its
//! integer bits, run it in quantized inference, and hand it to hgq2.
//!
//! `cargo xtask demo [--epochs 200] [--beta 1e-5] [--seed 0] [--device auto|cpu|cuda]
//! [--out out/demo] [--model mlp|cnn]` runs this (after installing libtorch when needed).
//!
//! Model (`--model mlp`, the default): Input(64) -> QDense(32, relu) -> QDense(10); (`--model
//! cnn`, written to `out/demo-cnn`): Input(64) -> Reshape(8, 8, 1) -> QConv2D(8, 3x3, relu) ->
//! QMaxPooling2D(2x2) -> Flatten -> QDense(10). hgq2's default quantizers (KIF WRAP inputs,
//! KBI SAT_SYM kernels, KBI biases) with EBOPs in the loss times `beta`; Adam at 3e-3, batch
//! 64. The output folder receives `model.json` (Keras JSON that hgq2 loads),
//! `weights.safetensors` (named by Keras variable paths), `predictions.safetensors` (`x`, `y`:
//! the test inputs and our quantized outputs), `summary.json` and one SVG heat map of kernel
//! bit widths per layer. `python ../shared/interop/check_keras.py OUT` compares with hgq2.
//!
//! Data-parallel: started with torchrun's variables (`WORLD_SIZE`, `RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`; `cargo xtask demo --nproc N` starts N local processes so), each process
//! trains on its rows of every batch over c10d's Gloo group
//! ([`hgq_torch::distributed::ProcessGroup::train_step`]: gradients averaged, quantizer
//! tracking synchronized), and rank 0 reports and writes the outputs.
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hgq_torch::distributed::{Backend, GroupOptions, ProcessGroup, ReduceOp};
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{
    Activation, Flatten, Layer, PoolKind, QConv, QDense, QPool, Reshape, Sequential, StepOutput,
    StepPath,
};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn};

type Error = Box<dyn std::error::Error>;

/// An epoch's summed loss and correct predictions: on the host for CPU steps (reading a CPU
/// scalar costs less than a tensor operation), on the device for CUDA ones.
enum Sums {
    Host(f64, i64),
    Device(Tensor, Tensor),
}

impl Sums {
    fn new(device: Device) -> Self {
        match device {
            Device::Cpu => Sums::Host(0.0, 0),
            d => Sums::Device(
                Tensor::zeros([], (Kind::Float, d)),
                Tensor::zeros([], (Kind::Int64, d)),
            ),
        }
    }

    fn add(&mut self, out: &StepOutput, rows: usize) {
        match self {
            Sums::Host(l, c) => {
                *l += out.loss.double_value(&[]) * rows as f64;
                *c += out.correct.int64_value(&[]);
            }
            Sums::Device(l, c) => {
                *l += &out.loss * rows as f64;
                *c += &out.correct;
            }
        }
    }

    fn read(&self) -> (f64, i64) {
        match self {
            Sums::Host(l, c) => (*l, *c),
            Sums::Device(l, c) => (l.double_value(&[]), c.int64_value(&[])),
        }
    }
}

struct Args {
    epochs: usize,
    beta: f64,
    seed: u64,
    device: Device,
    out: PathBuf,
    data: PathBuf,
    batch: usize,
    lr: f64,
    threads: i32,
    path: StepPath,
    model: ModelKind,
}

/// The network the demo trains.
#[derive(Clone, Copy, PartialEq)]
enum ModelKind {
    /// `64 -> QDense(32, relu) -> QDense(10)`.
    Mlp,
    /// The pixels as an 8 x 8 image: `QConv2D(8, 3x3, relu) -> QMaxPooling2D(2x2) -> Flatten
    /// -> QDense(10)`.
    Cnn,
}

fn parse_args() -> Result<Args, Error> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut a = Args {
        epochs: 200,
        beta: 1e-5,
        seed: 0,
        device: Device::cuda_if_available(),
        out: PathBuf::from("out/demo"),
        data: root.join("tests/data/digits/digits.csv.gz"),
        batch: 64,
        lr: 3e-3,
        // The network is small: one thread avoids libtorch's per-operation synchronisation.
        threads: 1,
        path: StepPath::Auto,
        model: ModelKind::Mlp,
    };
    let mut out_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = val()?.parse()?,
            "--beta" => a.beta = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--out" => {
                a.out = PathBuf::from(val()?);
                out_given = true;
            }
            "--model" => {
                a.model = match val()?.as_str() {
                    "mlp" => ModelKind::Mlp,
                    "cnn" => ModelKind::Cnn,
                    other => return Err(format!("--model {other}: mlp or cnn").into()),
                }
            }
            "--data" => a.data = PathBuf::from(val()?),
            "--batch" => a.batch = val()?.parse()?,
            "--lr" => a.lr = val()?.parse()?,
            "--threads" => a.threads = val()?.parse()?,
            "--path" => {
                a.path = match val()?.as_str() {
                    "auto" => StepPath::Auto,
                    "native" => StepPath::Native,
                    "autograd" => StepPath::Autograd,
                    other => return Err(format!("--path {other}: auto, native or autograd").into()),
                }
            }
            "--device" => {
                a.device = match val()?.as_str() {
                    "auto" => Device::cuda_if_available(),
                    "cpu" => Device::Cpu,
                    "cuda" if hgq_torch::cuda_available() => Device::Cuda(0),
                    "cuda" => return Err("--device cuda: no CUDA device here".into()),
                    other => return Err(format!("--device {other}: auto, cpu or cuda").into()),
                }
            }
            "-h" | "--help" => {
                println!(
                    "demo [--epochs 200] [--beta 1e-5] [--seed 0] [--device auto|cpu|cuda] \
                     [--out out/demo] [--data digits.csv.gz] [--batch 64] [--lr 3e-3] [--threads 1] \
                     [--path auto|native|autograd] [--model mlp|cnn]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} (see --help)").into()),
        }
    }
    if a.epochs == 0 || a.batch == 0 || a.threads < 1 {
        return Err("--epochs, --batch and --threads must be positive".into());
    }
    if a.model == ModelKind::Cnn && !out_given {
        a.out = PathBuf::from("out/demo-cnn");
    }
    Ok(a)
}

/// SplitMix64: a small, fixed generator so the split and the shuffles are the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The digits: 64 pixel values (0..16) and the label per line.
fn load_digits(path: &Path) -> Result<(Vec<f32>, Vec<i64>), Error> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text)?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        if v.len() != 65 {
            return Err(format!(
                "{}:{}: {} columns, expected 65",
                path.display(),
                n + 1,
                v.len()
            )
            .into());
        }
        x.extend(v[..64].iter().map(|p| p / 16.0));
        y.push(v[64] as i64);
    }
    Ok((x, y))
}

fn rows(x: &[f32], y: &[i64], idx: &[usize], device: Device) -> Result<(Tensor, Tensor), Error> {
    let xs: Vec<f32> = idx
        .iter()
        .flat_map(|&i| x[i * 64..(i + 1) * 64].iter().copied())
        .collect();
    let ys: Vec<i64> = idx.iter().map(|&i| y[i]).collect();
    // On a device: copied from pinned memory without waiting for it (a copy from pageable
    // memory would wait for the device at every batch).
    let up = |t: Tensor| hgq_torch::upload(&t, device);
    Ok((
        up(Tensor::from_slice(&xs).reshape([idx.len() as i64, 64]))?,
        up(Tensor::from_slice(&ys))?,
    ))
}

/// Mean bits of each quantizer, by Keras path.
fn mean_bits(model: &Sequential) -> Result<Vec<(String, f64)>, Error> {
    let mut v = Vec::new();
    for l in model.layers() {
        for q in l.quantizers() {
            let b =
                q.q.bits()?
                    .detach()
                    .to_kind(Kind::Double)
                    .mean(Kind::Double);
            v.push((q.keras_path.clone(), b.double_value(&[])));
        }
    }
    Ok(v)
}

fn progress(epoch: usize, epochs: usize, loss: f64, acc: f64, ebops: u64, bits: f64, tty: bool) {
    let width = 24;
    let done = epoch * width / epochs;
    let bar: String = "#".repeat(done) + &"-".repeat(width - done);
    let line = format!(
        "[{bar}] epoch {epoch:>4}/{epochs} loss {loss:.4} acc {acc:.4} ebops {ebops:>6} mean bits {bits:.2}"
    );
    if tty {
        eprint!("\r{line}");
        if epoch == epochs {
            eprintln!();
        }
    } else if epoch == 1 || epoch.is_multiple_of(10) || epoch == epochs {
        eprintln!("{line}");
    }
}

/// A heat map of one layer's kernel bit widths (rows: inputs, columns: units).
fn heat_map(layer: &QDense) -> Result<String, Error> {
    let bits = layer
        .kq()
        .q
        .bits_like(&[layer.in_features() as i64, layer.units() as i64])?;
    let b: Vec<f32> =
        Vec::<f32>::try_from(bits.detach().to_device(Device::Cpu).contiguous().view(-1))?;
    let (rows, cols) = (layer.in_features(), layer.units());
    let max = b.iter().cloned().fold(1.0f32, f32::max);
    let cell = 12;
    let (w, h) = (cols * cell + 140, rows * cell + 40);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"monospace\" font-size=\"11\">\n\
         <text x=\"4\" y=\"14\">{} kernel bits ({rows} inputs x {cols} units)</text>\n",
        layer.name()
    );
    for r in 0..rows {
        for c in 0..cols {
            let v = b[r * cols + c];
            // White (0 bits) to dark blue (max bits).
            let t = (v / max).clamp(0.0, 1.0);
            let (red, green, blue) = (
                (255.0 * (1.0 - t)) as u8,
                (255.0 * (1.0 - 0.8 * t)) as u8,
                (255.0 - 100.0 * t) as u8,
            );
            s += &format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"#{red:02x}{green:02x}{blue:02x}\"><title>in {r} unit {c}: {v} bits</title></rect>\n",
                c * cell,
                r * cell + 24
            );
        }
    }
    let lx = cols * cell + 16;
    for k in 0..=4 {
        let v = max * k as f32 / 4.0;
        let t = v / max;
        let (red, green, blue) = (
            (255.0 * (1.0 - t)) as u8,
            (255.0 * (1.0 - 0.8 * t)) as u8,
            (255.0 - 100.0 * t) as u8,
        );
        let y = 24 + k * 20;
        s += &format!(
            "<rect x=\"{lx}\" y=\"{y}\" width=\"14\" height=\"14\" fill=\"#{red:02x}{green:02x}{blue:02x}\" stroke=\"#888\"/><text x=\"{}\" y=\"{}\">{v:.1} bits</text>\n",
            lx + 20,
            y + 11
        );
    }
    s += "</svg>\n";
    Ok(s)
}

fn build_model(vs: &nn::VarStore, kind: ModelKind, beta: f64) -> Result<Sequential, Error> {
    let mut model = Sequential::new();
    let root = vs.root();
    match kind {
        ModelKind::Mlp => {
            model.add(
                &root,
                QDense::builder(64, 32)
                    .activation(Activation::Relu)
                    .beta(beta),
            )?;
            model.add(&root, QDense::builder(32, 10).beta(beta))?;
        }
        ModelKind::Cnn => {
            model.add(&root, Reshape::new(&[64], &[8, 8, 1])?)?;
            model.add(
                &root,
                QConv::builder_2d([8, 8, 1], 8, [3, 3])
                    .activation(Activation::Relu)
                    .beta(beta),
            )?;
            model.add(
                &root,
                QPool::builder_2d(PoolKind::Max, [6, 6, 8], [2, 2]).beta(beta),
            )?;
            model.add(&root, Flatten::new(&[3, 3, 8])?)?;
            model.add(&root, QDense::builder(72, 10).beta(beta))?;
        }
    }
    Ok(model)
}

/// torchrun's group, with NCCL for a model on CUDA where each local rank has a GPU of its own
/// (NCCL refuses two ranks on one device); ranks that share GPUs reduce through the host (Gloo).
fn group_options(device: Device) -> Result<GroupOptions, Error> {
    let o = GroupOptions::from_env()?;
    if !device.is_cuda() {
        return Ok(o);
    }
    let local: usize = std::env::var("LOCAL_WORLD_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(o.world_size);
    let gpus = tch::Cuda::device_count().max(1) as usize;
    if local > gpus {
        eprintln!("{local} local ranks share {gpus} GPU(s): collectives through the host (Gloo)");
        return Ok(o.backend(Backend::Gloo));
    }
    Ok(o)
}

fn main() -> Result<(), Error> {
    let mut a = parse_args()?;
    // One GPU per local rank when data-parallel on CUDA (torchrun's LOCAL_RANK).
    if let (Device::Cuda(_), Ok(local)) = (a.device, std::env::var("LOCAL_RANK")) {
        let gpus = tch::Cuda::device_count().max(1) as usize;
        a.device = Device::Cuda(local.parse::<usize>().unwrap_or(0) % gpus);
    }
    let (x, y) = load_digits(&a.data)?;
    let n = y.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng(a.seed);
    rng.shuffle(&mut order);
    let n_train = (n as f64 * 0.8).round() as usize;
    let (train_idx, test_idx) = order.split_at(n_train);
    let (x_test, y_test) = rows(&x, &y, test_idx, a.device)?;
    eprintln!(
        "digits: {n} rows, {} train / {} test; device {:?}; {} epochs, beta {}, seed {}",
        train_idx.len(),
        test_idx.len(),
        a.device,
        a.epochs,
        a.beta,
        a.seed
    );

    tch::set_num_threads(a.threads);
    tch::manual_seed(a.seed as i64);
    let vs = nn::VarStore::new(a.device);
    let model = build_model(&vs, a.model, a.beta)?;
    // Data-parallel when started as one rank of several (torchrun's variables).
    let group = match std::env::var("WORLD_SIZE") {
        Ok(_) => {
            let g = ProcessGroup::new(&group_options(a.device)?)?;
            g.broadcast_variables(&vs)?;
            eprintln!("rank {} of {}", g.rank(), g.size());
            Some(g)
        }
        Err(_) => None,
    };
    let lead = group.as_ref().is_none_or(|g| g.rank() == 0);
    // This rank's rows of a batch (all of them without a group).
    let shard = |batch: &[usize]| -> Vec<usize> {
        match &group {
            Some(g) => batch[g.shard(batch.len())].to_vec(),
            None => batch.to_vec(),
        }
    };
    // Keras' Adam, as hgq2 trains (epsilon 1e-7, bias correction folded into the step).
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(a.lr))?;

    let tty = std::io::stderr().is_terminal();
    let mut idx = train_idx.to_vec();
    let t0 = Instant::now();
    for epoch in 1..=a.epochs {
        rng.shuffle(&mut idx);
        // Loss and accuracy summed where the step computed them, read once per epoch (a read
        // per step would wait for a CUDA device every step).
        let mut sums = Sums::new(a.device);
        let mut seen = 0usize;
        for batch in idx.chunks(a.batch) {
            let mine = shard(batch);
            let (xb, yb) = rows(&x, &y, &mine, a.device)?;
            let out = match &group {
                Some(g) => g.train_step(&model, &vs, &xb, &yb, &mut opt)?,
                // `auto`: the native step on the CPU, autograd on CUDA (Sequential::train_step).
                None => model.train_step_on(a.path, &xb, &yb, &mut opt)?,
            };
            sums.add(&out, mine.len());
            seen += mine.len();
        }
        let (mut loss_sum, mut correct) = sums.read();
        // What the device found during the epoch (not-finite data or gradients, bad bit
        // widths), read with the sums.
        hgq_torch::deferred::check()?;
        if let Some(g) = &group {
            let t = Tensor::from_slice(&[loss_sum, correct as f64, seen as f64]);
            g.all_reduce_(&t, ReduceOp::Sum)?;
            let v: Vec<f64> = Vec::try_from(&t)?;
            (loss_sum, correct, seen) = (v[0], v[1] as i64, v[2] as usize);
        }
        if !lead {
            continue;
        }
        let bits = mean_bits(&model)?;
        let mean = bits.iter().map(|b| b.1).sum::<f64>() / bits.len() as f64;
        progress(
            epoch,
            a.epochs,
            loss_sum / seen as f64,
            correct as f64 / seen as f64,
            model.ebops(),
            mean,
            tty,
        );
    }
    let train_seconds = t0.elapsed().as_secs_f64();

    // hgq2's trace_minmax over the training data, batches of 1024.
    let batches: Vec<Tensor> = train_idx
        .chunks(1024)
        .map(|c| Ok(rows(&x, &y, &shard(c), a.device)?.0))
        .collect::<Result<_, Error>>()?;
    let ebops = match &group {
        Some(g) => g.trace_minmax(&model, &batches)?,
        None => model.trace_minmax(&batches)?,
    };
    if !lead {
        return Ok(());
    }
    let logits = tch::no_grad(|| model.forward(&x_test, CallMode::Inference))?.y;
    let acc = logits
        .argmax(-1, false)
        .eq_tensor(&y_test)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);

    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("model.json"), model.to_keras_json()?)?;
    // The same model as a Keras archive: `keras.models.load_model` opens it after `import hgq`.
    model.save_keras(a.out.join("model.keras"))?;
    let vars: Vec<(String, Tensor)> = model
        .keras_variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&vars, a.out.join("weights.safetensors"))?;
    let preds = [
        ("x", x_test.to_device(Device::Cpu).contiguous()),
        ("y", logits.detach().to_device(Device::Cpu).contiguous()),
    ];
    Tensor::write_safetensors(&preds, a.out.join("predictions.safetensors"))?;
    let mut maps = Vec::new();
    for l in model
        .layers()
        .iter()
        .filter_map(|l| l.downcast_ref::<QDense>())
    {
        let file = format!("{}_kernel_bits.svg", l.name());
        std::fs::write(a.out.join(&file), heat_map(l)?)?;
        maps.push(file);
    }
    let bits = mean_bits(&model)?;
    let summary = serde_json::json!({
        "test_accuracy": acc,
        "ebops": ebops,
        "ebops_per_layer": model
            .layers()
            .iter()
            .map(|l| (l.name().to_string(), serde_json::json!(l.ebops())))
            .collect::<serde_json::Map<_, _>>(),
        "mean_bits": bits.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "train_seconds": train_seconds,
        "epochs": a.epochs,
        "beta": a.beta,
        "seed": a.seed,
        "model": match a.model {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
        },
        "device": format!("{:?}", a.device),
        "processes": group.as_ref().map_or(1, |g| g.size()),
        "train_rows": train_idx.len(),
        "test_rows": test_idx.len(),
        "heat_maps": maps,
    });
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(a.out.join("summary.json"), &text)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    writeln!(
        out,
        "wrote {} (check with hgq2: python ../shared/interop/check_keras.py {})",
        a.out.display(),
        a.out.display()
    )?;
    Ok(())
}
