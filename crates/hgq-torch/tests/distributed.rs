//! Data-parallel training over c10d's process groups, with real processes: this test binary
//! starts copies of itself as the ranks (the `ddp_worker` test, which does nothing unless
//! `HGQ_DDP_ROLE` is set), each joining through torchrun's variables.
//!
//! - 2 and 4 ranks train the demo model (64-32-10, WRAP input quantizers) on the same global
//!   batches as one process (uneven shards at 4 ranks): every variable, the quantizers' too,
//!   ends within 1e-6 of the one-process run and identical on every rank; the native step
//!   makes one collective per step (the gradients with the layers' tracking).
//! - A rank that dies: the other's next collective is an error within the timeout, not a hang.
//! - NCCL: asked for where it cannot be, an error; on a CUDA machine (NCCL takes one rank per
//!   GPU) a rank trains the model on the GPU through NCCL as one process does.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hgq_torch::distributed::{Backend, GroupOptions, ProcessGroup, ReduceOp, nccl_available};
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, Functional, MergeOp, QDense, QMerge, Sequential, StepPath};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn};

const STEPS: i64 = 6;
/// Not a multiple of 4: the 4-rank shards are uneven (8, 8, 7, 7).
const BATCH: i64 = 30;

mod common;

fn model(vs: &nn::VarStore) -> Sequential {
    tch::manual_seed(0);
    common::demo_mlp(vs)
}

/// The global batches, the same in every process.
fn batches() -> Vec<(Tensor, Tensor)> {
    tch::manual_seed(1);
    (0..STEPS)
        .map(|_| {
            let x = Tensor::randn([BATCH, 64], (Kind::Float, Device::Cpu)) * 2.0;
            let labels = x.narrow(1, 0, 10).argmax(1, false);
            (x, labels)
        })
        .collect()
}

fn variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A residual graph (a merge of the input and a dense layer's output) with a loss of its own.
fn graph(vs: &nn::VarStore) -> Functional {
    tch::manual_seed(0);
    let root = vs.root();
    let mut g = Functional::new();
    let x = g.input(&[8]).unwrap();
    let h = g
        .add(&root, QDense::builder(8, 8).activation(Activation::Relu), x)
        .unwrap();
    let s = g
        .merge(&root, QMerge::builder(MergeOp::Add, &[8], 2), &[x, h])
        .unwrap();
    let y = g.add(&root, QDense::builder(8, 3), s).unwrap();
    g.set_outputs(&[y]).unwrap();
    g
}

/// The graph's mean squared error against the first three inputs, plus its EBOPs.
fn graph_loss(g: &Functional, x: &Tensor) -> hgq_torch::Result<Tensor> {
    let out = g.forward(&[x], CallMode::Training)?;
    let target = x.narrow(1, 0, 3);
    Ok((&out.ys[0] - target).square().mean(Kind::Float) + out.ebops_loss)
}

/// The graph trained on the global batches' first 8 columns by one process.
fn graph_one_process() -> Vec<(String, Tensor)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let g = graph(&vs);
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    for (x, _) in batches() {
        let x = x.narrow(1, 0, 8);
        let loss = graph_loss(&g, &x).unwrap();
        opt.backward_step(&loss).unwrap();
        g.apply_constraints().unwrap();
    }
    variables(&vs)
}

/// A rank of the graph test: `train_step_with` on its rows.
fn graph_worker(group: &ProcessGroup, out: &Path) {
    let vs = nn::VarStore::new(Device::Cpu);
    let g = graph(&vs);
    group.broadcast_variables(&vs).unwrap();
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    let rows = group.shard(BATCH as usize);
    for (x, _) in batches() {
        let x = x
            .narrow(1, 0, 8)
            .narrow(0, rows.start as i64, rows.len() as i64);
        let loss = group
            .train_step_with(&vs, rows.len(), &mut opt, || graph_loss(&g, &x))
            .unwrap();
        assert!(loss.double_value(&[]).is_finite());
        g.apply_constraints().unwrap();
    }
    Tensor::write_safetensors(
        &variables(&vs),
        out.join(format!("rank{}.safetensors", group.rank())),
    )
    .unwrap();
}

/// A rank (when started by the tests below): trains on its shards, writes its variables.
#[test]
fn ddp_worker() {
    if std::env::var("HGQ_DDP_ROLE").as_deref() != Ok("worker") {
        return;
    }
    if std::env::var("HGQ_DDP_MODEL").as_deref() == Ok("graph") {
        let out = PathBuf::from(std::env::var("HGQ_DDP_OUT").unwrap());
        graph_worker(&ProcessGroup::from_env().unwrap(), &out);
        return;
    }
    let out = PathBuf::from(std::env::var("HGQ_DDP_OUT").unwrap());
    let die_after: Option<i64> = std::env::var("HGQ_DDP_DIE_AFTER")
        .ok()
        .map(|s| s.parse().unwrap());
    let group = ProcessGroup::from_env().unwrap();
    let device = worker_device();
    assert!(
        !device.is_cuda() || group.has_nccl(),
        "NCCL for a model on CUDA"
    );
    let vs = nn::VarStore::new(device);
    let m = model(&vs);
    group.broadcast_variables(&vs).unwrap();
    // Variables of two kinds, the int64's rank-0 value one that float64 would round.
    let other = nn::VarStore::new(device);
    let big = (1i64 << 60) + 1;
    let mine = if group.rank() == 0 { big } else { 7 };
    let count = other.root().zeros_no_train("count", &[2]);
    count
        .shallow_clone()
        .set_data(&Tensor::from_slice(&[mine, -mine]).to_device(device));
    let scale = other.root().zeros_no_train("scale", &[1]);
    let _ = scale.shallow_clone().fill_(mine as f64);
    group.broadcast_variables(&other).unwrap();
    assert_eq!(Vec::<i64>::try_from(&count).unwrap(), [big, -big]);
    assert_eq!(scale.double_value(&[0]), big as f32 as f64);
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    let rows = group.shard(BATCH as usize);
    for (step, (x, labels)) in batches().iter().enumerate() {
        if die_after == Some(step as i64) {
            std::process::exit(3);
        }
        let (s, n) = (rows.start as i64, rows.len() as i64);
        let mut x = x.narrow(0, s, n).to_device(device);
        // Odd ranks' inputs in another layout (transposed: not contiguous).
        if std::env::var("HGQ_DDP_MIXED").is_ok() && group.rank() % 2 == 1 {
            x = x.t_().contiguous().t_();
            assert!(!x.is_contiguous());
        }
        let before = group.collectives();
        if let Err(e) = group.train_step(
            &m,
            &vs,
            &x,
            &labels.narrow(0, s, n).to_device(device),
            &mut opt,
        ) {
            eprintln!("rank {}: {e}", group.rank());
            std::process::exit(2);
        }
        // The native step (CPU), once the ranks agreed on the model in the first: one
        // collective, the gradients and both layers' tracked integer bits.
        let made = group.collectives() - before;
        if device == Device::Cpu && step > 0 && made != 1 {
            eprintln!("rank {}: step {step} made {made} collectives", group.rank());
            std::process::exit(4);
        }
    }
    let vars: Vec<(String, Tensor)> = variables(&vs)
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&vars, out.join(format!("rank{}.safetensors", group.rank())))
        .unwrap();
}

/// The worker's device: `HGQ_DDP_DEVICE=cuda` puts it on GPU `LOCAL_RANK`, else the CPU.
fn worker_device() -> Device {
    if std::env::var("HGQ_DDP_DEVICE").as_deref() != Ok("cuda") {
        return Device::Cpu;
    }
    let local: usize = std::env::var("LOCAL_RANK").map_or(0, |s| s.parse().unwrap());
    Device::Cuda(local)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(rank: usize, size: usize, port: u16, out: &Path, extra: &[(&str, &str)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "ddp_worker", "--nocapture", "--test-threads=1"])
        .env("HGQ_DDP_ROLE", "worker")
        .env("HGQ_DDP_OUT", out)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", size.to_string())
        .env("HGQ_DIST_TIMEOUT_S", "20");
    for (k, v) in extra {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn one_process() -> Vec<(String, Tensor)> {
    one_process_on(Device::Cpu)
}

fn one_process_on(device: Device) -> Vec<(String, Tensor)> {
    let vs = nn::VarStore::new(device);
    let m = model(&vs);
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3)).unwrap();
    for (x, labels) in batches() {
        let (x, labels) = (x.to_device(device), labels.to_device(device));
        m.train_step_on(StepPath::Autograd, &x, &labels, &mut opt)
            .unwrap();
    }
    variables(&vs)
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect()
}

fn data_parallel_matches_one_process(size: usize) {
    compare(size, &[], one_process, |vs| drop(model(vs)));
}

/// `size` ranks started with `extra` variables against `one` process; `fresh` builds the
/// untrained model in a store.
fn compare(
    size: usize,
    extra: &[(&str, &str)],
    one: fn() -> Vec<(String, Tensor)>,
    fresh: fn(&nn::VarStore),
) {
    let tag = extra.iter().map(|(_, v)| *v).collect::<Vec<_>>().join("-");
    let out = std::env::temp_dir().join(format!("hgq-ddp-{}-{size}{tag}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let mut ranks: Vec<Child> = (0..size)
        .map(|r| spawn(r, size, port, &out, extra))
        .collect();
    for (r, c) in ranks.iter_mut().enumerate() {
        assert!(c.wait().unwrap().success(), "rank {r} failed");
    }
    let want = one();
    let rank0 = Tensor::read_safetensors(out.join("rank0.safetensors")).unwrap();
    assert_eq!(rank0.len(), want.len());
    for (name, t) in &want {
        let got = &rank0.iter().find(|(n, _)| n == name).unwrap().1;
        let diff = (got.to_kind(Kind::Double) - t.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= 1e-6, "{size} ranks: {name} differs by {diff}");
    }
    // The training moved the model (the comparison is not of untouched variables).
    let vs = nn::VarStore::new(Device::Cpu);
    fresh(&vs);
    let moved = variables(&vs)
        .iter()
        .zip(&want)
        .filter(|((_, a), (_, b))| !a.equal(b))
        .count();
    assert!(moved >= 4, "{moved} variables moved");
    for r in 1..size {
        let other = Tensor::read_safetensors(out.join(format!("rank{r}.safetensors"))).unwrap();
        assert_eq!(other.len(), rank0.len());
        for (na, a) in &rank0 {
            let b = &other.iter().find(|(n, _)| n == na).unwrap().1;
            assert!(a.equal(b), "rank {r}: {na} differs from rank 0's");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn two_ranks_train_as_one_process() {
    data_parallel_matches_one_process(2);
}

#[test]
fn four_ranks_train_as_one_process() {
    data_parallel_matches_one_process(4);
}

/// Ranks whose inputs come in other layouts run the same step (the native step and the
/// autograd step synchronize the quantizers with other collectives) and end as one process.
#[test]
fn ranks_with_inputs_in_other_layouts_train_as_one_process() {
    compare(2, &[("HGQ_DDP_MIXED", "1")], one_process, |vs| {
        drop(model(vs))
    });
}

/// A functional graph (a residual merge) with a loss of its own, through `train_step_with`.
#[test]
fn a_graph_trains_as_one_process() {
    compare(3, &[("HGQ_DDP_MODEL", "graph")], graph_one_process, |vs| {
        drop(graph(vs))
    });
}

/// Held by the tests that load the machine and by those that time it (a join within 5 s).
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_dead_rank_is_an_error_not_a_hang() {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = std::env::temp_dir().join(format!("hgq-ddp-dead-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let start = Instant::now();
    let mut r0 = spawn(0, 2, port, &out, &[("HGQ_DIST_TIMEOUT_S", "5")]);
    let mut r1 = spawn(
        1,
        2,
        port,
        &out,
        &[("HGQ_DDP_DIE_AFTER", "2"), ("HGQ_DIST_TIMEOUT_S", "5")],
    );
    assert_eq!(r1.wait().unwrap().code(), Some(3));
    let status = r0.wait().unwrap();
    assert_eq!(status.code(), Some(2), "rank 0 reports the error");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    std::fs::remove_dir_all(&out).ok();
}

/// NCCL is built where the project's setup installed the CUDA headers beside a CUDA torch
/// (`cargo xtask setup` does): the build must not drop it silently.
#[test]
fn nccl_is_built_beside_a_cuda_torch() {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/libtorch/lib");
    let headers = lib.join("../../nvidia/cu13/include/crt/host_config.h");
    if !lib.join("libtorch_cuda.so").exists() || !headers.exists() {
        eprintln!("no CUDA torch with the CUDA headers in .venv: not checked");
        return;
    }
    assert!(nccl_available());
}

/// NCCL where it cannot run is an error at the join; `Auto` without a CUDA device makes Gloo
/// alone, which refuses CUDA tensors. On a CUDA machine: one rank reduces and broadcasts CUDA
/// tensors through NCCL on the device.
#[test]
fn nccl_where_it_can_run() {
    let o = |b| {
        GroupOptions::new("127.0.0.1", free_port(), 0, 1)
            .timeout(Duration::from_secs(30))
            .backend(b)
    };
    if !tch::Cuda::is_available() || !nccl_available() {
        let e = ProcessGroup::new(&o(Backend::Nccl))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NCCL asked for"), "{e}");
        let g = ProcessGroup::new(&o(Backend::Auto)).unwrap();
        assert!(!g.has_nccl());
        return;
    }
    let g = ProcessGroup::new(&o(Backend::Nccl)).unwrap();
    assert!(g.has_nccl());
    let t = Tensor::from_slice(&[1.5f32, -2.0, 3.0]).to_device(Device::Cuda(0));
    g.all_reduce_(&t, ReduceOp::Max).unwrap();
    assert_eq!(t.device(), Device::Cuda(0));
    assert_eq!(
        Vec::<f32>::try_from(&t.to_device(Device::Cpu)).unwrap(),
        [1.5, -2.0, 3.0]
    );
    let i = Tensor::from_slice(&[(1i64 << 60) + 1]).to_device(Device::Cuda(0));
    g.broadcast_(&i, 0).unwrap();
    assert_eq!(i.int64_value(&[0]), (1i64 << 60) + 1);
    let gloo = ProcessGroup::new(&o(Backend::Gloo)).unwrap();
    assert!(!gloo.has_nccl());
    assert!(
        gloo.all_reduce_(&t, ReduceOp::Sum).is_err(),
        "Gloo alone takes no CUDA tensor"
    );
}

fn one_process_cuda() -> Vec<(String, Tensor)> {
    one_process_on(Device::Cuda(0))
}

/// A rank on the GPU (NCCL: one rank per device, so one rank on a one-GPU machine) trains as
/// one process on the same GPU does: the variables and the quantizer state broadcast and the
/// gradients all-reduced through NCCL on the device.
#[test]
#[ignore = "needs a CUDA device"]
fn a_rank_on_cuda_trains_through_nccl() {
    assert!(tch::Cuda::is_available() && nccl_available());
    let gpus = tch::Cuda::device_count() as usize;
    compare(
        gpus,
        &[("HGQ_DDP_DEVICE", "cuda")],
        one_process_cuda,
        |vs| drop(model(vs)),
    );
}

#[test]
fn bad_groups_are_errors() {
    assert!(ProcessGroup::new(&GroupOptions::new("127.0.0.1", 1, 2, 2)).is_err());
    assert!(
        ProcessGroup::new(&GroupOptions::new("127.0.0.1", 1, 0, 0)).is_err(),
        "no processes"
    );
    // Nobody serves the rendezvous: an error after the timeout.
    let port = free_port();
    let o = GroupOptions::new("127.0.0.1", port, 1, 2).timeout(Duration::from_millis(500));
    let start = Instant::now();
    assert!(ProcessGroup::new(&o).is_err());
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// torch.distributed in Python joins our group (`init_process_group('gloo')` with a `tcp://`
/// rendezvous that this process serves, the store prefix of torch's default group) and
/// all-reduces with us. Runs where the project's `.venv` has torch (`HGQ_TORCH_PYTHON`
/// overrides); says so and passes where it has none.
#[test]
fn python_torch_distributed_joins_our_group() {
    let py = std::env::var_os("HGQ_TORCH_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        PathBuf::from,
    );
    let has_torch = Command::new(&py)
        .args(["-c", "import torch.distributed"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        eprintln!("no Python with torch at {}: not run", py.display());
        return;
    }
    let port = free_port();
    let script = format!(
        "import torch, torch.distributed as dist, datetime\n\
         dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}', rank=1, \
         world_size=2, timeout=datetime.timedelta(seconds=30))\n\
         t = torch.arange(4, dtype=torch.float32) * 10\n\
         dist.all_reduce(t)\n\
         m = torch.tensor([5.0, -1.0])\n\
         dist.all_reduce(m, op=dist.ReduceOp.MAX)\n\
         b = torch.zeros(3, dtype=torch.float64)\n\
         dist.broadcast(b, 0)\n\
         print(t.tolist(), m.tolist(), b.tolist())\n\
         dist.destroy_process_group()\n"
    );
    let child = Command::new(&py)
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = GroupOptions::new("127.0.0.1", port, 0, 2)
        .timeout(Duration::from_secs(30))
        .prefix("default_pg/0/");
    let group = ProcessGroup::new(&o).unwrap();
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
    group.all_reduce_(&t, ReduceOp::Sum).unwrap();
    let m = Tensor::from_slice(&[1.0f32, 7.0]);
    group.all_reduce_(&m, ReduceOp::Max).unwrap();
    let b = Tensor::from_slice(&[0.5f64, 1.5, 2.5]);
    group.broadcast_(&b, 0).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.0, 12.0, 23.0, 34.0]);
    assert_eq!(Vec::<f32>::try_from(&m).unwrap(), [5.0, 7.0]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[1.0, 12.0, 23.0, 34.0] [5.0, 7.0] [0.5, 1.5, 2.5]"
    );
}

/// Rank `rank` of a Gloo group of two at `port` on this machine (a thread of this process).
fn gloo_rank(port: u16, rank: usize) -> ProcessGroup {
    let o = GroupOptions::new("127.0.0.1", port, rank, 2)
        .timeout(Duration::from_secs(20))
        .backend(Backend::Gloo);
    ProcessGroup::new(&o).unwrap()
}

/// Runs `f` as ranks 0 and 1 of a Gloo group, two threads of this process; their results in
/// rank order.
fn two_threads<R: Send + 'static>(
    f: impl Fn(&ProcessGroup, usize) -> R + Send + Clone + 'static,
) -> Vec<R> {
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || f(&gloo_rank(port, rank), rank))
        })
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

/// Two ranks as two threads of this process: `average_gradients` weights each rank's
/// gradients by its rows; ranks that disagree on which variables have gradients are an error
/// where a rank's set is new to it (the check reads the counts back, so it runs when the set
/// changes, not every step); no rows anywhere is an error.
#[test]
fn average_gradients_weights_rows_and_checks_the_variables() {
    // Per rank, per call: this rank's gradient of each variable (None: none) and its rows.
    let calls: [Vec<(Vec<Option<f32>>, usize)>; 2] = [
        vec![
            (vec![Some(1.0), Some(2.0)], 1),
            (vec![Some(1.0), None], 1),
            (vec![Some(1.0), None], 3),
            (vec![Some(1.0), None], 3),
        ],
        vec![
            (vec![Some(5.0), None], 1),
            (vec![Some(5.0), None], 1),
            (vec![Some(5.0), None], 1),
            (vec![Some(5.0), Some(1.0)], 1),
        ],
    ];
    let r = two_threads(move |g, rank| {
        calls[rank]
            .iter()
            .map(|(grads, rows)| {
                let vars: Vec<Tensor> = grads
                    .iter()
                    .map(|_| Tensor::zeros([1], (Kind::Float, Device::Cpu)).requires_grad_(true))
                    .collect();
                for (v, gv) in vars.iter().zip(grads) {
                    if let Some(gv) = gv {
                        (v * f64::from(*gv)).sum(Kind::Float).backward();
                    }
                }
                g.average_gradients(&vars, *rows)
                    .map(|()| {
                        vars.iter()
                            .map(|v| v.grad().defined().then(|| v.grad().double_value(&[0])))
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| e.to_string())
            })
            .collect::<Vec<_>>()
    });
    let (r0, r1) = (&r[0], &r[1]);
    // First call: the sets differ, both ranks check (their sets are new to them).
    assert!(
        r0[0].as_ref().unwrap_err().contains("different variables"),
        "{:?}",
        r0[0]
    );
    assert!(r1[0].as_ref().unwrap_err().contains("different variables"));
    // Agreeing sets: the mean over both ranks' rows.
    assert_eq!(r0[1], Ok(vec![Some(3.0), None]));
    assert_eq!(r1[1], Ok(vec![Some(3.0), None]));
    // Uneven rows: (1 x 3 + 5 x 1) / 4.
    assert_eq!(r0[2], Ok(vec![Some(2.0), None]));
    assert_eq!(r1[2], Ok(vec![Some(2.0), None]));
    // Rank 1's set changes: it checks and refuses; rank 0's is the one it checked before.
    assert!(r1[3].as_ref().unwrap_err().contains("different variables"));
    assert!(r0[3].is_ok());

    // One rank's variable of `1 + rank * extra` values (its gradient all ones), on `rows` rows.
    fn one(g: &ProcessGroup, rank: usize, extra: i64, rows: usize) -> Result<(), String> {
        let v = Tensor::zeros([1 + rank as i64 * extra], (Kind::Float, Device::Cpu))
            .requires_grad_(true);
        v.sum(Kind::Float).backward();
        g.average_gradients(&[v], rows).map_err(|e| e.to_string())
    }
    // Models of different sizes: both ranks refuse before the gradients' all-reduce (which
    // c10d cannot report: Gloo ends the process on a size mismatch).
    for r in two_threads(|g, rank| one(g, rank, 1, 1)) {
        assert!(r.unwrap_err().contains("variables differ"));
    }
    for r in two_threads(|g, rank| one(g, rank, 0, 0)) {
        assert!(r.unwrap_err().contains("no rows"));
    }
    // A float64 variable beside a float32 one: averaged in float64, each in its own kind, to
    // the last bit ((0.1 x 1 + 0.3 x 2) / 3 in float64 is 0.7 / 3).
    let mixed = two_threads(|g, rank| {
        let wide = Tensor::zeros([1], (Kind::Double, Device::Cpu)).requires_grad_(true);
        let narrow = Tensor::zeros([1], (Kind::Float, Device::Cpu)).requires_grad_(true);
        let gv = [0.1, 0.3][rank];
        ((&wide * gv).sum(Kind::Double) + (&narrow * gv).sum(Kind::Float)).backward();
        g.average_gradients(&[wide.shallow_clone(), narrow.shallow_clone()], rank + 1)
            .unwrap();
        (wide.grad().double_value(&[0]), narrow.grad().kind())
    });
    for (w, k) in mixed {
        assert_eq!((w, k), ((0.1 * 1.0 + 0.3 * 2.0) / 3.0, Kind::Float));
    }
}

/// Stores that differ between ranks (another variable, another size, another name) are an
/// error on every rank at `broadcast_variables`, and the same stores broadcast rank 0's
/// values.
#[test]
fn broadcast_variables_refuses_different_stores() {
    // Per rank: the size of "a" and the name of the second variable.
    let case = |stores: [(i64, &'static str); 2]| {
        two_threads(move |g, rank| {
            let (n, name) = stores[rank];
            let vs = nn::VarStore::new(Device::Cpu);
            let a = vs.root().zeros_no_train("a", &[n]);
            let _ = a.shallow_clone().fill_(rank as f64 + 1.0);
            let _ = vs.root().zeros_no_train(name, &[2]);
            g.broadcast_variables(&vs)
                .map(|()| Vec::<f32>::try_from(&a).unwrap())
                .map_err(|e| e.to_string())
        })
    };
    let same = case([(3, "b"), (3, "b")]);
    assert_eq!(same, vec![Ok(vec![1.0; 3]), Ok(vec![1.0; 3])]);
    for other in [case([(3, "b"), (4, "b")]), case([(3, "b"), (3, "c")])] {
        for r in other {
            assert!(r.unwrap_err().contains("different variables"));
        }
    }
}

/// WRAP tracking of a data-parallel step on a device (rehearsed on the CPU, two ranks as
/// threads): the ranks' maxima are all-reduced where the tensors live, nothing is read back
/// to the host, and every rank tracks what one process tracks on all the rows.
#[test]
fn tracking_on_a_device_is_reduced_there() {
    use hgq_torch::cuda::{Route, rehearse};
    let build = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = common::seeded(0, || common::demo_mlp(&vs));
        let x = common::seeded(1, || {
            Tensor::randn([16, 64], (Kind::Float, Device::Cpu)) * 2.0
        });
        (vs, m, x)
    };
    let (vs, m, x) = build();
    m.forward(&x, CallMode::Training).unwrap();
    let want: Vec<(String, Vec<f32>)> = variables(&vs)
        .into_iter()
        .map(|(n, t)| (n, Vec::try_from(t.flatten(0, -1)).unwrap()))
        .collect();
    let got = two_threads(move |g, rank| {
        let (vs, m, x) = build();
        let shard = x.narrow(0, 8 * rank as i64, 8);
        let ((), reads) = rehearse(Route::Kernel, || {
            let _sync = g.sync_quantizers();
            m.forward(&shard, CallMode::Training).unwrap();
        });
        let vars: Vec<(String, Vec<f32>)> = variables(&vs)
            .into_iter()
            .map(|(n, t)| (n, Vec::try_from(t.flatten(0, -1)).unwrap()))
            .collect();
        (reads.total(), vars)
    });
    for (reads, vars) in got {
        assert_eq!(reads, 0);
        assert_eq!(vars, want);
    }
}

/// Groups of this process used from several threads at once (each rank of each group a
/// thread), every group's first collectives together: c10d's flight recorder registers a
/// group at its first collective in a map it does not lock, so the library serializes Gloo's
/// submissions (without that, this test ended the process with SIGSEGV in 3 of 8 runs).
#[test]
fn groups_on_many_threads_at_once() {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (pairs, rounds) = (3, 8);
    for _ in 0..rounds {
        let go = std::sync::Arc::new(std::sync::Barrier::new(2 * pairs));
        let threads: Vec<_> = (0..pairs)
            .flat_map(|_| {
                let port = free_port();
                let go = go.clone();
                (0..2).map(move |rank| {
                    let go = go.clone();
                    std::thread::spawn(move || {
                        // Rank 0 serves the rendezvous: a client before it retries later.
                        std::thread::sleep(Duration::from_millis(20 * rank as u64));
                        let g = gloo_rank(port, rank);
                        go.wait();
                        let t = Tensor::from_slice(&[rank as f32 + 1.0]);
                        for _ in 0..3 {
                            g.all_reduce_(&t, ReduceOp::Max).unwrap();
                            g.barrier().unwrap();
                        }
                        f32::try_from(&t).unwrap()
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 2.0);
        }
    }
}
