//! # hgq-torch
//!
//! HGQ quantizers on [`tch`] tensors (libtorch), with autograd, on CPU and CUDA.
//!
//! - [`fixed_quantize`]: the stateless fixed-point quantizer `Q(x, k, i, f)` of SPEC 1-3.
//!   On CPU it runs hgq-core's fused kernel inside a C++ `torch::autograd::Function`
//!   (`src/bridge.cpp`), so values are bit-identical to hgq-core and the backward pass uses
//!   the kernel's gradients. On CUDA it runs our kernel ([`cuda`]: the same element op in CUDA
//!   C, compiled by NVRTC, launched on torch's stream inside an autograd function) once its
//!   check on the device has passed, else [`ops::fixed_quantize_ops`], the same formulas
//!   written as plain torch ops, differentiated by autograd (`HGQ_CUDA_KERNEL=on`/`off`
//!   forces one).
//!
//! libtorch comes from `cargo xtask setup` (torch==2.11.0 from PyPI, in `.venv`); see
//! `xtask/src/setup.rs` for how builds and test runs find it.
#![warn(missing_docs)]

mod alloc;
pub mod backend;
mod blas;
mod bridge;
pub mod cuda;
pub mod deferred;
pub mod distributed;
#[cfg(feature = "golden")]
pub mod golden;
mod host;
pub mod interop;
pub mod layers;
pub mod ops;
pub mod optim;
pub mod quantizer;
use hgq_core::simd;

use hgq_core::FixedPoint;
use tch::{Device, Kind, Tensor};

pub use alloc::retain_cpu_memory;
pub use hgq_config;
pub use hgq_core;
pub use hgq_keras;
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
    #[error("{what}: element type {kind:?} is not taken here")]
    Kind {
        /// Which argument.
        what: &'static str,
        /// Its element type.
        kind: Kind,
    },
    /// The C++ autograd bridge failed outside hgq-core (its errors arrive as
    /// [`TorchError::Core`]).
    #[error("hgq bridge: {0}")]
    Kernel(String),
    /// A tensor on another device than the one it is used with.
    #[error("{what} on {got:?}, used with an input on {expected:?}")]
    Device {
        /// Which tensor.
        what: &'static str,
        /// The device of the input.
        expected: Device,
        /// Its device.
        got: Device,
    },
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
    /// An argument out of its range, or that does not fit the others (bad input, not a
    /// missing feature).
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was given.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// What this code path does not implement (a configuration or an operation that is not
    /// defined for this kind of quantizer).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// NVRTC or the CUDA kernels of [`cuda`] failed (no library, a compile error with its log).
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A collective or the rendezvous of a data-parallel process group failed (a rank gone, a
    /// timeout, a rendezvous that could not be reached).
    #[error("distributed {what}: {why}")]
    Distributed {
        /// What was being done.
        what: &'static str,
        /// c10d's message.
        why: String,
    },
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

/// A host tensor's copy on `device` without waiting for the device: through pinned memory, a
/// copy ordered on the device's current stream (a copy from pageable memory waits for the
/// device, a synchronization per batch in a training loop). On the CPU, `t` itself.
///
/// ```
/// use tch::{Device, Tensor};
/// let x = Tensor::from_slice(&[1.0f32, 2.0]);
/// let on = hgq_torch::upload(&x, Device::Cpu)?;
/// assert_eq!(Vec::<f32>::try_from(&on)?, [1.0, 2.0]);
/// # Ok::<(), hgq_torch::TorchError>(())
/// ```
pub fn upload(t: &Tensor, device: Device) -> Result<Tensor> {
    if t.device() == device {
        return Ok(t.shallow_clone());
    }
    if t.device() != Device::Cpu {
        return Ok(t.f_to_device(device)?);
    }
    let kind = t.f_kind()?;
    Ok(t.f_contiguous()?
        .f_pin_memory(device)?
        .f_to_device_(device, kind, true, false)?)
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
/// On CPU the fused hgq-core kernel runs (bit-identical to `FixedPoint::forward`); on CUDA the
/// torch-ops version [`ops::fixed_quantize_ops`], or our kernel
/// ([`cuda::fixed_quantize_kernel`]) where [`cuda::Route`] says so (by default, once
/// [`cuda::check_kernel`] has passed on the device). All
/// check the bit widths as hgq-core does.
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
    let [k, i, f] = params(x.device(), [k, i, f])?;
    check_operands(x, [&k, &i, &f])?;
    quantize(q, x, Kind::Float, [&k, &i, &f], training)
}

/// `Q(x, k, p1, p2)` for any float kind (`p1`, `p2` as `q.bit_widths()` says; the caller has
/// checked that they broadcast to x): on the CPU, float32 through hgq-core's fused kernel in
/// the autograd bridge, float16 and bfloat16 computed in float32 and stored in their type (as
/// hgq-core does); on CUDA our kernel where [`cuda::Route`] chooses it; float64 on the CPU and
/// every other case through the torch-ops path.
pub(crate) fn quantize(
    q: &FixedPoint,
    x: &Tensor,
    kind: Kind,
    [k, p1, p2]: [&Tensor; 3],
    training: bool,
) -> Result<Tensor> {
    let device = x.device();
    for t in [k, p1, p2] {
        if t.device() != device {
            return Err(TorchError::Device {
                what: "bit widths",
                expected: device,
                got: t.device(),
            });
        }
    }
    let narrow = matches!(kind, Kind::Half | Kind::BFloat16);
    // A rehearsed CUDA step takes the route a CUDA tensor would (the kernel's host build).
    let rehearsed = cuda::rehearse::route();
    let kernel = match device {
        Device::Cuda(_) => cuda::Route::of(x)? == cuda::Route::Kernel,
        _ => rehearsed == Some(cuda::Route::Kernel),
    };
    match (device, kind) {
        (Device::Cpu, Kind::Float | Kind::Half | Kind::BFloat16) if rehearsed.is_none() => {
            let xf = if narrow {
                x.f_to_kind(Kind::Float)?
            } else {
                x.shallow_clone()
            };
            let [k, p1, p2] = params(Device::Cpu, [k, p1, p2])?;
            let y = bridge::fixed_apply(
                q,
                training,
                &xf.f_contiguous()?,
                &k.f_contiguous()?,
                &p1.f_contiguous()?,
                &p2.f_contiguous()?,
            )?;
            Ok(if narrow { y.f_to_kind(kind)? } else { y })
        }
        _ if kernel => {
            let xf = if narrow {
                x.f_to_kind(Kind::Float)?
            } else {
                x.shallow_clone()
            };
            match cuda::fixed_quantize_kernel(q, &xf, k, p1, p2, training) {
                Ok(y) => Ok(if narrow { y.f_to_kind(kind)? } else { y }),
                // NVRTC or the driver refused (not the input): the torch operations, for this
                // call and the process's next ones (`cuda::kernel_failure` says why).
                Err(TorchError::Cuda(why)) => {
                    cuda::route::record_failure(why);
                    let y = ops::fixed_quantize_ops(q, &xf, k, p1, p2, training)?;
                    Ok(if narrow { y.f_to_kind(kind)? } else { y })
                }
                Err(e) => Err(e),
            }
        }
        (_, Kind::Half | Kind::BFloat16) => {
            Ok(
                ops::fixed_quantize_ops(q, &x.f_to_kind(Kind::Float)?, k, p1, p2, training)?
                    .f_to_kind(kind)?,
            )
        }
        _ => ops::fixed_quantize_ops(q, x, k, p1, p2, training),
    }
}

/// A tensor's shape as hgq-core takes it.
pub(crate) fn dims(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

/// That the bit widths broadcast to x's shape (hgq-core's error where one does not).
pub(crate) fn check_operands(x: &Tensor, p: [&Tensor; 3]) -> Result<()> {
    for t in p {
        hgq_core::shape::check_broadcast(&dims(t), &dims(x))?;
    }
    Ok(())
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
