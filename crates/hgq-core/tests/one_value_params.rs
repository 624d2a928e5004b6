//! A parameter of one value beside x-sized ones (a uniform `k` next to per-element `i`, `f`) is
//! read from a short repeated stream, not from an x-sized copy: its results must be the bits of
//! the same value broadcast to x's shape by the caller, on every path, storage type, mode and
//! size (one segment, several, above the parallel threshold), and a bad value must still be
//! reported.
mod common;

use common::*;
use half::bf16;
use hgq_core::{
    CoreError, Element, FixedPoint, FloatGrads, OverflowMode, Path, Real, RoundMode, TensorRef,
    Upstream,
    stateless::{minifloat_backward_with_path, minifloat_with_path},
};

/// `v` repeated to `shape`.
fn full<C: Real>(v: C, shape: &[usize]) -> Bw<C> {
    Bw::new(shape, vec![v; shape.iter().product()])
}

fn fixed_one_value_k<T: Element>((rows, cols): (usize, usize), seed: u64) {
    let mut rng = Rng::new(seed);
    let n = rows * cols;
    let xs = [rows, cols];
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let [_, i, f] = random_bw::<T::C>(&mut rng, Layout::PerElement, rows, cols);
    // i per column, f per element: the common shape is still x's.
    let i_col = Bw::new(&[1, cols], i.v[..cols].to_vec());
    let g = T::from_c(T::C::from_f64(0.75));
    // k = 0 as a rank-2 value, k = 1 as a rank-1 value (both align to x's rank).
    for (kv, one_shape) in [(0.0, &[1, 1][..]), (1.0, &[1][..])] {
        let kv = T::C::from_f64(kv);
        let wide = full(kv, &xs);
        {
            let one = full(kv, one_shape);
            for overflow in [OverflowMode::Sat, OverflowMode::SatSym, OverflowMode::Wrap] {
                for round in [RoundMode::Rnd, RoundMode::RndConv] {
                    for path in [Path::Scalar, Path::Simd] {
                        let q = FixedPoint::new(round, overflow).unwrap().with_path(path);
                        for training in [false, true] {
                            for ib in [&i, &i_col] {
                                let ctx = format!(
                                    "{round}/{overflow} {rows}x{cols} k={} {:?} i{:?} \
                                     training={training} {path:?}",
                                    kv.to_f64(),
                                    one.shape,
                                    ib.shape
                                );
                                let run = |k: &Bw<T::C>, dy: Option<&[T]>| {
                                    run_fixed(&q, &xs, &x, k, ib, &f, training, dy).unwrap()
                                };
                                let ctx_f = format!("{ctx} forward");
                                assert_outs_same(&ctx_f, &run(&one, None), &run(&wide, None));
                                let ctx_b = format!("{ctx} forward_backward");
                                let (a, b) = (run(&one, Some(&dy)), run(&wide, Some(&dy)));
                                assert_outs_same(&ctx_b, &a, &b);
                                let a = run_backward(
                                    &q,
                                    &xs,
                                    &x,
                                    [&one, ib, &f],
                                    training,
                                    Upstream::Same(g),
                                );
                                let b = run_backward(
                                    &q,
                                    &xs,
                                    &x,
                                    [&wide, ib, &f],
                                    training,
                                    Upstream::Same(g),
                                );
                                assert_outs_same(&format!("{ctx} backward same"), &a, &b);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_one_value_k_gives_the_bits_of_a_broadcast_one() {
    // One segment, several segments (one thread), above the parallel threshold.
    for (s, size) in [(7, 13), (40, 1000), (300, 300)].into_iter().enumerate() {
        fixed_one_value_k::<f32>(size, s as u64);
        fixed_one_value_k::<f64>(size, 10 + s as u64);
        fixed_one_value_k::<bf16>(size, 20 + s as u64);
    }
}

#[test]
fn a_bad_one_value_k_is_reported() {
    let (rows, cols) = (300, 300);
    let mut rng = Rng::new(5);
    let xs = [rows, cols];
    let x: Vec<f32> = elems(&(0..rows * cols).map(|_| rng.x_value()).collect::<Vec<_>>());
    let [_, i, f] = random_bw::<f32>(&mut rng, Layout::PerElement, rows, cols);
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    for (kv, want) in [(2.0f32, 2.0), (0.5, 0.5)] {
        let err = run_fixed(&q, &xs, &x, &full(kv, &[1, 1]), &i, &f, true, None).err();
        assert!(
            matches!(err, Some(CoreError::InvalidK(v)) if v == want),
            "k = {kv}: {err:?}"
        );
    }
    let err = run_fixed(&q, &xs, &x, &full(f32::NAN, &[1]), &i, &f, true, None).err();
    assert!(
        matches!(err, Some(CoreError::InvalidK(v)) if v.is_nan()),
        "{err:?}"
    );
}

/// Minifloat: a one-value parameter without a requested gradient (forward) is read as a
/// repeated stream; with one (backward) it keeps its reduced gradient. Both must match the
/// broadcast parameter.
#[test]
fn minifloat_one_value_parameters() {
    let (rows, cols) = (300, 300);
    let n = rows * cols;
    let xs = [rows, cols];
    let mut rng = Rng::new(9);
    let x: Vec<f32> = elems(&(0..n).map(|_| 4.0 * rng.normal()).collect::<Vec<_>>());
    let dy: Vec<f32> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let m = Bw::new(
        &xs,
        (0..n).map(|_| rng.int(0, 7) as f32).collect::<Vec<_>>(),
    );
    let e0 = full(-1.0f32, &xs);
    fn t(b: &Bw<f32>) -> TensorRef<'_, f32> {
        TensorRef::new(&b.v, &b.shape).unwrap()
    }
    for path in [Path::Scalar, Path::Simd] {
        let (one, wide) = (full(3.0f32, &[1, 1]), full(3.0f32, &xs));
        let fwd = |e: &Bw<f32>| {
            let mut y = vec![0.0f32; n];
            minifloat_with_path(
                TensorRef::new(&x, &xs).unwrap(),
                t(&m),
                t(e),
                t(&e0),
                &mut y,
                path,
            )
            .unwrap();
            y
        };
        assert_same("minifloat y", &fwd(&one), &fwd(&wide), f64::from);
        let bwd = |e: &Bw<f32>| {
            let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
            let (mut dm, mut de, mut de0) =
                (vec![0.0f32; n], vec![0.0f32; e.v.len()], vec![0.0f32; n]);
            minifloat_backward_with_path(
                TensorRef::new(&x, &xs).unwrap(),
                t(&m),
                t(e),
                t(&e0),
                &dy,
                &mut y,
                FloatGrads {
                    dx: &mut dx,
                    dm: &mut dm,
                    de: &mut de,
                    de0: &mut de0,
                },
                path,
            )
            .unwrap();
            (y, dx, dm, de, de0)
        };
        let (a, b) = (bwd(&one), bwd(&wide));
        assert_same("minifloat y", &a.0, &b.0, f64::from);
        assert_same("minifloat dx", &a.1, &b.1, f64::from);
        assert_same("minifloat dm", &a.2, &b.2, f64::from);
        assert_same("minifloat de0", &a.4, &b.4, f64::from);
        // The one value's gradient is the sum of the broadcast one's.
        let sum: f64 = b.3.iter().map(|&v| f64::from(v)).sum();
        let got = f64::from(a.3[0]);
        assert!(
            (got - sum).abs() <= 1e-3 * sum.abs().max(1.0),
            "de: {got} vs sum {sum}"
        );
    }
}
