//! The Rust side of the C++ autograd bridge (`src/bridge.cpp`).
use std::ffi::{c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use hgq_core::{FixedGrads, FixedPoint, Screen, TensorRef, Upstream};
use tch::Tensor;
use torch_sys::C_tensor;

use crate::quantizer::rc1;

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

/// What the two bit-width tensors given to the kernel are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bits {
    /// `i`, `f`, read as the quantizer's [`hgq_core::BitWidths`] says.
    IntFrac = 0,
    /// KBI's raw `b`, `i` (one shape): the pass uses `i = rc(i)`, `f = rc(b) - rc(i)` (integer
    /// bit widths) and returns `db = df`, `di = di - df`, the gradients autograd gives
    /// through those two operations, without running them as tensor operations.
    KbiRaw = 1,
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

/// `FixedFn::apply(x, k, p1, p2)`: float32, contiguous, CPU tensors (the caller checks).
pub(crate) fn fixed_apply(
    q: &FixedPoint,
    training: bool,
    bits: Bits,
    x: &Tensor,
    k: &Tensor,
    p1: &Tensor,
    p2: &Tensor,
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
            p1.as_ptr(),
            p2.as_ptr(),
            cfg,
            size_of::<FixedPoint>(),
            c_int::from(training),
            bits as c_int,
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

/// KBI's `(i, f) = (rc(i), rc(b) - rc(i))` from raw `b`, `i`.
fn kbi_int_frac(b: &[f32], i: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let iu: Vec<f32> = i.iter().map(|&v| rc1(v)).collect();
    let fu = b.iter().zip(&iu).map(|(&b, &i)| rc1(b) - i).collect();
    (iu, fu)
}

/// Called by `FixedFn` (C++) in forward (`dy` null: y only, and the [`Screen`] it found into
/// `screen_out`) and backward (`dx`, `dp1`, `dp2`, taking `screen`, the forward's, as known;
/// `dy_same`: `dy` is one value for every element); `bits` is a [`Bits`].
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
    let run = || -> Result<(), String> {
        if cfg_len != size_of::<FixedPoint>() || cfg.is_null() {
            return Err("hgq bridge: quantizer bytes of the wrong size".into());
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
        let kbi = match bits {
            0 => None,
            1 if s1 == s2 => Some(kbi_int_frac(d1, d2)),
            1 => {
                return Err(format!(
                    "KBI bit widths b {s1:?} and i {s2:?} must have one shape"
                ));
            }
            other => return Err(format!("hgq bridge: unknown bit-width layout {other}")),
        };
        // The kernel's i, f: the inputs, or KBI's integer values derived from them.
        let (iv, fv): (&[f32], &[f32]) = match &kbi {
            Some((i, f)) => (i, f),
            None => (d1, d2),
        };
        let t = |d, s| TensorRef::new(d, s).map_err(|e| e.to_string());
        let (tx, tk, ti, tf) = (t(dxv, &sx)?, t(dkv, &sk)?, t(iv, &s1)?, t(fv, &s2)?);
        let n = numel(&sx);
        let training = training != 0;
        if dy.is_null() {
            let y = unsafe { data_mut(y, n) };
            let found = q
                .forward(tx, tk, ti, tf, training, y)
                .map_err(|e| e.to_string())?;
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
        match kbi {
            None => {
                let grads = FixedGrads {
                    dx: unsafe { data_mut(dx, n) },
                    di: g1,
                    df: g2,
                };
                q.backward(tx, tk, ti, tf, training, dy, grads)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Some(_) => {
                // p1 = b, p2 = i: the kernel's df is b's gradient; i's is di + (-df), the sum
                // autograd forms for i's two uses (as i, and in f = b - i).
                let grads = FixedGrads {
                    dx: unsafe { data_mut(dx, n) },
                    di: &mut *g2,
                    df: &mut *g1,
                };
                q.backward(tx, tk, ti, tf, training, dy, grads)
                    .map_err(|e| e.to_string())?;
                for (di, &db) in g2.iter_mut().zip(g1.iter()) {
                    *di += -db;
                }
                Ok(())
            }
        }
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
