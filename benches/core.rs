//! Criterion benchmarks of the fixed-point kernels on the work of `cargo xtask bench` and of
//! the reference's `hgq2_ref.py`: x of shape 1024 x 4096 float32, KIF k = 1, i = 2, f = 4,
//! RND, SAT, bit widths per column (`[1, 4096]`) or per element (`[1024, 4096]`).
//!
//! - `core/copy`: `dst.copy_from_slice(&x)`, the yardstick.
//! - `core/infer/*`: `FixedPoint::forward` with the zero mask (the layer quantizer's inference).
//! - `core/train/*`: `FixedPoint::forward_backward` in training: y, dx, and di/df reduced to the
//!   bit-width shape.
//! - `core/backward/*`: `FixedPoint::backward` in training for the gradient of a sum (one
//!   upstream value): dx, di, df, no y (the backward of the torch module's autograd node,
//!   which is given the `Screen` its forward returned).
//!
//! Runs on one thread by default (the targets are per thread); `HGQ_BENCH_THREADS=N` sets
//! another count (0: all). `cargo xtask bench` prints the ratios against the copy.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hgq::core::{FixedGrads, FixedPoint, OverflowMode, RoundMode, TensorRef, Upstream};
use std::hint::black_box;
use std::time::Duration;

const ROWS: usize = 1024;
const COLS: usize = 4096;

/// xorshift64* normal values (Box-Muller), deterministic.
fn normal_x(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (1.0 - next(), next());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 4.0) as f32
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("HGQ_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    let pool = hgq::core::kernels::thread_pool(threads).expect("a rayon pool");
    let n = ROWS * COLS;
    let xs = [ROWS, COLS];
    let x = normal_x(n);
    let dy = vec![1.0f32; n];
    let mut y = vec![0.0f32; n];
    let mut dx = vec![0.0f32; n];
    let mut dst = vec![0.0f32; n];
    let infer = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)
        .unwrap()
        .with_zero_mask(true);
    let train = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();

    let mut g = c.benchmark_group("core");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes((n * 4) as u64));
    g.bench_function("copy", |b| {
        b.iter(|| pool.install(|| dst.copy_from_slice(black_box(&x))))
    });
    for (layout, shape) in [
        ("per_column", vec![1, COLS]),
        ("per_element", vec![ROWS, COLS]),
    ] {
        let m: usize = shape.iter().product();
        let (k, i, f) = (vec![1.0f32; m], vec![2.0f32; m], vec![4.0f32; m]);
        let (mut di, mut df) = (vec![0.0f32; m], vec![0.0f32; m]);
        let t = |d| TensorRef::new(d, &shape).unwrap();
        let xt = TensorRef::new(&x, &xs).unwrap();
        g.bench_function(format!("infer/{layout}"), |b| {
            b.iter(|| {
                pool.install(|| infer.forward(xt, t(&k), t(&i), t(&f), false, &mut y))
                    .unwrap()
            })
        });
        g.bench_function(format!("train/{layout}"), |b| {
            b.iter(|| {
                pool.install(|| {
                    train.forward_backward(
                        xt,
                        t(&k),
                        t(&i),
                        t(&f),
                        true,
                        &dy,
                        &mut y,
                        FixedGrads {
                            dx: &mut dx,
                            di: &mut di,
                            df: &mut df,
                        },
                    )
                })
                .unwrap()
            })
        });
        // What the autograd node's forward hands its backward.
        let screen = train
            .forward(xt, t(&k), t(&i), t(&f), true, &mut y)
            .unwrap();
        let node = train.with_screen(screen);
        g.bench_function(format!("backward/{layout}"), |b| {
            b.iter(|| {
                pool.install(|| {
                    node.backward(
                        xt,
                        t(&k),
                        t(&i),
                        t(&f),
                        true,
                        Upstream::Same(1.0),
                        FixedGrads {
                            dx: &mut dx,
                            di: &mut di,
                            df: &mut df,
                        },
                    )
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
