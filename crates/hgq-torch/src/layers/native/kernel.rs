//! The native step of the layers with a kernel, `QDense` and `QConv`: rows of quantized
//! inputs times the quantized kernel, plus the bias, then the activation. A dense layer's rows
//! are its input's positions (one row on 2-D inputs); a convolution's are its input's windows
//! (gathered: im2col), times the kernel in Keras' layout read as `[taps * channels,
//! filters]`. So one forward, one backward and one EBOPs rule serve both: a dense layer is a
//! convolution whose windows are single positions.
use std::sync::Arc;

use hgq_core::fold::lane_sum;
use hgq_core::scratch;
use tch::Tensor;

use super::gemm::product;
use super::windows::{self, Geometry, PAD};
use super::{
    Bits, Input, Pass, Starts, Upstream, VarGrad, bits, not_plain, quantize, quantize_input,
};
use crate::layers::{Activation, Layer, Named, QBase, QConv, QDense};
use crate::{Result, TorchError, host, simd};

/// A layer with a kernel, as the native step runs it.
pub(super) struct KernelLayer<'a> {
    pub(super) base: &'a QBase,
    kernel: &'a Tensor,
    bias: Option<&'a Tensor>,
    kq: &'a Named,
    bq: Option<&'a Named>,
    relu: bool,
    /// A convolution's windows ([`windows::offsets`]); `None`: a dense layer, whose rows are
    /// its input's (one per position).
    windows: Option<&'a [u32]>,
    /// Rows of the product per sample: a dense layer's input positions (1 on 2-D inputs), a
    /// convolution's output positions.
    positions: usize,
    /// Values per row: the dense layer's inputs, a convolution's taps times channels.
    taps: usize,
    /// Channels per tap (a dense layer: its inputs).
    channels: usize,
    units: usize,
    /// The kernel's shape (a convolution's: `[*window, channels, filters]`, read as
    /// `[taps, units]`).
    kernel_shape: Vec<usize>,
    /// hgq2's `parallelization_factor / n_parallel` as a pair, where they differ: the factor
    /// of the EBOPs (of the products alone in a convolution, of the bias's too in a dense
    /// layer).
    scale: Option<(f32, f32)>,
    /// The scale multiplies the bias's EBOPs too (hgq2's dense layers).
    scale_bias: bool,
    /// What the bias's mean bit width counts for in the EBOPs: the positions times the units
    /// (a convolution: the input's positions, as hgq2 counts them).
    bias_count: usize,
}

/// hgq2's `parallelization_factor / n_parallel` where a factor other than `n` was given.
fn scale_of(pf: Option<usize>, n: usize) -> Option<(f32, f32)> {
    pf.filter(|&p| p != n).map(|p| (p as f32, n as f32))
}

impl<'a> KernelLayer<'a> {
    /// A dense layer (on the last axis of its input).
    pub(super) fn dense(l: &'a QDense) -> Self {
        let dims = &l.base.input_dims;
        let positions: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        KernelLayer {
            base: &l.base,
            kernel: &l.kernel,
            bias: l.bias.as_ref(),
            kq: &l.kq,
            bq: l.bq.as_ref(),
            relu: l.activation == Activation::Relu,
            windows: None,
            positions,
            taps: l.in_features,
            channels: l.in_features,
            units: l.units,
            kernel_shape: vec![l.in_features, l.units],
            scale: scale_of(l.parallelization_factor, positions),
            scale_bias: true,
            bias_count: positions * l.units,
        }
    }

    /// A convolution of one group (its windows made at the layer's first native step).
    pub(super) fn conv(l: &'a QConv) -> Result<Self> {
        let rank = l.rank();
        let dims = &l.base.input_dims;
        let out = l.output_dims();
        let windows = match l.native_windows.get() {
            Some(w) => w,
            None => {
                let w = windows::offsets(&Geometry {
                    spatial: &dims[..rank],
                    channels: dims[rank],
                    out: &out[..rank],
                    window: l.kernel_size(),
                    strides: l.strides(),
                    dilation: Some(l.dilation()),
                    pads: &l.pads,
                })?;
                l.native_windows.get_or_init(|| w)
            }
        };
        let (n, pf) = (l.n_parallel(), l.parallelization_factor());
        let taps: usize = l.kernel_size().iter().product();
        Ok(KernelLayer {
            base: &l.base,
            kernel: l.kernel(),
            bias: l.bias(),
            kq: l.kq(),
            bq: l.bq(),
            relu: l.activation() == Activation::Relu,
            windows: Some(windows),
            positions: n,
            taps: taps * dims[rank],
            channels: dims[rank],
            units: l.filters(),
            kernel_shape: l
                .kernel_size()
                .iter()
                .copied()
                .chain([dims[rank], l.filters()])
                .collect(),
            scale: scale_of(pf, n),
            scale_bias: false,
            bias_count: dims[..rank].iter().product::<usize>() * l.filters(),
        })
    }

    /// The kernel and the bias.
    pub(super) fn weights(&self) -> impl Iterator<Item = &'a Tensor> {
        std::iter::once(self.kernel).chain(self.bias)
    }

    /// The quantizers: input, kernel, bias.
    pub(super) fn quantizers(&self) -> [Option<&'a Named>; 3] {
        [self.base.iq.as_ref(), Some(self.kq), self.bq]
    }

    fn input_quantizer(&self) -> Result<&'a Named> {
        self.base.iq.as_ref().ok_or_else(|| {
            TorchError::Unsupported(format!(
                "the native training step: {} has no input quantizer",
                self.base.name
            ))
        })
    }

    /// Positions per window (a dense layer: one).
    fn window_len(&self) -> usize {
        (self.taps / self.channels.max(1)).max(1)
    }

    fn sample(&self) -> usize {
        super::sample(self.base)
    }

    fn input_shape(&self, batch: usize) -> Vec<usize> {
        super::input_shape(self.base, batch)
    }

    /// The layer's training forward on host memory; its bit widths and EBOPs come after
    /// ([`Self::ebops`]), once the input quantizer's tracking is finished.
    pub(super) fn forward(&self, x: Input<'_>, batch: usize) -> Result<KernelPass> {
        let (taps, units) = (self.taps, self.units);
        let iq = self.input_quantizer()?;
        let kernel = host::slice(self.kernel).ok_or_else(|| not_plain("the kernel"))?;
        let (xq, iq_pass) = quantize_input(iq, x, &self.input_shape(batch))?;
        let rows = match self.windows {
            None => xq,
            Some(w) => {
                let cols = windows::gather(&xq, w, self.channels, self.sample());
                scratch::give(xq);
                cols
            }
        };
        // The kernel and bias are the same on every data-parallel process: their tracking
        // needs no collective.
        let local = hgq_core::sync::suspend();
        let (kq, kq_pass) = quantize(self.kq, kernel, &self.kernel_shape)?;
        let (bq_v, bq_pass) = match (self.bias, self.bq) {
            (Some(b), Some(bq)) => {
                let bias = host::slice(b).ok_or_else(|| not_plain("the bias"))?;
                let (v, pass) = quantize(bq, bias, &[units])?;
                (Some(v), Some(pass))
            }
            _ => (None, None),
        };
        drop(local);
        let m = batch * self.positions;
        let mut z = product((m, taps, units), (&rows, taps, 1), (&kq, units, 1))?;
        bias_act(&mut z, bq_v.as_deref(), self.relu);
        if let Some(v) = bq_v {
            scratch::give(v);
        }
        Ok(KernelPass {
            batch,
            rows,
            kq,
            a: Arc::new(z),
            iq: iq_pass,
            kq_pass,
            bq_pass,
            bits: [None, None, None],
            ker_rows: Vec::new(),
            in_rows: Vec::new(),
        })
    }

    /// The layer's EBOPs as the autograd step computes them (float32), from its quantizers'
    /// bit widths now, which `p` keeps for the backward.
    pub(super) fn ebops(&self, p: &mut KernelPass) -> Result<f32> {
        let units = self.units;
        let b_in = bits(self.input_quantizer()?, &self.input_shape(1))?;
        let b_ker = bits(self.kq, &self.kernel_shape)?;
        let b_b = self.bq.map(|bq| bits(bq, &[units])).transpose()?;
        // sum(conv(bits_in, bits_kernel)) (a dense layer: bits_in @ bits_kernel) as the sum
        // over the kernel's rows of the input's bit widths under them (summed over the
        // windows) times the row's bit widths, + mean(bits_bias) * bias_count, in float32 as
        // torch does (integers: exact in any order below 2^24).
        let ker_rows: Vec<f32> = b_ker
            .full()
            .chunks_exact(units)
            .map(|row| lane_sum(row, |v| v))
            .collect();
        let in_rows = self.window_sums(b_in.full());
        let mut e: f32 = 0.0;
        for (&bi, &row) in in_rows.iter().zip(&ker_rows) {
            e += bi * row;
        }
        let scaled = |e: f32| self.scale.map_or(e, |(pf, n)| e * pf / n);
        if !self.scale_bias {
            e = scaled(e);
        }
        if let Some(bb) = &b_b {
            let mean = bb.full().iter().sum::<f32>() / units as f32;
            e += mean * self.bias_count as f32;
        }
        if self.scale_bias {
            e = scaled(e);
        }
        p.bits = [Some(b_in), Some(b_ker), b_b];
        p.ker_rows = ker_rows;
        p.in_rows = in_rows;
        Ok(e)
    }

    /// For each row of the kernel, the input's values that meet it summed over the windows
    /// (a dense layer: over its input's positions).
    fn window_sums(&self, x: &[f32]) -> Vec<f32> {
        let Some(w) = self.windows else {
            let mut sums = vec![0.0f32; self.taps];
            for row in x.chunks_exact(self.taps) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            return sums;
        };
        let c = self.channels;
        let mut sums = vec![0.0f32; self.taps];
        for window in w.chunks_exact(self.window_len()) {
            for (&off, s) in window.iter().zip(sums.chunks_exact_mut(c)) {
                if off != PAD {
                    let off = off as usize;
                    s.iter_mut()
                        .zip(&x[off..off + c])
                        .for_each(|(s, &v)| *s += v);
                }
            }
        }
        sums
    }

    /// The adjoint of [`Self::window_sums`]: for each input value, the sum of `per_row` over
    /// the kernel's rows that meet it.
    fn window_spread(&self, per_row: &[f32]) -> Vec<f32> {
        let Some(w) = self.windows else {
            return per_row.repeat(self.positions);
        };
        let c = self.channels;
        let mut d = vec![0.0f32; self.sample()];
        for window in w.chunks_exact(self.window_len()) {
            for (&off, r) in window.iter().zip(per_row.chunks_exact(c)) {
                if off != PAD {
                    let off = off as usize;
                    d[off..off + c]
                        .iter_mut()
                        .zip(r)
                        .for_each(|(d, &v)| *d += v);
                }
            }
        }
        d
    }

    /// The layer's backward of the data loss for upstream `da` (of its output): `dx` (of its
    /// input), every trainable variable's gradient pushed to `grads`, and where its quantizers'
    /// variables start there (the EBOPs' and regularizers' terms come in [`Self::extra_grads`]).
    pub(super) fn backward(
        &self,
        p: &KernelPass,
        mut da: Vec<f32>,
        grads: &mut Vec<VarGrad>,
    ) -> Result<(Vec<f32>, Starts)> {
        let (taps, units) = (self.taps, self.units);
        let m = p.batch * self.positions;
        let relu = self.relu.then_some(&p.a[..]);
        let mut db = p.bq_pass.as_ref().map(|_| vec![0.0f32; units]);
        bias_act_backward(&mut da, relu, db.as_deref_mut());
        let dz = da;
        // d kq = rows^T dz; d rows = dz kq^T; d bq = the column sums of dz.
        let dkq = product((taps, m, units), (&p.rows, 1, taps), (&dz, units, 1))?;
        let drows = product((m, units, taps), (&dz, units, 1), (&p.kq, 1, units))?;
        let dxq = match self.windows {
            None => drows,
            Some(w) => {
                let d = windows::scatter(&drows, w, self.channels, self.sample());
                scratch::give(drows);
                d
            }
        };
        // The passes write dx and every gradient whole: buffers recycled, not zeroed.
        let mut dx = scratch::elements(p.batch * self.sample());
        let g_iq = p.iq.backward(&dxq, &mut dx)?;
        let mut dkernel = scratch::elements(taps * units);
        let g_kq = p.kq_pass.backward(&dkq, &mut dkernel)?;
        for v in [dz, dkq, dxq] {
            scratch::give(v);
        }
        grads.push((self.kernel.shallow_clone(), dkernel, None));
        let mut g_bq = None;
        if let (Some(b), Some(pass), Some(db)) = (self.bias, &p.bq_pass, db) {
            let mut dbias = scratch::elements(units);
            g_bq = Some(pass.backward(&db, &mut dbias)?);
            grads.push((b.shallow_clone(), dbias, None));
        }
        let mut starts = [None; 3];
        let pass_grads = [Some(g_iq), Some(g_kq), g_bq];
        for ((q, g), at) in self
            .quantizers()
            .into_iter()
            .zip(pass_grads)
            .zip(&mut starts)
        {
            if let (Some(q), Some(g)) = (q, g) {
                *at = Some(super::pass_grads(q, g, grads));
            }
        }
        Ok((dx, starts))
    }

    /// Adds the EBOPs' gradients (times `beta`) and the regularizers' to those of the
    /// quantizers' variables in `grads` (from `at`, [`Self::backward`]'s); the regularization
    /// losses (their values and gradients from one pass) to `reg`.
    pub(super) fn extra_grads(
        &self,
        p: &KernelPass,
        at: Starts,
        grads: &mut [VarGrad],
        reg: &mut f32,
    ) -> Result<()> {
        let up = self.ebops_upstream(p)?;
        for ((q, at), (bits, up)) in self
            .quantizers()
            .into_iter()
            .zip(at)
            .zip(p.bits.iter().zip(up))
        {
            if let (Some(q), Some(at)) = (q, at) {
                super::extra_grads(q, bits.as_ref().zip(up), grads, at, reg)?;
            }
        }
        Ok(())
    }

    /// The gradient of `beta * ebops` with respect to each quantizer's bit widths (their
    /// bit-width shapes): d/dbits_in = beta * the kernel's row sums under each input value
    /// (a dense layer: the row sums), d/dbits_kernel = beta * the input's window sums (per
    /// row), d/dbits_bias = beta * bias_count / units; by hgq2's scale where it applies.
    fn ebops_upstream(&self, p: &KernelPass) -> Result<[Option<Upstream>; 3]> {
        let (taps, units) = (self.taps, self.units);
        let beta = self.base.beta.get() as f32;
        let g = match self.scale {
            Some((pf, n)) => beta * pf / n,
            None => beta,
        };
        let [Some(b_in), Some(b_ker), b_b] = &p.bits else {
            return Err(TorchError::Kernel(
                "a layer pass without its bit widths".into(),
            ));
        };
        let mut d_in = self.window_spread(&p.ker_rows);
        d_in.iter_mut().for_each(|v| *v *= g);
        let rows: Vec<f32> = p.in_rows.iter().map(|&b| g * b).collect();
        let up_in = b_in.reduce(d_in, &self.input_shape(1))?;
        // Per-weight bit widths take the upstream as one value per row; bit widths shared
        // over weights sum it over them, spelled out.
        let up_ker = if b_ker.broadcast.is_none() {
            Upstream::Rows(rows)
        } else {
            let mut d_ker = vec![0.0f32; taps * units];
            for (row, &u) in d_ker.chunks_exact_mut(units).zip(&rows) {
                row.fill(u);
            }
            Upstream::Each(b_ker.reduce(d_ker, &self.kernel_shape)?)
        };
        let up_b = match b_b {
            Some(bb) => {
                let gb = if self.scale_bias { g } else { beta };
                let d = vec![gb * self.bias_count as f32 / units as f32; units];
                Some(Upstream::Each(bb.reduce(d, &[units])?))
            }
            None => None,
        };
        Ok([Some(Upstream::Each(up_in)), Some(up_ker), up_b])
    }
}

/// What a kernel layer's forward keeps for its backward.
pub(super) struct KernelPass {
    batch: usize,
    /// The product's rows: the quantized input (dense), its windows (convolution).
    rows: Vec<f32>,
    kq: Vec<f32>,
    /// The output, after the activation (the next layer's input pass keeps it too).
    pub(super) a: Arc<Vec<f32>>,
    iq: Pass,
    kq_pass: Pass,
    bq_pass: Option<Pass>,
    bits: [Option<Bits>; 3],
    /// The row sums of the kernel's bit widths (the EBOPs' and their gradient's).
    ker_rows: Vec<f32>,
    /// The input's bit widths under each row of the kernel, summed over the windows.
    in_rows: Vec<f32>,
}

impl KernelPass {
    /// Gives the pass's buffers back to [`scratch`] for the next step (the output only where
    /// no pass above still holds it).
    pub(super) fn recycle(self) {
        for pass in [Some(self.iq), Some(self.kq_pass), self.bq_pass]
            .into_iter()
            .flatten()
        {
            pass.recycle();
        }
        scratch::give(self.rows);
        scratch::give(self.kq);
        if let Ok(a) = Arc::try_unwrap(self.a) {
            scratch::give(a);
        }
    }
}

/// `z = act(z + bias)` for each row of `z` (`bias`: one value per column), one pass at the
/// CPU's widest vectors; `relu`: the activation is relu, else linear. Each element is the
/// product's sum plus its bias, rounded once, as a product that starts from the bias adds it.
pub(super) fn bias_act(z: &mut [f32], bias: Option<&[f32]>, relu: bool) {
    // One loop per case, the activation not a value read per element (which keeps a loop
    // scalar).
    fn rows(z: &mut [f32], b: &[f32], act: impl Fn(f32) -> f32) {
        simd::widest(|| {
            for row in z.chunks_exact_mut(b.len()) {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = act(*v + b);
                }
            }
        })
    }
    match (bias, relu) {
        (Some(b), true) if !b.is_empty() => rows(z, b, |v| v.max(0.0)),
        (Some(b), false) if !b.is_empty() => rows(z, b, |v| v),
        (_, true) => simd::widest(|| z.iter_mut().for_each(|v| *v = v.max(0.0))),
        _ => {}
    }
}

/// The backward of [`bias_act`] for upstream `d` (of its output), in place: `d` masked by
/// relu's gradient where `relu_out` (relu's output) is given, and its column sums (the bias's
/// gradient, rows added in order) added to `db` where given.
pub(super) fn bias_act_backward(d: &mut [f32], relu_out: Option<&[f32]>, db: Option<&mut [f32]>) {
    let mask = |d: f32, a: f32| if a > 0.0 { d } else { 0.0 };
    match (relu_out, db) {
        (Some(a), Some(db)) if !db.is_empty() => simd::widest(|| {
            let units = db.len();
            for (row, a) in d.chunks_exact_mut(units).zip(a.chunks_exact(units)) {
                for ((v, &a), s) in row.iter_mut().zip(a).zip(db.iter_mut()) {
                    *v = mask(*v, a);
                    *s += *v;
                }
            }
        }),
        (None, Some(db)) if !db.is_empty() => simd::widest(|| {
            for row in d.chunks_exact(db.len()) {
                db.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
        }),
        (Some(a), _) => simd::widest(|| {
            d.iter_mut().zip(a).for_each(|(v, &a)| *v = mask(*v, a));
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused bias, activation and their backward are the plain per-element formulas:
    /// the sum plus the bias rounded once, relu's mask, the bias's gradient as the column
    /// sums added row after row; every case of bias and activation.
    #[test]
    fn bias_and_activation_are_the_plain_formulas() {
        let (rows, units) = (37, 19);
        let wave = |len: usize, f: f32| -> Vec<f32> {
            (0..len).map(|j| ((j as f32) * f).sin() * 3.0).collect()
        };
        let (z0, bias, up) = (
            wave(rows * units, 0.37),
            wave(units, 1.3),
            wave(rows * units, 0.71),
        );
        for (with_bias, relu) in [(true, true), (true, false), (false, true), (false, false)] {
            let b = with_bias.then_some(&bias[..]);
            let mut z = z0.clone();
            bias_act(&mut z, b, relu);
            let want: Vec<f32> = z0
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    let s = if with_bias { v + bias[j % units] } else { v };
                    if relu { s.max(0.0) } else { s }
                })
                .collect();
            assert_eq!(z, want, "bias {with_bias}, relu {relu}");
            let mut d = up.clone();
            let mut db = with_bias.then(|| vec![0.0f32; units]);
            bias_act_backward(&mut d, relu.then_some(&z[..]), db.as_deref_mut());
            let want_d: Vec<f32> = up
                .iter()
                .zip(&z)
                .map(|(&g, &a)| if !relu || a > 0.0 { g } else { 0.0 })
                .collect();
            assert_eq!(d, want_d, "bias {with_bias}, relu {relu}");
            if let Some(db) = db {
                let mut want_db = vec![0.0f32; units];
                for (j, &g) in want_d.iter().enumerate() {
                    want_db[j % units] += g;
                }
                assert_eq!(db, want_db);
            }
        }
        // No columns: nothing to add, and no panic.
        let mut empty: Vec<f32> = Vec::new();
        bias_act(&mut empty, Some(&[]), true);
        bias_act_backward(&mut empty, Some(&[]), Some(&mut []));
    }
}
