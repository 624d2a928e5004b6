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
//! the module's `rc` rounding of raw variables: the kernel plus autograd alone.
use hgq_torch::fixed_quantize;
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::KifSpec;
use hgq_torch::hgq_core::{CallMode, FixedPoint, OverflowMode, RoundMode};
use hgq_torch::ops::fixed_quantize_ops;
use hgq_torch::quantizer::{Inner, Quantizer};
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
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 3] = [Path::Torch, Path::TorchFn, Path::TorchOps];

    /// The case prefix: `torch` or `torch-ops`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Torch => "torch",
            Path::TorchOps => "torch-ops",
            Path::TorchFn => "torch-fn",
        }
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
    /// For `torch-fn`: k, i, f as plain tensors (i, f requiring gradients).
    kif: Option<[Tensor; 3]>,
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
        let kif = (path == Path::TorchFn).then(|| {
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
        })
    }

    fn forward(&self, x: &Tensor, mode: CallMode) -> hgq_torch::Result<Tensor> {
        if let Some([k, i, f]) = &self.kif {
            let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)?.with_zero_mask(true);
            return fixed_quantize(&q, x, k, i, f, mode == CallMode::Training);
        }
        match (self.path, self.q.inner()) {
            (Path::TorchOps, Inner::Fixed(fq)) => {
                let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)?.with_zero_mask(true);
                let (k, i, f) = fq.kif();
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
