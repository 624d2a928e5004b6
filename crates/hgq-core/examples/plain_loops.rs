//! hgq-core's per-column SAT passes beside the plainest loops that compute the same outputs,
//! in one process, round robin: how much the kernels' bookkeeping costs over bare arithmetic
//! and memory traffic (benches/RESULTS.md, 2026-11-29, fifth session).
//!
//! `cargo run --release -p hgq-core --example plain_loops [-- --flush] [--rounds N]`
//!
//! Work: x of 1024 x 4096 float32, k = 1, i = 2, f = 4 per column, RND, SAT, training. Cases:
//! `copy` (x into a buffer), `plain/forward` and `plain/backward` (AVX2 loops over the derived
//! streams an hgq-core pass reads: scale, 2^-f, 2^i, the bounds, k, the zero mask, dy, and
//! blocked accumulators of 16 lanes for di, df), `hgq/forward` and `hgq/backward`
//! (`FixedPoint::forward` and the screened `FixedPoint::backward` of a sum). One-thread rayon
//! pool, medians over the rounds. `--flush` writes 256 MiB before each case, so that every
//! case starts from memory rather than from cache. The plain loops' y and dx are checked
//! against hgq-core's, bit for bit, before timing.
use std::time::Instant;

use hgq_core::{FixedGrads, FixedPoint, OverflowMode, RoundMode, TensorRef, Upstream};

const ROWS: usize = 1024;
const COLS: usize = 4096;
/// Lanes per accumulator block (as hgq-core's kernels).
const B: usize = 16;

/// The derived per-column values of (k, i, f) = (1, 2, 4) under SAT, as `kernels/fixed.rs`
/// forms them: scale, eps, p, hi, lo, k, keep.
struct Streams {
    scale: Vec<f32>,
    eps: Vec<f32>,
    p: Vec<f32>,
    hi: Vec<f32>,
    lo: Vec<f32>,
    k: Vec<f32>,
    keep: Vec<f32>,
}

impl Streams {
    fn new() -> Streams {
        let (k, p, scale, eps) = (1.0f32, 4.0f32, 16.0f32, 1.0f32 / 16.0);
        let v = |x: f32| vec![x; COLS];
        Streams {
            scale: v(scale),
            eps: v(eps),
            p: v(p),
            hi: v(p - eps),
            lo: v(-p * k),
            k: v(k),
            keep: v(1.0),
        }
    }
}

/// `fixed::forward_grad` for SAT and RND, written out: y, dx, di, df of one element.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn element(x: f32, g: f32, k: f32, scale: f32, eps: f32, p: f32, hi: f32, lo: f32) -> [f32; 4] {
    const LN2: f32 = std::f32::consts::LN_2;
    let (over, under) = (x > hi, x < lo);
    let xs = if over {
        hi
    } else if under {
        lo
    } else {
        x
    };
    let v = xs * scale;
    #[allow(clippy::eq_op)]
    let t = (v + 0.5).floor() + (v - v);
    let y = if t == 0.0 && scale != 0.0 { t } else { t * eps };
    let gx = if !over && !under { g } else { 0.0 };
    let mut gf = (g * xs - g * y) * LN2;
    let mut gi = 0.0;
    if over {
        gi = g * (p * LN2);
        gf += g * (eps * LN2);
    }
    if under {
        gi = -(g * k) * (p * LN2);
    }
    [y, gx, gi, gf]
}

#[cfg(target_arch = "x86_64")]
mod plain {
    use super::{B, COLS, Streams, element};

    /// y; the zero mask is read and applied under a runtime flag, as hgq-core's SAT forward does.
    #[target_feature(enable = "avx2,fma")]
    pub fn forward(x: &[f32], y: &mut [f32], s: &Streams, mask: bool) {
        let n = COLS;
        let (sc, ep, hi, lo) = (&s.scale[..n], &s.eps[..n], &s.hi[..n], &s.lo[..n]);
        let (keep, k, p) = (&s.keep[..n], &s.k[..n], &s.p[..n]);
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let (xr, yr) = (&xr[..n], &mut yr[..n]);
            for c in 0..n {
                let v = element(xr[c], 0.0, k[c], sc[c], ep[c], p[c], hi[c], lo[c])[0];
                yr[c] = if mask && keep[c] == 0.0 { 0.0 } else { v };
            }
        }
    }

    /// dx, and di, df added into blocked accumulators `acc` (per block: 16 of di, 16 of df).
    #[target_feature(enable = "avx2,fma")]
    pub fn backward(x: &[f32], dx: &mut [f32], dy: &[f32], s: &Streams, acc: &mut [f32]) {
        for (xr, dr) in x.chunks_exact(COLS).zip(dx.chunks_exact_mut(COLS)) {
            let blocks = xr.chunks_exact(B).zip(dr.chunks_exact_mut(B));
            for (b, ((xb, db), ab)) in blocks.zip(acc.chunks_exact_mut(2 * B)).enumerate() {
                let o = b * B;
                let (sc, ep, p) = (&s.scale[o..o + B], &s.eps[o..o + B], &s.p[o..o + B]);
                let (hi, lo, k, g) = (
                    &s.hi[o..o + B],
                    &s.lo[o..o + B],
                    &s.k[o..o + B],
                    &dy[o..o + B],
                );
                for l in 0..B {
                    let [_, gx, gi, gf] =
                        element(xb[l], g[l], k[l], sc[l], ep[l], p[l], hi[l], lo[l]);
                    db[l] = gx;
                    ab[l] += gi;
                    ab[B + l] += gf;
                }
            }
        }
    }

    /// A copy of x.
    #[target_feature(enable = "avx2,fma")]
    pub fn copy(x: &[f32], d: &mut [f32]) {
        d.copy_from_slice(x);
    }
}

/// glibc's `malloc` tuned as `hgq_torch::retain_cpu_memory` does (the torch benchmark's
/// setting): freed memory stays in the process, so no case page-faults its buffers again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn retain_memory() {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: `mallopt` only changes allocator parameters; called before any thread starts.
    unsafe {
        mallopt(-8, 1); // M_ARENA_MAX
        mallopt(-4, 0); // M_MMAP_MAX
        mallopt(-1, std::ffi::c_int::MAX); // M_TRIM_THRESHOLD
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn retain_memory() {}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// x: xorshift64* uniform values in [-8, 8) (inside and outside the bounds [-4, 3.9375]).
fn input() -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..ROWS * COLS)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                * 16.0
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        println!("plain_loops: this CPU has no AVX2 and FMA; nothing to compare");
        return Ok(());
    }
    retain_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flush_caches = args.iter().any(|a| a == "--flush");
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(p) => args.get(p + 1).ok_or("--rounds N")?.parse()?,
        None => 60,
    };

    let x = input();
    let s = Streams::new();
    let (k, i, f) = (vec![1.0f32; COLS], vec![2.0f32; COLS], vec![4.0f32; COLS]);
    let dy = vec![1.0f32; COLS];
    let (mut y, mut dx, mut dst) = (
        vec![0f32; ROWS * COLS],
        vec![0f32; ROWS * COLS],
        vec![0f32; ROWS * COLS],
    );
    let (mut di, mut df, mut acc) = (vec![0f32; COLS], vec![0f32; COLS], vec![0f32; 2 * COLS]);
    let mut flush = vec![0u64; 32 << 20];

    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)?;
    let bw = [1, COLS];
    let t = |d| TensorRef::new(d, &bw);
    let xt = TensorRef::new(&x, &[ROWS, COLS])?;
    let node = q.with_screen(q.forward(xt, t(&k)?, t(&i)?, t(&f)?, true, &mut y)?);
    let pool = hgq_core::kernels::thread_pool(1)?;

    // The plain loops compute what hgq-core computes.
    let mut y2 = vec![0f32; ROWS * COLS];
    // SAFETY (all calls of `plain`): the CPU has AVX2 and FMA (checked above).
    unsafe { plain::forward(&x, &mut y2, &s, false) };
    let grads = FixedGrads {
        dx: &mut dx,
        di: &mut di,
        df: &mut df,
    };
    node.backward(xt, t(&k)?, t(&i)?, t(&f)?, true, Upstream::Same(1.0), grads)?;
    let mut dx2 = vec![0f32; ROWS * COLS];
    unsafe { plain::backward(&x, &mut dx2, &dy, &s, &mut acc) };
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits());
    if !same(&y, &y2) || !same(&dx, &dx2) {
        return Err("the plain loops' y or dx differ from hgq-core's".into());
    }
    drop((y2, dx2));

    let names = [
        "copy",
        "plain/backward",
        "hgq/backward",
        "plain/forward",
        "hgq/forward",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (c, ms) in times.iter_mut().enumerate() {
            if flush_caches {
                flush.iter_mut().for_each(|v| *v = v.wrapping_add(1));
                std::hint::black_box(&flush);
            }
            let start = Instant::now();
            pool.install(|| -> Result<(), hgq_core::CoreError> {
                match c {
                    0 => unsafe { plain::copy(&x, &mut dst) },
                    1 => unsafe { plain::backward(&x, &mut dx, &dy, &s, &mut acc) },
                    2 => {
                        let grads = FixedGrads {
                            dx: &mut dx,
                            di: &mut di,
                            df: &mut df,
                        };
                        node.backward(
                            xt,
                            t(&k)?,
                            t(&i)?,
                            t(&f)?,
                            true,
                            Upstream::Same(1.0),
                            grads,
                        )?;
                    }
                    3 => unsafe { plain::forward(&x, &mut y, &s, std::hint::black_box(false)) },
                    _ => {
                        q.forward(xt, t(&k)?, t(&i)?, t(&f)?, true, &mut y)?;
                    }
                }
                Ok(())
            })?;
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "per column, 1 thread, medians of {rounds} rounds{}",
        if flush_caches {
            ", caches flushed before each case"
        } else {
            ""
        }
    );
    for (name, ms) in names.iter().zip(times) {
        println!("{name:16} {:7.3} ms", median(ms));
    }
    std::hint::black_box((&dst, &acc));
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("plain_loops: the plain loops are written for x86-64 (AVX2); nothing to compare");
}
