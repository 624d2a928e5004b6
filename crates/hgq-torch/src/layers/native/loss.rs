//! The loss of the native step: cross entropy over logits, with its own `exp`.
use crate::{Result, TorchError, simd};

/// A batch's labels as class indices, each below `classes` (checked once, when made).
pub(super) struct Labels {
    idx: Vec<usize>,
    classes: usize,
}

impl Labels {
    pub(super) fn new(labels: &[i64], classes: usize) -> Result<Self> {
        let idx = labels
            .iter()
            .map(|&label| {
                usize::try_from(label)
                    .ok()
                    .filter(|&c| c < classes)
                    .ok_or_else(|| TorchError::Invalid {
                        what: "label",
                        why: format!("{label} for {classes} classes"),
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Labels { idx, classes })
    }
}

/// The mean cross entropy of `logits` (`batch x classes`) against `labels`, its gradient
/// with respect to the logits, and how many rows' first largest logit is their label.
pub(super) fn cross_entropy(logits: &[f32], labels: &Labels) -> Result<(f32, Vec<f32>, i64)> {
    let (batch, classes) = (labels.idx.len(), labels.classes);
    if classes == 0 || logits.len() != batch * classes {
        return Err(TorchError::Invalid {
            what: "logits",
            why: format!(
                "{} values for {batch} rows of {classes} classes",
                logits.len()
            ),
        });
    }
    // Each row's first largest logit (a NaN wins), then `exp(v - max)` of all logits in one
    // loop, which vectorizes (a loop per row of ten does not).
    let mut max = Vec::with_capacity(batch);
    let mut d = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let (arg, m) = first_max(row);
        max.push((arg, m));
        d.extend(row.iter().map(|&v| v - m));
    }
    exp_in_place(&mut d);
    let (mut loss, mut correct) = (0.0f32, 0i64);
    let inv = 1.0 / batch as f32;
    for (((row, drow), &c), &(arg, m)) in logits
        .chunks_exact(classes)
        .zip(d.chunks_exact_mut(classes))
        .zip(&labels.idx)
        .zip(&max)
    {
        // The softmax is exp(v - max) over its sum.
        let sum: f32 = drow.iter().sum();
        loss += m + sum.ln() - row[c];
        let scale = inv / sum;
        drow.iter_mut().for_each(|dv| *dv *= scale);
        drow[c] -= inv;
        correct += i64::from(arg == c);
    }
    Ok((loss * inv, d, correct))
}

/// The index and value of the first largest element of a non-empty row, a NaN the largest.
fn first_max(row: &[f32]) -> (usize, f32) {
    if let Some(j) = row.iter().position(|v| v.is_nan()) {
        return (j, row[j]);
    }
    // Selects, not branches: which element is largest is data, not a pattern to predict.
    let (mut arg, mut m) = (0, row[0]);
    for (j, &v) in row.iter().enumerate() {
        let larger = v > m;
        arg = if larger { j } else { arg };
        m = if larger { v } else { m };
    }
    (arg, m)
}

/// `exp(x)` of every element, within 2 ulp of `f32::exp` (Cephes' `expf`: `x = n ln 2 + r`,
/// a polynomial in `r`, times `2^n`), with plain arithmetic that the compiler vectorizes
/// (`f32::exp` is a call per element) at the CPU's widest vectors. Infinities and NaN as
/// `f32::exp`.
fn exp_in_place(x: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds a float32 of magnitude below 2^22 to an integer.
    const ROUND: f32 = 12_582_912.0;
    // Below: 0 (under half the least subnormal); above: infinity (over f32::MAX).
    const LO: f32 = -103.972_08;
    const HI: f32 = 88.722_84;
    // 2^m for an integer m in -126..=127 held in a float32: m + 127 + 2^23 has m + 127 as its
    // low mantissa bits, which the shift moves into the exponent (no float-to-int conversion,
    // whose saturation keeps a loop scalar).
    let pow2 = |m: f32| f32::from_bits((m + 8_388_735.0).to_bits() << 23);
    simd::widest(|| {
        for v in x.iter_mut() {
            let a = *v;
            let t = a.clamp(LO, HI);
            let n = (t * LOG2E + ROUND) - ROUND;
            let r = (t - n * LN2_HI) - n * LN2_LO;
            let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r
                + 4.166_579_6e-2)
                * r
                + 1.666_666_5e-1)
                * r
                + 0.5;
            let e = p * (r * r) + r + 1.0;
            // 2^n (n in -150..=128) as two normal factors: subnormal results round once.
            let half = (n * 0.5 + ROUND) - ROUND;
            let y = (e * pow2(half)) * pow2(n - half);
            *v = if a < LO {
                0.0
            } else if a > HI {
                f32::INFINITY
            } else if a.is_nan() {
                a
            } else {
                y
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    /// `exp_in_place` against `f32::exp` over the whole range, the limits and NaN.
    #[test]
    fn exp_in_place_is_within_two_ulp_of_exp() {
        let mut xs: Vec<f32> = (0..=400_000)
            .map(|j| -100.0 + j as f32 * (190.0 / 400_000.0))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            88.7,
            -87.3,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ]);
        let mut y = xs.clone();
        exp_in_place(&mut y);
        let mut worst = 0u32;
        for (&x, &got) in xs.iter().zip(&y) {
            let want = x.exp();
            if want < f32::MIN_POSITIVE {
                assert!(
                    got == 0.0 || got.to_bits().abs_diff(want.to_bits()) <= 2,
                    "{x}"
                );
            } else if want.is_infinite() {
                assert_eq!(got, f32::INFINITY, "{x}");
            } else {
                let ulp = got.to_bits().abs_diff(want.to_bits());
                worst = worst.max(ulp);
                assert!(ulp <= 2, "exp({x}): {got} against {want}");
            }
        }
        assert!(worst <= 2);
        let mut nan = [f32::NAN];
        exp_in_place(&mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn cross_entropy_is_torchs() -> Result<()> {
        let (batch, classes) = (37, 10);
        let logits = Tensor::randn([batch, classes], (Kind::Float, Device::Cpu)) * 6.0;
        let labels = Tensor::randint(classes, [batch], (Kind::Int64, Device::Cpu));
        let lv: Vec<f32> = Vec::try_from(&logits.reshape([-1]))?;
        let yv: Vec<i64> = Vec::try_from(&labels)?;
        let y = Labels::new(&yv, classes as usize)?;
        let (loss, d, correct) = cross_entropy(&lv, &y)?;
        let x = logits.set_requires_grad(true);
        let want = x.cross_entropy_for_logits(&labels);
        want.backward();
        let want_d: Vec<f32> = Vec::try_from(&x.grad().reshape([-1]))?;
        assert!((loss - want.double_value(&[]) as f32).abs() < 1e-5);
        for (a, b) in d.iter().zip(&want_d) {
            assert!((a - b).abs() < 1e-7, "{a} against {b}");
        }
        let argmax: Vec<i64> = Vec::try_from(&x.argmax(-1, false))?;
        let want_correct = argmax.iter().zip(&yv).filter(|(a, b)| a == b).count() as i64;
        assert_eq!(correct, want_correct);
        assert!(cross_entropy(&lv[1..], &y).is_err());
        assert!(Labels::new(&[0, classes], classes as usize).is_err());
        assert!(Labels::new(&[-1], classes as usize).is_err());
        Ok(())
    }
}
