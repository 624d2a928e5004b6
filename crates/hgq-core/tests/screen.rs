//! The [`Screen`] a `FixedPoint` pass returns, and a pass that is given one.
//!
//! A pass over per-element bit widths (as large as x) returns `Screen::InRange` when every k is
//! 0 or 1 and every i, f passes its rule and lies in [-100, 100]; anything else returns
//! `Screen::Unknown`. Given `InRange`, a pass takes it as known: the same bits where it is true
//! (every mode, storage type and path), and, where it is false, values instead of errors, with
//! every element whose own bit widths are fine still exact (each element reads only its own).
mod common;

use common::*;
use half::{bf16, f16};
use hgq_core::{
    BitWidths, CoreError, Element, FixedPoint, OverflowMode, Path, Real, RoundMode, Screen,
    Stochastic, TensorRef, Upstream,
};
use rstest::rstest;

/// Rows, columns: several runs of 512 elements that do not start on a row.
const SHAPE: [usize; 2] = [5, 733];

/// x, dy and bit widths of `layout` in range, off the integers where `q` takes raw ones.
fn data<T: Element>(q: &FixedPoint, layout: Layout, seed: u64) -> (Vec<T>, Vec<T>, [Bw<T::C>; 3]) {
    let mut rng = Rng::new(seed);
    let n = SHAPE[0] * SHAPE[1];
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let [k, mut i, mut f] = random_bw::<T::C>(&mut rng, layout, SHAPE[0], SHAPE[1]);
    if q.bit_widths() == BitWidths::RoundHalfEven {
        for v in i.v.iter_mut().chain(f.v.iter_mut()) {
            *v = *v + T::C::from_f64(rng.uniform() * 0.98 - 0.49);
        }
    }
    (x, dy, [k, i, f])
}

fn t<C: Real>(b: &Bw<C>) -> TensorRef<'_, C> {
    TensorRef::new(&b.v, &b.shape).unwrap()
}

/// The screens that forward, forward_backward and backward return.
fn screens<T: Element>(
    q: &FixedPoint,
    xs: &[usize],
    x: &[T],
    dy: &[T],
    [k, i, f]: &[Bw<T::C>; 3],
) -> [Screen; 3] {
    let run = |dy| run_fixed_screened(q, xs, x, k, i, f, true, dy).unwrap().1;
    let back = run_backward_screened(q, xs, x, [k, i, f], true, Upstream::Each(dy)).1;
    [run(None), run(Some(dy)), back]
}

fn check_screens<T: Element>(q: FixedPoint, seed: u64) {
    let ctx = format!("{:?} {}", q.bit_widths(), T::NAME);
    // Bit widths as large as x (also where i and f are broadcast into such a copy).
    for layout in [Layout::PerElement, Layout::Mixed] {
        let (x, dy, bw) = data::<T>(&q, layout, seed);
        assert_eq!(
            screens(&q, &SHAPE, &x, &dy, &bw),
            [Screen::InRange; 3],
            "{ctx} {layout:?}"
        );
        // One element just out of range: valid, so no error, but nothing to vouch for.
        for (p, v) in [(1, -101.0), (2, -101.0), (1, -1e6)] {
            let mut out = bw.clone();
            let j = 1000 % out[p].v.len();
            out[p].v[j] = T::C::from_f64(v);
            assert_eq!(
                screens(&q, &SHAPE, &x, &dy, &out),
                [Screen::Unknown; 3],
                "{ctx} {layout:?} p{p} = {v}"
            );
        }
    }
    // Broadcast bit widths are derived once per element of theirs, never screened.
    for layout in [Layout::PerColumn, Layout::PerRow, Layout::Scalar] {
        let (x, dy, bw) = data::<T>(&q, layout, seed);
        assert_eq!(
            screens(&q, &SHAPE, &x, &dy, &bw),
            [Screen::Unknown; 3],
            "{ctx} {layout:?}"
        );
    }
    // An empty x looks at no bit width.
    let empty = Bw::new(&[0, SHAPE[1]], Vec::new());
    let bw = [empty.clone(), empty.clone(), empty];
    assert_eq!(
        screens::<T>(&q, &[0, SHAPE[1]], &[], &[], &bw),
        [Screen::Unknown; 3],
        "{ctx} empty"
    );
}

#[rstest]
fn passes_return_what_they_found(
    #[values(BitWidths::Integer, BitWidths::RoundHalfEven)] bits: BitWidths,
    #[values(Path::Scalar, Path::Simd)] path: Path,
) {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)
        .unwrap()
        .with_bit_widths(bits)
        .with_path(path);
    check_screens::<f32>(q, 1);
    check_screens::<f64>(q, 2);
    check_screens::<f16>(q, 3);
    check_screens::<bf16>(q, 4);
}

/// A backward (and a forward) given the forward's screen: the bits of one that checks.
fn check_given<T: Element>(q: FixedPoint, training: bool, seed: u64) {
    let (x, dy, bw) = data::<T>(&q, Layout::PerElement, seed);
    let [k, i, f] = &bw;
    let ctx = format!(
        "{}/{} {:?} {}",
        q.round_mode(),
        q.overflow_mode(),
        q.bit_widths(),
        T::NAME
    );
    for path in [Path::Scalar, Path::Simd] {
        let q = q.with_path(path);
        let ctx = format!("{ctx} {path:?} training={training}");
        let checked = run_fixed(&q, &SHAPE, &x, k, i, f, training, None).unwrap();
        let mut y = vec![T::default(); x.len()];
        let screen = q
            .forward(
                TensorRef::new(&x, &SHAPE).unwrap(),
                t(k),
                t(i),
                t(f),
                training,
                &mut y,
            )
            .unwrap();
        assert_eq!(screen, Screen::InRange, "{ctx}");
        let given = q.with_screen(screen);
        let known = run_fixed(&given, &SHAPE, &x, k, i, f, training, None).unwrap();
        assert_outs_same(&format!("{ctx} forward"), &checked, &known);
        for up in [Upstream::Each(&dy[..]), Upstream::Same(dy[7])] {
            let a = run_backward(&q, &SHAPE, &x, [k, i, f], training, up);
            let b = run_backward(&given, &SHAPE, &x, [k, i, f], training, up);
            assert_outs_same(&format!("{ctx} backward {up:?}"), &a, &b);
        }
    }
}

#[rstest]
fn a_pass_given_the_screen_gives_the_same_bits(
    #[values(
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::Wrap,
        OverflowMode::WrapSm
    )]
    overflow: OverflowMode,
    #[values(RoundMode::Rnd, RoundMode::Trn, RoundMode::SRnd)] round: RoundMode,
    #[values(BitWidths::Integer, BitWidths::RoundHalfEven)] bits: BitWidths,
    #[values(false, true)] training: bool,
) {
    let Some(q) = fixed_or_refused(round, overflow) else {
        return;
    };
    let q = q
        .with_bit_widths(bits)
        .with_zero_mask(true)
        .with_stochastic(Stochastic::Seeded(5));
    check_given::<f32>(q, training, 11);
    check_given::<f64>(q, training, 12);
    check_given::<f16>(q, training, 13);
    check_given::<bf16>(q, training, 14);
}

/// Bad bit widths at a few elements: (parameter, element, value).
fn bad_values<C: Real>() -> Vec<(usize, usize, C)> {
    [
        (0, 3, 0.5),
        (0, 700, f64::NAN),
        (1, 1000, f64::NAN),
        (1, 1500, f64::INFINITY),
        (2, 2000, -f64::INFINITY),
        (2, 2500, 1e30),
        (1, 3000, -1e30),
        (2, 3600, 2.5),
    ]
    .into_iter()
    .map(|(p, j, v)| (p, j, C::from_f64(v)))
    .collect()
}

/// `got` and `want` equal at every element whose bit widths are fine (`is_bad` false): y
/// (where `with_y`), dx, di and df.
fn same_where_fine<T: Element>(
    ctx: &str,
    got: &Outs<T>,
    want: &Outs<T>,
    is_bad: &dyn Fn(usize) -> bool,
    with_y: bool,
) {
    let keep = |v: Vec<f64>| -> Vec<f64> {
        let mut v = v;
        for (j, e) in v.iter_mut().enumerate() {
            if is_bad(j) {
                *e = 0.0;
            }
        }
        v
    };
    let of_t = |v: &[T]| keep(v.iter().map(|e| e.to_c().to_f64()).collect());
    let of_c = |v: &[T::C]| keep(v.iter().map(|e| e.to_f64()).collect());
    let id = |v: f64| v;
    if with_y {
        assert_same(&format!("{ctx} y"), &of_t(&got.y), &of_t(&want.y), id);
    }
    assert_same(&format!("{ctx} dx"), &of_t(&got.dx), &of_t(&want.dx), id);
    assert_same(&format!("{ctx} di"), &of_c(&got.di), &of_c(&want.di), id);
    assert_same(&format!("{ctx} df"), &of_c(&got.df), &of_c(&want.df), id);
}

fn check_wrong_claim<T: Element>(bits: BitWidths, seed: u64) {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Wrap)
        .unwrap()
        .with_bit_widths(bits);
    let (x, dy, clean) = data::<T>(&q, Layout::PerElement, seed);
    let mut bad = clean.clone();
    let bads = bad_values::<T::C>();
    for &(p, j, v) in &bads {
        bad[p].v[j] = v;
    }
    let is_bad = |j: usize| bads.iter().any(|b| b.1 == j);
    let ctx = format!("{bits:?} {}", T::NAME);
    for path in [Path::Scalar, Path::Simd] {
        let q = q.with_path(path);
        let claimed = q.with_screen(Screen::InRange);
        let ctx = format!("{ctx} {path:?}");
        // Checked: an error, forward and backward.
        let [k, i, f] = &bad;
        // The first bad value in parameter order: k = 0.5 at element 3.
        for dyo in [None, Some(&dy[..])] {
            let r = run_fixed(&q, &SHAPE, &x, k, i, f, true, dyo).map(|_| ());
            assert!(
                matches!(r, Err(CoreError::InvalidK(v)) if v == 0.5),
                "{ctx}: {r:?}"
            );
        }
        // Claimed in range: values, and exact ones wherever an element's own bit widths are
        // fine (the forward and the pass that stores every gradient).
        let [ck, ci, cf] = &clean;
        for dyo in [None, Some(&dy[..])] {
            let got = run_fixed(&claimed, &SHAPE, &x, k, i, f, true, dyo).unwrap();
            let want = run_fixed(&q, &SHAPE, &x, ck, ci, cf, true, dyo).unwrap();
            same_where_fine(&ctx, &got, &want, &is_bad, true);
        }
        // The backward pass of a broadcast upstream gradient: exact wherever an element's own
        // bit widths are fine, too (it has no y).
        let up = Upstream::Same(dy[0]);
        let got = run_backward(&claimed, &SHAPE, &x, [k, i, f], true, up);
        let want = run_backward(&q, &SHAPE, &x, [ck, ci, cf], true, up);
        let ctx = format!("{ctx} backward of a broadcast dy");
        same_where_fine(&ctx, &got, &want, &is_bad, false);
    }
    // Broadcast bit widths are always checked, whatever the claim.
    let (x, _, mut cols) = data::<T>(&q, Layout::PerColumn, seed);
    cols[1].v[5] = T::C::from_f64(f64::NAN);
    let [k, i, f] = &cols;
    let claimed = q.with_screen(Screen::InRange);
    let r = run_fixed(&claimed, &SHAPE, &x, k, i, f, true, None).map(|_| ());
    assert!(
        matches!(r, Err(CoreError::InvalidParameter { name: "i", value, .. }) if value.is_nan()),
        "{ctx} per column: {r:?}"
    );
}

#[rstest]
fn a_wrong_screen_gives_values_not_errors(
    #[values(BitWidths::Integer, BitWidths::RoundHalfEven)] bits: BitWidths,
) {
    check_wrong_claim::<f32>(bits, 21);
    check_wrong_claim::<f64>(bits, 22);
    check_wrong_claim::<bf16>(bits, 23);
}
