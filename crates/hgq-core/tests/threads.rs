//! Seeded stochastic rounding draws its noise from the seed and the element's index, so a pass
//! gives the same bits whatever the number of threads that run it.
mod common;

use common::*;
use hgq_core::{FixedPoint, OverflowMode, RoundMode, Stochastic};

#[test]
fn seeded_rounding_is_the_same_on_1_2_3_and_8_threads() {
    let (rows, cols) = (300, 517);
    let n = rows * cols;
    assert!(n >= hgq_core::kernels::PAR_MIN, "large enough to be split");
    let mut rng = Rng::new(21);
    let x: Vec<f32> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<f32> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    for (round, overflow) in [
        (RoundMode::SRnd, OverflowMode::Sat),
        (RoundMode::SRndConv, OverflowMode::Wrap),
        (RoundMode::SRnd, OverflowMode::WrapSm),
    ] {
        let q = FixedPoint::new(round, overflow)
            .unwrap()
            .with_stochastic(Stochastic::Seeded(77));
        for layout in [Layout::PerElement, Layout::PerColumn, Layout::Scalar] {
            let [k, i, f] = random_bw::<f32>(&mut rng, layout, rows, cols);
            let runs: Vec<Outs<f32>> = on_threads(&[1, 2, 3, 8], || {
                run_fixed(&q, &[rows, cols], &x, &k, &i, &f, true, Some(&dy)).unwrap()
            });
            let unseeded = run_fixed(
                &q.with_stochastic(Stochastic::Reference),
                &[rows, cols],
                &x,
                &k,
                &i,
                &f,
                true,
                Some(&dy),
            )
            .unwrap();
            assert_ne!(
                runs[0].y, unseeded.y,
                "{round} {layout:?}: the noise is drawn"
            );
            for r in &runs[1..] {
                assert_outs_same(&format!("{round} {overflow} {layout:?}"), &runs[0], r);
            }
        }
    }
}

/// `Par` chooses the threads apart from the SIMD level: one thread, a pool of n, or the current
/// pool give the same bits, on the scalar path as on the SIMD one.
#[test]
fn par_is_separate_from_the_simd_level_and_changes_no_bit() {
    use hgq_core::{Par, Path};
    let (rows, cols) = (256, 513);
    let n = rows * cols;
    let mut rng = Rng::new(5);
    let x: Vec<f32> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<f32> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    for layout in [Layout::PerElement, Layout::PerColumn] {
        let [k, i, f] = random_bw::<f32>(&mut rng, layout, rows, cols);
        let run =
            |q: FixedPoint| run_fixed(&q, &[rows, cols], &x, &k, &i, &f, true, Some(&dy)).unwrap();
        let base = run(q);
        for path in [Path::Simd, Path::Scalar] {
            for par in [Par::Seq, Par::Rayon(1), Par::Rayon(3), Par::Rayon(0)] {
                let got = run(q.with_path(path).with_par(par));
                assert_outs_same(&format!("{layout:?} {path:?} {par:?}"), &base, &got);
            }
        }
    }
}
