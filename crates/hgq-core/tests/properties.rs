//! Properties of the fixed-point quantizer on random data: outputs on the `2^-f` grid and
//! inside `[min, max]`, idempotent inference, and the documented results for NaN and +-inf.
mod common;

use common::*;
use hgq_core::{Element, FixedPoint, OverflowMode, Real, RoundMode, TensorRef};
use rstest::rstest;

const ROUNDS: [RoundMode; 9] = RoundMode::ALL;

/// `[min, max]` of one element (SPEC 2 and 4), with `i := max(i, -f)`.
fn range(k: f64, i: f64, f: f64, overflow: OverflowMode) -> (f64, f64) {
    let ip = i.max(-f);
    let max = 2f64.powf(ip) - 2f64.powf(-f);
    let min = match overflow {
        OverflowMode::SatSym => -k * max,
        _ => -k * 2f64.powf(ip),
    };
    (min, max)
}

fn grid_and_range<T: Element>(round: RoundMode, overflow: OverflowMode, layout: Layout, seed: u64) {
    let q = FixedPoint::new(round, overflow).unwrap();
    let mut rng = Rng::new(seed);
    let (rows, cols) = (37, 91);
    let n = rows * cols;
    let xv: Vec<f64> = (0..n).map(|_| rng.x_value()).collect();
    let x: Vec<T> = elems(&xv);
    let [k, i, f] = random_bw::<T::C>(&mut rng, layout, rows, cols);
    // The bit widths broadcast to x, to check element by element.
    let at = |b: &Bw<T::C>, r: usize, c: usize| -> f64 {
        let s = &b.shape;
        let (br, bc) = match s.len() {
            1 => (1, s[0]),
            _ => (s[0], s[1]),
        };
        b.v[(if br == 1 { 0 } else { r }) * bc + if bc == 1 { 0 } else { c }].to_f64()
    };
    let out = run_fixed(&q, &[rows, cols], &x, &k, &i, &f, false, None).unwrap();
    for r in 0..rows {
        for c in 0..cols {
            let j = r * cols + c;
            let y = out.y[j].to_c().to_f64();
            let (kk, ii, ff) = (at(&k, r, c), at(&i, r, c), at(&f, r, c));
            let ctx = format!("{round}/{overflow} x={} k={kk} i={ii} f={ff} y={y}", xv[j]);
            assert!(y.is_finite(), "{ctx}: finite x gives a finite y");
            let steps = y * 2f64.powf(ff);
            assert_eq!(steps, steps.round(), "{ctx}: on the 2^-f grid");
            let (lo, hi) = range(kk, ii, ff, overflow);
            assert!(lo <= y && y <= hi, "{ctx}: inside [{lo}, {hi}]");
        }
    }
}

#[rstest]
fn outputs_lie_on_the_grid_inside_the_range(
    #[values(OverflowMode::Sat, OverflowMode::SatSym, OverflowMode::Wrap)] overflow: OverflowMode,
    #[values(Layout::PerElement, Layout::PerColumn, Layout::PerRow, Layout::Mixed)] layout: Layout,
) {
    for (s, round) in ROUNDS.into_iter().enumerate() {
        grid_and_range::<f32>(round, overflow, layout, s as u64);
        grid_and_range::<f64>(round, overflow, layout, 100 + s as u64);
    }
}

fn idempotent<T: Element>(round: RoundMode, overflow: OverflowMode, mask: bool, seed: u64) {
    let Some(q) = fixed_or_refused(round, overflow) else {
        return;
    };
    let q = q.with_zero_mask(mask);
    let mut rng = Rng::new(seed);
    for layout in Layout::ALL {
        let (rows, cols) = (23, 67);
        let n = rows * cols;
        let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
        let [k, i, f] = random_bw::<T::C>(&mut rng, layout, rows, cols);
        let xs = [rows, cols];
        let once = run_fixed(&q, &xs, &x, &k, &i, &f, false, None).unwrap();
        let twice = run_fixed(&q, &xs, &once.y, &k, &i, &f, false, None).unwrap();
        let ctx = format!(
            "{} {round}/{overflow} mask={mask} {layout:?} Q(Q(x))",
            T::NAME
        );
        if overflow == OverflowMode::Wrap {
            // Same value; the sign of a zero may flip (`fmod` keeps the dividend's sign, as
            // torch.remainder does in the reference).
            for (j, (a, b)) in once.y.iter().zip(&twice.y).enumerate() {
                let (a, b) = (a.to_c().to_f64(), b.to_c().to_f64());
                assert!(
                    a == b || (a.is_nan() && b.is_nan()),
                    "{ctx}[{j}]: {a} != {b}"
                );
            }
        } else {
            assert_same(&ctx, &once.y, &twice.y, |v: T| v.to_c().to_f64());
        }
    }
}

/// WRAP_SM is left out: the reference's sign-magnitude wrap (which the golden vectors pin
/// down) is not a projection: some of its outputs map to other values when quantized again.
#[rstest]
fn inference_is_idempotent(
    #[values(OverflowMode::Sat, OverflowMode::SatSym, OverflowMode::Wrap)] overflow: OverflowMode,
    #[values(false, true)] mask: bool,
) {
    for (s, round) in ROUNDS.into_iter().enumerate() {
        idempotent::<f32>(round, overflow, mask, s as u64);
        idempotent::<f64>(round, overflow, mask, 50 + s as u64);
    }
}

/// One element through `Q` with scalar bit widths.
fn q1(q: &FixedPoint, x: f32, k: f32, i: f32, f: f32, training: bool) -> f32 {
    let (xs, s) = ([x], [1usize]);
    let (kk, ii, ff) = ([k], [i], [f]);
    let mut y = [0.0f32];
    q.forward(
        TensorRef::new(&xs, &s).unwrap(),
        TensorRef::new(&kk, &s).unwrap(),
        TensorRef::new(&ii, &s).unwrap(),
        TensorRef::new(&ff, &s).unwrap(),
        training,
        &mut y,
    )
    .unwrap();
    y[0]
}

/// NaN stays NaN in every mode; +-inf saturates to max / min in SAT modes and gives NaN with
/// WRAP (and WRAP_SM), as in the reference (`round` computes `R(v) + (v - v)`, NaN for an
/// infinite `v`). With the zero mask, an element without bits is 0 whatever x is.
#[rstest]
fn nan_and_infinities(
    #[values(
        RoundMode::Trn,
        RoundMode::Rnd,
        RoundMode::RndConv,
        RoundMode::TrnZero,
        RoundMode::RndZero,
        RoundMode::RndInf,
        RoundMode::RndMinInf,
        RoundMode::SRnd
    )]
    round: RoundMode,
) {
    for overflow in OverflowMode::ALL {
        let Some(q) = fixed_or_refused(round, overflow) else {
            continue;
        };
        for training in [false, true] {
            for (k, i, f) in [(1.0, 2.0, 3.0), (0.0, 3.0, 1.0), (1.0, -1.0, 4.0)] {
                let ctx = format!("{round}/{overflow} training={training} k={k} i={i} f={f}");
                assert!(q1(&q, f32::NAN, k, i, f, training).is_nan(), "{ctx}: NaN");
                let (lo, hi) = range(k as f64, i as f64, f as f64, overflow);
                let (pinf, ninf) = (
                    q1(&q, f32::INFINITY, k, i, f, training),
                    q1(&q, f32::NEG_INFINITY, k, i, f, training),
                );
                match overflow {
                    OverflowMode::Sat | OverflowMode::SatSym => {
                        assert_eq!(pinf as f64, hi, "{ctx}: +inf saturates");
                        assert_eq!(ninf as f64, lo, "{ctx}: -inf saturates");
                    }
                    _ => {
                        assert!(pinf.is_nan(), "{ctx}: +inf wraps to NaN, got {pinf}");
                        assert!(ninf.is_nan(), "{ctx}: -inf wraps to NaN, got {ninf}");
                    }
                }
            }
        }
        // The zero mask (inference only): no bits, no value, even for NaN.
        let m = q.with_zero_mask(true);
        for x in [f32::NAN, f32::INFINITY, -3.0] {
            let y = q1(&m, x, 0.0, 0.0, 0.0, false);
            assert_eq!(y.to_bits(), 0, "{round}/{overflow}: masked {x} -> {y}");
        }
    }
}

/// Known values (SPEC 1-2 by hand), including ties of each rounding.
#[test]
fn hand_checked_values() {
    let s = |r: RoundMode| FixedPoint::new(r, OverflowMode::Sat).unwrap();
    // k=1, i=2, f=1: grid 0.5, range [-4, 3.5].
    let cases: [(RoundMode, f32, f32); 12] = [
        (RoundMode::Rnd, 0.25, 0.5),
        (RoundMode::Rnd, -0.25, 0.0),
        (RoundMode::RndConv, 0.25, 0.0),
        (RoundMode::RndConv, 0.75, 1.0),
        (RoundMode::Trn, -0.1, -0.5),
        (RoundMode::TrnZero, -0.4, 0.0),
        (RoundMode::RndZero, 0.25, 0.0),
        (RoundMode::RndZero, -0.25, 0.0),
        (RoundMode::RndInf, -0.25, -0.5),
        (RoundMode::RndMinInf, 0.25, 0.0),
        (RoundMode::Rnd, 100.0, 3.5),
        (RoundMode::Rnd, -100.0, -4.0),
    ];
    for (r, x, want) in cases {
        assert_eq!(q1(&s(r), x, 1.0, 2.0, 1.0, false), want, "{r} {x}");
    }
    let w = FixedPoint::new(RoundMode::Trn, OverflowMode::Wrap).unwrap();
    assert_eq!(q1(&w, 4.0, 1.0, 2.0, 1.0, false), -4.0);
    assert_eq!(q1(&w, 4.0, 1.0, 2.0, 1.0, true), 4.0, "no wrap in training");
    let sym = FixedPoint::new(RoundMode::Rnd, OverflowMode::SatSym).unwrap();
    assert_eq!(q1(&sym, -100.0, 1.0, 2.0, 1.0, false), -3.5);
}
