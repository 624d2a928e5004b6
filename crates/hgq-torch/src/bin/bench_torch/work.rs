//! The work of the torch benchmarks, shared by the `hgq-bench-torch` binary and
//! `benches/torch.rs`: x of shape 1024 x 4096 float32 (normal, sigma 4, the values of
//! `cargo xtask bench`), a KIF quantizer with k = 1, i = 2, f = 4, RND, SAT, bit widths per
//! column (`[1, 4096]`, `Axes::Homogeneous(vec![0])`) or per element (`[1024, 4096]`,
//! `Axes::Homogeneous(vec![])`), its raw `i` and `f` trainable variables in a `VarStore`.
//!
//! - `infer`: `Quantizer::forward(x, Inference)` under `no_grad`.
//! - `train`: `Quantizer::forward(x, Training)` with `x` requiring gradients, then
//!   `torch.autograd.grad(y.sum(), [x, i, f])` (`Tensor::run_backward`): dx and the gradients of
//!   the raw bit widths, what the reference's `hgq2_ref.py` times (`jax.grad` of `sum(y)` with
//!   respect to x and the trainable variables).
//!
//! Path `torch`: the module as it is (on CPU, hgq-core's fused kernel inside the C++ autograd
//! function). Path `torch-ops`: the same bit widths (`FixedQuantizer::kif`) through
//! `ops::fixed_quantize_ops`, the plain torch-ops version that runs on CUDA. Path `torch-fn`:
//! the stateless `fixed_quantize` on k, i, f tensors (i, f leaves requiring gradients) without
//! the module's `rc` rounding of raw variables: the kernel plus autograd alone. Path
//! `torch-coef`: the other way the issue names for putting the kernel under autograd, measured
//! against `torch-fn` on the same tensors: the kernel's output as a detached value plus
//! zero-valued terms `(v - v.detach()) * c` whose gradients are the kernel's coefficients `c`
//! (dy/dx, dy/di, dy/df per element, from a pass with unit upstream), so that autograd's own
//! multiplications and reductions form the backward.
use hgq_torch::fixed_quantize;
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::KifSpec;
use hgq_torch::hgq_core::{CallMode, FixedPoint, OverflowMode, RoundMode};
use hgq_torch::hgq_core::{FixedGrads, TensorRef};
use hgq_torch::ops::fixed_quantize_ops;
use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor, nn};

/// Rows of x.
pub const ROWS: usize = 1024;
/// Columns of x.
pub const COLS: usize = 4096;

/// x as `cargo xtask bench` makes it: xorshift64* normal values (Box-Muller) times 4.
pub fn normal_x() -> Tensor {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let v: Vec<f32> = (0..ROWS * COLS)
        .map(|_| {
            let (u, v) = (1.0 - next(), next());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 4.0) as f32
        })
        .collect();
    Tensor::from_slice(&v).view([ROWS as i64, COLS as i64])
}

/// Bit widths per column or per element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 4096]`.
    PerColumn,
    /// `[1024, 4096]`.
    PerElement,
}

impl Layout {
    /// Both layouts.
    pub const ALL: [Layout; 2] = [Layout::PerColumn, Layout::PerElement];

    /// `per_column` or `per_element`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::PerColumn => "per_column",
            Layout::PerElement => "per_element",
        }
    }

    fn axes(self) -> Axes {
        match self {
            Layout::PerColumn => Axes::Homogeneous(vec![0]),
            Layout::PerElement => Axes::Homogeneous(vec![]),
        }
    }
}

/// Which quantize function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The module as it is (CPU: the fused kernel in the C++ autograd function).
    Torch,
    /// `ops::fixed_quantize_ops` on the module's bit widths.
    TorchOps,
    /// `fixed_quantize` on k, i, f tensors (no module).
    TorchFn,
    /// The kernel's output and coefficients with zero-valued terms (no module).
    TorchCoef,
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 4] = [Path::Torch, Path::TorchFn, Path::TorchCoef, Path::TorchOps];

    /// The case prefix: `torch` or `torch-ops`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Torch => "torch",
            Path::TorchOps => "torch-ops",
            Path::TorchFn => "torch-fn",
            Path::TorchCoef => "torch-coef",
        }
    }

    /// Whether the path has an inference case of its own (`torch-coef` only differs from
    /// `torch-fn` in training).
    pub fn infers(self) -> bool {
        self != Path::TorchCoef
    }
}

/// One quantizer with its variables and input.
pub struct Case {
    _vs: nn::VarStore,
    q: Quantizer,
    path: Path,
    /// x, not requiring gradients (inference).
    x: Tensor,
    /// The same values, requiring gradients (training).
    xg: Tensor,
    /// The raw trainable variables (`i`, `f`).
    params: Vec<Tensor>,
    /// For `torch-fn` and `torch-coef`: k, i, f as plain tensors (i, f requiring gradients).
    kif: Option<[Tensor; 3]>,
    /// For `torch-coef`: ones of x's shape, the unit upstream of the coefficient pass (made
    /// once, as a user of this way would keep it); `None` on the other paths.
    ones: Option<Tensor>,
}

impl Case {
    /// A fresh quantizer for `layout` on the CPU, run through `path`.
    pub fn new(layout: Layout, path: Path, x: &Tensor) -> hgq_torch::Result<Case> {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec =
            KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat).with_axes(layout.axes());
        let core = CoreQuantizer {
            spec: QuantizerSpec::Kif(spec),
            scaler: None,
            qnoise_factor: None,
            affine: None,
        };
        let q = Quantizer::new(&vs.root(), &core, &[Some(ROWS), Some(COLS)])?;
        let trainable = q.trainable_names();
        let mut params: Vec<Tensor> = q
            .variables()
            .into_iter()
            .filter(|(n, _)| trainable.contains(n))
            .map(|(_, t)| t.shallow_clone())
            .collect();
        let kif = matches!(path, Path::TorchFn | Path::TorchCoef).then(|| {
            let bw = match layout {
                Layout::PerColumn => [1, COLS as i64],
                Layout::PerElement => [ROWS as i64, COLS as i64],
            };
            let full = |v: f64| Tensor::full(bw, v, (Kind::Float, Device::Cpu));
            let (i, f) = (
                full(2.0).set_requires_grad(true),
                full(4.0).set_requires_grad(true),
            );
            params = vec![i.shallow_clone(), f.shallow_clone()];
            [full(1.0), i, f]
        });
        Ok(Case {
            _vs: vs,
            q,
            path,
            x: x.shallow_clone(),
            xg: x.detach().copy().set_requires_grad(true),
            params,
            kif,
            ones: (path == Path::TorchCoef).then(|| x.ones_like()),
        })
    }

    fn forward(&self, x: &Tensor, mode: CallMode) -> hgq_torch::Result<Tensor> {
        if let Some([k, i, f]) = &self.kif {
            let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)?.with_zero_mask(true);
            if let (Some(ones), true) = (&self.ones, x.requires_grad()) {
                return coefficients(&q, x, [k, i, f], ones);
            }
            return fixed_quantize(&q, x, k, i, f, mode == CallMode::Training);
        }
        match self.path {
            Path::TorchOps => {
                let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)?.with_zero_mask(true);
                let (k, i, f) = self.q.kif()?;
                fixed_quantize_ops(&q, x, &k, &i, &f, mode == CallMode::Training)
            }
            _ => self.q.forward(x, mode),
        }
    }

    /// Inference under `no_grad`: y.
    pub fn infer(&self) -> hgq_torch::Result<Tensor> {
        tch::no_grad(|| self.forward(&self.x, CallMode::Inference))
    }

    /// The forward pass of training alone (its graph dropped): what `train` adds on top of it
    /// is the backward pass (`hgq-bench-torch --breakdown`).
    #[allow(dead_code)] // the criterion bench has no breakdown
    pub fn train_forward(&self) -> hgq_torch::Result<Tensor> {
        self.forward(&self.xg, CallMode::Training)
    }

    /// The forward pass of training and the sum of y (the graph dropped): what `train` adds on
    /// top of it is the backward pass through autograd (`hgq-bench-torch --breakdown`).
    #[allow(dead_code)] // the criterion bench has no breakdown
    pub fn train_forward_sum(&self) -> hgq_torch::Result<Tensor> {
        Ok(self
            .forward(&self.xg, CallMode::Training)?
            .f_sum(Kind::Float)?)
    }

    /// Training: y, then the gradients of `sum(y)` with respect to x and the raw `i`, `f`
    /// (returned in that order after y).
    pub fn train(&self) -> hgq_torch::Result<Vec<Tensor>> {
        let y = self.forward(&self.xg, CallMode::Training)?;
        let mut inputs = vec![&self.xg];
        inputs.extend(self.params.iter());
        let mut out = Tensor::f_run_backward(&[y.f_sum(Kind::Float)?], &inputs, false, false)?;
        out.insert(0, y);
        Ok(out)
    }
}

/// A contiguous CPU float32 tensor's elements.
fn values(t: &Tensor) -> &[f32] {
    assert!(t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu);
    // SAFETY: checked just above: contiguous float32 on the CPU, `numel` elements at
    // `data_ptr`, alive as long as the borrow of `t`.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// [`values`], writable; `t` must be a tensor of its own (fresh from `empty_like`).
#[allow(clippy::mut_from_ref)]
fn values_mut(t: &Tensor) -> &mut [f32] {
    assert!(t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu);
    // SAFETY: as in `values`; the callers pass tensors they just allocated and share with
    // nothing else while the slice lives.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
}

/// `torch-coef`'s training forward: one kernel pass with unit upstream gives y and the
/// coefficients dy/dx, dy/di, dy/df per element (k, i, f expanded to x's shape, so that they
/// are not summed); the result is `y + (x - x.detach()) * cx + (i - i.detach()) * ci + (f -
/// f.detach()) * cf`, whose value is y and whose gradients autograd forms from the
/// coefficients (for a sum's unit upstream, the same values as the fused backward; for
/// another upstream, `g * c` rounds once more than the kernel's own products).
fn coefficients(
    q: &FixedPoint,
    x: &Tensor,
    [k, i, f]: [&Tensor; 3],
    ones: &Tensor,
) -> hgq_torch::Result<Tensor> {
    let shape = x.size();
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let xd = x.detach().contiguous();
    let full = |t: &Tensor| t.detach().expand(&shape, false).contiguous();
    let (ke, ie, fe) = (full(k), full(i), full(f));
    let (y, cx, ci, cf) = (
        xd.empty_like(),
        xd.empty_like(),
        xd.empty_like(),
        xd.empty_like(),
    );
    let t = |v| TensorRef::new(v, &dims);
    q.forward_backward(
        t(values(&xd))?,
        t(values(&ke))?,
        t(values(&ie))?,
        t(values(&fe))?,
        true,
        values(ones),
        values_mut(&y),
        FixedGrads {
            dx: values_mut(&cx),
            di: values_mut(&ci),
            df: values_mut(&cf),
        },
    )?;
    let zero = |v: &Tensor| {
        let e = v.expand(&shape, false);
        &e - e.detach()
    };
    Ok(y + (x - &xd) * cx + zero(i) * ci + zero(f) * cf)
}
