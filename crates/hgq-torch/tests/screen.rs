//! The CPU autograd node hands its forward's `Screen` to its backward, which then skips the
//! checks of per-element bit widths. Shown here: the gradients are the bits of hgq-core's
//! checked pass, for bit widths in range and out of it (where the forward vouches for
//! nothing); and a bit width changed in place between forward and backward makes autograd
//! refuse the backward (an error, never gradients from a stale screen).
mod common;

use common::bits;
use hgq_torch::fixed_quantize;
use hgq_torch::hgq_core::{
    BitWidths, FixedGrads, FixedPoint, OverflowMode, RoundMode, Screen, TensorRef,
};
use tch::{Device, Kind, Tensor};

/// Rows, columns: 38 400 elements, many runs of 512.
const SHAPE: [i64; 2] = [64, 600];

fn quantizer() -> FixedPoint {
    FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)
        .unwrap()
        .with_bit_widths(BitWidths::RoundHalfEven)
}

/// x, dy and raw per-element k, i, f (i, f within a few bits, off the integers), seeded.
fn inputs() -> [Tensor; 5] {
    let opts = (Kind::Float, Device::Cpu);
    common::seeded(17, || {
        let x = Tensor::randn(SHAPE, opts) * 8.0;
        let dy = Tensor::randn(SHAPE, opts);
        let k = Tensor::ones(SHAPE, opts);
        let i = Tensor::rand(SHAPE, opts) * 8.0 - 3.0;
        let f = Tensor::rand(SHAPE, opts) * 10.0 - 2.0;
        [x, dy, k, i, f]
    })
}

fn vals(t: &Tensor) -> Vec<f32> {
    common::f32s(t)
}

/// dx, di, df from the autograd node (forward, then backward of `sum(y * dy)`).
fn through_autograd(x: &Tensor, dy: &Tensor, k: &Tensor, i: &Tensor, f: &Tensor) -> [Tensor; 3] {
    let x = x.detach().set_requires_grad(true);
    let i = i.detach().set_requires_grad(true);
    let f = f.detach().set_requires_grad(true);
    let y = fixed_quantize(&quantizer(), &x, k, &i, &f, true).unwrap();
    (y * dy).sum(Kind::Float).backward();
    [x.grad(), i.grad(), f.grad()]
}

/// dx, di, df from hgq-core's pass that checks every bit width, and its screen.
fn checked(x: &Tensor, dy: &Tensor, k: &Tensor, i: &Tensor, f: &Tensor) -> ([Vec<f32>; 3], Screen) {
    let s = [SHAPE[0] as usize, SHAPE[1] as usize];
    let (xv, dyv, kv, iv, fv) = (vals(x), vals(dy), vals(k), vals(i), vals(f));
    let t = |v| TensorRef::new(v, &s).unwrap();
    let n = xv.len();
    let (mut y, mut dx, mut di, mut df) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let grads = FixedGrads {
        dx: &mut dx,
        di: &mut di,
        df: &mut df,
    };
    let screen = quantizer()
        .forward_backward(t(&xv), t(&kv), t(&iv), t(&fv), true, &dyv, &mut y, grads)
        .unwrap();
    ([dx, di, df], screen)
}

fn assert_bits(what: &str, got: &Tensor, want: &[f32]) {
    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits(got), want, "{what}");
}

#[test]
fn the_backward_given_the_forwards_screen_has_the_checked_bits() {
    let [x, dy, k, i, f] = inputs();
    // In range: the forward vouches, the backward skips its checks.
    let (want, screen) = checked(&x, &dy, &k, &i, &f);
    assert_eq!(screen, Screen::InRange);
    let got = through_autograd(&x, &dy, &k, &i, &f);
    for (what, (g, w)) in ["dx", "di", "df"].iter().zip(got.iter().zip(&want)) {
        assert_bits(&format!("in range {what}"), g, w);
    }
    // A few elements out of range (valid, and a type float32 holds, but the forward vouches
    // for nothing).
    let far = i.copy();
    let _ = far.view(-1).narrow(0, 5000, 3).fill_(-130.0);
    let (want, screen) = checked(&x, &dy, &k, &far, &f);
    assert_eq!(screen, Screen::Unknown);
    let got = through_autograd(&x, &dy, &k, &far, &f);
    for (what, (g, w)) in ["dx", "di", "df"].iter().zip(got.iter().zip(&want)) {
        assert_bits(&format!("out of range {what}"), g, w);
    }
}

#[test]
fn a_bit_width_changed_in_place_after_the_forward_is_refused() {
    let [x, dy, k, i, f] = inputs();
    let x = x.set_requires_grad(true);
    let i = i.set_requires_grad(true);
    let f = f.set_requires_grad(true);
    let y = fixed_quantize(&quantizer(), &x, &k, &i, &f, true).unwrap();
    // What an optimizer step between forward and backward would do: out of range, and NaN.
    tch::no_grad(|| {
        let _ = f.view(-1).narrow(0, 100, 1).fill_(300.0);
        let _ = i.view(-1).narrow(0, 7000, 1).fill_(f64::NAN);
    });
    let err = (y * &dy).sum(Kind::Float).f_backward().unwrap_err();
    assert!(
        err.to_string().contains("modified by an inplace operation"),
        "{err}"
    );
}
