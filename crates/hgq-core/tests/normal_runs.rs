//! Per-element bit widths are derived from the exponent bits alone in runs where every element
//! has k in {0, 1}, i, f within [-100, 100] (every power of two is then a normal number) and a
//! type the compute type holds, and by the exact `2^n` with its clamps elsewhere. Both must give the same bits: a call whose
//! runs are all in range is compared with the same call after one element in some runs was
//! moved out of range (those runs then take the general path), on every element that was not
//! moved, forward and gradients, for every overflow mode, round modes, integer and raw bit
//! widths, storage types and both paths. Out-of-range elements themselves are checked against
//! a call in which they are the only element.
mod common;

use common::*;
use half::{bf16, f16};
use hgq_core::{BitWidths, Element, FixedPoint, OverflowMode, Path, Real, RoundMode, Stochastic};
use rstest::rstest;

/// Rows, columns: runs of 512 elements that do not start on a row.
const SHAPE: [usize; 2] = [5, 733];

/// Flat indices moved out of range: one in every other run of 512, at varying offsets.
fn moved() -> Vec<usize> {
    let n = SHAPE[0] * SHAPE[1];
    (0..n.div_ceil(512))
        .step_by(2)
        .map(|r| (r * 512 + 37 * r + 11).min(n - 1))
        .collect()
}

/// Out-of-range bit widths for the `t`-th moved element: very negative i with small f, and in
/// float64 (`wide`) also large f, beyond the normal runs' [-100, 100] but within the types the
/// compute type holds (a type float32 does not hold sends the whole call to float64, see
/// tests/wide.rs); raw values off the integers where `raw`.
fn outlier(t: usize, raw: bool, wide: bool) -> (f64, f64) {
    let off = if raw { 0.25 } else { 0.0 };
    match (t % 4, wide) {
        (0, _) => (-110.0 - off, 4.0),
        (1, _) => (-130.0, 20.0 + off),
        (2, true) => (-118.0 - off, 120.0),
        (3, true) => (-130.0, 140.0 + off),
        (2, false) => (-101.0 - off, 3.0),
        _ => (-140.0, 30.0 + off),
    }
}

/// `noisy`: `q` rounds with seeded noise (which depends on the element's index).
fn check<T: Element>(q: FixedPoint, noisy: bool, training: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let raw = q.bit_widths() == BitWidths::RoundHalfEven;
    let n = SHAPE[0] * SHAPE[1];
    let xv: Vec<f64> = (0..n).map(|_| rng.x_value()).collect();
    let x: Vec<T> = elems(&xv);
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let [k, mut i, mut f] = random_bw::<T::C>(&mut rng, Layout::PerElement, SHAPE[0], SHAPE[1]);
    if raw {
        for v in i.v.iter_mut().chain(f.v.iter_mut()) {
            *v = *v + T::C::from_f64(rng.uniform() * 0.98 - 0.49);
        }
    }
    let moved = moved();
    let (mut i2, mut f2) = (i.clone(), f.clone());
    for (t, &j) in moved.iter().enumerate() {
        let (iv, fv) = outlier(t, raw, T::C::DIGITS > 24);
        i2.v[j] = T::C::from_f64(iv);
        f2.v[j] = T::C::from_f64(fv);
    }
    let ctx = format!(
        "{}/{} raw={raw} training={training} {}",
        q.round_mode(),
        q.overflow_mode(),
        std::any::type_name::<T>()
    );
    for path in [Path::Scalar, Path::Simd] {
        let q = q.with_path(path);
        let ctx = format!("{ctx} {path:?}");
        for dyo in [None, Some(&dy[..])] {
            let a = run_fixed(&q, &SHAPE, &x, &k, &i, &f, training, dyo).unwrap();
            let b = run_fixed(&q, &SHAPE, &x, &k, &i2, &f2, training, dyo).unwrap();
            let keep = |v: &[T]| -> Vec<f64> {
                let mut out: Vec<f64> = v.iter().map(|e| e.to_c().to_f64()).collect();
                for &j in &moved {
                    if let Some(v) = out.get_mut(j) {
                        *v = 0.0;
                    }
                }
                out
            };
            let keep_c = |v: &[T::C]| -> Vec<f64> {
                let mut out: Vec<f64> = v.iter().map(|e| e.to_f64()).collect();
                for &j in &moved {
                    if let Some(v) = out.get_mut(j) {
                        *v = 0.0;
                    }
                }
                out
            };
            let id = |v: f64| v;
            assert_same(&format!("{ctx} y"), &keep(&a.y), &keep(&b.y), id);
            assert_same(&format!("{ctx} dx"), &keep(&a.dx), &keep(&b.dx), id);
            assert_same(&format!("{ctx} di"), &keep_c(&a.di), &keep_c(&b.di), id);
            assert_same(&format!("{ctx} df"), &keep_c(&a.df), &keep_c(&b.df), id);
            // The moved elements: as in a call of one element (which has no run in range);
            // stochastic noise depends on the element's index, so not with noise. That call's
            // di, df are sums of one element from +0, so a -0 reads +0 there.
            for &j in moved.iter().filter(|_| !noisy) {
                let one = |b: &Bw<T::C>| Bw::new(&[1, 1], vec![b.v[j]]);
                let dy1 = dyo.map(|d| &d[j..j + 1]);
                let s = run_fixed(
                    &q,
                    &[1, 1],
                    &x[j..j + 1],
                    &one(&k),
                    &one(&i2),
                    &one(&f2),
                    training,
                    dy1,
                )
                .unwrap();
                let at = |v: &[T], w: &[T]| {
                    (
                        v.first().map(|e| e.to_c().to_f64()),
                        w.get(j).map(|e| e.to_c().to_f64()),
                    )
                };
                for (what, (got, want)) in [("y", at(&s.y, &b.y)), ("dx", at(&s.dx, &b.dx))] {
                    assert!(
                        got.zip(want).is_none_or(|(g, w)| same_bits(g, w)),
                        "{ctx} {what}[{j}]: {got:?} != {want:?}"
                    );
                }
                if dyo.is_some() {
                    assert!(
                        same_bits(s.di[0].to_f64() + 0.0, b.di[j].to_f64() + 0.0),
                        "{ctx} di[{j}]: {:e} != {:e}",
                        s.di[0].to_f64(),
                        b.di[j].to_f64()
                    );
                    assert!(
                        same_bits(s.df[0].to_f64() + 0.0, b.df[j].to_f64() + 0.0),
                        "{ctx} df[{j}]: {:e} != {:e}",
                        s.df[0].to_f64(),
                        b.df[j].to_f64()
                    );
                }
            }
        }
    }
}

#[rstest]
fn runs_in_range_give_the_bits_of_the_general_path(
    #[values(
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::Wrap,
        OverflowMode::WrapSm
    )]
    overflow: OverflowMode,
    #[values(RoundMode::Rnd, RoundMode::Trn, RoundMode::RndConv, RoundMode::SRnd)] round: RoundMode,
    #[values(Stochastic::Reference, Stochastic::Seeded(9))] noise: Stochastic,
    #[values(BitWidths::Integer, BitWidths::RoundHalfEven)] bits: BitWidths,
    #[values(false, true)] training: bool,
) {
    let Some(q) = fixed_or_refused(round, overflow) else {
        return;
    };
    let q = q
        .with_bit_widths(bits)
        .with_zero_mask(true)
        .with_stochastic(noise);
    let noisy = round.is_stochastic() && noise != Stochastic::Reference;
    check::<f32>(q, noisy, training, 1);
    check::<f64>(q, noisy, training, 2);
    check::<f16>(q, noisy, training, 3);
    check::<bf16>(q, noisy, training, 4);
}
