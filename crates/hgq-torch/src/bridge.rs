//! The Rust side of the C++ autograd bridge (`src/bridge.cpp`).
use std::ffi::{c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use std::cell::RefCell;

use hgq_core::{CoreError, FixedGrads, FixedPoint, Screen, TensorRef, Upstream};
use tch::Tensor;
use torch_sys::C_tensor;

use crate::TorchError;

thread_local! {
    /// hgq-core's error of the last failed kernel call on this thread: the C side carries a
    /// message only, and [`fixed_apply`] (same thread, same call) hands on the typed error.
    static LAST_ERROR: RefCell<Option<CoreError>> = const { RefCell::new(None) };
}

/// A borrowed float32 tensor as the C++ side describes it.
#[repr(C)]
pub(crate) struct View {
    data: *const f32,
    shape: *const i64,
    ndim: i64,
}

unsafe extern "C" {
    fn hgq_torch_cuda_linked() -> c_int;
    fn hgq_torch_clear_grad(t: *const C_tensor);
    fn hgq_torch_bump_version(t: *const C_tensor);
    fn hgq_torch_plain_f32(t: *const C_tensor, data: *mut *mut f32, numel: *mut i64) -> c_int;
    fn hgq_torch_fixed_apply(
        x: *const C_tensor,
        k: *const C_tensor,
        p1: *const C_tensor,
        p2: *const C_tensor,
        cfg: *const u8,
        cfg_len: usize,
        training: c_int,
        bits: c_int,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn hgq_torch_kernel_apply(
        x: *const C_tensor,
        k: *const C_tensor,
        p1: *const C_tensor,
        p2: *const C_tensor,
        status: *const C_tensor,
        call: *const u8,
        call_len: usize,
        wide: *const u8,
        wide_len: usize,
        chain_after: c_int,
        chunks: i64,
        cols: i64,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Whether this build links libtorch_cuda (see build.rs).
pub(crate) fn cuda_linked() -> bool {
    // SAFETY: no arguments, no preconditions.
    unsafe { hgq_torch_cuda_linked() != 0 }
}

/// Drops `t`'s gradient (it becomes undefined), as PyTorch's `zero_grad(set_to_none=True)`.
pub(crate) fn clear_grad(t: &Tensor) {
    // SAFETY: `t` is a live tch tensor (a pointer to a `torch::Tensor`).
    unsafe { hgq_torch_clear_grad(t.as_ptr()) }
}

/// Moves `t`'s version counter, as an in-place operation through libtorch would (after a write
/// through its raw memory).
pub(crate) fn bump_version(t: &Tensor) {
    // SAFETY: `t` is a live tch tensor (a pointer to a `torch::Tensor`).
    unsafe { hgq_torch_bump_version(t.as_ptr()) }
}

/// A contiguous float32 CPU tensor's memory and element count (`None` for any other tensor;
/// a null pointer for no elements), from one call into libtorch.
pub(crate) fn plain_f32(t: &Tensor) -> Option<(*mut f32, usize)> {
    // A rehearsed CUDA step (`cuda::rehearse`) has no host memory to take.
    if crate::cuda::rehearse::route().is_some() {
        return None;
    }
    let (mut data, mut numel) = (std::ptr::null_mut(), 0i64);
    // SAFETY: `t` is a live tch tensor; the out-pointers are valid for one write each.
    let plain = unsafe { hgq_torch_plain_f32(t.as_ptr(), &mut data, &mut numel) } != 0;
    let n = usize::try_from(numel).ok()?;
    plain.then_some((data, n))
}

/// A [`Screen`] as the C++ side keeps it (in the autograd node's saved data).
fn screen_code(s: Screen) -> c_int {
    match s {
        Screen::Unknown => 0,
        Screen::InRange => 1,
    }
}

/// The [`Screen`] of a code from [`screen_code`] (anything else: nothing known).
fn screen_of(code: c_int) -> Screen {
    if code == 1 {
        Screen::InRange
    } else {
        Screen::Unknown
    }
}

/// `FixedFn::apply(x, k, p1, p2)`: float32, contiguous, CPU tensors (the caller checks);
/// `p1`, `p2` are what `q.bit_widths()` says.
pub(crate) fn fixed_apply(
    q: &FixedPoint,
    training: bool,
    x: &Tensor,
    k: &Tensor,
    p1: &Tensor,
    p2: &Tensor,
) -> Result<Tensor, TorchError> {
    LAST_ERROR.with(|e| e.borrow_mut().take());
    // The quantizer travels by value, as bytes, and comes back in `hgq_torch_fixed_cpu`
    // (same process, same type), also when autograd runs the backward later.
    let cfg = (q as *const FixedPoint).cast::<u8>();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: the tensors are live tch tensors (pointers to `torch::Tensor`), `cfg` points at
    // `size_of::<FixedPoint>()` readable bytes, `err` is writable for its length.
    let rc = unsafe {
        hgq_torch_fixed_apply(
            x.as_ptr(),
            k.as_ptr(),
            p1.as_ptr(),
            p2.as_ptr(),
            cfg,
            size_of::<FixedPoint>(),
            c_int::from(training),
            0,
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 || out.is_null() {
        if let Some(e) = LAST_ERROR.with(|e| e.borrow_mut().take()) {
            return Err(TorchError::Core(e));
        }
        // SAFETY: the C++ side NUL-terminates within the buffer.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(TorchError::Kernel(msg.to_string_lossy().into_owned()));
    }
    // SAFETY: `out` is a `new torch::Tensor` that we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `KernelFn::apply(x, k, p1, p2)` (bridge.cpp): contiguous tensors of one float kind on one
/// device; `status`, the call's status word (an int32 on x's device) where the kernel checks
/// the bit widths; `call` the bytes `cuda::route` decodes at each launch, `wide` those of the
/// same call in float64 on float32 buffers (empty: none), gated on the status word;
/// `chain_after`, KBI's chain rule on the summed gradients; `(chunks, cols)`, the partial
/// sums' shape where the backward sums per-column gradients in the pass (`(0, 0)`: gradients
/// per element).
#[allow(clippy::too_many_arguments)]
pub(crate) fn kernel_apply(
    x: &Tensor,
    k: &Tensor,
    p1: &Tensor,
    p2: &Tensor,
    status: Option<&Tensor>,
    call: &[u8],
    wide: &[u8],
    chain_after: bool,
    (chunks, cols): (i64, i64),
) -> Result<Tensor, TorchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: live tch tensors, `call` readable for its length, `err` writable for its length.
    let rc = unsafe {
        hgq_torch_kernel_apply(
            x.as_ptr(),
            k.as_ptr(),
            p1.as_ptr(),
            p2.as_ptr(),
            status.map_or(std::ptr::null(), |t| t.as_ptr()),
            call.as_ptr(),
            call.len(),
            wide.as_ptr(),
            wide.len(),
            c_int::from(chain_after),
            chunks,
            cols,
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 || out.is_null() {
        // SAFETY: the C++ side NUL-terminates within the buffer.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(TorchError::Cuda(msg.to_string_lossy().into_owned()));
    }
    // SAFETY: `out` is a `new torch::Tensor` that we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Why a kernel call failed: hgq-core refused it, or the bridge itself.
enum Failure {
    Core(CoreError),
    Other(String),
}

/// # Safety
/// `v` points at a view of live, contiguous data with `ndim` dims.
unsafe fn shape_of(v: &View) -> Vec<usize> {
    if v.ndim <= 0 || v.shape.is_null() {
        return Vec::new();
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts(v.shape, v.ndim as usize) }
        .iter()
        .map(|&d| d as usize)
        .collect()
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// # Safety
/// As [`shape_of`]; the data has `numel(shape)` elements.
unsafe fn data_of<'a>(v: &View, shape: &[usize]) -> &'a [f32] {
    // SAFETY: per the caller.
    unsafe { data_ref(v.data, numel(shape)) }
}

/// # Safety
/// `p` points at `n` readable values (or `n` is 0, or `p` is null: an empty slice).
unsafe fn data_ref<'a>(p: *const f32, n: usize) -> &'a [f32] {
    if n == 0 || p.is_null() {
        return &[];
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts(p, n) }
}

unsafe fn data_mut<'a>(p: *mut f32, n: usize) -> &'a mut [f32] {
    if n == 0 || p.is_null() {
        return &mut [];
    }
    // SAFETY: per the caller.
    unsafe { std::slice::from_raw_parts_mut(p, n) }
}

/// Called by `FixedFn` (C++) in forward (`dy` null: y only, and the [`Screen`] it found into
/// `screen_out`) and backward (`dx`, `dp1`, `dp2`, taking `screen`, the forward's, as known;
/// `dy_same`: `dy` is one value for every element); `bits` is 0 (the quantizer says what the
/// bit widths are).
///
/// # Safety
/// Called only from `bridge.cpp` with views of live float32 contiguous tensors, `y`/`dx` and
/// `dy` (unless `dy_same`) with x's element count, `dp1`/`dp2` with p1's/p2's, `cfg` from
/// [`fixed_apply`], `screen_out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hgq_torch_fixed_cpu(
    cfg: *const u8,
    cfg_len: usize,
    training: c_int,
    bits: c_int,
    screen: c_int,
    screen_out: *mut c_int,
    x: *const View,
    k: *const View,
    p1: *const View,
    p2: *const View,
    dy: *const f32,
    dy_same: c_int,
    y: *mut f32,
    dx: *mut f32,
    dp1: *mut f32,
    dp2: *mut f32,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let run = || -> Result<(), Failure> {
        if cfg_len != size_of::<FixedPoint>() || cfg.is_null() {
            return Err(Failure::Other(
                "hgq bridge: quantizer bytes of the wrong size".into(),
            ));
        }
        // SAFETY: bytes of a valid `FixedPoint` (see `fixed_apply`).
        let q: FixedPoint = unsafe { std::ptr::read_unaligned(cfg.cast::<FixedPoint>()) };
        let q = q.with_screen(screen_of(screen));
        // SAFETY: per this function's contract.
        let (x, k, p1, p2) = unsafe { (&*x, &*k, &*p1, &*p2) };
        let (sx, sk, s1, s2) = unsafe { (shape_of(x), shape_of(k), shape_of(p1), shape_of(p2)) };
        let (dxv, dkv, d1, d2) = unsafe {
            (
                data_of(x, &sx),
                data_of(k, &sk),
                data_of(p1, &s1),
                data_of(p2, &s2),
            )
        };
        if bits != 0 {
            return Err(Failure::Other(format!(
                "hgq bridge: unknown bit-width layout {bits}"
            )));
        }
        let t = |d, s| TensorRef::new(d, s).map_err(Failure::Core);
        let (tx, tk, ti, tf) = (t(dxv, &sx)?, t(dkv, &sk)?, t(d1, &s1)?, t(d2, &s2)?);
        let n = numel(&sx);
        let training = training != 0;
        if dy.is_null() {
            let y = unsafe { data_mut(y, n) };
            let found = q
                .forward(tx, tk, ti, tf, training, y)
                .map_err(Failure::Core)?;
            if !screen_out.is_null() {
                // SAFETY: per this function's contract.
                unsafe { *screen_out = screen_code(found) };
            }
            return Ok(());
        }
        let dy = if dy_same != 0 {
            // SAFETY: one readable value (the C++ side checked numel > 0).
            Upstream::Same(unsafe { *dy })
        } else {
            // SAFETY: `n` values (an empty tensor's null pointer gives `&[]`).
            Upstream::Each(unsafe { data_ref(dy, n) })
        };
        let (g1, g2) = unsafe { (data_mut(dp1, numel(&s1)), data_mut(dp2, numel(&s2))) };
        let grads = FixedGrads {
            dx: unsafe { data_mut(dx, n) },
            di: g1,
            df: g2,
        };
        q.backward(tx, tk, ti, tf, training, dy, grads)
            .map(|_| ())
            .map_err(Failure::Core)
    };
    let res = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
        Err(Failure::Other(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic in hgq kernel".into()),
        ))
    });
    match res {
        Ok(()) => 0,
        Err(failure) => {
            let msg = match failure {
                Failure::Core(e) => {
                    let msg = e.to_string();
                    LAST_ERROR.with(|l| *l.borrow_mut() = Some(e));
                    msg
                }
                Failure::Other(msg) => msg,
            };
            if !err.is_null() && err_len > 0 {
                let bytes = msg.as_bytes();
                let n = bytes.len().min(err_len - 1);
                // SAFETY: `err` is writable for `err_len` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), err, n);
                    *err.add(n) = 0;
                }
            }
            1
        }
    }
}
