//! The native step of `QPool` (max or average; a window with any strides and padding, or
//! global): the input quantizer's pass, the pooling and its backward, `sum(bits_in)` as its
//! EBOPs.
use std::sync::Arc;

use hgq_core::scratch;

use super::windows::{self, Geometry, PAD};
use super::{Bits, Input, Pass, Upstream, VarGrad, bits, quantize_input};
use crate::layers::{Layer, Named, PoolKind, QBase, QPool};
use crate::{Result, TorchError};

/// A pooling as the native step runs it.
pub(super) struct PoolLayer<'a> {
    pub(super) base: &'a QBase,
    kind: PoolKind,
    /// A global pooling: its maximum is torch's `amax`, whose gradient equal maxima share.
    global: bool,
    /// [`windows::offsets`] of the pooling's windows.
    windows: &'a [u32],
    /// Positions per window.
    window: usize,
    channels: usize,
}

impl<'a> PoolLayer<'a> {
    /// A pooling (a global one: one window over all positions).
    pub(super) fn new(l: &'a QPool) -> Result<Self> {
        let rank = l.rank();
        let dims = &l.base.input_dims;
        let spatial = &dims[..rank];
        let window = l.pool_size().unwrap_or(spatial);
        let windows = match l.native_windows.get() {
            Some(w) => w,
            None => {
                let out = l.output_dims();
                // A global pooling: one window of every position, without padding.
                let (ones, zeros) = (vec![1; rank], vec![(0, 0); rank]);
                let (out, strides, pads) = match l.pool_size() {
                    Some(_) => (&out[..rank], l.strides(), &l.pads[..]),
                    None => (&ones[..], &ones[..], &zeros[..]),
                };
                let w = windows::offsets(&Geometry {
                    spatial,
                    channels: dims[rank],
                    out,
                    window,
                    strides,
                    dilation: None,
                    pads,
                })?;
                l.native_windows.get_or_init(|| w)
            }
        };
        Ok(PoolLayer {
            base: &l.base,
            kind: l.kind(),
            global: l.pool_size().is_none(),
            windows,
            window: window.iter().product::<usize>().max(1),
            channels: dims[rank],
        })
    }

    /// The input quantizer.
    pub(super) fn quantizers(&self) -> [Option<&'a Named>; 1] {
        [self.base.iq.as_ref()]
    }

    fn sample(&self) -> usize {
        super::sample(self.base)
    }

    fn input_shape(&self, batch: usize) -> Vec<usize> {
        super::input_shape(self.base, batch)
    }

    /// The input quantizer.
    fn input_quantizer(&self) -> Result<&'a Named> {
        self.base.iq.as_ref().ok_or_else(|| {
            TorchError::Unsupported(format!(
                "the native training step: {} has no input quantizer",
                self.base.name
            ))
        })
    }

    /// The training forward on host memory (the EBOPs after it: [`Self::ebops`]).
    pub(super) fn forward(&self, x: Input<'_>, batch: usize) -> Result<PoolPass> {
        let iq = self.input_quantizer()?;
        let (xq, iq_pass) = quantize_input(iq, x, &self.input_shape(batch))?;
        let (c, sample) = (self.channels, self.sample());
        let outputs = self.windows.len() / self.window * c;
        let mut y = scratch::elements::<f32>(batch * outputs);
        let mut arg = Vec::new();
        match self.kind {
            PoolKind::Max => {
                // Written whole: every window's offsets start at its first tap.
                arg = scratch::indices(batch * outputs);
                max_all(self, &xq, &mut y, &mut arg, outputs);
            }
            PoolKind::Average => {
                for (xs, ys) in xq.chunks_exact(sample).zip(y.chunks_exact_mut(outputs)) {
                    self.average_sample(xs, ys);
                }
            }
        }
        // A global maximum's backward finds the values equal to it.
        let kept = if self.global && self.kind == PoolKind::Max {
            Some(xq)
        } else {
            scratch::give(xq);
            None
        };
        Ok(PoolPass {
            batch,
            arg,
            xq: kept,
            a: Arc::new(y),
            iq: iq_pass,
            bits: None,
        })
    }

    /// The EBOPs, `sum(bits_in)` of one sample, from the input quantizer's bit widths now,
    /// which `p` keeps for the backward.
    pub(super) fn ebops(&self, p: &mut PoolPass) -> Result<f32> {
        let b_in = bits(self.input_quantizer()?, &self.input_shape(1))?;
        // sum(bits_in), in order (integers: exact below 2^24).
        let e = b_in.full().iter().fold(0.0f32, |s, &v| s + v);
        p.bits = Some(b_in);
        Ok(e)
    }

    /// One sample's averages: the window's input values summed in row-major order, divided
    /// by how many there are (padding is not counted, as Keras' and torch's averages).
    fn average_sample(&self, xs: &[f32], ys: &mut [f32]) {
        let c = self.channels;
        for (window, y) in self
            .windows
            .chunks_exact(self.window)
            .zip(ys.chunks_exact_mut(c))
        {
            y.fill(0.0);
            let mut count = 0u32;
            for &off in window.iter().filter(|&&o| o != PAD) {
                let off = off as usize;
                y.iter_mut()
                    .zip(&xs[off..off + c])
                    .for_each(|(s, &v)| *s += v);
                count += 1;
            }
            let n = count.max(1) as f32;
            y.iter_mut().for_each(|s| *s /= n);
        }
    }

    /// The backward of the data loss for upstream `da` (of the output): `dx` (of the input),
    /// the input quantizer's gradients pushed to `grads` and where they start (the EBOPs'
    /// and regularizers' terms come in [`Self::extra_grads`]).
    pub(super) fn backward(
        &self,
        p: &PoolPass,
        da: Vec<f32>,
        grads: &mut Vec<VarGrad>,
    ) -> Result<(Vec<f32>, Option<usize>)> {
        let (c, sample) = (self.channels, self.sample());
        let outputs = self.windows.len() / self.window * c;
        let mut dxq = scratch::elements::<f32>(p.batch * sample);
        dxq.fill(0.0);
        match (self.kind, &p.xq) {
            // torch's `amax`: `(d / count) * mask` over the values equal to the maximum.
            (PoolKind::Max, Some(xq)) => {
                for (((ds, dx), xs), ys) in da
                    .chunks_exact(outputs)
                    .zip(dxq.chunks_exact_mut(sample))
                    .zip(xq.chunks_exact(sample))
                    .zip(p.a.chunks_exact(outputs))
                {
                    for (j, (&d, &m)) in ds.iter().zip(ys).enumerate() {
                        let at = |o: u32| o as usize + j;
                        let count = self.windows.iter().filter(|&&o| xs[at(o)] == m).count();
                        let g = d / count as f32;
                        for &o in self.windows {
                            dx[at(o)] += g * if xs[at(o)] == m { 1.0 } else { 0.0 };
                        }
                    }
                }
            }
            (PoolKind::Max, None) => {
                for ((ds, dx), args) in da
                    .chunks_exact(outputs)
                    .zip(dxq.chunks_exact_mut(sample))
                    .zip(p.arg.chunks_exact(outputs))
                {
                    for (&d, &a) in ds.iter().zip(args) {
                        if a != PAD {
                            dx[a as usize] += d;
                        }
                    }
                }
            }
            (PoolKind::Average, _) => {
                for (ds, dx) in da.chunks_exact(outputs).zip(dxq.chunks_exact_mut(sample)) {
                    for (window, d) in self
                        .windows
                        .chunks_exact(self.window)
                        .zip(ds.chunks_exact(c))
                    {
                        let n = window.iter().filter(|&&o| o != PAD).count().max(1) as f32;
                        for &off in window.iter().filter(|&&o| o != PAD) {
                            let off = off as usize;
                            dx[off..off + c]
                                .iter_mut()
                                .zip(d)
                                .for_each(|(s, &g)| *s += g / n);
                        }
                    }
                }
            }
        }
        scratch::give(da);
        let mut dx = scratch::elements(p.batch * sample);
        let g = p.iq.backward(&dxq, &mut dx)?;
        scratch::give(dxq);
        let at = self
            .base
            .iq
            .as_ref()
            .map(|q| super::pass_grads(q, g, grads));
        Ok((dx, at))
    }

    /// Adds the EBOPs' gradient (times `beta`) and the regularizers' to those of the input
    /// quantizer's variables in `grads` (from `at`, [`Self::backward`]'s); the regularization
    /// losses to `reg`.
    pub(super) fn extra_grads(
        &self,
        p: &PoolPass,
        at: Option<usize>,
        grads: &mut [VarGrad],
        reg: &mut f32,
    ) -> Result<()> {
        let (Some(q), Some(at)) = (self.base.iq.as_ref(), at) else {
            return Ok(());
        };
        let Some(bits) = &p.bits else {
            return Err(TorchError::Kernel(
                "a layer pass without its bit widths".into(),
            ));
        };
        // d(beta * sum(bits_in)) / dbits_in = beta for each value of a sample.
        let beta = self.base.beta.get() as f32;
        let up = bits.reduce(vec![beta; self.sample()], &self.input_shape(1))?;
        super::extra_grads(q, Some((bits, Upstream::Each(up))), grads, at, reg)
    }
}

/// What a pooling's forward keeps for its backward.
pub(super) struct PoolPass {
    batch: usize,
    /// Max: the offset in its sample of each output's value.
    arg: Vec<u32>,
    /// A global maximum's quantized input.
    xq: Option<Vec<f32>>,
    /// The output (the next layer's input pass keeps it too).
    pub(super) a: Arc<Vec<f32>>,
    iq: Pass,
    /// The input quantizer's bit widths, from [`PoolLayer::ebops`].
    bits: Option<Bits>,
}

impl PoolPass {
    /// Gives the pass's buffers back to [`scratch`] for the next step.
    pub(super) fn recycle(self) {
        self.iq.recycle();
        scratch::give(self.arg);
        if let Some(xq) = self.xq {
            scratch::give(xq);
        }
        if let Ok(a) = Arc::try_unwrap(self.a) {
            scratch::give(a);
        }
    }
}

hgq_core::simd::avx2_fn! {
    /// Every sample's maxima (`outputs` per sample) under torch's rule: the first largest value
    /// of the window in row-major order (a NaN replaces any value before it), its offset kept
    /// for the backward; padding is not a value. At AVX2's vectors (the selects of a channel
    /// loop compiled for the baseline are branches).
    fn max_all(pool: &PoolLayer<'_>, xq: &[f32], y: &mut [f32], arg: &mut [u32], outputs: usize) {
        let (c, sample) = (pool.channels, pool.sample().max(1));
        for ((xs, ys), args) in xq
            .chunks_exact(sample)
            .zip(y.chunks_exact_mut(outputs))
            .zip(arg.chunks_exact_mut(outputs))
        {
            for ((window, y), arg) in pool
                .windows
                .chunks_exact(pool.window)
                .zip(ys.chunks_exact_mut(c))
                .zip(args.chunks_exact_mut(c))
            {
                y.fill(f32::NEG_INFINITY);
                // Torch starts from the window's first position (the maximum of a window of
                // -inf alone); a window of padding alone has no value to point at.
                let taps = window.iter().filter(|&&o| o != PAD);
                let first = taps.clone().next().copied().unwrap_or(PAD);
                for (j, a) in arg.iter_mut().enumerate() {
                    *a = if first == PAD { PAD } else { first + j as u32 };
                }
                for &off in taps {
                    let o = off as usize;
                    max_update(y, arg, &xs[o..o + c], off);
                }
            }
        }
    }
}

/// One tap of a window for every channel: `x` (the tap's channels, the first at offset `at`)
/// replaces the maxima `y` and their offsets `arg` where it is larger or NaN; whole vectors of
/// eight channels, then the rest.
#[inline(always)]
fn max_update(y: &mut [f32], arg: &mut [u32], x: &[f32], at: u32) {
    /// Selects, not a branch (which value is largest is data), and no short circuit: on
    /// lanes of local arrays this compiles to compare and blend (through references into
    /// the outputs, each lane was a branch).
    #[inline(always)]
    fn one(m: &mut f32, a: &mut u32, v: f32, at: u32) {
        let take = (v > *m) | v.is_nan();
        *m = if take { v } else { *m };
        *a = if take { at } else { *a };
    }
    let (yv, yt) = y.as_chunks_mut::<8>();
    let (av, at_tail) = arg.as_chunks_mut::<8>();
    let (xv, xt) = x.as_chunks::<8>();
    for (k, ((y8, a8), x8)) in yv.iter_mut().zip(av.iter_mut()).zip(xv).enumerate() {
        // Whole vectors in locals.
        let (mut m, mut a) = (*y8, *a8);
        let base = at + (k * 8) as u32;
        for l in 0..8 {
            one(&mut m[l], &mut a[l], x8[l], base + l as u32);
        }
        (*y8, *a8) = (m, a);
    }
    let base = at + (xv.len() * 8) as u32;
    for (l, ((m, a), &v)) in yt.iter_mut().zip(at_tail.iter_mut()).zip(xt).enumerate() {
        one(m, a, v, base + l as u32);
    }
}
