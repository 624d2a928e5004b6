//! The kernel route: `Q(x, k, i, f)` through our kernel inside a C++ autograd function
//! (`KernelFn` in bridge.cpp), and the choice between it and the torch-ops path.
use std::ffi::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use hgq_core::{BitWidths, FixedPoint, Stochastic};
use tch::{Device, Kind, Tensor};

use super::host::{Buffers, Columns, HostKernels};
use super::{Args, Elem, KernelKey, LaunchShape, Layout, MAX_DIMS, Read};
use crate::{Result, TorchError};

/// Which implementation runs a fixed-point call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Our kernel ([`fixed_quantize_kernel`]).
    Kernel,
    /// The torch operations of [`crate::ops::fixed_quantize_ops`].
    TorchOps,
}

/// Whether CUDA calls may take the kernel: the environment variable `HGQ_CUDA_KERNEL`, `on`
/// (or `1`) for the kernel where it applies, `off` (or `0`) for the torch operations; unset
/// (or anything else), the kernel on each device where [`check_kernel`] has passed there (the
/// first call on a device runs it), else the torch operations.
///
/// The kernel is one launch where the torch operations are some forty (the formula's and the
/// bit-width check's), and it reads nothing back to the host, where the torch operations read
/// their check's flags at every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSetting {
    /// The kernel where it applies.
    On,
    /// The torch operations always.
    Off,
    /// The kernel where it applies and its check on the device has passed (the default).
    Checked,
}

impl KernelSetting {
    /// The process's setting, from `HGQ_CUDA_KERNEL`.
    pub fn from_env() -> KernelSetting {
        match std::env::var("HGQ_CUDA_KERNEL").as_deref() {
            Ok("on" | "1") => KernelSetting::On,
            Ok("off" | "0") => KernelSetting::Off,
            _ => KernelSetting::Checked,
        }
    }
}

impl Route {
    /// The route of a call on `device` with x of `kind` and rank `rank`: the kernel for the
    /// float kinds on CUDA up to [`MAX_DIMS`] dimensions, where the setting allows it and
    /// NVRTC is at hand (`nvrtc`); the torch operations otherwise (on the CPU the fused CPU
    /// kernel runs before either is asked).
    ///
    /// ```
    /// use hgq_torch::cuda::{KernelSetting, Route};
    /// use tch::{Device, Kind};
    /// let on = KernelSetting::On;
    /// assert_eq!(Route::choose(Device::Cuda(0), Kind::Float, 2, on, true), Route::Kernel);
    /// assert_eq!(Route::choose(Device::Cuda(0), Kind::Float, 2, on, false), Route::TorchOps);
    /// assert_eq!(Route::choose(Device::Cpu, Kind::Float, 2, on, true), Route::TorchOps);
    /// ```
    pub fn choose(
        device: Device,
        kind: Kind,
        rank: usize,
        setting: KernelSetting,
        nvrtc: bool,
    ) -> Route {
        let cuda = matches!(device, Device::Cuda(_));
        let float = matches!(
            kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        );
        if cuda && float && rank <= MAX_DIMS && setting != KernelSetting::Off && nvrtc {
            Route::Kernel
        } else {
            Route::TorchOps
        }
    }

    /// [`Route::choose`] for `x` with this process's setting and NVRTC (none once the kernel
    /// has failed in this process: [`kernel_failure`]); with [`KernelSetting::Checked`], the
    /// kernel only once [`check_kernel`] has passed on x's device (run at the first call there;
    /// a failure is the kernel's failure).
    pub fn of(x: &Tensor) -> Result<Route> {
        let (device, kind) = (x.device(), x.f_kind()?);
        // NVRTC only where it could matter (loading it is a file search).
        let nvrtc = matches!(device, Device::Cuda(_))
            && kernel_failure().is_none()
            && super::Nvrtc::load().is_ok();
        let setting = KernelSetting::from_env();
        let route = Route::choose(device, kind, x.dim(), setting, nvrtc);
        if route == Route::Kernel
            && setting == KernelSetting::Checked
            && let Err(why) = checked_on(device)
        {
            record_failure(why);
            return Ok(Route::TorchOps);
        }
        Ok(route)
    }
}

/// [`check_kernel`]'s answer on `device`, run once per device and process.
fn checked_on(device: Device) -> std::result::Result<(), String> {
    static CHECKED: std::sync::Mutex<Vec<(Device, std::result::Result<(), String>)>> =
        std::sync::Mutex::new(Vec::new());
    // A poisoned lock only means a panic while another thread held it: the list is whole.
    let mut done = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = done.iter().find(|(d, _)| *d == device) {
        return r.clone();
    }
    let r = check_kernel(device).map_err(|e| format!("the kernel's check on {device:?}: {e}"));
    done.push((device, r.clone()));
    r
}

/// Runs our kernel against the torch operations on `device` (its host build on the CPU) and
/// says whether they agree: a training call of RND SAT on 4096 float32 values with bit widths
/// per element and per column (each also with some of a type float32 does not hold), forward
/// and backward
/// through autograd; y, dx and the per-element bit widths' gradients bit for bit, the
/// per-column sums within 1e-5 (their order differs). It reads its results back (once); what
/// it leaves to [`crate::deferred::check`] is checked here and not mixed with the caller's.
///
/// ```
/// hgq_torch::cuda::check_kernel(tch::Device::Cpu)?; // the host build, where a C++ compiler is
/// # Ok::<(), hgq_torch::TorchError>(())
/// ```
pub fn check_kernel(device: Device) -> Result<()> {
    let (r, deferred) = crate::deferred::isolated(|| {
        tch::with_grad(|| {
            let run = || {
                for (per_column, wide) in
                    [(false, false), (false, true), (true, false), (true, true)]
                {
                    check_case(device, per_column, wide)?;
                }
                Ok(())
            };
            match device {
                Device::Cpu => super::rehearse(Route::Kernel, run).0,
                _ => run(),
            }
        })
    });
    r.and(deferred)
}

/// One case of [`check_kernel`].
fn check_case(device: Device, per_column: bool, wide: bool) -> Result<()> {
    let (rows, cols) = (64i64, 64i64);
    let n = rows * cols;
    let opts = (Kind::Float, device);
    // Values spread over a few powers of two, bit widths over their usual ranges.
    let j = Tensor::f_arange(n, opts)?;
    let x = j
        .f_mul_scalar(0.618_034)?
        .f_frac()?
        .f_sub_scalar(0.5)?
        .f_mul_scalar(37.0)?;
    let bw = if per_column { cols } else { n };
    let shape: Vec<i64> = if per_column {
        vec![cols]
    } else {
        vec![rows, cols]
    };
    let jb = Tensor::f_arange(bw, opts)?;
    let k = jb.f_remainder(2)?.f_reshape(shape.as_slice())?;
    let i = jb.f_remainder(7)?.f_sub_scalar(2.0)?;
    let f = jb.f_remainder(9)?.f_sub_scalar(1.0)?;
    let (i, f) = if wide {
        // Some bit widths of 12 + 17 bits: the call runs in float64.
        let w = jb.f_remainder(11)?.f_eq(0)?;
        (
            i.f_where_scalarother(&w.f_logical_not()?, 12.0)?,
            f.f_where_scalarother(&w.f_logical_not()?, 17.0)?,
        )
    } else {
        (i, f)
    };
    let (i, f) = (
        i.f_reshape(shape.as_slice())?,
        f.f_reshape(shape.as_slice())?,
    );
    let x = x.f_reshape([rows, cols])?;
    let dy = j
        .f_mul_scalar(0.377)?
        .f_frac()?
        .f_sub_scalar(0.5)?
        .f_reshape([rows, cols])?;
    let q = FixedPoint::new(hgq_core::RoundMode::Rnd, hgq_core::OverflowMode::Sat)?
        .with_bit_widths(BitWidths::Integer);
    let run = |f_: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<[Tensor; 4]> {
        let leaf =
            |t: &Tensor| -> Result<Tensor> { Ok(t.f_detach_copy()?.f_set_requires_grad(true)?) };
        let (x, i, f) = (leaf(&x)?, leaf(&i)?, leaf(&f)?);
        let y = f_(&x, &i, &f)?;
        y.f_mul(&dy)?.f_sum(Kind::Float)?.f_backward()?;
        Ok([y.f_detach()?, x.grad(), i.grad(), f.grad()])
    };
    let got = run(&|x, i, f| fixed_quantize_kernel(&q, x, &k, i, f, true))?;
    let want = run(&|x, i, f| crate::ops::fixed_quantize_ops(&q, x, &k, i, f, true))?;
    for (at, (g, w)) in got.iter().zip(&want).enumerate() {
        let same = if per_column && at >= 2 {
            g.f_allclose(w, 1e-5, 1e-5, false)?
        } else {
            g.f_equal(w)?
        };
        if !same {
            let what = ["y", "dx", "the gradient of i", "the gradient of f"][at];
            return Err(TorchError::Cuda(format!(
                "{what} differs from the torch operations' (per column {per_column}, wide {wide})"
            )));
        }
    }
    Ok(())
}

static FAILURE: OnceLock<String> = OnceLock::new();

/// Why the kernel route failed in this process (NVRTC could not compile, the driver could not
/// load or launch), if it did: from then on CUDA calls take the torch operations, as
/// [`crate::fixed_quantize`] does for the call that failed.
pub fn kernel_failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// Records the route's first failure (see [`kernel_failure`]).
pub(crate) fn record_failure(why: String) {
    let _ = FAILURE.set(why);
}

/// What one call's launches need, carried as bytes through the autograd function.
#[derive(Debug, Clone, Copy)]
struct Call {
    key: KernelKey,
    layout: Layout,
    args: Args,
    /// The backward's sums in the pass (bit widths one per column), or `None`: gradients per
    /// element of x, summed by torch.
    columns: Option<Columns>,
    /// How the call's launches use its status word.
    role: Role,
}

/// A call's part in the checks on the device (see [`fixed_quantize_kernel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The host checked the bit widths: no status word.
    Unchecked,
    /// The forward checks the bit widths into the status word; nothing is gated (float64).
    Checks,
    /// As `Checks`, and the backward runs only where the type is narrow (float32 computed
    /// in float32).
    Narrow,
    /// Runs only where the type is wide (float32 buffers computed in float64).
    Wide,
}

impl Role {
    /// The launch's `check` and `gate` (forward or backward).
    fn args(self, forward: bool) -> (i32, i32) {
        match self {
            Role::Unchecked => (0, 0),
            Role::Checks => (i32::from(forward), 0),
            Role::Narrow if forward => (1, 0),
            Role::Narrow => (0, super::GATE_NARROW),
            Role::Wide => (0, super::GATE_WIDE),
        }
    }
}

/// `Q(x, k, i, f)` through our kernel, differentiable by autograd: the values and gradients of
/// [`crate::fixed_quantize`] (the same bits for element-wise bit widths; the sums over the
/// dimensions that bit widths broadcast along are torch's). `x` float32 or float64, on a CUDA
/// device or on the CPU, where the kernel's host build runs ([`HostKernels`]: the route's
/// test without a GPU). `i`, `f` are what `q.bit_widths()` says, checked as hgq-core checks
/// them; a type wider than float32 holds runs in float64.
pub fn fixed_quantize_kernel(
    q: &FixedPoint,
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
    training: bool,
) -> Result<Tensor> {
    let kind = x.f_kind()?;
    let elem = match kind {
        Kind::Float => Elem::F32,
        Kind::Double => Elem::F64,
        kind => return Err(TorchError::Kind { what: "x", kind }),
    };
    crate::check_operands(x, [k, i, f])?;
    let [k, p1, p2] = crate::params_as(x.device(), kind, [k, i, f])?;
    let n = x.numel() as i64;
    let kbi = q.bit_widths() == BitWidths::KbiRaw;
    // Bit widths as large as x (broadcast-compatible, so the same shape) get gradients per
    // element: KBI's chain rule then runs per element in the kernel, as in hgq-core's pass;
    // smaller ones are summed first and the rule applied to the sums.
    let elementwise = p1.numel() == x.numel() && p2.numel() == x.numel();
    let dims = crate::dims;
    let layout = Layout::new(&dims(x), [&dims(&k), &dims(&p1), &dims(&p2)])?;
    // Both bit widths one per column of x (the input quantizers' usual layout; the layout's
    // reads say so): the backward sums their gradients in the pass.
    let columns = match (layout.read(1), layout.read(2)) {
        (Read::Modulo(c), Read::Modulo(c2)) if c == c2 && c > 0 => Some(Columns {
            rows: n / c,
            cols: c,
            chunk_rows: LaunchShape::chunk_rows((n / c) as u64, c as u64) as i64,
        }),
        _ => None,
    };
    // On a device the kernel checks the bit widths itself (nothing read back: an error is
    // seen at `deferred::check`), and a float32 call whose type float32 does not hold runs in
    // float64 by a second program gated on what the check found. Where the backward's sums
    // would have to be rounded differently in that case (bit widths broadcast otherwise than
    // per column), and on the host, the host checks first.
    let on_device = !crate::host::on_host(x);
    let role = match elem {
        Elem::F64 if on_device => Role::Checks,
        Elem::F32 if on_device && (elementwise || columns.is_some()) => Role::Narrow,
        _ => Role::Unchecked,
    };
    if role == Role::Unchecked
        && crate::ops::check_bit_widths(q, &k, &p1, &p2)?
        && elem == Elem::F32
    {
        // A type float32 does not hold: computed in float64, rounded to float32 once.
        let y = fixed_quantize_kernel(q, &x.f_to_kind(Kind::Double)?, &k, &p1, &p2, training)?;
        return Ok(y.f_to_kind(Kind::Float)?);
    }
    let seed = match q.stochastic() {
        Stochastic::Seeded(s) if training => Some(s),
        _ => None,
    };
    let key = KernelKey::new(
        q.round_mode(),
        seed.is_some(),
        q.overflow_mode(),
        training,
        elem,
    )?;
    let args = Args {
        seed: seed.unwrap_or(0),
        mask: i32::from(q.zero_mask() && !training),
        kbi: i32::from(kbi),
        chain: i32::from(kbi && elementwise),
        integer: i32::from(q.bit_widths() == BitWidths::Integer),
        ..Args::default()
    };
    let call = Call {
        key,
        layout,
        args,
        columns,
        role,
    };
    let wide = match role {
        Role::Narrow => Some(Call {
            key: KernelKey::new(
                q.round_mode(),
                seed.is_some(),
                q.overflow_mode(),
                training,
                Elem::F64,
            )?
            .stored_as(Elem::F32),
            role: Role::Wide,
            ..call
        }),
        _ => None,
    };
    let status = match role {
        Role::Unchecked => None,
        _ => Some(Tensor::f_zeros([1], (Kind::Int, x.device()))?),
    };
    let (chunks, cols) = columns.map_or((0, 0), |c| (c.chunks(), c.cols));
    let y = crate::bridge::kernel_apply(
        &x.f_contiguous()?,
        &k.f_contiguous()?,
        &p1.f_contiguous()?,
        &p2.f_contiguous()?,
        status.as_ref(),
        call_bytes(&call),
        wide.as_ref().map_or(&[][..], call_bytes),
        kbi && !elementwise,
        (chunks, cols),
    )?;
    if let Some(status) = status {
        let bad = status.f_bitwise_and(i64::from(super::ST_BAD))?.f_ne(0)?;
        crate::deferred::defer(crate::deferred::Check::BitWidths, &bad)?;
    }
    Ok(y)
}

fn call_bytes(c: &Call) -> &[u8] {
    // SAFETY: `Call` is plain data (Copy, no pointers); its bytes come back as a `Call` in
    // this process only (`call_of`).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(c).cast(), size_of::<Call>()) }
}

/// # Safety
/// `p` points at `len` readable bytes.
unsafe fn call_of(p: *const u8, len: usize) -> Option<Call> {
    // SAFETY: the caller's bytes, written by `call_bytes` in this process.
    (len == size_of::<Call>()).then(|| unsafe { p.cast::<Call>().read_unaligned() })
}

/// The launch that `KernelFn` (bridge.cpp) asks for; see its declaration there.
///
/// # Safety
/// The C++ side's pointers: `call` holds `call_len` bytes from [`fixed_quantize_kernel`], the
/// buffers hold `n` elements of the call's type on `device` (or the host for -1), `err` is
/// writable for `err_len` bytes.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn hgq_torch_kernel_launch(
    call: *const u8,
    call_len: usize,
    which: c_int,
    x: *const c_void,
    k: *const c_void,
    p1: *const c_void,
    p2: *const c_void,
    dy: *const c_void,
    y: *mut c_void,
    dx: *mut c_void,
    ga: *mut c_void,
    gb: *mut c_void,
    status: *mut c_void,
    n: i64,
    device: c_int,
    stream: *mut c_void,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let run = || -> Result<()> {
        // SAFETY: the caller's bytes.
        let mut c = unsafe { call_of(call, call_len) }
            .ok_or_else(|| TorchError::Cuda("a kernel call of the wrong size".into()))?;
        let (check, gate) = c.role.args(which == 0);
        c.args.status = status as u64;
        c.args.check = check;
        c.args.gate = gate;
        let b = Buffers {
            x,
            k,
            a: p1,
            b: p2,
            dy,
            y,
            dx,
            ga,
            gb,
        };
        // which 2: the backward with the sums in the pass (ga, gb the partial sums).
        let backward = which >= 1;
        let columns = if which == 2 {
            Some(c.columns.ok_or_else(|| {
                TorchError::Cuda("a column backward for a call without columns".into())
            })?)
        } else {
            None
        };
        if device < 0 {
            let h = HostKernels::of(&c.key)?;
            // SAFETY: host buffers of n elements (the caller's contract).
            unsafe {
                match columns {
                    Some(cols) => h.run_columns(b, cols, c.layout, c.args),
                    None => h.run(backward, b, n, c.layout, c.args),
                }
            }
            Ok(())
        } else {
            // SAFETY: device buffers of n elements, held by the autograd function's tensors.
            unsafe {
                super::driver::launch(
                    &c.key, backward, columns, b, n, c.layout, c.args, device, stream,
                )
            }
        }
    };
    let out = catch_unwind(AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err(TorchError::Cuda("a panic in the kernel launch".into())));
    match out {
        Ok(()) => 0,
        Err(e) => {
            if !err.is_null() && err_len > 0 {
                let msg = e.to_string();
                let bytes = &msg.as_bytes()[..msg.len().min(err_len - 1)];
                // SAFETY: `err` is writable for `err_len` bytes; we write at most that many.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), err, bytes.len());
                    *err.add(bytes.len()) = 0;
                }
            }
            1
        }
    }
}
