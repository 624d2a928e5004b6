//! # hgq-torch
//!
//! HGQ quantizers on [`tch`] tensors (libtorch), with autograd, on CPU and CUDA.
//!
//! - [`fixed_quantize`]: the stateless fixed-point quantizer `Q(x, k, i, f)` of SPEC 1-3.
//!   On CPU it runs hgq-core's fused kernel inside a C++ `torch::autograd::Function`
//!   (`src/bridge.cpp`), so values are bit-identical to hgq-core and the backward pass uses
//!   the kernel's gradients. On other devices (CUDA) it runs [`ops::fixed_quantize_ops`],
//!   the same formulas written as plain torch ops, differentiated by autograd.
//!
//! libtorch comes from `cargo xtask setup` (torch==2.11.0 from PyPI, in `.venv`); see
//! `xtask/src/setup.rs` for how builds and test runs find it.
#![warn(missing_docs)]

mod alloc;
mod bridge;
#[cfg(feature = "golden")]
pub mod golden;
mod host;
pub mod layers;
pub mod ops;
pub mod optim;
pub mod quantizer;

use hgq_core::FixedPoint;
use tch::{Device, Kind, Tensor};

pub use alloc::retain_cpu_memory;
pub use hgq_config;
pub use hgq_core;
pub use tch;

/// Errors of this crate; each names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// An error from hgq-core (modes, shapes, bit widths).
    #[error(transparent)]
    Core(#[from] hgq_core::CoreError),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// A tensor of an unsupported element type.
    #[error("{what} must be float32, got {kind:?}")]
    Kind {
        /// Which argument.
        what: &'static str,
        /// Its element type.
        kind: Kind,
    },
    /// The fused CPU kernel (through the C++ bridge) refused the input.
    #[error("hgq kernel: {0}")]
    Kernel(String),
    /// A configuration (hgq-config) that is invalid or does not describe a quantizer.
    #[error(transparent)]
    Config(#[from] hgq_config::ConfigError),
    /// An input whose shape does not match the shape the quantizer was built for.
    #[error("input of shape {got:?} for a quantizer built for {built:?} (None: any size)")]
    Shape {
        /// The shape it was built for.
        built: Vec<Option<usize>>,
        /// The input's shape.
        got: Vec<i64>,
    },
    /// Non-finite values where they would corrupt state.
    #[error("non-finite input: {0}")]
    NonFinite(&'static str),
    /// A configuration this code path does not implement yet.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// `Result` with [`TorchError`].
pub type Result<T, E = TorchError> = std::result::Result<T, E>;

/// Is a CUDA device usable here (libtorch built with CUDA, a driver and a GPU present)?
///
/// Binaries link `libtorch_cuda.so` whenever the libtorch they were built against has it (see
/// `build.rs`); at run time the library path must name a CUDA build of torch 2.11's `lib`
/// folder (`cargo run`/`cargo test` set it; elsewhere set `LD_LIBRARY_PATH`).
pub fn cuda_available() -> bool {
    cuda_linked() && tch::Cuda::is_available()
}

/// Whether this build links libtorch's CUDA part (the libtorch it was built against has one).
pub fn cuda_linked() -> bool {
    bridge::cuda_linked()
}

/// `y = Q(x, k, i, f)` (SPEC 3) with autograd: gradients reach `x`, `i` and `f` (when they
/// require them) as in the reference: straight-through rounding, `dy/df = ln2 (x - q)`, and
/// the clip gradients of SAT modes. `k`, `i`, `f` broadcast to `x`'s shape (numpy rules) and
/// are converted to float32 on `x`'s device; `x` must be float32.
///
/// On CPU the fused hgq-core kernel runs (bit-identical to `FixedPoint::forward`); elsewhere the
/// torch-ops version [`ops::fixed_quantize_ops`].
///
/// ```no_run
/// use hgq_torch::{fixed_quantize, hgq_core::{FixedPoint, OverflowMode, RoundMode}};
/// use tch::Tensor;
/// let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
/// let x = Tensor::from_slice(&[0.3f32, -5.0, 1.7]).set_requires_grad(true);
/// let (k, i, f) = (Tensor::from(1.0f32), Tensor::from(1.0f32), Tensor::from(2.0f32));
/// let y = fixed_quantize(&q, &x, &k, &i, &f, false).unwrap();
/// assert_eq!(Vec::<f32>::try_from(&y).unwrap(), [0.25, -2.0, 1.75]);
/// ```
pub fn fixed_quantize(
    q: &FixedPoint,
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
    training: bool,
) -> Result<Tensor> {
    check_float("x", x)?;
    let device = x.device();
    let [k, i, f] = params(device, [k, i, f])?;
    match device {
        Device::Cpu => {
            let (x, k, i, f) = (
                x.contiguous(),
                k.contiguous(),
                i.contiguous(),
                f.contiguous(),
            );
            bridge::fixed_apply(q, training, bridge::Bits::IntFrac, &x, &k, &i, &f)
                .map_err(TorchError::Kernel)
        }
        _ => ops::fixed_quantize_ops(q, &x.shallow_clone(), &k, &i, &f, training),
    }
}

/// `Q(x, k, i, f)` for any float kind: float32 through [`fixed_quantize`]; float16 and
/// bfloat16 computed in float32 and stored in their type (as hgq-core does); float64 through
/// the torch-ops path in float64.
pub(crate) fn quantize_any(
    q: &FixedPoint,
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
    training: bool,
) -> Result<Tensor> {
    match x.f_kind()? {
        Kind::Float => fixed_quantize(q, x, k, i, f, training),
        Kind::Double => ops::fixed_quantize_ops(q, x, k, i, f, training),
        kind @ (Kind::Half | Kind::BFloat16) => {
            Ok(
                fixed_quantize(q, &x.f_to_kind(Kind::Float)?, k, i, f, training)?
                    .f_to_kind(kind)?,
            )
        }
        kind => Err(TorchError::Kind { what: "x", kind }),
    }
}

/// `Q(x, k, i, f)` of a KBI quantizer from its raw `b` and `i` (one shape): `i = rc(i)`,
/// `f = rc(b) - rc(i)`, with the gradients autograd gives through those operations. On CPU the
/// pass derives them itself (one autograd node instead of nine); elsewhere they are tensor
/// operations followed by [`quantize_any`]. `q` reads integer bit widths.
pub(crate) fn quantize_kbi(
    q: &FixedPoint,
    x: &Tensor,
    k: &Tensor,
    b: &Tensor,
    i: &Tensor,
    training: bool,
) -> Result<Tensor> {
    let kind = x.f_kind()?;
    let native = x.device() == Device::Cpu
        && matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16)
        && b.size() == i.size();
    if !native {
        let iu = quantizer::rc(i);
        let f = quantizer::rc(b) - &iu;
        return quantize_any(q, x, k, &iu, &f, training);
    }
    let xf = if kind == Kind::Float {
        x.contiguous()
    } else {
        x.f_to_kind(Kind::Float)?.contiguous()
    };
    let [k, b, i] = params(Device::Cpu, [k, b, i])?;
    let (k, b, i) = (k.contiguous(), b.contiguous(), i.contiguous());
    let y = bridge::fixed_apply(q, training, bridge::Bits::KbiRaw, &xf, &k, &b, &i)
        .map_err(TorchError::Kernel)?;
    Ok(if kind == Kind::Float {
        y
    } else {
        y.f_to_kind(kind)?
    })
}

pub(crate) fn check_float(what: &'static str, t: &Tensor) -> Result<()> {
    match t.f_kind()? {
        Kind::Float => Ok(()),
        kind => Err(TorchError::Kind { what, kind }),
    }
}

/// `k`, `i`, `f` as float32 on `device` (differentiable conversions).
pub(crate) fn params(device: Device, p: [&Tensor; 3]) -> Result<[Tensor; 3]> {
    params_as(device, Kind::Float, p)
}

/// `k`, `i`, `f` as `kind` on `device` (differentiable conversions).
pub(crate) fn params_as(device: Device, kind: Kind, p: [&Tensor; 3]) -> Result<[Tensor; 3]> {
    let conv = |t: &Tensor| -> Result<Tensor> {
        let t = if t.f_kind()? == kind {
            t.shallow_clone()
        } else {
            t.f_to_kind(kind)?
        };
        Ok(if t.device() == device {
            t
        } else {
            t.f_to_device(device)?
        })
    };
    Ok([conv(p[0])?, conv(p[1])?, conv(p[2])?])
}
