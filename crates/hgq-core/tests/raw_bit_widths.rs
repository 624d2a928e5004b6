//! `BitWidths::RoundHalfEven`: raw (trainable) `i` and `f` rounded half to even inside the pass
//! give the same bits, forward and gradients, as the integer call on pre-rounded values, on
//! every path and layout; non-finite raw values are errors, non-integers without it too.
//! `BitWidths::KbiRaw`: KBI's raw `b` and `i` give the bits of the integer call on
//! `i = rc(i)`, `f = rc(b) - rc(i)`, and the gradients autograd forms through those
//! operations (`db = df`, `di = di + -df`), narrow types and wide ones alike.
mod common;

use common::*;
use hgq_core::{BitWidths, CoreError, Element, FixedPoint, OverflowMode, Path, Real, RoundMode};
use rstest::rstest;

/// Raw values around the integers of `b`: offsets in (-0.5, 0.5) and exact ties `+-0.5`
/// (which half-to-even rounding sends to the even neighbour).
fn jitter<C: Real>(rng: &mut Rng, b: &Bw<C>) -> (Bw<C>, Bw<C>) {
    let mut raw = Vec::with_capacity(b.v.len());
    let mut rounded = Vec::with_capacity(b.v.len());
    for &v in &b.v {
        let base = v.to_f64();
        let r = match rng.int(0, 3) {
            0 => base + 0.5,
            1 => base - 0.5,
            _ => base + (rng.uniform() - 0.5) * 0.999,
        };
        raw.push(C::from_f64(r));
        rounded.push(C::from_f64(r.round_ties_even()));
    }
    (Bw::new(&b.shape, raw), Bw::new(&b.shape, rounded))
}

/// The rows and columns of x in these tests.
const XS: [usize; 2] = [29, 301];

/// x, an upstream gradient, and integer bit widths of a layout.
#[allow(clippy::type_complexity)]
fn inputs<T: Element>(rng: &mut Rng, layout: Layout) -> (Vec<T>, Vec<T>, [Bw<T::C>; 3]) {
    let n = XS[0] * XS[1];
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let bw = random_bw::<T::C>(rng, layout, XS[0], XS[1]);
    (x, dy, bw)
}

/// `raw` on `k` and raw bit widths `pr` against `int` on `k` and the integer ones `pi`, on the
/// scalar and SIMD paths, forward and with gradients: the same bits, once `grads` has mapped the
/// integer call's (i, f) gradients to the raw operands'.
#[allow(clippy::too_many_arguments)]
fn assert_like_integer<T: Element>(
    ctx: &str,
    (raw, int): (FixedPoint, FixedPoint),
    (x, dy): (&[T], &[T]),
    k: &Bw<T::C>,
    pr: [&Bw<T::C>; 2],
    pi: [&Bw<T::C>; 2],
    training: bool,
    grads: impl Fn(Vec<T::C>, Vec<T::C>) -> (Vec<T::C>, Vec<T::C>),
) {
    for path in [Path::Scalar, Path::Simd] {
        let (a, b) = (raw.with_path(path), int.with_path(path));
        let ctx = format!("{ctx} {path:?}");
        let got = run_fixed(&a, &XS, x, k, pr[0], pr[1], training, None).unwrap();
        let want = run_fixed(&b, &XS, x, k, pi[0], pi[1], training, None).unwrap();
        assert_same(&format!("{ctx} y"), &got.y, &want.y, |v: T| {
            v.to_c().to_f64()
        });
        let got = run_fixed(&a, &XS, x, k, pr[0], pr[1], training, Some(dy)).unwrap();
        let mut want = run_fixed(&b, &XS, x, k, pi[0], pi[1], training, Some(dy)).unwrap();
        (want.di, want.df) = grads(want.di, want.df);
        assert_outs_same(&ctx, &got, &want);
    }
}

fn same_as_rounded<T: Element>(q: FixedPoint, layout: Layout, training: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let (x, dy, [k, i, f]) = inputs::<T>(&mut rng, layout);
    let (i_raw, i_int) = jitter(&mut rng, &i);
    let (f_raw, f_int) = jitter(&mut rng, &f);
    let ctx = format!(
        "{}/{} {layout:?} training={training}",
        q.round_mode(),
        q.overflow_mode()
    );
    assert_like_integer(
        &ctx,
        (q.with_bit_widths(BitWidths::RoundHalfEven), q),
        (&x, &dy),
        &k,
        [&i_raw, &f_raw],
        [&i_int, &f_int],
        training,
        |di, df| (di, df),
    );
}

/// The KBI form of [`same_as_rounded`]: `b` and `i` raw around integers (`b = i + f` with the
/// integer `i`, `f` of the layout, and wider types where `wide`: 20 more integer bits, which a
/// float32 pass cannot hold). b's gradient is f's; i's is its own plus minus f's.
fn kbi_same_as_formed<T: Element>(
    q: FixedPoint,
    layout: Layout,
    training: bool,
    wide: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let (x, dy, [k, mut i, f]) = inputs::<T>(&mut rng, layout);
    if wide {
        i.v.iter_mut().for_each(|v| *v = *v + T::C::from_f64(20.0));
    }
    let b = Bw::new(
        &i.shape,
        i.v.iter().zip(&f.v).map(|(&i, &f)| i + f).collect(),
    );
    let (b_raw, b_int) = jitter(&mut rng, &b);
    let (i_raw, i_int) = jitter(&mut rng, &i);
    let f_int = Bw::new(
        &i.shape,
        b_int.v.iter().zip(&i_int.v).map(|(&b, &i)| b - i).collect(),
    );
    let ctx = format!(
        "KBI {}/{} {layout:?} training={training} wide={wide}",
        q.round_mode(),
        q.overflow_mode()
    );
    assert_like_integer(
        &ctx,
        (q.with_bit_widths(BitWidths::KbiRaw), q),
        (&x, &dy),
        &k,
        [&b_raw, &i_raw],
        [&i_int, &f_int],
        training,
        |di, df| {
            let di_raw = di.iter().zip(&df).map(|(&i, &f)| i + -f).collect();
            (df, di_raw)
        },
    );
}

#[rstest]
fn raw_bit_widths_give_the_bits_of_rounded_ones(
    #[values(
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::Wrap,
        OverflowMode::WrapSm
    )]
    overflow: OverflowMode,
    #[values(Layout::PerElement, Layout::PerColumn, Layout::Scalar, Layout::Mixed)] layout: Layout,
    #[values(false, true)] training: bool,
) {
    for (s, round) in RoundMode::ALL.into_iter().enumerate() {
        let Some(q) = fixed_or_refused(round, overflow) else {
            continue;
        };
        for mask in [false, true] {
            let q = q.with_zero_mask(mask);
            same_as_rounded::<f32>(q, layout, training, s as u64);
            same_as_rounded::<f64>(q, layout, training, 50 + s as u64);
        }
    }
}

#[rstest]
fn kbi_raw_bit_widths_give_the_bits_of_formed_ones(
    #[values(OverflowMode::Sat, OverflowMode::SatSym, OverflowMode::Wrap)] overflow: OverflowMode,
    #[values(Layout::PerElement, Layout::PerColumn, Layout::Scalar)] layout: Layout,
    #[values(false, true)] training: bool,
) {
    for round in [RoundMode::Rnd, RoundMode::Trn, RoundMode::RndConv] {
        let q = FixedPoint::new(round, overflow).unwrap();
        for (s, wide) in [false, true].into_iter().enumerate() {
            kbi_same_as_formed::<f32>(q, layout, training, wide, s as u64);
            kbi_same_as_formed::<f64>(q, layout, training, wide, 10 + s as u64);
        }
    }
}

/// The error of one forward call with `f` set to `fv` everywhere (x as large as the bit widths
/// or larger, so that both the up-front and the in-loop checks are exercised).
fn error_of(q: FixedPoint, layout: Layout, fv: f32) -> Option<CoreError> {
    let mut rng = Rng::new(7);
    let (rows, cols) = (64, 1100);
    let x: Vec<f32> = elems(&(0..rows * cols).map(|_| rng.x_value()).collect::<Vec<_>>());
    let [k, i, mut f] = random_bw::<f32>(&mut rng, layout, rows, cols);
    let last = f.v.len() - 1;
    f.v[last] = fv;
    run_fixed(&q, &[rows, cols], &x, &k, &i, &f, false, None).err()
}

#[rstest]
fn bad_bit_widths_are_errors(#[values(Layout::PerElement, Layout::PerColumn)] layout: Layout) {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let raw = q.with_bit_widths(BitWidths::RoundHalfEven);
    assert_eq!(raw.bit_widths(), BitWidths::RoundHalfEven);
    assert_eq!(q.bit_widths(), BitWidths::Integer);
    // Integers only: 2.5 is refused; raw: rounded to 2.
    assert!(matches!(
        error_of(q, layout, 2.5),
        Some(CoreError::InvalidParameter { name: "f", .. })
    ));
    assert!(error_of(raw, layout, 2.5).is_none());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for q in [q, raw] {
            match error_of(q, layout, bad) {
                Some(CoreError::InvalidParameter {
                    name: "f", value, ..
                }) => {
                    assert!(same_bits(value, bad as f64), "{value} for {bad}")
                }
                e => panic!("{:?} {layout:?} f = {bad}: {e:?}", q.bit_widths()),
            }
        }
    }
}
