//! The gradients of broadcast bit widths (per column, per channel, ...) are summed over x in
//! blocked accumulators, a block of parameter elements at a time, from partial blocks where a
//! run of x does not start on a block boundary. Below one segment of x that sum has one order:
//! x's flat order. So the reduced gradients must be the bits of the per-element gradients (the
//! same bit widths broadcast to x's shape by the caller) summed in that order, and y and dx
//! the bits of the per-element call: for runs of every alignment, with the derived values
//! precomputed or not, for every storage type (f16 and bf16 go through conversion blocks), on
//! both paths, with one upstream gradient per element and with one for all.
mod common;

use common::*;
use half::{bf16, f16};
use hgq_core::{Element, FixedPoint, OverflowMode, Path, Real, RoundMode, Upstream};

/// Strides of a row-major shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// For each flat index of x, the flat index of the bit-width element it reads.
fn source(xs: &[usize], bs: &[usize]) -> Vec<usize> {
    let (sx, sb) = (strides(xs), strides(bs));
    let n: usize = xs.iter().product();
    (0..n)
        .map(|j| {
            (0..xs.len())
                .map(|d| {
                    if bs[d] == 1 {
                        0
                    } else {
                        (j / sx[d]) % xs[d] * sb[d]
                    }
                })
                .sum()
        })
        .collect()
}

/// `b` broadcast to x's shape.
fn expand<C: Real>(b: &Bw<C>, xs: &[usize]) -> Bw<C> {
    Bw::new(xs, source(xs, &b.shape).iter().map(|&s| b.v[s]).collect())
}

/// Bit widths k, i, f of one shape, as three [`Bw`]s.
type Kif<C> = [Bw<C>; 3];

/// What [`inputs`] makes: x, dy, k/i/f of the bit-width shape, k/i/f broadcast to x's shape.
type Inputs<T> = (
    Vec<T>,
    Vec<T>,
    Kif<<T as Element>::C>,
    Kif<<T as Element>::C>,
);

/// x, an upstream gradient, random k, i, f of the bit-width shape, and their copies broadcast
/// to x's shape.
fn inputs<T: Element>(xs: &[usize], bs: &[usize], seed: u64) -> Inputs<T> {
    let mut rng = Rng::new(seed);
    let n: usize = xs.iter().product();
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let m: usize = bs.iter().product();
    let bw = |rng: &mut Rng, lo: i64, hi: i64| -> Bw<T::C> {
        let v: Vec<f64> = (0..m).map(|_| rng.int(lo, hi) as f64).collect();
        Bw::new(bs, reals(&v))
    };
    let (k, i, f) = (bw(&mut rng, 0, 1), bw(&mut rng, -3, 6), bw(&mut rng, -2, 8));
    let (kf, i_f, ff) = (expand(&k, xs), expand(&i, xs), expand(&f, xs));
    (x, dy, [k, i, f], [kf, i_f, ff])
}

fn check<T: Element>(xs: &[usize], bs: &[usize], seed: u64) {
    let n: usize = xs.iter().product();
    assert!(n < SEG, "one segment: one group, x's flat order");
    let (x, dy, [k, i, f], [kf, i_f, ff]) = inputs::<T>(xs, bs, seed);
    let m: usize = bs.iter().product();
    let g = T::from_c(T::C::from_f64(-1.25));
    for overflow in [OverflowMode::Sat, OverflowMode::SatSym, OverflowMode::Wrap] {
        for round in [RoundMode::Rnd, RoundMode::RndConv, RoundMode::Trn] {
            for path in [Path::Scalar, Path::Simd] {
                let q = FixedPoint::new(round, overflow).unwrap().with_path(path);
                for training in [false, true] {
                    let ctx = format!(
                        "{} x{xs:?} bw{bs:?} {round}/{overflow} training={training} {path:?}",
                        T::NAME
                    );
                    let check = |what: &str, a: &Outs<T>, full: &Outs<T>| {
                        let ctx = format!("{ctx} {what}");
                        assert_eq!(a.di.len(), m, "{ctx}: di length");
                        let want = Outs::<T> {
                            y: full.y.clone(),
                            dx: full.dx.clone(),
                            di: reduce_in_groups(&full.di, xs, bs),
                            df: reduce_in_groups(&full.df, xs, bs),
                        };
                        assert_outs_same(&ctx, a, &want);
                    };
                    let run = |k: &Bw<T::C>, i: &Bw<T::C>, f: &Bw<T::C>| {
                        run_fixed(&q, xs, &x, k, i, f, training, Some(&dy)).unwrap()
                    };
                    check("forward_backward", &run(&k, &i, &f), &run(&kf, &i_f, &ff));
                    for (name, up) in [
                        ("each", Upstream::Each(&dy[..])),
                        ("same", Upstream::Same(g)),
                    ] {
                        let a = run_backward(&q, xs, &x, [&k, &i, &f], training, up);
                        let b = run_backward(&q, xs, &x, [&kf, &i_f, &ff], training, up);
                        check(&format!("backward {name}"), &a, &b);
                    }
                }
            }
        }
    }
}

/// (x shape, bit-width shape): runs of 37 (never on a block boundary after the first), of a
/// block, of 150 over two dims, and runs whose parameter offsets step by 37 (an outer dim
/// between broadcast ones). The first four derive their parameters up front (x holds at least
/// four copies of them), the last two read them raw.
const CASES: [(&[usize], &[usize]); 6] = [
    (&[5, 37], &[1, 37]),
    (&[7, 16], &[1, 16]),
    (&[3, 4, 37], &[3, 1, 37]),
    (&[9, 2, 75], &[1, 2, 75]),
    (&[3, 37], &[1, 37]),
    (&[2, 3, 50], &[1, 3, 50]),
];

#[test]
fn reduced_gradients_are_per_element_gradients_summed_in_order() {
    for (c, (xs, bs)) in CASES.iter().enumerate() {
        let seed = 100 + c as u64;
        check::<f32>(xs, bs, seed);
        check::<f64>(xs, bs, seed);
        check::<f16>(xs, bs, seed);
        check::<bf16>(xs, bs, seed);
    }
}

/// Elements per segment of the kernels (`SEGMENT_LEN` in src/kernels/mod.rs): the unit the groups of
/// a reduction are made of.
const SEG: usize = 1 << 14;

/// Per-element gradients summed into the bit-width shape the way the module documentation of
/// the kernels gives the order for any length: x in `min(segments, MAX_GROUPS, repeats)`
/// groups of whole segments, each summed from zero in x's flat order, the group sums added in
/// group order (the first one taken as it is).
fn reduce_in_groups<C: Real>(g: &[C], xs: &[usize], bs: &[usize]) -> Vec<C> {
    let (n, m) = (g.len(), bs.iter().product::<usize>());
    let segs = n.div_ceil(SEG).max(1);
    let groups = segs.min(hgq_core::kernels::MAX_GROUPS).min((n / m).max(1));
    let src = source(xs, bs);
    let mut total: Option<Vec<C>> = None;
    let mut start = 0;
    for grp in 0..groups {
        let end = ((grp + 1) * segs / groups * SEG).min(n);
        let mut s = vec![C::ZERO; m];
        for j in start..end {
            s[src[j]] = s[src[j]] + g[j];
        }
        total = Some(match total {
            None => s,
            Some(t) => t.iter().zip(&s).map(|(&a, &b)| a + b).collect(),
        });
        start = end;
    }
    total.expect("at least one group")
}

/// Beyond one segment: the reduced gradients must be the per-element ones summed in each
/// group's flat order and the group sums added in order, bit for bit, across several segments
/// and groups whose boundaries fall inside runs, with one upstream gradient per element and one
/// for all, on both paths.
fn check_groups<T: Element>(xs: &[usize], bs: &[usize], seed: u64) {
    let n: usize = xs.iter().product();
    assert!(n > 2 * SEG, "several segments, so several groups");
    let (x, dy, [k, i, f], [kf, i_f, ff]) = inputs::<T>(xs, bs, seed);
    let g = T::from_c(T::C::from_f64(0.75));
    for overflow in [OverflowMode::Sat, OverflowMode::Wrap] {
        for path in [Path::Scalar, Path::Simd] {
            let q = FixedPoint::new(RoundMode::Rnd, overflow)
                .unwrap()
                .with_path(path);
            for (name, up) in [
                ("each", Upstream::Each(&dy[..])),
                ("same", Upstream::Same(g)),
            ] {
                let ctx = format!("{} x{xs:?} bw{bs:?} {overflow} {path:?} {name}", T::NAME);
                let a = run_backward(&q, xs, &x, [&k, &i, &f], true, up);
                let full = run_backward(&q, xs, &x, [&kf, &i_f, &ff], true, up);
                let want = Outs::<T> {
                    y: full.y.clone(),
                    dx: full.dx.clone(),
                    di: reduce_in_groups(&full.di, xs, bs),
                    df: reduce_in_groups(&full.df, xs, bs),
                };
                assert_outs_same(&ctx, &a, &want);
            }
        }
    }
}

#[test]
fn reductions_over_several_groups_keep_the_group_order() {
    // Runs of 1000, three segments: group boundaries inside runs.
    check_groups::<f32>(&[40, 1000], &[1, 1000], 300);
    // Runs of 6000 over two dims, bf16 through conversion blocks.
    check_groups::<bf16>(&[6, 2, 3000], &[1, 2, 3000], 301);
    // An outer dim with its own parameters between broadcast ones: parameter offsets step by
    // 600 from run to run.
    check_groups::<f64>(&[2, 30, 600], &[2, 1, 600], 302);
}
