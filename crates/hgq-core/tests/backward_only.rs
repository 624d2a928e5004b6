//! `FixedPoint::backward`: the gradients alone, with an upstream gradient per element or one
//! value for all, are the bits of `forward_backward`'s, on every path, layout, storage type and
//! size (below and above the parallel threshold, with and without reductions).
mod common;

use common::*;
use hgq_core::{
    BitWidths, CoreError, Element, FixedGrads, FixedPoint, OverflowMode, Path, Real, RoundMode,
    TensorRef, Upstream,
};
use rstest::rstest;

fn same_as_forward_backward<T: Element>(
    q: FixedPoint,
    layout: Layout,
    (rows, cols): (usize, usize),
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let n = rows * cols;
    let xs = [rows, cols];
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let g = T::from_c(T::C::from_f64(0.75));
    let dy_same = vec![g; n];
    let [k, i, f] = random_bw::<T::C>(&mut rng, layout, rows, cols);
    for training in [false, true] {
        for path in [Path::Scalar, Path::Simd] {
            let q = q.with_path(path);
            let ctx = format!(
                "{}/{} {layout:?} {rows}x{cols} training={training} {path:?}",
                q.round_mode(),
                q.overflow_mode()
            );
            let bw = [&k, &i, &f];
            let mut want = run_fixed(&q, &xs, &x, &k, &i, &f, training, Some(&dy)).unwrap();
            want.y.clear();
            let got = run_backward(&q, &xs, &x, bw, training, Upstream::Each(&dy));
            assert_outs_same(&format!("{ctx} each"), &got, &want);
            let mut want = run_fixed(&q, &xs, &x, &k, &i, &f, training, Some(&dy_same)).unwrap();
            want.y.clear();
            let got = run_backward(&q, &xs, &x, bw, training, Upstream::Same(g));
            assert_outs_same(&format!("{ctx} same"), &got, &want);
        }
    }
}

#[rstest]
fn backward_gives_the_gradients_of_forward_backward(
    #[values(
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::Wrap,
        OverflowMode::WrapSm
    )]
    overflow: OverflowMode,
    #[values(
        Layout::PerElement,
        Layout::PerColumn,
        Layout::PerRow,
        Layout::Scalar,
        Layout::Mixed
    )]
    layout: Layout,
) {
    for (s, round) in [RoundMode::Rnd, RoundMode::Trn, RoundMode::RndConv]
        .into_iter()
        .enumerate()
    {
        let Some(q) = fixed_or_refused(round, overflow) else {
            continue;
        };
        // Small (one thread) and above the parallel threshold (several segments, groups).
        for size in [(13, 57), (96, 1500)] {
            same_as_forward_backward::<f32>(q, layout, size, s as u64);
            same_as_forward_backward::<f64>(q, layout, size, 10 + s as u64);
        }
    }
}

#[rstest]
fn backward_on_narrow_types(#[values(Layout::PerElement, Layout::PerColumn)] layout: Layout) {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)
        .unwrap()
        .with_bit_widths(BitWidths::RoundHalfEven);
    same_as_forward_backward::<half::f16>(q, layout, (40, 2000), 3);
    same_as_forward_backward::<half::bf16>(q, layout, (40, 2000), 4);
}

#[test]
fn backward_checks_its_buffers() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let x = [0.5f32; 6];
    let s = [1];
    let t = |v: &'static [f32]| TensorRef::new(v, &s).unwrap();
    let (mut dx, mut di, mut df) = ([0.0f32; 6], [0.0f32], [0.0f32]);
    let err = q
        .backward(
            TensorRef::new(&x, &[2, 3]).unwrap(),
            t(&[1.0]),
            t(&[1.0]),
            t(&[2.0]),
            true,
            Upstream::Each(&[1.0; 5]),
            FixedGrads {
                dx: &mut dx,
                di: &mut di,
                df: &mut df,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, CoreError::Length { what: "dy", .. }),
        "{err:?}"
    );
}
