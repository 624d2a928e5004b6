//! Fixed-point types wider than float32 holds: computed in float64, results rounded to
//! float32 once; beyond float64, an error.
use hgq_core::{CoreError, FixedGrads, FixedPoint, OverflowMode, RoundMode, Screen, TensorRef};

/// float32 inputs on a grid of 2^-8 (what firmware inputs look like).
fn xs(n: usize) -> Vec<f32> {
    (0..n)
        .map(|j| ((j as i64 * 7919) % 65536 - 32768) as f32 / 256.0)
        .collect()
}

fn forward(q: &FixedPoint, x: &[f32], shape: &[usize], kif: [&[f32]; 3], bw: &[usize]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    let t = |d| TensorRef::new(d, bw).unwrap();
    q.forward(
        TensorRef::new(x, shape).unwrap(),
        t(kif[0]),
        t(kif[1]),
        t(kif[2]),
        false,
        &mut y,
    )
    .unwrap();
    y
}

/// `ap_fixed<28, 20, AP_RND, AP_WRAP>` keeps every input of magnitude below 2^19 on its 2^-8
/// grid unchanged: float32 arithmetic would lose the low bits in `x + 2^19`, the WRAP bias.
#[test]
fn wide_wrap_is_exact_for_float32() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Wrap).unwrap();
    let x = xs(2000);
    let y = forward(&q, &x, &[2000], [&[1.0], &[19.0], &[8.0]], &[1]);
    assert_eq!(y, x);
    // The same bit widths per element (as large as x): the pass finds them wide itself.
    let (k, i, f) = (vec![1.0f32; 2000], vec![19.0f32; 2000], vec![8.0f32; 2000]);
    let y = forward(&q, &x, &[2000], [&k, &i, &f], &[2000]);
    assert_eq!(y, x);
}

/// Results are float64's, rounded to float32 once: the same as a float64 pass.
#[test]
fn wide_float32_is_float64_rounded() {
    for (round, overflow) in [
        (RoundMode::Rnd, OverflowMode::Sat),
        (RoundMode::Trn, OverflowMode::Wrap),
        (RoundMode::RndConv, OverflowMode::SatSym),
        (RoundMode::RndInf, OverflowMode::Wrap),
    ] {
        let q = FixedPoint::new(round, overflow).unwrap();
        let x: Vec<f32> = xs(600).iter().map(|v| v * 977.0).collect();
        let (k, i, f) = ([1.0f32], [12.0f32], [18.0f32]);
        let y = forward(&q, &x, &[600], [&k, &i, &f], &[1]);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut y64 = vec![0.0f64; 600];
        let t = |d: &[f64]| TensorRef::new(d, &[1]).unwrap().data.to_vec();
        let (k64, i64_, f64_) = (t(&[1.0]), t(&[12.0]), t(&[18.0]));
        q.forward(
            TensorRef::new(&x64, &[600]).unwrap(),
            TensorRef::new(&k64, &[1]).unwrap(),
            TensorRef::new(&i64_, &[1]).unwrap(),
            TensorRef::new(&f64_, &[1]).unwrap(),
            false,
            &mut y64,
        )
        .unwrap();
        let want: Vec<f32> = y64.iter().map(|&v| v as f32).collect();
        assert_eq!(y, want, "{round} {overflow}");
    }
}

/// Training through the wide path: values and gradients are those of float64.
#[test]
fn wide_training_has_float64_gradients() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let n = 300;
    let x: Vec<f32> = xs(n).iter().map(|v| v * 3001.0).collect();
    let dy: Vec<f32> = (0..n).map(|j| (j % 7) as f32 - 3.0).collect();
    let (k, i, f) = ([1.0f32], [15.0f32], [14.0f32]);
    let (mut y, mut dx, mut di, mut df) = (vec![0.0f32; n], vec![0.0f32; n], [0.0f32], [0.0f32]);
    let one = |d| TensorRef::new(d, &[1]).unwrap();
    let s = q
        .forward_backward(
            TensorRef::new(&x, &[n]).unwrap(),
            one(&k),
            one(&i),
            one(&f),
            true,
            &dy,
            &mut y,
            FixedGrads {
                dx: &mut dx,
                di: &mut di,
                df: &mut df,
            },
        )
        .unwrap();
    assert_eq!(s, Screen::Unknown, "a wide pass vouches for nothing");
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let dy64: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
    let (mut y64, mut dx64, mut di64, mut df64) =
        (vec![0.0f64; n], vec![0.0f64; n], [0.0f64], [0.0f64]);
    let one = |d| TensorRef::new(d, &[1]).unwrap();
    q.forward_backward(
        TensorRef::new(&x64, &[n]).unwrap(),
        one(&[1.0]),
        one(&[15.0]),
        one(&[14.0]),
        true,
        &dy64,
        &mut y64,
        FixedGrads {
            dx: &mut dx64,
            di: &mut di64,
            df: &mut df64,
        },
    )
    .unwrap();
    assert_eq!(y, y64.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!(dx, dx64.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!((di[0], df[0]), (di64[0] as f32, df64[0] as f32));
}

/// A type float64 does not hold either (here 60 bits) is an error, not approximate values.
#[test]
fn types_beyond_float64_are_errors() {
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    let x = [0.5f32, 1.25];
    let mut y = [0.0f32; 2];
    let one = |d| TensorRef::new(d, &[1]).unwrap();
    let r = q.forward(
        TensorRef::new(&x, &[2]).unwrap(),
        one(&[1.0]),
        one(&[29.0]),
        one(&[30.0]),
        false,
        &mut y,
    );
    assert!(
        matches!(r, Err(CoreError::TooWide { bits, .. }) if bits == 60.0),
        "{r:?}"
    );
    // Exactly 53 bits is still exact.
    q.forward(
        TensorRef::new(&x, &[2]).unwrap(),
        one(&[1.0]),
        one(&[26.0]),
        one(&[26.0]),
        false,
        &mut y,
    )
    .unwrap();
    assert_eq!(y, x);
}
