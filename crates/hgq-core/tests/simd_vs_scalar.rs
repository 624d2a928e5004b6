//! The SIMD paths (pulp's best level, in parallel above `PAR_MIN`, and every forced level) give
//! the bits of the scalar reference path, for every mode, element type, bit-width layout and
//! size, with and without gradients.
mod common;

use common::*;
use half::{bf16, f16};
use hgq_core::kernels::{PAR_MIN, SimdLevel};
use hgq_core::stateless::{minifloat_backward_with_path, minifloat_with_path};
use hgq_core::{
    Element, FixedPoint, FloatGrads, OverflowMode, Path, Real, RoundMode, Stochastic, TensorRef,
};
use rstest::rstest;

/// Sizes: one element, odd tails below a SIMD width, a few SIMD widths plus a tail.
const SMALL: [(usize, usize); 4] = [(1, 1), (3, 5), (7, 33), (5, 130)];
/// Just above the parallel threshold, odd in both dims.
const BIG: (usize, usize) = (131, 509);

fn quantizer(round: RoundMode, overflow: OverflowMode, seeded: bool) -> Option<FixedPoint> {
    let q = FixedPoint::new(round, overflow).ok()?;
    Some(if seeded {
        q.with_stochastic(Stochastic::Seeded(0xC0FFEE))
    } else {
        q
    })
}

/// Compares `path` against the scalar path on one random problem.
#[allow(clippy::too_many_arguments)]
fn check<T: Element>(
    q: FixedPoint,
    path: Path,
    layout: Layout,
    (rows, cols): (usize, usize),
    training: bool,
    grad: bool,
    mask: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let n = rows * cols;
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let [k, i, f] = random_bw::<T::C>(&mut rng, layout, rows, cols);
    let xs = [rows, cols];
    let q = q.with_zero_mask(mask);
    let dyo = grad.then_some(dy.as_slice());
    let a = run_fixed(
        &q.with_path(Path::Scalar),
        &xs,
        &x,
        &k,
        &i,
        &f,
        training,
        dyo,
    )
    .expect("scalar path");
    let b = run_fixed(&q.with_path(path), &xs, &x, &k, &i, &f, training, dyo).expect("simd path");
    let ctx = format!(
        "{} {}/{} {path:?} {layout:?} {rows}x{cols} training={training} grad={grad} mask={mask}",
        T::NAME,
        q.round_mode(),
        q.overflow_mode()
    );
    assert_outs_same(&ctx, &a, &b);
}

fn all_small<T: Element>(q: FixedPoint, seed: u64) {
    for layout in Layout::ALL {
        for (s, &size) in SMALL.iter().enumerate() {
            for training in [false, true] {
                for grad in [false, true] {
                    let mask = !training && s % 2 == 0;
                    check::<T>(
                        q,
                        Path::Simd,
                        layout,
                        size,
                        training,
                        grad,
                        mask,
                        seed + s as u64,
                    );
                }
            }
        }
    }
}

fn big<T: Element>(q: FixedPoint, layouts: &[Layout], seed: u64) {
    assert!(BIG.0 * BIG.1 > PAR_MIN);
    for &layout in layouts {
        for training in [false, true] {
            for grad in [false, true] {
                check::<T>(q, Path::Simd, layout, BIG, training, grad, !training, seed);
            }
        }
    }
}

#[rstest]
fn fixed_simd_equals_scalar_small(
    #[values(
        RoundMode::Trn,
        RoundMode::Rnd,
        RoundMode::RndConv,
        RoundMode::TrnZero,
        RoundMode::RndZero,
        RoundMode::RndInf,
        RoundMode::RndMinInf,
        RoundMode::SRnd,
        RoundMode::SRndConv
    )]
    round: RoundMode,
    #[values(
        OverflowMode::Wrap,
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::WrapSm
    )]
    overflow: OverflowMode,
    #[values(false, true)] seeded: bool,
) {
    let Some(q) = quantizer(round, overflow, seeded) else {
        return; // WRAP_SM with a rounding it does not define
    };
    all_small::<f32>(q, 1);
    all_small::<f64>(q, 2);
    all_small::<f16>(q, 3);
    all_small::<bf16>(q, 4);
}

#[rstest]
fn fixed_simd_equals_scalar_above_par_min(
    #[values(RoundMode::Rnd, RoundMode::RndConv, RoundMode::SRnd)] round: RoundMode,
    #[values(
        OverflowMode::Wrap,
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::WrapSm
    )]
    overflow: OverflowMode,
) {
    let Some(q) = quantizer(round, overflow, round == RoundMode::SRnd) else {
        return;
    };
    big::<f32>(q, &Layout::ALL, 10);
    big::<f64>(q, &[Layout::PerElement, Layout::PerColumn], 12);
    big::<f16>(q, &[Layout::Mixed], 11);
    big::<bf16>(q, &[Layout::PerRow], 13);
}

/// Which SIMD levels this build has and this CPU runs (`cargo xtask test` shows its output):
/// the scalar code always, x86-64-v3 on an x86 CPU with AVX2, and x86-64-v4 with the `avx512`
/// feature on one with AVX-512. The other tests of this file compare each of them with the
/// scalar path.
#[test]
fn simd_levels_report() {
    let levels = SimdLevel::available();
    println!("hgq-core SIMD levels compared with the scalar path here: {levels:?}");
    assert!(levels.contains(&SimdLevel::Scalar));
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(
            levels.contains(&SimdLevel::V3),
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        );
        assert_eq!(
            levels.contains(&SimdLevel::V4),
            cfg!(feature = "avx512")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512cd")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
        );
    }
}

/// Every SIMD level this build has and this CPU runs gives the scalar bits.
#[rstest]
fn fixed_every_simd_level_equals_scalar(
    #[values(RoundMode::Rnd, RoundMode::RndZero)] round: RoundMode,
    #[values(OverflowMode::SatSym, OverflowMode::Wrap)] overflow: OverflowMode,
) {
    let levels = SimdLevel::available();
    assert!(levels.contains(&SimdLevel::Scalar));
    for level in levels {
        every_layout_at(level, round, overflow);
    }
}

fn every_layout_at(level: SimdLevel, round: RoundMode, overflow: OverflowMode) {
    let q = FixedPoint::new(round, overflow).unwrap();
    let path = Path::Level(level);
    for layout in [Layout::PerElement, Layout::PerColumn, Layout::Scalar] {
        for (training, grad) in [(false, false), (false, true), (true, true)] {
            check::<f32>(q, path, layout, BIG, training, grad, !training, 20);
            check::<f64>(q, path, layout, (7, 33), training, grad, false, 21);
            check::<bf16>(q, path, layout, (7, 33), training, grad, false, 22);
        }
    }
}

/// The reduced bit-width gradients do not depend on the number of threads.
#[test]
fn reductions_do_not_depend_on_thread_count() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let mut rng = Rng::new(7);
    let (rows, cols) = (300, 517);
    let n = rows * cols;
    let x: Vec<f32> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<f32> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    for layout in [
        Layout::PerColumn,
        Layout::PerRow,
        Layout::Scalar,
        Layout::Mixed,
    ] {
        let [k, i, f] = random_bw::<f32>(&mut rng, layout, rows, cols);
        let runs: Vec<Outs<f32>> = on_threads(&[1, 2, 3, 8], || {
            run_fixed(&q, &[rows, cols], &x, &k, &i, &f, true, Some(&dy)).unwrap()
        });
        for r in &runs[1..] {
            assert_outs_same(&format!("{layout:?}"), &runs[0], r);
        }
    }
}

/// Per-column gradients equal the per-element ones summed over the rows (up to rounding of
/// the sums): the reduction reaches the bit-width shape.
#[test]
fn reduced_gradients_are_sums_of_elementwise_ones() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let mut rng = Rng::new(8);
    let (rows, cols) = (200, 389);
    let n = rows * cols;
    let x: Vec<f64> = (0..n).map(|_| rng.x_value()).collect();
    let dy: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let [k, i, f] = random_bw::<f64>(&mut rng, Layout::PerColumn, rows, cols);
    let col = run_fixed(&q, &[rows, cols], &x, &k, &i, &f, true, Some(&dy)).unwrap();
    let tile = |b: &Bw<f64>| -> Bw<f64> {
        Bw::new(&[rows, cols], (0..n).map(|j| b.v[j % cols]).collect())
    };
    let (ke, ie, fe) = (tile(&k), tile(&i), tile(&f));
    let el = run_fixed(&q, &[rows, cols], &x, &ke, &ie, &fe, true, Some(&dy)).unwrap();
    assert_same("y", &col.y, &el.y, |v: f64| v);
    assert_same("dx", &col.dx, &el.dx, |v: f64| v);
    for c in 0..cols {
        let (mut si, mut sf) = (0.0, 0.0);
        let mut mag = 0.0f64;
        for r in 0..rows {
            si += el.di[r * cols + c];
            sf += el.df[r * cols + c];
            mag += el.di[r * cols + c].abs() + el.df[r * cols + c].abs();
        }
        let tol = 1e-12 * (1.0 + mag);
        assert!(
            (col.di[c] - si).abs() <= tol,
            "di[{c}]: {} vs {si}",
            col.di[c]
        );
        assert!(
            (col.df[c] - sf).abs() <= tol,
            "df[{c}]: {} vs {sf}",
            col.df[c]
        );
    }
}

fn t<'a, C>(d: &'a [C], s: &'a [usize]) -> TensorRef<'a, C> {
    TensorRef::new(d, s).unwrap()
}

/// Minifloat: every path gives the scalar bits, with and without gradients.
fn minifloat_case<T: Element>(path: Path, layout: Layout, (rows, cols): (usize, usize), seed: u64) {
    let mut rng = Rng::new(seed);
    let n = rows * cols;
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let [ms, es, e0s] = layout.shapes(rows, cols);
    let make = |rng: &mut Rng, s: &[usize], lo: i64, hi: i64| -> Vec<T::C> {
        let k: usize = s.iter().product();
        reals(&(0..k).map(|_| rng.int(lo, hi) as f64).collect::<Vec<_>>())
    };
    let (m, e, e0) = (
        make(&mut rng, &ms, 0, 7),
        make(&mut rng, &es, 0, 5),
        make(&mut rng, &e0s, -4, 4),
    );
    let xs = [rows, cols];
    let xt = TensorRef::new(&x, &xs).unwrap();
    let mut ya = vec![T::default(); n];
    let mut yb = vec![T::default(); n];
    minifloat_with_path(
        xt,
        t(&m, &ms),
        t(&e, &es),
        t(&e0, &e0s),
        &mut ya,
        Path::Scalar,
    )
    .unwrap();
    minifloat_with_path(xt, t(&m, &ms), t(&e, &es), t(&e0, &e0s), &mut yb, path).unwrap();
    let ctx = format!("minifloat {} {path:?} {layout:?} {rows}x{cols}", T::NAME);
    assert_same(&ctx, &ya, &yb, |v: T| v.to_c().to_f64());
    let run = |p: Path| {
        let mut y = vec![T::default(); n];
        let mut dx = vec![T::default(); n];
        let mut g = [
            vec![T::C::ZERO; m.len()],
            vec![T::C::ZERO; e.len()],
            vec![T::C::ZERO; e0.len()],
        ];
        let [gm, ge, ge0] = &mut g;
        minifloat_backward_with_path(
            xt,
            t(&m, &ms),
            t(&e, &es),
            t(&e0, &e0s),
            &dy,
            &mut y,
            FloatGrads {
                dx: &mut dx,
                dm: gm,
                de: ge,
                de0: ge0,
            },
            p,
        )
        .unwrap();
        (y, dx, g)
    };
    let (a, b) = (run(Path::Scalar), run(path));
    assert_same(&format!("{ctx} y"), &a.0, &b.0, |v: T| v.to_c().to_f64());
    assert_same(&format!("{ctx} dx"), &a.1, &b.1, |v: T| v.to_c().to_f64());
    for q in 0..3 {
        assert_same(&format!("{ctx} dp{q}"), &a.2[q], &b.2[q], |v: T::C| {
            v.to_f64()
        });
    }
}

#[rstest]
fn minifloat_simd_equals_scalar(
    #[values(Path::Simd, Path::Level(SimdLevel::V3), Path::Level(SimdLevel::Scalar))] path: Path,
    #[values(Layout::PerElement, Layout::PerColumn, Layout::PerRow, Layout::Mixed)] layout: Layout,
) {
    for (s, size) in [(1, 1), (3, 5), (7, 33), BIG].into_iter().enumerate() {
        minifloat_case::<f32>(path, layout, size, 30 + s as u64);
        minifloat_case::<f64>(path, layout, size, 40 + s as u64);
        if size != BIG {
            minifloat_case::<f16>(path, layout, size, 50 + s as u64);
            minifloat_case::<bf16>(path, layout, size, 60 + s as u64);
        }
    }
}

/// `Real` is implemented for both compute types (keeps the generic helpers honest).
#[test]
fn compute_types_round_trip() {
    assert_eq!(f32::from_f64(0.5).to_f64(), 0.5);
    assert_eq!(f64::from_f64(0.1), 0.1);
}
