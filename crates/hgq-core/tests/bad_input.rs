//! Bad input gives an error, never a panic: shapes that do not broadcast, buffers of the wrong
//! length, k outside {0, 1}, bit widths that are not finite integers, undefined mode pairs.
mod common;

use common::*;
use hgq_core::stateless::minifloat_with_path;
use hgq_core::{CoreError, FixedPoint, OverflowMode, Path, RoundMode, TensorRef, minifloat};
use rstest::rstest;

fn q() -> FixedPoint {
    FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap()
}

fn bw(shape: &[usize], v: f32) -> Bw<f32> {
    Bw::new(shape, vec![v; shape.iter().product()])
}

fn call(
    xs: &[usize],
    k: &Bw<f32>,
    i: &Bw<f32>,
    f: &Bw<f32>,
    grad: bool,
) -> hgq_core::Result<Outs<f32>> {
    let n: usize = xs.iter().product();
    let x = vec![0.3f32; n];
    let dy = vec![1.0f32; n];
    run_fixed(&q(), xs, &x, k, i, f, true, grad.then_some(dy.as_slice()))
}

#[rstest]
#[case(&[2, 3], &[2])]
#[case(&[2, 3], &[3, 1])]
#[case(&[2, 3], &[4, 2, 3])]
#[case(&[2, 3], &[0])]
#[case(&[5], &[2])]
fn shapes_that_do_not_broadcast(
    #[case] xs: &[usize],
    #[case] is: &[usize],
    #[values(false, true)] grad: bool,
) {
    let r = call(xs, &bw(&[1], 1.0), &bw(is, 2.0), &bw(&[1], 3.0), grad);
    assert!(matches!(r, Err(CoreError::Broadcast { .. })), "{r:?}");
}

#[rstest]
#[case(2.0)]
#[case(0.5)]
#[case(-1.0)]
#[case(f32::NAN)]
#[case(f32::INFINITY)]
fn k_outside_zero_one(#[case] k: f32) {
    for shape in [vec![1], vec![4, 5]] {
        let mut kb = bw(&shape, 1.0);
        let last = kb.v.len() - 1;
        kb.v[last] = k; // one bad element among good ones
        let r = call(&[4, 5], &kb, &bw(&[1], 2.0), &bw(&[1], 3.0), false);
        assert!(matches!(r, Err(CoreError::InvalidK(_))), "k={k}: {r:?}");
    }
}

#[rstest]
#[case(1.5)]
#[case(-0.25)]
#[case(f32::NAN)]
#[case(f32::INFINITY)]
#[case(f32::NEG_INFINITY)]
fn bit_widths_that_are_not_finite_integers(#[case] v: f32, #[values(false, true)] grad: bool) {
    let shape = [64, 33];
    let n = 64 * 33;
    for (which, name) in [(1, "i"), (2, "f")] {
        let mut b = [bw(&[1], 1.0), bw(&shape, 2.0), bw(&shape, 3.0)];
        b[which].v[n / 2 + 1] = v;
        let r = call(&shape, &b[0], &b[1], &b[2], grad);
        match r {
            Err(CoreError::InvalidParameter {
                name: got, value, ..
            }) => {
                assert_eq!(got, name);
                assert!(same_bits(value, v as f64), "{value} vs {v}");
            }
            other => panic!("{name}={v}: {other:?}"),
        }
    }
}

#[test]
fn buffers_of_the_wrong_length() {
    let x = [0.1f32; 6];
    let s = [1usize];
    let one = [1.0f32];
    let p = TensorRef::new(&one, &s).unwrap();
    let xt = TensorRef::new(&x, &[2, 3]).unwrap();
    // x's buffer against its shape.
    assert!(matches!(
        TensorRef::new(&x, &[4, 2]),
        Err(CoreError::Length { .. })
    ));
    // y.
    let mut y = [0.0f32; 5];
    let r = q().forward(xt, p, p, p, false, &mut y);
    assert!(
        matches!(r, Err(CoreError::Length { what: "y", .. })),
        "{r:?}"
    );
    // dy, dx, di.
    let mut y = [0.0f32; 6];
    let (mut dx, mut di, mut df) = ([0.0f32; 6], [0.0f32; 1], [0.0f32; 1]);
    let r = q().forward_backward(
        xt,
        p,
        p,
        p,
        true,
        &[1.0; 5],
        &mut y,
        grads(&mut dx, &mut di, &mut df),
    );
    assert!(
        matches!(r, Err(CoreError::Length { what: "dy", .. })),
        "{r:?}"
    );
    let mut dx5 = [0.0f32; 5];
    let r = q().forward_backward(
        xt,
        p,
        p,
        p,
        true,
        &[1.0; 6],
        &mut y,
        grads(&mut dx5, &mut di, &mut df),
    );
    assert!(
        matches!(r, Err(CoreError::Length { what: "dx", .. })),
        "{r:?}"
    );
    let mut di2 = [0.0f32; 2];
    let r = q().forward_backward(
        xt,
        p,
        p,
        p,
        true,
        &[1.0; 6],
        &mut y,
        grads(&mut dx, &mut di2, &mut df),
    );
    assert!(matches!(r, Err(CoreError::Length { .. })), "{r:?}");
}

fn grads<'a>(
    dx: &'a mut [f32],
    di: &'a mut [f32],
    df: &'a mut [f32],
) -> hgq_core::FixedGrads<'a, f32> {
    hgq_core::FixedGrads { dx, di, df }
}

#[test]
fn wrap_sm_needs_a_round_to_nearest_mode() {
    for r in [
        RoundMode::Trn,
        RoundMode::TrnZero,
        RoundMode::RndZero,
        RoundMode::RndInf,
        RoundMode::RndMinInf,
    ] {
        assert!(matches!(
            FixedPoint::new(r, OverflowMode::WrapSm),
            Err(CoreError::WrapSmRounding(_))
        ));
    }
}

#[test]
fn empty_tensors_are_fine() {
    for grad in [false, true] {
        let out = call(
            &[0, 3],
            &bw(&[1], 1.0),
            &bw(&[1, 3], 2.0),
            &bw(&[1, 3], 3.0),
            grad,
        )
        .unwrap();
        assert!(out.y.is_empty());
        if grad {
            assert_eq!(out.di, vec![0.0; 3]);
            assert_eq!(out.df, vec![0.0; 3]);
        }
    }
}

#[rstest]
#[case(0.5, 3.0, 0.0)]
#[case(2.0, f32::NAN, 0.0)]
#[case(2.0, 3.0, f32::INFINITY)]
fn minifloat_bit_widths_must_be_integers(#[case] m: f32, #[case] e: f32, #[case] e0: f32) {
    let x = [1.0f32, 2.0];
    let xs = [2usize];
    let s = [1usize];
    let (mm, ee, ee0) = ([m], [e], [e0]);
    let t = |d| TensorRef::new(d, &s).unwrap();
    let mut y = [0.0f32; 2];
    let xt = TensorRef::new(&x, &xs).unwrap();
    let r = minifloat(xt, t(&mm), t(&ee), t(&ee0), &mut y);
    assert!(
        matches!(r, Err(CoreError::InvalidParameter { .. })),
        "{r:?}"
    );
    let r = minifloat_with_path(xt, t(&mm), t(&ee), t(&ee0), &mut y, Path::Scalar);
    assert!(
        matches!(r, Err(CoreError::InvalidParameter { .. })),
        "{r:?}"
    );
}
