//! Shared helpers of the kernel tests: a tiny deterministic generator, inputs, and a runner
//! that returns every output of one call.
#![allow(dead_code)]

use hgq_core::{
    CoreError, Element, FixedGrads, FixedPoint, OverflowMode, Real, Result, RoundMode, Screen,
    TensorRef, Upstream,
};

/// The quantizer of a mode pair, or `None` for a pair the constructor refuses: only WRAP_SM
/// with a round mode it does not take (that error is tested in bad_input.rs).
pub fn fixed_or_refused(round: RoundMode, overflow: OverflowMode) -> Option<FixedPoint> {
    let q = FixedPoint::new(round, overflow);
    if let Err(e) = &q {
        assert!(
            overflow == OverflowMode::WrapSm && matches!(e, CoreError::WrapSmRounding(_)),
            "{round} {overflow} refused: {e:?}"
        );
    }
    q.ok()
}

/// xorshift64*: deterministic, no dependencies.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Integer in [lo, hi].
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// A value that exercises the quantizers: ties of every grid, values beyond the ranges,
    /// signed zeros, and plain normal values.
    pub fn x_value(&mut self) -> f64 {
        match self.int(0, 9) {
            0 => self.int(-256, 256) as f64 / 32.0, // grid points and ties
            1 => (self.int(-64, 64) as f64 + 0.5) / 8.0, // ties
            2 => self.normal() * 1000.0,            // far out of range
            3 => [0.0, -0.0][self.int(0, 1) as usize], // signed zeros
            4 => self.normal() * 1e-3,              // small
            _ => self.normal() * 6.0,
        }
    }
}

/// Elements of a storage type from f64 values.
pub fn elems<T: Element>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&a| T::from_c(T::C::from_f64(a))).collect()
}

/// Values of the compute type from f64 values.
pub fn reals<C: Real>(v: &[f64]) -> Vec<C> {
    v.iter().map(|&a| C::from_f64(a)).collect()
}

/// Everything one fixed-point call writes.
#[derive(Debug)]
pub struct Outs<T: Element> {
    pub y: Vec<T>,
    pub dx: Vec<T>,
    pub di: Vec<T::C>,
    pub df: Vec<T::C>,
}

/// A bit-width tensor: shape and values.
#[derive(Clone, Debug)]
pub struct Bw<C> {
    pub shape: Vec<usize>,
    pub v: Vec<C>,
}

impl<C: Real> Bw<C> {
    pub fn new(shape: &[usize], v: Vec<C>) -> Bw<C> {
        Bw {
            shape: shape.to_vec(),
            v,
        }
    }
}

/// Runs `q` on x with k, i, f; with gradients when `dy` is given.
#[allow(clippy::too_many_arguments)]
pub fn run_fixed<T: Element>(
    q: &FixedPoint,
    xs: &[usize],
    x: &[T],
    k: &Bw<T::C>,
    i: &Bw<T::C>,
    f: &Bw<T::C>,
    training: bool,
    dy: Option<&[T]>,
) -> Result<Outs<T>> {
    run_fixed_screened(q, xs, x, k, i, f, training, dy).map(|o| o.0)
}

/// [`run_fixed`] and the [`Screen`] the pass returned.
#[allow(clippy::too_many_arguments)]
pub fn run_fixed_screened<T: Element>(
    q: &FixedPoint,
    xs: &[usize],
    x: &[T],
    k: &Bw<T::C>,
    i: &Bw<T::C>,
    f: &Bw<T::C>,
    training: bool,
    dy: Option<&[T]>,
) -> Result<(Outs<T>, Screen)> {
    let n = x.len();
    let mut y = vec![T::default(); n];
    let xt = TensorRef::new(x, xs)?;
    let kt = TensorRef::new(&k.v, &k.shape)?;
    let it = TensorRef::new(&i.v, &i.shape)?;
    let ft = TensorRef::new(&f.v, &f.shape)?;
    match dy {
        None => {
            let screen = q.forward(xt, kt, it, ft, training, &mut y)?;
            let outs = Outs {
                y,
                dx: vec![],
                di: vec![],
                df: vec![],
            };
            Ok((outs, screen))
        }
        Some(dy) => {
            let mut dx = vec![T::default(); n];
            let mut di = vec![T::C::ZERO; i.v.len()];
            let mut df = vec![T::C::ZERO; f.v.len()];
            let screen = q.forward_backward(
                xt,
                kt,
                it,
                ft,
                training,
                dy,
                &mut y,
                FixedGrads {
                    dx: &mut dx,
                    di: &mut di,
                    df: &mut df,
                },
            )?;
            Ok((Outs { y, dx, di, df }, screen))
        }
    }
}

/// dx, di, df of `FixedPoint::backward` (y left empty).
pub fn run_backward<T: Element>(
    q: &FixedPoint,
    xs: &[usize],
    x: &[T],
    p: [&Bw<T::C>; 3],
    training: bool,
    dy: Upstream<'_, T>,
) -> Outs<T> {
    run_backward_screened(q, xs, x, p, training, dy).0
}

/// [`run_backward`] and the [`Screen`] the pass returned.
pub fn run_backward_screened<T: Element>(
    q: &FixedPoint,
    xs: &[usize],
    x: &[T],
    [k, i, f]: [&Bw<T::C>; 3],
    training: bool,
    dy: Upstream<'_, T>,
) -> (Outs<T>, Screen) {
    let n = x.len();
    let mut dx = vec![T::default(); n];
    let mut di = vec![T::C::ZERO; i.v.len()];
    let mut df = vec![T::C::ZERO; f.v.len()];
    fn t<C: Real>(b: &Bw<C>) -> TensorRef<'_, C> {
        TensorRef::new(&b.v, &b.shape).unwrap()
    }
    let screen = q
        .backward(
            TensorRef::new(x, xs).unwrap(),
            t(k),
            t(i),
            t(f),
            training,
            dy,
            FixedGrads {
                dx: &mut dx,
                di: &mut di,
                df: &mut df,
            },
        )
        .unwrap();
    let outs = Outs {
        y: Vec::new(),
        dx,
        di,
        df,
    };
    (outs, screen)
}

/// The same bits (any two NaNs count as equal: payloads are not part of the contract).
pub fn same_bits(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// Panics with the first index where two buffers differ in bits.
pub fn assert_same<T: Copy, F: Fn(T) -> f64>(what: &str, a: &[T], b: &[T], to: F) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (j, (&u, &v)) in a.iter().zip(b).enumerate() {
        let (u, v) = (to(u), to(v));
        assert!(same_bits(u, v), "{what}[{j}]: {u:e} != {v:e}");
    }
}

/// Compares all outputs of two calls bit for bit.
pub fn assert_outs_same<T: Element>(ctx: &str, a: &Outs<T>, b: &Outs<T>) {
    assert_same(&format!("{ctx} y"), &a.y, &b.y, |v: T| v.to_c().to_f64());
    assert_same(&format!("{ctx} dx"), &a.dx, &b.dx, |v: T| v.to_c().to_f64());
    assert_same(&format!("{ctx} di"), &a.di, &b.di, |v: T::C| v.to_f64());
    assert_same(&format!("{ctx} df"), &a.df, &b.df, |v: T::C| v.to_f64());
}

/// How the bit widths are laid out over an x of shape [rows, cols].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    PerElement,
    PerColumn,
    PerRow,
    Scalar,
    /// k one value, i per column, f per element: three different shapes in one call.
    Mixed,
}

impl Layout {
    pub const ALL: [Layout; 5] = [
        Layout::PerElement,
        Layout::PerColumn,
        Layout::PerRow,
        Layout::Scalar,
        Layout::Mixed,
    ];

    /// Shapes of k, i, f.
    pub fn shapes(self, rows: usize, cols: usize) -> [Vec<usize>; 3] {
        match self {
            Layout::PerElement => [vec![rows, cols], vec![rows, cols], vec![rows, cols]],
            Layout::PerColumn => [vec![1, cols], vec![1, cols], vec![1, cols]],
            Layout::PerRow => [vec![rows, 1], vec![rows, 1], vec![rows, 1]],
            Layout::Scalar => [vec![1], vec![1], vec![1]],
            Layout::Mixed => [vec![1], vec![cols], vec![rows, cols]],
        }
    }
}

/// Random integer bit widths of a layout: k in {0, 1}, i in [-3, 6], f in [-2, 8] (so some
/// elements have no bits at all).
pub fn random_bw<C: Real>(rng: &mut Rng, layout: Layout, rows: usize, cols: usize) -> [Bw<C>; 3] {
    let [ks, is, fs] = layout.shapes(rows, cols);
    let make = |rng: &mut Rng, s: &[usize], lo: i64, hi: i64| -> Bw<C> {
        let n: usize = s.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.int(lo, hi) as f64).collect();
        Bw::new(s, reals(&v))
    };
    [
        make(rng, &ks, 0, 1),
        make(rng, &is, -3, 6),
        make(rng, &fs, -2, 8),
    ]
}

/// `run` inside rayon pools of each of these thread counts, in order.
pub fn on_threads<R: Send>(threads: &[usize], run: impl Fn() -> R + Sync) -> Vec<R> {
    threads
        .iter()
        .map(|&t| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("a thread pool");
            pool.install(&run)
        })
        .collect()
}
