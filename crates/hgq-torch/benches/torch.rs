//! Criterion benchmarks of hgq-torch's KIF quantizer module with autograd, on the work of
//! `cargo xtask bench` (x of 1024 x 4096 float32, k = 1, i = 2, f = 4, RND, SAT, bit widths per
//! column or per element; see `src/bin/bench_torch/work.rs`, shared with `hgq-bench-torch`).
//!
//! - `torch/copy`: `dst.copy_(x)`, the yardstick.
//! - `torch/{infer,train}/{per_column,per_element}`: the module (on CPU, hgq-core's fused
//!   kernel inside the C++ autograd function); `train` is the forward pass in training plus the
//!   gradients of `sum(y)` with respect to x and the raw bit widths.
//! - `torch-ops/...`: the same through `ops::fixed_quantize_ops`.
//!
//! One thread by default (`tch::set_num_threads` and a one-thread rayon pool for the kernels);
//! `HGQ_BENCH_THREADS=N` sets another count (0: all cores). `cargo xtask bench` prints ratios.
#[path = "../src/bin/bench_torch/work.rs"]
mod work;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use work::{COLS, Case, Layout, Path, ROWS};

fn bench(c: &mut Criterion) {
    // As hgq-bench-torch: freed tensors stay in the process (HGQ_BENCH_GLIBC_DEFAULT=1: not).
    if std::env::var_os("HGQ_BENCH_GLIBC_DEFAULT").is_none() {
        hgq_torch::retain_cpu_memory();
    }
    let threads = std::env::var("HGQ_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    // hgq-core's kernels run on rayon's global pool here (tensors are not `Sync`, so the cases
    // cannot move into `ThreadPool::install` closures one by one).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    tch::set_num_threads(if threads == 0 { all } else { threads } as i32);
    let x = work::normal_x();
    let mut dst = x.empty_like();
    let mut g = c.benchmark_group("torch");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes((ROWS * COLS * 4) as u64));
    g.bench_function("copy", |b| b.iter(|| dst.copy_(&x)));
    g.finish();
    for path in Path::ALL {
        let mut g = c.benchmark_group(path.name());
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Bytes((ROWS * COLS * 4) as u64));
        for layout in Layout::ALL {
            let case = Case::new(layout, path, &x).expect("a quantizer");
            if path.infers() {
                g.bench_function(format!("infer/{}", layout.name()), |b| {
                    b.iter(|| case.infer().expect("inference"))
                });
            }
            g.bench_function(format!("train/{}", layout.name()), |b| {
                b.iter(|| case.train().expect("training"))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
