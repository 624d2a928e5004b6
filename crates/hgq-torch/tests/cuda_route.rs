//! The kernel route as a whole (layout, arguments, the C++ autograd function, the sums of the
//! bit widths' gradients, KBI's chain rule, float64 for wide types) on CPU tensors, where the
//! kernel's host build runs: against the CPU pass (`fixed_quantize`) and the torch-ops path.
use hgq_core::{BitWidths, FixedPoint, OverflowMode, RoundMode, Stochastic};
use hgq_torch::cuda::{KernelSetting, Route, fixed_quantize_kernel};
use hgq_torch::ops::fixed_quantize_ops;
use hgq_torch::{Result, fixed_quantize};
use tch::{Device, Kind, Tensor};

mod common;

/// Reproducible values in [lo, hi).
fn values(n: i64, seed: i64, lo: f64, hi: f64) -> Tensor {
    let t = Tensor::arange(n, (Kind::Double, Device::Cpu));
    let u = ((&t * 0.618_033_988_75 + seed as f64 * 0.1) * 97.0)
        .frac()
        .abs();
    u * (hi - lo) + lo
}

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.to_kind(Kind::Double);
    Vec::<f64>::try_from(&t.flatten(0, -1))
        .unwrap()
        .iter()
        .map(|v| if v.is_nan() { u64::MAX } else { v.to_bits() })
        .collect()
}

struct Operands {
    x: Tensor,
    k: Tensor,
    a: Tensor,
    b: Tensor,
}

/// x of 48 x 16 (ties, zeros, large values among them); bit widths element-wise or per column.
fn operands(rule: BitWidths, per_column: bool, kind: Kind, seed: i64) -> Operands {
    let (rows, cols) = (48i64, 16i64);
    let x = (values(rows * cols, seed, -24.0, 24.0) * 8.0).round() / 8.0
        + values(rows * cols, seed + 1, 0.0, 1.0)
            .lt(0.3)
            .to_kind(Kind::Double)
            / 16.0;
    let x = x.reshape([rows, cols]);
    let shape: Vec<i64> = if per_column {
        vec![cols]
    } else {
        vec![rows, cols]
    };
    let n = shape.iter().product();
    let k = values(n, seed + 2, 0.0, 2.0).floor().reshape(&shape);
    let (a, b) = match rule {
        BitWidths::Integer => (
            values(n, seed + 3, -4.0, 7.0).round(),
            values(n, seed + 4, -2.0, 10.0).round(),
        ),
        BitWidths::RoundHalfEven => (
            values(n, seed + 3, -4.0, 7.0),
            values(n, seed + 4, -2.0, 10.0),
        ),
        BitWidths::KbiRaw => (
            values(n, seed + 3, 0.0, 12.0),
            values(n, seed + 4, -3.0, 6.0),
        ),
    };
    Operands {
        x: x.to_kind(kind),
        k: k.to_kind(kind),
        a: a.reshape(&shape).to_kind(kind),
        b: b.reshape(&shape).to_kind(kind),
    }
}

/// y and the gradients of x, a, b for upstream `dy`, on fresh leaves (a gradient added into
/// a zeroed one would turn -0 into +0).
fn run(
    f: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    o: &Operands,
) -> [Tensor; 4] {
    let leaf = |t: &Tensor| t.detach().copy().set_requires_grad(true);
    let (x, a, b) = (leaf(&o.x), leaf(&o.a), leaf(&o.b));
    let y = f(&x, &o.k, &a, &b).unwrap();
    let dy = values(y.numel() as i64, 9, -2.0, 2.0)
        .to_kind(y.kind())
        .reshape(y.size());
    (&y * &dy).sum(y.kind()).backward();
    [y.detach(), x.grad(), a.grad(), b.grad()]
}

fn quantizers() -> Vec<(FixedPoint, bool)> {
    let q = |r, o| FixedPoint::new(r, o).unwrap();
    vec![
        (q(RoundMode::Rnd, OverflowMode::Sat), false),
        (q(RoundMode::Rnd, OverflowMode::Sat), true),
        (q(RoundMode::RndConv, OverflowMode::Wrap), false),
        (q(RoundMode::RndConv, OverflowMode::Wrap), true),
        (q(RoundMode::Trn, OverflowMode::SatSym), true),
        (q(RoundMode::Rnd, OverflowMode::WrapSm), false),
        (
            q(RoundMode::SRnd, OverflowMode::Sat).with_stochastic(Stochastic::Seeded(7)),
            true,
        ),
        (
            q(RoundMode::Rnd, OverflowMode::Sat).with_zero_mask(true),
            false,
        ),
    ]
}

/// y, dx and the bit widths' gradients of every quantizer, rule and layout: `route` (on the
/// operands `place` puts on its device) against the CPU pass. Bit for bit except the sums of
/// per-column gradients (the orders differ: within 1e-5).
fn against_the_cpu_pass(
    place: impl Fn(&Operands) -> Operands,
    route: impl Fn(
        &FixedPoint,
        bool,
    ) -> Box<dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>>,
) {
    let mut compared = 0;
    for (q, training) in quantizers() {
        for rule in [
            BitWidths::Integer,
            BitWidths::RoundHalfEven,
            BitWidths::KbiRaw,
        ] {
            for per_column in [false, true] {
                let q = q.with_bit_widths(rule);
                let o = operands(rule, per_column, Kind::Float, compared);
                let got = run(route(&q, training), &place(&o)).map(|t| t.to_device(Device::Cpu));
                let want = run(|x, k, a, b| fixed_quantize(&q, x, k, a, b, training), &o);
                let what = format!("{q:?} training {training} per column {per_column}");
                assert_eq!(bits(&got[0]), bits(&want[0]), "y: {what}");
                assert_eq!(bits(&got[1]), bits(&want[1]), "dx: {what}");
                for j in [2, 3] {
                    if per_column {
                        let close = got[j].allclose(&want[j], 1e-5, 1e-5, false);
                        assert!(
                            close,
                            "bit-width gradient {j}: {what}\n{}\n{}",
                            got[j], want[j]
                        );
                    } else {
                        assert_eq!(bits(&got[j]), bits(&want[j]), "gradient {j}: {what}");
                    }
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 8 * 3 * 2);
}

#[test]
fn the_route_on_the_host_build_is_the_cpu_pass() {
    against_the_cpu_pass(
        |o| Operands {
            x: o.x.shallow_clone(),
            k: o.k.shallow_clone(),
            a: o.a.shallow_clone(),
            b: o.b.shallow_clone(),
        },
        |q, training| {
            let q = *q;
            Box::new(move |x, k, a, b| fixed_quantize_kernel(&q, x, k, a, b, training))
        },
    );
}

#[test]
fn float64_and_wide_types_match_the_torch_ops() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let o = operands(BitWidths::Integer, true, Kind::Double, 3);
    let got = run(|x, k, a, b| fixed_quantize_kernel(&q, x, k, a, b, true), &o);
    let want = run(|x, k, a, b| fixed_quantize_ops(&q, x, k, a, b, true), &o);
    assert_eq!(bits(&got[0]), bits(&want[0]));
    assert_eq!(bits(&got[1]), bits(&want[1]));
    // A type of 30 bits: float32 does not hold it, both compute in float64.
    let x = (values(64, 1, -1000.0, 1000.0) / 3.0).to_kind(Kind::Float);
    let (k, i, f) = (
        Tensor::from(1.0f32),
        Tensor::from(12.0f32),
        Tensor::from(17.0f32),
    );
    let got = fixed_quantize_kernel(&q, &x, &k, &i, &f, false).unwrap();
    let want = fixed_quantize(&q, &x, &k, &i, &f, false).unwrap();
    assert_eq!(got.kind(), Kind::Float);
    assert_eq!(bits(&got), bits(&want));
}

#[test]
fn bad_bit_widths_are_hgq_cores_errors() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let x = Tensor::from_slice(&[0.5f32, 1.0]);
    let (k, f) = (Tensor::from(1.0f32), Tensor::from(2.0f32));
    let want = fixed_quantize(&q, &x, &k, &Tensor::from(0.5f32), &f, false).unwrap_err();
    let got = fixed_quantize_kernel(&q, &x, &k, &Tensor::from(0.5f32), &f, false).unwrap_err();
    assert_eq!(got.to_string(), want.to_string());
    let e = fixed_quantize_kernel(&q, &x, &k, &Tensor::from_slice(&[1.0f32; 3]), &f, false);
    assert!(e.is_err());
    let e = fixed_quantize_kernel(&q, &x.to_kind(Kind::Int), &k, &k, &f, false);
    assert!(e.is_err());
}

#[test]
fn the_route_choice() {
    let on = KernelSetting::On;
    let cuda = Device::Cuda(0);
    for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
        assert_eq!(Route::choose(cuda, kind, 4, on, true), Route::Kernel);
    }
    assert_eq!(Route::choose(cuda, Kind::Int, 4, on, true), Route::TorchOps);
    assert_eq!(
        Route::choose(cuda, Kind::Float, 9, on, true),
        Route::TorchOps
    );
    assert_eq!(Route::choose(cuda, Kind::Float, 8, on, true), Route::Kernel);
    assert_eq!(
        Route::choose(cuda, Kind::Float, 2, KernelSetting::Off, true),
        Route::TorchOps
    );
    // The default: the kernel (once its check on the device passed: `Route::of`).
    assert_eq!(
        Route::choose(cuda, Kind::Float, 2, KernelSetting::Checked, true),
        Route::Kernel
    );
    assert_eq!(
        Route::choose(cuda, Kind::Float, 2, on, false),
        Route::TorchOps
    );
    assert_eq!(
        Route::of(&Tensor::from_slice(&[1.0f32])).unwrap(),
        Route::TorchOps
    );
}

/// The same comparison with the device build on a GPU: our kernel through the driver on
/// torch's stream (`fixed_quantize` on CUDA tensors takes it with `HGQ_CUDA_KERNEL=on`, and
/// falls back to the torch ops only where NVRTC or the driver refuse it: none here).
#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn the_route_on_cuda_is_the_cpu_pass() {
    assert!(hgq_torch::cuda_available(), "needs CUDA");
    let dev = Device::Cuda(0);
    let on = |o: &Operands| Operands {
        x: o.x.to_device(dev),
        k: o.k.to_device(dev),
        a: o.a.to_device(dev),
        b: o.b.to_device(dev),
    };
    // fixed_quantize takes the kernel where the setting asks for it (scripts/gpu/run.sh does).
    let want_route = match KernelSetting::from_env() {
        KernelSetting::On | KernelSetting::Checked => Route::Kernel,
        KernelSetting::Off => Route::TorchOps,
    };
    assert_eq!(
        Route::of(&on(&operands(BitWidths::Integer, true, Kind::Float, 0)).x).unwrap(),
        want_route
    );
    // The kernel itself (fixed_quantize would fall back to the torch ops if it failed).
    against_the_cpu_pass(on, |q, training| {
        let q = *q;
        Box::new(move |x, k, a, b| fixed_quantize_kernel(&q, x, k, a, b, training))
    });
    // And fixed_quantize on CUDA tensors (through the route the setting gives).
    let cpu = operands(BitWidths::Integer, true, Kind::Float, 1);
    let o = on(&cpu);
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let y = fixed_quantize(&q, &o.x, &o.k, &o.a, &o.b, true).unwrap();
    let want = fixed_quantize(&q, &cpu.x, &cpu.k, &cpu.a, &cpu.b, true).unwrap();
    assert_eq!(bits(&y.to_device(Device::Cpu)), bits(&want));
    assert_eq!(hgq_torch::cuda::kernel_failure(), None);
}

/// Bit widths per row (read as `j / period`) and in a layout only strides describe: the
/// kernel reads what broadcasting reads (y and dx bit for bit, the sums within 1e-5).
#[test]
fn per_row_and_strided_bit_widths() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let x = (values(4 * 12 * 16, 2, -24.0, 24.0) * 8.0).round() / 8.0;
    let x = x.reshape([4, 12, 16]).to_kind(Kind::Float);
    for shape in [
        vec![4i64, 1, 1],
        vec![4, 12, 1],
        vec![4, 1, 16],
        vec![12, 1],
    ] {
        let n: i64 = shape.iter().product();
        let o = Operands {
            x: x.shallow_clone(),
            k: values(n, 3, 0.0, 2.0)
                .floor()
                .reshape(&shape)
                .to_kind(Kind::Float),
            a: values(n, 4, -4.0, 7.0)
                .round()
                .reshape(&shape)
                .to_kind(Kind::Float),
            b: values(n, 5, -2.0, 10.0)
                .round()
                .reshape(&shape)
                .to_kind(Kind::Float),
        };
        let got = run(|x, k, a, b| fixed_quantize_kernel(&q, x, k, a, b, true), &o);
        let want = run(|x, k, a, b| fixed_quantize(&q, x, k, a, b, true), &o);
        assert_eq!(bits(&got[0]), bits(&want[0]), "y, bit widths {shape:?}");
        assert_eq!(bits(&got[1]), bits(&want[1]), "dx, bit widths {shape:?}");
        for j in [2, 3] {
            assert!(
                got[j].allclose(&want[j], 1e-5, 1e-5, false),
                "{j} {shape:?}"
            );
        }
    }
}

/// `hgq-bench-cuda` runs its cases on the CPU too (what the GPU machine runs, kept working
/// where there is none): a row per route, work, layout and overflow.
#[test]
fn the_cuda_bench_runs_on_the_cpu() {
    // Beside this test (scripts/gpu/pack.sh puts them together), else where Cargo built it.
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("hgq-bench-cuda")))
        .filter(|p| p.exists());
    let exe = beside.unwrap_or_else(|| env!("CARGO_BIN_EXE_hgq-bench-cuda").into());
    let out = std::process::Command::new(&exe)
        .args(["--device", "cpu", "--rows", "8", "--reps", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // (module, kernel, torch-ops) x (infer, train) x 2 layouts x 2 overflows, fake x 2.
    assert_eq!(rows.len(), 3 * 2 * 2 * 2 + 2);
    for r in &rows {
        assert!(r["case"].as_str().unwrap().starts_with("cpu/"), "{r}");
        assert!(
            r["ms"].as_f64().unwrap() > 0.0 && r["ratio"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    let bad = std::process::Command::new(&exe)
        .args(["--reps", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// The synchronization counter runs here (a CUDA libtorch without a GPU): CPU work reports
/// none. Where libtorch has no CUDA it is an error.
#[test]
fn counting_synchronizations_of_cpu_work_finds_none() {
    let x = Tensor::ones([8], (Kind::Float, Device::Cpu));
    match hgq_torch::cuda::count_syncs(|| x.sum(Kind::Float).double_value(&[])) {
        Ok((sum, n)) => assert_eq!((sum, n), (8.0, 0)),
        Err(e) => {
            let lib = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.venv/libtorch/lib/libtorch_cuda.so");
            assert!(!lib.exists(), "a CUDA libtorch, and no counter: {e}");
        }
    }
}

/// Issue 24's first item: a training step of the demo's model on CUDA (forward with WRAP
/// tracking, EBOPs and the loss; backward; Adam; constraints) and a tracing pass make no host
/// synchronization. Each phase is counted apart, so a failure names where they are.
#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn a_training_step_on_cuda_does_not_synchronize() {
    use hgq_torch::cuda::count_syncs;
    use hgq_torch::hgq_core::CallMode;
    use hgq_torch::optim::{Adam, AdamConfig};
    assert!(hgq_torch::cuda_available(), "needs CUDA");
    let dev = Device::Cuda(0);
    // The counter itself: one read to the host is one synchronization.
    let probe = Tensor::ones([4], (Kind::Float, dev));
    let (_, n) = count_syncs(|| probe.sum(Kind::Float).double_value(&[])).unwrap();
    assert_eq!(n, 1, "the counter sees a read to the host");

    let vs = tch::nn::VarStore::new(dev);
    let m = common::demo_mlp(&vs);
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    let x = Tensor::randn([64, 64], (Kind::Float, dev)) * 2.0;
    let labels = x.narrow(1, 0, 10).argmax(1, false);
    let mut counts = [0u64; 5];
    for step in 0..5 {
        let ((loss, _), forward) = count_syncs(|| {
            let out = m.forward(&x, CallMode::Training).unwrap();
            let loss = out.y.cross_entropy_for_logits(&labels) + &out.ebops_loss;
            (loss, out.y)
        })
        .unwrap();
        opt.zero_grad();
        let (_, backward) = count_syncs(|| loss.backward()).unwrap();
        let (_, adam) = count_syncs(|| opt.step().unwrap()).unwrap();
        let (_, constraints) = count_syncs(|| m.apply_constraints().unwrap()).unwrap();
        let (_, tracing) = count_syncs(|| m.forward(&x, CallMode::Tracing).unwrap()).unwrap();
        // The first two steps warm up (kernels compiled, caches filled).
        if step >= 2 {
            for (c, n) in counts
                .iter_mut()
                .zip([forward, backward, adam, constraints, tracing])
            {
                *c += n;
            }
        }
    }
    eprintln!(
        "synchronizations in 3 steps: forward {}, backward {}, Adam {}, constraints {}, tracing {}",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
    // The kernel route (the default once its check passed; HGQ_CUDA_KERNEL=on forces it, as
    // scripts/gpu/run.sh does) reads nothing back;
    // the torch operations read the bit-width check's flags once per quantizer call (6 calls
    // a step in training and in tracing), as the rehearsal on the CPU counts.
    let want = match KernelSetting::from_env() {
        KernelSetting::On | KernelSetting::Checked => [0; 5],
        KernelSetting::Off => [18, 0, 0, 0, 18],
    };
    assert_eq!(
        counts, want,
        "forward, backward, Adam, constraints, tracing"
    );
    hgq_torch::deferred::check().unwrap();
}

/// Five training steps of the demo's network (each with a tracing pass after it), on `route`
/// in a rehearsed CUDA step or (`None`) on the host: what the last three read back to the host
/// per phase (forward, backward, Adam, constraints, tracing), and the variables after them.
fn five_steps(route: Option<Route>) -> ([hgq_torch::cuda::HostReads; 5], Vec<(String, Tensor)>) {
    use hgq_torch::cuda::{HostReads, rehearse};
    use hgq_torch::hgq_core::CallMode;
    use hgq_torch::optim::{Adam, AdamConfig};
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let m = common::seeded(3, || common::demo_mlp(&vs));
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    let x = common::seeded(4, || {
        Tensor::randn([64, 64], (Kind::Float, Device::Cpu)) * 2.0
    });
    let labels = x.narrow(1, 0, 10).argmax(1, false);
    // On the host: the same closures, nothing counted.
    let phase = |f: &mut dyn FnMut()| match route {
        Some(r) => rehearse(r, f).1,
        None => {
            f();
            HostReads::default()
        }
    };
    let mut counts: [HostReads; 5] = Default::default();
    for step in 0..5 {
        let mut loss = None;
        let forward = phase(&mut || {
            let out = m.forward(&x, CallMode::Training).unwrap();
            loss = Some(out.y.cross_entropy_for_logits(&labels) + &out.ebops_loss);
        });
        let loss = loss.unwrap();
        opt.zero_grad();
        let backward = phase(&mut || loss.backward());
        let adam = phase(&mut || opt.step().unwrap());
        let constraints = phase(&mut || m.apply_constraints().unwrap());
        let tracing = phase(&mut || {
            m.forward(&x, CallMode::Tracing).unwrap();
        });
        if step >= 2 {
            for (c, p) in counts
                .iter_mut()
                .zip([forward, backward, adam, constraints, tracing])
            {
                for (what, n) in p.by_what {
                    *c.by_what.entry(what).or_default() += n;
                }
            }
        }
    }
    hgq_torch::deferred::check().unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (counts, vars)
}

/// A training step on CUDA reads nothing back to the host on the kernel route (WRAP tracking,
/// EBOPs, Adam, constraints and the kernel's checks stay on the device), rehearsed on the
/// CPU; the torch operations still read the bit-width check's two flags per call. Either
/// trains what the host trains: the variables after five steps within float32 rounding of
/// the per-column sums (whose order differs).
#[test]
fn a_rehearsed_cuda_step_reads_nothing_back() {
    let (_, host) = five_steps(None);
    for route in [Route::Kernel, Route::TorchOps] {
        let (c, vars) = five_steps(Some(route));
        let reads: Vec<_> = c.iter().map(|p| p.by_what.clone()).collect();
        match route {
            Route::Kernel => assert!(c.iter().all(|p| p.total() == 0), "{reads:?}"),
            Route::TorchOps => {
                // 6 quantizer calls a step in training and in tracing, 3 steps.
                assert_eq!(c[0].by_what.len(), 1, "{reads:?}");
                assert_eq!(c[0].of("bit-width check"), 18, "{reads:?}");
                assert_eq!(c[4].of("bit-width check"), 18, "{reads:?}");
                assert!(c[1..4].iter().all(|p| p.total() == 0), "{reads:?}");
            }
        }
        assert_eq!(vars.len(), host.len());
        for ((name, got), (_, want)) in vars.iter().zip(&host) {
            assert!(
                got.allclose(want, 1e-4, 1e-5, false),
                "{route:?} {name}: {got} against {want}"
            );
        }
    }
}

/// Operands whose type is wider than float32 holds in some elements (k + i + f of 30 bits):
/// such a call runs in float64.
fn wide_operands(per_column: bool, kbi: bool, seed: i64) -> Operands {
    let mut o = operands(
        if kbi {
            BitWidths::KbiRaw
        } else {
            BitWidths::RoundHalfEven
        },
        per_column,
        Kind::Float,
        seed,
    );
    let n = o.a.numel() as i64;
    // One bit width of 12 integer and 17 fractional bits (KBI: b = 29, i = 12).
    let (a, b) = if kbi { (29.0, 12.0) } else { (12.0, 17.0) };
    let set = |t: &Tensor, v: f64| {
        let flat = t.reshape([-1]);
        let _ = flat.narrow(0, n / 2, 1).fill_(v);
        flat.reshape(t.size())
    };
    o.a = set(&o.a, a);
    o.b = set(&o.b, b);
    o.x = o.x * 1000.0 / 3.0;
    o
}

/// The kernel route in a rehearsed CUDA step (the kernel checks the bit widths and gates the
/// float64 program on what it found, nothing read back) is the kernel route on the host (the
/// host checks, then picks the program): every value and gradient bit for bit, narrow types
/// and wide ones, every quantizer, rule and layout of `against_the_cpu_pass`.
#[test]
fn the_route_rehearsed_is_the_route_checked_on_the_host() {
    use hgq_torch::cuda::rehearse;
    let mut compared = 0;
    for (q, training) in quantizers() {
        for rule in [
            BitWidths::Integer,
            BitWidths::RoundHalfEven,
            BitWidths::KbiRaw,
        ] {
            for per_column in [false, true] {
                for wide in [false, true] {
                    if wide && rule == BitWidths::Integer {
                        continue;
                    }
                    let q = q.with_bit_widths(rule);
                    let o = if wide {
                        wide_operands(per_column, rule == BitWidths::KbiRaw, compared)
                    } else {
                        operands(rule, per_column, Kind::Float, compared)
                    };
                    let kernel = |x: &Tensor, k: &Tensor, a: &Tensor, b: &Tensor| {
                        fixed_quantize_kernel(&q, x, k, a, b, training)
                    };
                    let want = run(kernel, &o);
                    let (got, reads) = rehearse(Route::Kernel, || run(kernel, &o));
                    let what = format!("{q:?} training {training} per column {per_column}");
                    assert_eq!(reads.total(), 0, "{what}: {reads:?}");
                    for j in 0..4 {
                        assert_eq!(bits(&got[j]), bits(&want[j]), "{j}, wide {wide}: {what}");
                    }
                    hgq_torch::deferred::check().unwrap();
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 8 * (3 * 2 + 2 * 2));
}

/// Bit widths that hgq-core refuses, in a rehearsed CUDA step: no error at the call (the
/// kernel checks them on the device), the error at the next `deferred::check`, once.
#[test]
fn bad_bit_widths_on_a_device_are_seen_at_the_next_check() {
    use hgq_torch::cuda::rehearse;
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let x = Tensor::from_slice(&[0.5f32, 1.0]);
    let (k, f) = (
        Tensor::from_slice(&[1.0f32, 1.0]),
        Tensor::from_slice(&[2.0f32, 2.0]),
    );
    for bad in [
        (
            Tensor::from_slice(&[0.0f32, 2.0]),
            Tensor::from_slice(&[3.0f32, f32::NAN]),
        ),
        (k.shallow_clone(), Tensor::from_slice(&[3.0f32, 2000.0])),
        (
            Tensor::from_slice(&[1.0f32, 0.5]),
            Tensor::from_slice(&[3.0f32, 3.0]),
        ),
    ] {
        let (kk, i) = bad;
        let (y, reads) = rehearse(Route::Kernel, || {
            fixed_quantize_kernel(&q, &x, &kk, &i, &f, false)
        });
        assert!(y.is_ok(), "{kk} {i}");
        assert_eq!(reads.total(), 0);
        assert_eq!(hgq_torch::deferred::pending(), 1);
        let e = hgq_torch::deferred::check().unwrap_err();
        assert!(e.to_string().contains("bit widths"), "{e}");
        hgq_torch::deferred::check().unwrap();
    }
    // Good ones leave nothing to report.
    let (y, _) = rehearse(Route::Kernel, || {
        fixed_quantize_kernel(&q, &x, &k, &k, &f, false)
    });
    assert!(y.is_ok());
    hgq_torch::deferred::check().unwrap();
}

fn variables(vs: &tch::nn::VarStore) -> Vec<(String, Vec<u64>)> {
    let mut v: Vec<(String, Vec<u64>)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, bits(&t.to_kind(Kind::Double))))
        .collect();
    v.sort();
    v
}

/// Data that is not finite, traced on a device (rehearsed): no read back during the calls,
/// the error from `trace_minmax`'s own check, and every variable as before.
#[test]
fn a_trace_of_non_finite_data_on_a_device_is_an_error_that_changes_nothing() {
    use hgq_torch::cuda::rehearse;
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let m = common::seeded(3, || common::demo_mlp(&vs));
    let x = common::seeded(4, || Tensor::randn([16, 64], (Kind::Float, Device::Cpu)));
    let _ = x.get(3).get(5).fill_(f64::NAN);
    let before = variables(&vs);
    for route in [Route::Kernel, Route::TorchOps] {
        let (r, _) = rehearse(route, || m.trace_minmax([&x]));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("finite"), "{e}");
        assert_eq!(variables(&vs), before, "{route:?}");
        assert_eq!(hgq_torch::deferred::pending(), 0);
    }
}

/// A gradient that is not finite, given to Adam on a device (rehearsed): the step reads
/// nothing back and changes no variable; the error at the next check.
#[test]
fn a_non_finite_gradient_on_a_device_changes_nothing_and_is_seen_at_the_check() {
    use hgq_torch::cuda::rehearse;
    use hgq_torch::optim::{Adam, AdamConfig};
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[3], tch::nn::Init::Const(0.5));
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    let good = (&w * Tensor::from_slice(&[1.0f32, 2.0, 3.0])).sum(Kind::Float);
    let ((), reads) = rehearse(Route::Kernel, || opt.backward_step(&good).unwrap());
    assert_eq!(reads.total(), 0);
    hgq_torch::deferred::check().unwrap();
    let before = variables(&vs);
    assert_ne!(
        before[0].1,
        bits(&Tensor::from_slice(&[0.5f64; 3])),
        "the good step moved w"
    );
    let bad = (&w * Tensor::from_slice(&[1.0f32, f32::NAN, 3.0])).sum(Kind::Float);
    let ((), reads) = rehearse(Route::Kernel, || opt.backward_step(&bad).unwrap());
    assert_eq!(reads.total(), 0);
    assert_eq!(variables(&vs), before);
    let e = hgq_torch::deferred::check().unwrap_err();
    assert!(matches!(e, hgq_torch::TorchError::NonFinite(_)), "{e}");
    hgq_torch::deferred::check().unwrap();
}

/// The kernel's own check against the torch operations (what the default setting runs on a
/// device before it takes the kernel there) passes on the host build, and leaves nothing
/// pending on the caller's thread.
#[test]
fn the_kernels_check_passes_on_the_host_build() {
    hgq_torch::cuda::check_kernel(Device::Cpu).unwrap();
    assert_eq!(hgq_torch::deferred::pending(), 0);
}
