//! Outputs of 2^21 elements and more leave the passes through streaming stores (computed in
//! blocks, then moved out). They must be the bits of the same work done in pieces small enough
//! to be stored directly: y, dx and per-element bit-width gradients exactly; with bit widths
//! shared over rows (a reduction) y and dx, whose values do not depend on the sum order.
mod common;

use common::*;
use hgq_core::{Element, FixedPoint, OverflowMode, Path, Real, RoundMode};

/// Rows of x; with `COLS` columns, 2^21 elements: the smallest streamed size.
const ROWS: usize = 512;
const COLS: usize = 4096;
/// The reference runs in this many row pieces (each 2^19 elements, stored directly).
const PIECES: usize = 4;

fn rows_of<C: Clone>(v: &[C], per_row: usize, r0: usize, r1: usize) -> Vec<C> {
    v[r0 * per_row..r1 * per_row].to_vec()
}

fn check<T: Element>(q: FixedPoint, layout: Layout, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = ROWS * COLS;
    let x: Vec<T> = elems(&(0..n).map(|_| rng.x_value()).collect::<Vec<_>>());
    let dy: Vec<T> = elems(&(0..n).map(|_| rng.normal()).collect::<Vec<_>>());
    let [k, i, f] = random_bw::<T::C>(&mut rng, layout, ROWS, COLS);
    let elementwise = layout == Layout::PerElement;
    for training in [false, true] {
        for with_grad in [false, true] {
            let ctx = format!(
                "{}/{} {layout:?} training={training} grad={with_grad}",
                q.round_mode(),
                q.overflow_mode()
            );
            let d = with_grad.then_some(dy.as_slice());
            let whole = run_fixed(&q, &[ROWS, COLS], &x, &k, &i, &f, training, d).unwrap();
            let rows = ROWS / PIECES;
            let mut parts: Outs<T> = Outs {
                y: Vec::new(),
                dx: Vec::new(),
                di: Vec::new(),
                df: Vec::new(),
            };
            for p in 0..PIECES {
                let (r0, r1) = (p * rows, (p + 1) * rows);
                // Per-element bit widths are cut with x; shared ones are passed whole.
                let cut = |b: &Bw<T::C>| -> Bw<T::C> {
                    if b.shape.len() == 2 && b.shape[0] == ROWS {
                        Bw::new(&[rows, b.shape[1]], rows_of(&b.v, b.shape[1], r0, r1))
                    } else {
                        b.clone()
                    }
                };
                let xs = rows_of(&x, COLS, r0, r1);
                let dys = rows_of(&dy, COLS, r0, r1);
                let d = with_grad.then_some(dys.as_slice());
                let (kc, ic, fc) = (cut(&k), cut(&i), cut(&f));
                let o = run_fixed(&q, &[rows, COLS], &xs, &kc, &ic, &fc, training, d).unwrap();
                parts.y.extend(o.y);
                parts.dx.extend(o.dx);
                parts.di.extend(o.di);
                parts.df.extend(o.df);
            }
            assert_same(&format!("{ctx} y"), &whole.y, &parts.y, |v: T| {
                v.to_c().to_f64()
            });
            assert_same(&format!("{ctx} dx"), &whole.dx, &parts.dx, |v: T| {
                v.to_c().to_f64()
            });
            if elementwise {
                assert_same(&format!("{ctx} di"), &whole.di, &parts.di, |v: T::C| {
                    v.to_f64()
                });
                assert_same(&format!("{ctx} df"), &whole.df, &parts.df, |v: T::C| {
                    v.to_f64()
                });
            }
        }
    }
}

#[test]
fn streamed_outputs_are_the_bits_of_stored_ones() {
    let cases = [
        (RoundMode::Rnd, OverflowMode::Sat, Layout::PerElement),
        (RoundMode::RndConv, OverflowMode::Wrap, Layout::PerElement),
        (RoundMode::Trn, OverflowMode::SatSym, Layout::Mixed),
        (RoundMode::Rnd, OverflowMode::Sat, Layout::PerColumn),
    ];
    for (s, (round, overflow, layout)) in cases.into_iter().enumerate() {
        for path in [Path::Simd, Path::Scalar] {
            let q = FixedPoint::new(round, overflow).unwrap().with_path(path);
            check::<f32>(q, layout, s as u64);
        }
        let q = FixedPoint::new(round, overflow).unwrap();
        check::<f64>(q, layout, 10 + s as u64);
    }
}
