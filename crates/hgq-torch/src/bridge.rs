//! The Rust side of the C++ autograd bridge (`src/bridge.cpp`).
use std::ffi::{c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use hgq_core::{FixedGrads, FixedPoint, TensorRef, Upstream};
use tch::Tensor;
use torch_sys::C_tensor;

/// A borrowed float32 tensor as the C++ side describes it.
#[repr(C)]
pub(crate) struct View {
    data: *const f32,
    shape: *const i64,
    ndim: i64,
}

unsafe extern "C" {
    fn hgq_torch_cuda_linked() -> c_int;
    fn hgq_torch_fixed_apply(
        x: *const C_tensor,
        k: *const C_tensor,
        i: *const C_tensor,
        f: *const C_tensor,
        cfg: *const u8,
        cfg_len: usize,
        training: c_int,
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

/// `FixedFn::apply(x, k, i, f)`: float32, contiguous, CPU tensors (the caller checks).
pub(crate) fn fixed_apply(
    q: &FixedPoint,
    training: bool,
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
) -> Result<Tensor, String> {
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
            i.as_ptr(),
            f.as_ptr(),
            cfg,
            size_of::<FixedPoint>(),
            c_int::from(training),
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 || out.is_null() {
        // SAFETY: the C++ side NUL-terminates within the buffer.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(msg.to_string_lossy().into_owned());
    }
    // SAFETY: `out` is a `new torch::Tensor` that we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
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

/// Called by `FixedFn` (C++) in forward (`dy` null: y only) and backward (`dx`, `di`, `df`;
/// `dy_same`: `dy` is one value for every element).
///
/// # Safety
/// Called only from `bridge.cpp` with views of live float32 contiguous tensors, `y`/`dx` and
/// `dy` (unless `dy_same`) with x's element count, `di`/`df` with i's/f's, `cfg` from
/// [`fixed_apply`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hgq_torch_fixed_cpu(
    cfg: *const u8,
    cfg_len: usize,
    training: c_int,
    x: *const View,
    k: *const View,
    i: *const View,
    f: *const View,
    dy: *const f32,
    dy_same: c_int,
    y: *mut f32,
    dx: *mut f32,
    di: *mut f32,
    df: *mut f32,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    let run = || -> Result<(), String> {
        if cfg_len != size_of::<FixedPoint>() || cfg.is_null() {
            return Err("hgq bridge: quantizer bytes of the wrong size".into());
        }
        // SAFETY: bytes of a valid `FixedPoint` (see `fixed_apply`).
        let q: FixedPoint = unsafe { std::ptr::read_unaligned(cfg.cast::<FixedPoint>()) };
        // SAFETY: per this function's contract.
        let (x, k, i, f) = unsafe { (&*x, &*k, &*i, &*f) };
        let (sx, sk, si, sf) = unsafe { (shape_of(x), shape_of(k), shape_of(i), shape_of(f)) };
        let (dxv, dkv, div, dfv) = unsafe {
            (
                data_of(x, &sx),
                data_of(k, &sk),
                data_of(i, &si),
                data_of(f, &sf),
            )
        };
        let t = |d, s| TensorRef::new(d, s).map_err(|e| e.to_string());
        let (tx, tk, ti, tf) = (t(dxv, &sx)?, t(dkv, &sk)?, t(div, &si)?, t(dfv, &sf)?);
        let n = numel(&sx);
        let training = training != 0;
        if dy.is_null() {
            let y = unsafe { data_mut(y, n) };
            q.forward(tx, tk, ti, tf, training, y)
        } else {
            let dy = if dy_same != 0 {
                // SAFETY: one readable value (the C++ side checked numel > 0).
                Upstream::Same(unsafe { *dy })
            } else {
                // SAFETY: `n` values (an empty tensor's null pointer gives `&[]`).
                Upstream::Each(unsafe { data_ref(dy, n) })
            };
            let grads = FixedGrads {
                dx: unsafe { data_mut(dx, n) },
                di: unsafe { data_mut(di, numel(&si)) },
                df: unsafe { data_mut(df, numel(&sf)) },
            };
            q.backward(tx, tk, ti, tf, training, dy, grads)
        }
        .map_err(|e| e.to_string())
    };
    let res = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
        Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic in hgq kernel".into()))
    });
    match res {
        Ok(()) => 0,
        Err(msg) => {
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
