//! The training step of a [`Sequential`] without autograd, on the CPU.
//!
//! A step of the small networks HGQ trains is a few hundred tiny tensor operations through
//! autograd; their dispatch, not their arithmetic, is the step's time. Here the same step is
//! plain loops over the `VarStore`'s memory: per layer the quantizers' fused passes
//! (hgq-core's kernels, kept for their backward: [`SavedPass`]), one GEMM forward and two
//! backward (libtorch's MKL, else `matrixmultiply`), the EBOPs and their gradients through the
//! bit widths ([`Dual`]: the quantizer logic's own arithmetic, differentiated), the cross
//! entropy, the regularizers, then Keras' Adam and the constraints in place. The quantizer
//! logic is the one every backend runs (hgq-core's `Quantizer` on its CPU backend, variables
//! read where the `VarStore` keeps them), so values are those of the autograd step up to the
//! order of float32 sums in the matrix products.
use std::sync::Arc;

use hgq_core::fold::lane_sum;
use hgq_core::quantizer::{Backend, Constraint, Cpu, Dual, SavedPass};
use hgq_core::shape::{broadcast_to, sum_to};
use hgq_core::{CallMode, Path, TensorRef, scratch};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::{Activation, Ebops, Layer, Named, QDense, Sequential, check_input};
use crate::backend::TchVar;
use crate::optim::{Adam, HostGrad};
use crate::{Result, TorchError, host, simd};

/// Why the native step cannot run on these tensors (`None`: it can).
pub(super) fn unsupported(model: &Sequential, x: &Tensor, labels: &Tensor) -> Option<String> {
    if !host::is_plain(x) {
        return Some("the input is not a contiguous float32 CPU tensor".into());
    }
    if labels.device() != Device::Cpu || labels.kind() != Kind::Int64 || !labels.is_contiguous() {
        return Some("the labels are not a contiguous int64 CPU tensor".into());
    }
    let Some(dense) = model.dense_layers() else {
        return Some("the model has layers other than QDense".into());
    };
    for l in dense {
        if l.base.input_dims.len() != 1 {
            return Some(format!(
                "{} takes inputs of more than 2 dimensions",
                l.name()
            ));
        }
        if l.base.oq.is_some() {
            return Some(format!("{} has an output quantizer", l.name()));
        }
        if l.base.iq.is_none() {
            return Some(format!("{} has no input quantizer", l.name()));
        }
        if !l.base.trainable {
            return Some(format!("{} is frozen (trainable=False)", l.name()));
        }
        if l.parallelization_factor.is_some() {
            return Some(format!(
                "{} has a parallelization factor of its own",
                l.name()
            ));
        }
        if !l.base.enable_ebops || l.base.ebops_factor != 1.0 {
            return Some(format!(
                "{} has its EBOPs off or scaled (enable_ebops, ebops_factor)",
                l.name()
            ));
        }
        let vars = std::iter::once(&l.kernel).chain(&l.bias);
        if !vars.into_iter().all(host::is_plain) {
            return Some(format!(
                "{}'s kernel or bias is not contiguous float32 CPU",
                l.name()
            ));
        }
        for q in l.quantizers() {
            if !q.q.is_bare() {
                return Some(format!(
                    "{} has a scaler, noise factor or affine map",
                    q.keras_path
                ));
            }
            let inner = q.q.lock();
            if !inner
                .variables()
                .iter()
                .all(|v| host::is_plain(v.value.tensor()))
            {
                return Some(format!("{}'s variables are not float32 CPU", q.keras_path));
            }
        }
    }
    None
}

/// A matrix operand: its values with their row and column strides (a transpose is a stride
/// swap).
type Operand<'a> = (&'a [f32], usize, usize);

/// `a @ b` (`m x k` by `k x n`) into a row-major `m x n` buffer from [`scratch`], not zeroed
/// first: a product with `beta = 0` writes every element of its output without reading it
/// (BLAS's and `matrixmultiply`'s contract, `k = 0` included), so zeroing would be a pass for
/// nothing.
fn product(dims: (usize, usize, usize), a: Operand<'_>, b: Operand<'_>) -> Result<Vec<f32>> {
    let mut c = scratch::elements::<f32>(dims.0 * dims.2);
    gemm(dims, a, b, 0.0, &mut c)?;
    Ok(c)
}

/// `c = a @ b + beta * c` for row-major `c` (`m x n`); `a` is `m x k`, `b` is `k x n`.
fn gemm(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): Operand<'_>,
    (b, rsb, csb): Operand<'_>,
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let last = |r: usize, rs: usize, cc: usize, cs: usize| (r - 1) * rs + (cc - 1) * cs;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let fits = c.len() >= m * n
        && (k == 0 || (a.len() > last(m, rsa, k, csa) && b.len() > last(k, rsb, n, csb)));
    if !fits {
        return Err(TorchError::Kernel(format!(
            "matrix product of {m}x{k} by {k}x{n}: buffers of {}, {}, {}",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    // Products big enough to pay for a fork: blocks of c on the threads of the current rayon
    // pool, each block a product of its own (each element the same sums in the same order).
    // Every block packs the whole of one operand again: a split of c's rows packs `b` once
    // per block, a split of its columns `a`, so the split goes along the side whose other
    // operand is the smaller one (the columns for a batch of 64 rows by a wide layer).
    // Inside a team session (the native step on several threads) its spinning threads, from
    // smaller products on; else rayon's pool.
    let team = hgq_core::team::width();
    let (threads, min_macs) = if team > 1 {
        (team, TEAM_MACS)
    } else {
        (rayon::current_num_threads(), PARALLEL_MACS)
    };
    let (rows, cols) = if threads < 2 || m * k * n < min_macs {
        (m, n)
    } else if m >= n {
        (m.div_ceil(threads), n)
    } else {
        (m, n.div_ceil(threads))
    };
    let out = SharedOut(c.as_mut_ptr());
    // Block j: rows j * rows.. where the rows are split, else columns j * cols.. (one of the
    // two is split at most, so the other offset is 0).
    let block = |j: usize| {
        let (r0, c0) = if cols == n {
            (j * rows, 0)
        } else {
            (0, j * cols)
        };
        // SAFETY: the block's rows and columns of a, b and c are in bounds (checked above;
        // r0 < m and c0 < n, and a split needs k > 0); blocks are disjoint, so no two
        // threads write the same element of c.
        unsafe {
            sgemm_block(
                (rows.min(m - r0), k, cols.min(n - c0)),
                (a.as_ptr().add(r0 * rsa), rsa, csa),
                (b.as_ptr().add(c0 * csb), rsb, csb),
                beta,
                out.at(r0 * n + c0),
                n,
            );
        }
    };
    match m.div_ceil(rows) * n.div_ceil(cols) {
        1 => block(0),
        blocks if team > 1 => hgq_core::team::for_each(blocks, &block),
        blocks => (0..blocks).into_par_iter().for_each(block),
    }
    Ok(())
}

/// Row-major `c` (`m x n`, rows `ldc` apart) `= a @ b + beta * c`, `a` and `b` at their strides:
/// MKL's `sgemm` where libtorch brings it (faster on the products of a step), else
/// `matrixmultiply`.
///
/// # Safety
/// Every element of `a` (`m x k`), `b` (`k x n`) and `c` at these strides is in its buffer, and
/// no other thread reads or writes the part of `c` this writes.
unsafe fn sgemm_block(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): (*const f32, usize, usize),
    (b, rsb, csb): (*const f32, usize, usize),
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: as the caller promises; with beta 0 `c` is written, not read.
    unsafe {
        if crate::blas::sgemm((m, k, n), (a, rsa, csa), (b, rsb, csb), beta, c, ldc) {
            return;
        }
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a,
            rsa as isize,
            csa as isize,
            b,
            rsb as isize,
            csb as isize,
            beta,
            c,
            ldc as isize,
            1,
        );
    }
}

/// A product's output that the threads of a split write to, each its own block.
struct SharedOut(*mut f32);

// SAFETY: the threads write disjoint elements (see `gemm`'s blocks).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` past the start.
    ///
    /// # Safety
    /// `offset` is within the output.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: as the caller promises.
        unsafe { self.0.add(offset) }
    }
}

/// Multiply-adds from which a matrix product is split over threads: below it, waking the other
/// workers costs more than half the product (`benches/RESULTS.md` has the measurements).
const PARALLEL_MACS: usize = 1 << 22;

/// [`PARALLEL_MACS`] for a team's spinning threads, which take work in about a microsecond
/// (smaller products gain less than the other thread's reads of their operands cost).
const TEAM_MACS: usize = 1 << 19;

/// A quantizer's pass kept for the backward: its variables as handles to the `VarStore`'s
/// memory (unchanged until Adam's update, after every backward).
type Pass = SavedPass<f32, TchVar>;

/// A quantizer's pass on `x` (its shape `shape`), kept for the backward.
fn quantize(q: &Named, x: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Pass)> {
    Ok(q.q
        .lock()
        .forward_saved(TensorRef::new(x, shape)?, CallMode::Training, Path::Simd)?)
}

/// A layer's input: the step's batch (the pass that keeps it copies it), or the output of the
/// layer below, which its pass keeps as it is (the layer below keeps it too).
#[derive(Clone, Copy)]
enum Input<'a> {
    Batch(&'a [f32]),
    Below(&'a Arc<Vec<f32>>),
}

/// The input quantizer's pass on a layer's input `x` (its shape `shape`), kept for the
/// backward.
fn quantize_input(q: &Named, x: Input<'_>, shape: &[usize]) -> Result<(Vec<f32>, Pass)> {
    match x {
        Input::Batch(x) => quantize(q, x, shape),
        Input::Below(a) => {
            Ok(q.q
                .lock()
                .forward_saved_shared(a, shape, CallMode::Training, Path::Simd)?)
        }
    }
}

/// A quantizer's bit widths with their derivatives (the dual in the bit-width shape, that
/// shape) and, where the EBOPs read them in a larger shape, broadcast to it.
struct Bits {
    broadcast: Option<Vec<f32>>,
    dual: Dual<f32>,
    bw_shape: Vec<usize>,
}

impl Bits {
    /// The values in the shape the EBOPs read.
    fn full(&self) -> &[f32] {
        self.broadcast.as_deref().unwrap_or(&self.dual.value)
    }

    /// `d`, a gradient in the EBOPs' shape `from`, summed to the bit-width shape.
    fn reduce(&self, d: Vec<f32>, from: &[usize]) -> Result<Vec<f32>> {
        if self.broadcast.is_none() {
            return Ok(d);
        }
        Ok(sum_to(&d, from, &self.bw_shape)?)
    }
}

fn bits(q: &Named, shape: &[usize]) -> Result<Bits> {
    let inner = q.q.lock();
    let dual = inner.bits_dual::<f32>()?;
    let bw_shape = inner
        .layout()
        .map(|l| l.bw_shape.clone())
        .unwrap_or_default();
    // Same element count: the same shape (it broadcasts to `shape`), nothing to copy.
    let broadcast = if dual.value.len() == shape.iter().product::<usize>() {
        hgq_core::shape::check_broadcast(&bw_shape, shape)?;
        None
    } else {
        Some(broadcast_to(&dual.value, &bw_shape, shape)?)
    };
    Ok(Bits {
        broadcast,
        dual,
        bw_shape,
    })
}

/// An upstream gradient of a quantizer's bit widths: one value each, or one per row of a
/// kernel (the same value for every weight of the row).
enum Upstream {
    Each(Vec<f32>),
    Rows(Vec<f32>),
}

/// A trainable variable, its gradient and the constraint Adam applies after its update.
type VarGrad = (Tensor, Vec<f32>, Option<Constraint>);

/// What a layer's forward keeps for its backward.
struct LayerPass {
    batch: usize,
    xq: Vec<f32>,
    kq: Vec<f32>,
    /// The output, after the activation (the next layer's input pass keeps it too).
    a: Arc<Vec<f32>>,
    iq: Pass,
    kq_pass: Pass,
    bq_pass: Option<Pass>,
    bits: [Option<Bits>; 3],
    /// The row sums of the kernel's bit widths (the EBOPs' and their gradient's).
    ker_rows: Vec<f32>,
}

impl LayerPass {
    /// Gives the pass's buffers back to [`scratch`] for the next step (the output only where
    /// no pass above still holds it).
    fn recycle(self) {
        for pass in [Some(self.iq), Some(self.kq_pass), self.bq_pass]
            .into_iter()
            .flatten()
        {
            pass.recycle();
        }
        scratch::give(self.xq);
        scratch::give(self.kq);
        if let Ok(a) = Arc::try_unwrap(self.a) {
            scratch::give(a);
        }
    }
}

impl QDense {
    /// The input quantizer ([`unsupported`] refuses layers without one before a step).
    fn input_quantizer(&self) -> Result<&Named> {
        self.base.iq.as_ref().ok_or_else(|| {
            TorchError::Unsupported(format!(
                "the native training step: {} has no input quantizer",
                self.name()
            ))
        })
    }

    /// The layer's training forward on host memory, and its EBOPs as the autograd step
    /// computes them (float32).
    fn forward_native(&self, x: Input<'_>, batch: usize) -> Result<(LayerPass, f32)> {
        let (n_in, units) = (self.in_features, self.units);
        let kernel = host::slice(&self.kernel).ok_or_else(|| not_plain("the kernel"))?;
        let (xq, iq) = quantize_input(self.input_quantizer()?, x, &[batch, n_in])?;
        let (kq, kq_pass) = quantize(&self.kq, kernel, &[n_in, units])?;
        let (xk, kk) = ((&xq[..], n_in, 1), (&kq[..], units, 1));
        let (bq_v, bq_pass) = match (&self.bias, &self.bq) {
            (Some(b), Some(bq)) => {
                let bias = host::slice(b).ok_or_else(|| not_plain("the bias"))?;
                let (v, pass) = quantize(bq, bias, &[units])?;
                (Some(v), Some(pass))
            }
            _ => (None, None),
        };
        let mut z = product((batch, n_in, units), xk, kk)?;
        bias_act(&mut z, bq_v.as_deref(), self.activation == Activation::Relu);
        let b_in = bits(self.input_quantizer()?, &[1, n_in])?;
        let b_ker = bits(&self.kq, &[n_in, units])?;
        let b_b = self.bq.as_ref().map(|bq| bits(bq, &[units])).transpose()?;
        // sum(bits_in @ bits_kernel) + mean(bits_bias) * units, in float32 as torch does
        // (integers: exact in any order below 2^24).
        let ker_rows: Vec<f32> = b_ker
            .full()
            .chunks_exact(units)
            .map(|row| lane_sum(row, |v| v))
            .collect();
        let mut e: f32 = 0.0;
        for (&bi, &row) in b_in.full().iter().zip(&ker_rows) {
            e += bi * row;
        }
        if let Some(bb) = &b_b {
            let mean = bb.full().iter().sum::<f32>() / units as f32;
            e += mean * units as f32;
        }
        let pass = LayerPass {
            batch,
            xq,
            kq,
            a: Arc::new(z),
            iq,
            kq_pass,
            bq_pass,
            bits: [Some(b_in), Some(b_ker), b_b],
            ker_rows,
        };
        Ok((pass, e))
    }

    /// The layer's backward for upstream `da` (of its output): `dx` (of its input) and every
    /// trainable variable's gradient, the EBOPs' (times `beta`) and the regularizers' added;
    /// the regularization losses (their values and gradients from one pass) added to `reg`.
    fn backward_native(
        &self,
        p: &LayerPass,
        mut da: Vec<f32>,
        grads: &mut Vec<VarGrad>,
        reg: &mut f32,
    ) -> Result<Vec<f32>> {
        let (n_in, units, batch) = (self.in_features, self.units, p.batch);
        let relu = (self.activation == Activation::Relu).then_some(&p.a[..]);
        let mut db = p.bq_pass.as_ref().map(|_| vec![0.0f32; units]);
        bias_act_backward(&mut da, relu, db.as_deref_mut());
        let dz = da;
        // d kq = xq^T dz; d xq = dz kq^T; d bq = the column sums of dz.
        let dkq = product((n_in, batch, units), (&p.xq, 1, n_in), (&dz, units, 1))?;
        let dxq = product((batch, units, n_in), (&dz, units, 1), (&p.kq, 1, units))?;
        // The passes write dx and every gradient whole: buffers recycled, not zeroed.
        let mut dx = scratch::elements(batch * n_in);
        let g_iq = p.iq.backward(&dxq, &mut dx)?;
        let mut dkernel = scratch::elements(n_in * units);
        let g_kq = p.kq_pass.backward(&dkq, &mut dkernel)?;
        for v in [dz, dkq, dxq] {
            scratch::give(v);
        }
        grads.push((self.kernel.shallow_clone(), dkernel, None));
        let mut g_bq = None;
        if let (Some(b), Some(pass), Some(db)) = (&self.bias, &p.bq_pass, db) {
            let mut dbias = scratch::elements(units);
            g_bq = Some(pass.backward(&db, &mut dbias)?);
            grads.push((b.shallow_clone(), dbias, None));
        }
        let up = self.ebops_upstream(p)?;
        let quants = [self.base.iq.as_ref(), Some(&self.kq), self.bq.as_ref()];
        let pass_grads = [Some(g_iq), Some(g_kq), g_bq];
        for ((q, g), (bits, up)) in quants
            .into_iter()
            .zip(pass_grads)
            .zip(p.bits.iter().zip(up))
        {
            let (Some(q), Some(mut g)) = (q, g) else {
                continue;
            };
            let inner = q.q.lock();
            // Each variable's terms summed in place, in this order: the pass, EBOPs,
            // regularizers.
            match (bits, up) {
                (Some(bits), Some(Upstream::Each(up))) => {
                    inner.add_trainable_grads(&bits.dual, &up, &mut g)?
                }
                (Some(bits), Some(Upstream::Rows(rows))) => {
                    bits.dual
                        .backward_add_rows(&rows, &mut g, |name| inner.trains(name))?
                }
                _ => {}
            }
            if let Some(loss) = inner.regularization_loss_and_grads(&mut g)? {
                *reg += loss;
            }
            for v in inner.variables().iter().filter(|v| v.trainable) {
                let sum = g
                    .take(v.name)
                    .unwrap_or_else(|| vec![0.0f32; v.shape.iter().product()]);
                grads.push((v.value.tensor().shallow_clone(), sum, v.constraint));
            }
        }
        Ok(dx)
    }

    /// The gradient of `beta * ebops` with respect to each quantizer's bit widths (their
    /// bit-width shapes): d/dbits_in = beta * row sums of bits_kernel, d/dbits_kernel =
    /// beta * bits_in (per row), d/dbits_bias = beta.
    fn ebops_upstream(&self, p: &LayerPass) -> Result<[Option<Upstream>; 3]> {
        let (n_in, units) = (self.in_features, self.units);
        let beta = self.base.beta.get() as f32;
        let [Some(b_in), Some(b_ker), b_b] = &p.bits else {
            return Err(TorchError::Kernel(
                "a layer pass without its bit widths".into(),
            ));
        };
        let d_in: Vec<f32> = p.ker_rows.iter().map(|&r| beta * r).collect();
        let rows: Vec<f32> = b_in.full().iter().map(|&b| beta * b).collect();
        let up_in = b_in.reduce(d_in, &[1, n_in])?;
        // Per-weight bit widths take the upstream as one value per row; bit widths shared
        // over weights sum it over them, spelled out.
        let up_ker = if b_ker.broadcast.is_none() {
            Upstream::Rows(rows)
        } else {
            let mut d_ker = vec![0.0f32; n_in * units];
            for (row, &u) in d_ker.chunks_exact_mut(units).zip(&rows) {
                row.fill(u);
            }
            Upstream::Each(b_ker.reduce(d_ker, &[n_in, units])?)
        };
        let up_b = match b_b {
            Some(bb) => {
                let d = vec![beta * units as f32 / units as f32; units];
                Some(Upstream::Each(bb.reduce(d, &[units])?))
            }
            None => None,
        };
        Ok([Some(Upstream::Each(up_in)), Some(up_ker), up_b])
    }

    /// Applies the constraints of the variables Adam did not update (and constrain) on host
    /// memory: those that are not trained (WRAP's `i`, set by the data).
    fn constrain_untrained(&self) -> Result<()> {
        let cpu = Cpu::<f32, TchVar>::new();
        for q in self.quantizers() {
            let mut inner = q.q.lock();
            for v in inner.variables_mut().iter_mut().filter(|v| !v.trainable) {
                if let Some(c) = v.constraint {
                    cpu.constrain(&mut v.value, c)?;
                }
            }
        }
        Ok(())
    }
}

/// `z = act(z + bias)` for each row of `z` (`bias`: one value per column), one pass at the
/// CPU's widest vectors; `relu`: the activation is relu, else linear. Each element is the
/// product's sum plus its bias, rounded once, as a product that starts from the bias adds it.
fn bias_act(z: &mut [f32], bias: Option<&[f32]>, relu: bool) {
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
fn bias_act_backward(d: &mut [f32], relu_out: Option<&[f32]>, db: Option<&mut [f32]>) {
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

/// A tensor the support check passed that is no longer plain memory.
fn not_plain(what: &str) -> TorchError {
    TorchError::Invalid {
        what: "native training step",
        why: format!("{what} is not a contiguous float32 CPU tensor"),
    }
}

/// A batch's labels as class indices, each below `classes` (checked once, when made).
struct Labels {
    idx: Vec<usize>,
    classes: usize,
}

impl Labels {
    fn new(labels: &[i64], classes: usize) -> Result<Self> {
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
fn cross_entropy(logits: &[f32], labels: &Labels) -> Result<(f32, Vec<f32>, i64)> {
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

/// One native step: forward, loss, backward, Adam, constraints. Returns the total loss (cross
/// entropy + EBOPs + regularization) and the correct predictions.
pub(super) fn step(
    model: &Sequential,
    x: &Tensor,
    labels: &Tensor,
    opt: &mut Adam,
) -> Result<(f32, i64)> {
    let layers = dense(model)?;
    // The step's passes are tens of microseconds each: on several threads they split over a
    // team that spins for the step's length (and a moment after, for the next step), not
    // over rayon's workers, which sleep between them.
    let _team = hgq_core::team::session(rayon::current_num_threads());
    let g = gradients(&layers, x, labels)?;
    let refs: Vec<HostGrad<'_>> = g
        .grads
        .iter()
        .map(|(var, grad, constraint)| HostGrad {
            var,
            grad,
            constraint: *constraint,
        })
        .collect();
    opt.step_host(&refs)?;
    drop(refs);
    for l in &layers {
        l.constrain_untrained()?;
    }
    // The next step's gradients of the same sizes.
    for (_, grad, _) in g.grads {
        scratch::give(grad);
    }
    Ok((g.loss, g.correct))
}

/// The model's layers as `QDense` layers (checked by [`unsupported`] before).
fn dense(model: &Sequential) -> Result<Vec<&QDense>> {
    model.dense_layers().ok_or_else(|| {
        TorchError::Unsupported("the native training step: layers other than QDense".into())
    })
}

/// What the forward and backward of a step give.
struct StepGrads {
    loss: f32,
    correct: i64,
    /// Every trainable variable with its gradient.
    grads: Vec<VarGrad>,
}

/// The forward (state moves as in a training call) and the backward of a step.
fn gradients(layers: &[&QDense], x: &Tensor, labels: &Tensor) -> Result<StepGrads> {
    let size = x.size();
    let batch = size.first().copied().unwrap_or(0) as usize;
    if batch == 0 {
        return Err(TorchError::Invalid {
            what: "training batch",
            why: format!("shape {size:?}: no rows"),
        });
    }
    if labels.size() != [batch as i64] {
        return Err(TorchError::Invalid {
            what: "labels",
            why: format!("shape {:?} for a batch of {batch}", labels.size()),
        });
    }
    let classes = layers.last().map_or(0, |l| l.units);
    // Checked before any state moves.
    let labels = Labels::new(&Vec::try_from(labels)?, classes)?;
    let mut width = None;
    for l in layers {
        match width {
            None => check_input("QDense input", x, &l.kernel, &l.base.input_dims)?,
            Some(w) if w != l.in_features => {
                return Err(TorchError::Shape {
                    built: vec![None, Some(l.in_features)],
                    got: vec![batch as i64, w as i64],
                });
            }
            Some(_) => {}
        }
        width = Some(l.units);
    }
    let x = host::slice(x).ok_or_else(|| not_plain("the input"))?;
    let mut passes: Vec<LayerPass> = Vec::with_capacity(layers.len());
    let mut total = 0.0f32;
    for l in layers {
        // Each layer reads the output the layer below keeps for its backward.
        let input = passes
            .last()
            .map_or(Input::Batch(x), |p| Input::Below(&p.a));
        let (p, e) = l.forward_native(input, batch)?;
        total += e * l.base.beta.get() as f32;
        *l.base.ebops.borrow_mut() = Ebops::Value(super::ebops_u32(f64::from(e)));
        passes.push(p);
    }
    let logits = passes.last().map_or(x, |p| &p.a[..]);
    let (ce, mut da, correct) = cross_entropy(logits, &labels)?;
    let (mut grads, mut reg) = (Vec::new(), 0.0f32);
    for (l, p) in layers.iter().zip(&passes).rev() {
        da = l.backward_native(p, da, &mut grads, &mut reg)?;
    }
    scratch::give(da);
    // Last layer first: each layer's output is free once the layer above dropped its pass.
    for p in passes.into_iter().rev() {
        p.recycle();
    }
    Ok(StepGrads {
        loss: ce + total + reg,
        correct,
        grads,
    })
}

#[cfg(test)]
mod tests {
    use hgq_config::keras::Regularizer;
    use hgq_config::{Place, QType, QuantizerConfig};
    use hgq_core::quantizer::VarName;
    use hgq_core::{OverflowMode, RoundMode};
    use tch::nn;

    use super::*;
    use crate::layers::QDenseBuilder;

    /// The layers of each case: (in, units, activation, what to change of the defaults).
    fn case(n: usize) -> Vec<QDenseBuilder> {
        let relu = |b: QDenseBuilder| b.activation(Activation::Relu);
        let conf = |t, p| QuantizerConfig::builder(t, p);
        match n {
            // The demo's layers: hgq2's defaults.
            0 => vec![relu(QDense::builder(12, 16)), QDense::builder(16, 5)],
            // KIF SAT weights with regularizers, a per-tensor KBI input, minifloat bias,
            // a large beta (EBOPs gradients matter).
            1 => vec![
                relu(QDense::builder(12, 8))
                    .beta(1e-2)
                    .kq(conf(QType::Kif, Place::Weight)
                        .overflow_mode(OverflowMode::Sat)
                        .fr(Regularizer::L1(1e-3))
                        .ir(Regularizer::L2(1e-3))
                        .build()
                        .unwrap())
                    .iq(conf(QType::Kbi, Place::Datalane)
                        .heterogeneous_axis([])
                        .round_mode(RoundMode::Rnd)
                        .build()
                        .unwrap())
                    .bq(conf(QType::Float, Place::Bias)
                        .heterogeneous_axis([0])
                        .build()
                        .unwrap()),
                QDense::builder(8, 3).beta(1e-3),
            ],
            // No bias, a dummy input quantizer, three layers.
            _ => vec![
                relu(QDense::builder(12, 8).use_bias(false)).iq(conf(
                    QType::Dummy,
                    Place::Datalane,
                )
                .build()
                .unwrap()),
                relu(QDense::builder(8, 8)),
                QDense::builder(8, 4).use_bias(false),
            ],
        }
    }

    fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn restore(vs: &nn::VarStore, s: &[(String, Tensor)]) {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (n, t) in s {
                vars[n].shallow_clone().copy_(t);
            }
        });
    }

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

    /// Products split over threads (along the rows, or the columns where `m < n`) give the
    /// bits of the product in one piece, and those are the plain sums up to float32 rounding;
    /// a transposed operand (strides swapped) and `beta = 1` included.
    #[test]
    fn split_products_are_the_product_in_one_piece() -> Result<()> {
        /// A team session of two threads on this thread, once no other test's step leads
        /// one.
        fn lead_team() -> hgq_core::team::Session {
            loop {
                if let Some(s) = hgq_core::team::session(2) {
                    return s;
                }
                std::thread::yield_now();
            }
        }
        let fill = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
                .map(|v| v as f32 / 500.0 - 1.0)
                .collect()
        };
        let pool = |t| hgq_core::kernels::thread_pool(t).expect("a thread pool");
        let (single, pool) = (pool(1), pool(2));
        // (m, k, n): a split of the columns (m < n), of the rows, and one too small to split.
        for (m, k, n) in [(64, 512, 512), (512, 64, 300), (8, 8, 8)] {
            let (a, bt) = (fill(m * k, 1), fill(n * k, 2));
            // b given transposed: stored n x k, read k x n through its strides.
            let (ao, bo) = ((&a[..], k, 1), (&bt[..], 1, k));
            let one = single.install(|| product((m, k, n), ao, bo))?;
            let split = pool.install(|| product((m, k, n), ao, bo))?;
            assert!(
                one.iter()
                    .zip(&split)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{k}x{n}"
            );
            // On the team of a session (the native step's threads): the same bits.
            let teamed = pool.install(|| {
                let _team = lead_team();
                product((m, k, n), ao, bo)
            })?;
            assert!(
                one.iter()
                    .zip(&teamed)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{k}x{n} on a team"
            );
            let mut acc = fill(m * n, 3);
            let start = acc.clone();
            pool.install(|| gemm((m, k, n), ao, bo, 1.0, &mut acc))?;
            for (r, row) in one.chunks_exact(n).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let want: f64 = (0..k)
                        .map(|t| f64::from(a[r * k + t]) * f64::from(bt[j * k + t]))
                        .sum();
                    assert!(
                        (f64::from(v) - want).abs() <= 1e-4 * (k as f64),
                        "{m}x{k}x{n}"
                    );
                    let sum = start[r * n + j] + v;
                    assert!((acc[r * n + j] - sum).abs() <= 1e-4 * (k as f32));
                }
            }
        }
        Ok(())
    }

    /// A saved pass reads the `VarStore`'s memory at its backward (no copy): the gradients
    /// of a backward right after the forward, and an error, not gradients of other values,
    /// once a variable the pass read was written in between.
    #[test]
    fn saved_passes_refuse_a_backward_after_a_write() -> Result<()> {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = Sequential::new();
        for l in case(0) {
            model.add(&vs.root(), l)?;
        }
        let layer = dense(&model)?[0];
        let kernel = host::slice(&layer.kernel).ok_or_else(|| not_plain("the kernel"))?;
        let shape = [layer.in_features, layer.units];
        let n = kernel.len();
        let (_, pass) = quantize(&layer.kq, kernel, &shape)?;
        let mut dx = vec![0.0f32; n];
        let grads = pass.backward(&vec![1.0; n], &mut dx)?;
        assert!(grads.b.is_some() && grads.i.is_some());
        let b = {
            let inner = layer.kq.q.lock();
            let v = inner.variables().iter().find(|v| v.name == VarName::B);
            v.map(|v| v.value.tensor().shallow_clone())
        }
        .expect("a KBI quantizer has b");
        let _ = tch::no_grad(|| b.shallow_clone().f_add_scalar_(1.0))?;
        let before = dx.clone();
        assert!(pass.backward(&vec![1.0; n], &mut dx).is_err());
        assert_eq!(dx, before, "a refused backward writes nothing");
        Ok(())
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

    /// The native forward moves the state as the autograd forward does (bit for bit), gives
    /// the loss and every trainable variable the gradient autograd gives (float32 sums in
    /// another order: a relative tolerance), and nothing else.
    #[test]
    fn native_gradients_are_autograds() -> Result<()> {
        // Outputs left partly unwritten would hold NaN.
        hgq_core::scratch::poison();
        for n in 0..3 {
            tch::manual_seed(n as i64);
            let vs = nn::VarStore::new(Device::Cpu);
            let mut model = Sequential::new();
            let layers = case(n);
            let n_in = 12;
            for l in layers {
                model.add(&vs.root(), l)?;
            }
            let classes = model
                .layer::<QDense>(model.layers().len() - 1)
                .unwrap()
                .units() as i64;
            let x = Tensor::rand([32, n_in], (Kind::Float, Device::Cpu)) * 6.0 - 3.0;
            let labels = Tensor::randint(classes, [32], (Kind::Int64, Device::Cpu));
            let before = snapshot(&vs);

            let out = model.forward(&x, CallMode::Training)?;
            let mut loss = out.y.cross_entropy_for_logits(&labels) + &out.ebops_loss;
            if model.has_regularization() {
                loss += model.regularization_loss()?;
            }
            loss.backward();
            let after_autograd = snapshot(&vs);
            let ebops_autograd = model.ebops();

            restore(&vs, &before);
            let g = gradients(&dense(&model)?, &x, &labels)?;
            let after_native = snapshot(&vs);
            for ((name, a), (_, b)) in after_autograd.iter().zip(&after_native) {
                assert!(a.equal(b), "case {n}: {name} after the forward");
            }
            assert_eq!(model.ebops(), ebops_autograd, "case {n}: EBOPs");
            let l = loss.double_value(&[]);
            assert!(
                (f64::from(g.loss) - l).abs() <= 1e-6 * l.abs(),
                "case {n}: loss {} against {l}",
                g.loss
            );

            let trainable = vs.trainable_variables();
            assert_eq!(
                g.grads.len(),
                trainable.len(),
                "case {n}: one gradient each"
            );
            for (t, gn, _) in &g.grads {
                let name = vs
                    .variables()
                    .into_iter()
                    .find(|(_, v)| v.data_ptr() == t.data_ptr())
                    .map(|(n, _)| n)
                    .unwrap();
                let ga = Vec::<f32>::try_from(t.grad().flatten(0, -1)).unwrap();
                let scale = ga.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                for (j, (a, b)) in ga.iter().zip(gn).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "case {n}: d {name}[{j}]: autograd {a}, native {b}"
                    );
                }
            }
        }
        Ok(())
    }
}
