//! The BLAS `sgemm` that libtorch itself calls (MKL in the x86-64 Linux wheels), found in the
//! process at run time.
//!
//! The native training step's matrix products are its largest single cost on wide layers, and
//! MKL's `sgemm` runs them faster than `matrixmultiply` on the shapes of a step
//! (`benches/RESULTS.md` has the measurements). libtorch exports MKL's Fortran interface
//! (`sgemm_`, also as `mkl_blas__sgemm`) and its thread-local thread count; they are looked up
//! once with `dlsym`, so that a libtorch without them (other systems, other BLAS) links and
//! runs as before, on `matrixmultiply`.
//!
//! The step takes MKL on Intel processors only: on others MKL runs a generic path (on AMD its
//! `zen` kernels), slower there than `matrixmultiply`'s AVX-512 kernel on the same products.
//! The choice is fixed per machine, so a step's results stay deterministic on it.
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// Fortran BLAS `sgemm` (LP64: 32-bit integers), column-major.
type SgemmFn = unsafe extern "C" fn(
    transa: *const c_char,
    transb: *const c_char,
    m: *const c_int,
    n: *const c_int,
    k: *const c_int,
    alpha: *const f32,
    a: *const f32,
    lda: *const c_int,
    b: *const f32,
    ldb: *const c_int,
    beta: *const f32,
    c: *mut f32,
    ldc: *const c_int,
);

/// MKL's `MKL_Set_Num_Threads_Local`: the calling thread's thread count for MKL (0: the
/// global one); returns the previous local value.
type SetThreadsFn = unsafe extern "C" fn(n: c_int) -> c_int;

/// A matrix operand by pointer: its first element, its row stride and its column stride.
pub(crate) type RawOperand = (*const f32, usize, usize);

/// A product by pointers, as `sgemm` takes it: row-major `c` (`m x n`, rows `ldc` apart)
/// `= a @ b + beta * c`, `a` (`m x k`) and `b` (`k x n`) at their strides. What [`sgemm`],
/// [`matrixmultiply`] and the native step's own kernel compute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawGemm {
    /// `(m, k, n)`.
    pub(crate) dims: (usize, usize, usize),
    pub(crate) a: RawOperand,
    pub(crate) b: RawOperand,
    pub(crate) beta: f32,
    pub(crate) c: *mut f32,
    pub(crate) ldc: usize,
}

/// MKL's functions that the products call, found in the libraries libtorch loaded.
pub(crate) struct Mkl {
    sgemm: SgemmFn,
    set_threads_local: SetThreadsFn,
}

#[cfg(target_os = "linux")]
fn lookup() -> Option<Mkl> {
    unsafe extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    // RTLD_DEFAULT (a null handle on glibc): every library loaded in the process, libtorch_cpu
    // among them (hgq-torch links it).
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only reads.
    let (g, t) = unsafe {
        (
            // MKL's own name of its Fortran `sgemm_` (the same function in libtorch_cpu): a
            // plain `sgemm_` could be another BLAS loaded into the process first.
            dlsym(std::ptr::null_mut(), c"mkl_blas__sgemm".as_ptr()),
            // The C interface (by value); `mkl_set_num_threads_local` is exported as the
            // Fortran one, which takes a pointer.
            dlsym(std::ptr::null_mut(), c"MKL_Set_Num_Threads_Local".as_ptr()),
        )
    };
    if g.is_null() || t.is_null() {
        return None;
    }
    // SAFETY: symbols of these names are MKL's functions of these signatures (LP64, as
    // libtorch links MKL).
    unsafe {
        Some(Mkl {
            sgemm: std::mem::transmute::<*mut c_void, SgemmFn>(g),
            set_threads_local: std::mem::transmute::<*mut c_void, SetThreadsFn>(t),
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn lookup() -> Option<Mkl> {
    None
}

/// MKL's functions where the process has them.
fn found() -> Option<&'static Mkl> {
    static MKL: OnceLock<Option<Mkl>> = OnceLock::new();
    MKL.get_or_init(lookup).as_ref()
}

/// MKL where the step takes it: found, on an Intel processor.
pub(crate) fn mkl() -> Option<&'static Mkl> {
    // Once: CPUID exits to the hypervisor on a virtual machine.
    static STEP: OnceLock<Option<&'static Mkl>> = OnceLock::new();
    *STEP.get_or_init(|| found().filter(|_| intel()))
}

/// Whether this is an Intel processor (CPUID's vendor string "GenuineIntel").
#[cfg(target_arch = "x86_64")]
fn intel() -> bool {
    // SAFETY: CPUID's leaf 0 exists on every x86-64 processor.
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    // The vendor string is EBX, EDX, ECX in that order, little-endian.
    [r.ebx, r.edx, r.ecx] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e]
}

#[cfg(not(target_arch = "x86_64"))]
fn intel() -> bool {
    false
}

/// A row-major operand (`rows x cols` at strides `rs`, `cs`) for BLAS: read column-major it
/// is its transpose when its rows are contiguous (`'N'` in the product `C^T = B^T A^T`), the
/// matrix itself when its columns are (`'T'`); with its leading dimension. `None` for other
/// strides (overlapping rows or columns) or a leading dimension beyond `int`.
fn layout(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(c_char, c_int)> {
    // A single row or column has no stride between them: any leading dimension that BLAS
    // takes (at least the rows of the column-major matrix, and 1) reads the same elements.
    let (t, ld) = if cs == 1 && (rs >= cols || rows == 1) {
        (b'N', rs.max(cols))
    } else if rs == 1 && (cs >= rows || cols == 1) {
        (b'T', cs.max(rows))
    } else {
        return None;
    };
    Some((t as c_char, c_int::try_from(ld.max(1)).ok()?))
}

/// `g` on one thread with these MKL functions. Returns `false`, having done nothing, where MKL
/// cannot take these strides or sizes.
///
/// # Safety
/// Every element of `a`, `b` and `c` at these strides is in its buffer, and no other thread
/// writes the part of `c` this writes. With `beta` 0, `c` is written, not read.
pub(crate) unsafe fn sgemm(mkl: &Mkl, g: RawGemm) -> bool {
    let RawGemm {
        dims: (m, k, n),
        a: (a, rsa, csa),
        b: (b, rsb, csb),
        beta,
        c,
        ldc,
    } = g;
    // C^T (n x m, column-major, leading dimension ldc) = B^T (n x k) @ A^T (k x m).
    let (Some((tb, ldb)), Some((ta, lda))) = (layout(k, n, rsb, csb), layout(m, k, rsa, csa))
    else {
        return false;
    };
    let int = |v: usize| c_int::try_from(v).ok();
    let (Some(m), Some(n), Some(k), Some(ldc)) = (int(m), int(n), int(k), int(ldc.max(1))) else {
        return false;
    };
    if ldc < n {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let alpha = 1.0f32;
    // SAFETY: MKL's functions (found by name above); the operands are in bounds as the caller
    // promises, with the layouts and leading dimensions checked by `layout`. One thread: the
    // caller splits products over its own threads, and MKL's threads would compete with them.
    unsafe {
        let prev = (mkl.set_threads_local)(1);
        (mkl.sgemm)(
            &tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc,
        );
        (mkl.set_threads_local)(prev);
    }
    true
}

/// `g` on `matrixmultiply` (any strides and sizes, one thread): what the step runs where
/// neither MKL nor its own kernel does, and what the tests compare them with.
///
/// # Safety
/// As [`sgemm`]'s.
pub(crate) unsafe fn matrixmultiply(g: RawGemm) {
    let RawGemm {
        dims: (m, k, n),
        a: (a, rsa, csa),
        b: (b, rsb, csb),
        beta,
        c,
        ldc,
    } = g;
    // SAFETY: as the caller promises; strides of Rust buffers fit in isize.
    unsafe {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// MKL's products, every layout the step uses (a or b transposed as strides) and the edge
    /// sizes (k = 0, one row, one column), against `matrixmultiply` up to float32 rounding;
    /// `beta = 0` never reads c (NaN there stays out), `beta = 1` adds to it.
    #[test]
    fn mkl_products_are_the_products() {
        // libtorch's x86-64 Linux wheels bring MKL: there the products must take this path.
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert!(found().is_some(), "MKL's sgemm not found in libtorch");
        let Some(mkl) = found() else {
            return;
        };
        let fill = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|j| ((j as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
                .map(|v| v as f32 / 500.0 - 1.0)
                .collect()
        };
        for (m, k, n) in [(64, 33, 17), (1, 9, 7), (8, 5, 1), (6, 0, 4), (130, 64, 10)] {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a, b) = (fill(m * k, 1), fill(k * n, 2));
                let (rsa, csa) = if a_t { (1, m) } else { (k, 1) };
                let (rsb, csb) = if b_t { (1, k) } else { (n, 1) };
                for beta in [0.0f32, 1.0] {
                    let start = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        fill(m * n, 3)
                    };
                    let (mut got, mut want) = (start.clone(), start.clone());
                    // SAFETY: the buffers hold these shapes at these strides.
                    let done = unsafe {
                        sgemm(
                            mkl,
                            RawGemm {
                                dims: (m, k, n),
                                a: (a.as_ptr(), rsa, csa),
                                b: (b.as_ptr(), rsb, csb),
                                beta,
                                c: got.as_mut_ptr(),
                                ldc: n,
                            },
                        )
                    };
                    assert!(done, "{m}x{k}x{n} a_t={a_t} b_t={b_t}");
                    // SAFETY: as above.
                    unsafe {
                        matrixmultiply(RawGemm {
                            dims: (m, k, n),
                            a: (a.as_ptr(), rsa, csa),
                            b: (b.as_ptr(), rsb, csb),
                            beta,
                            c: want.as_mut_ptr(),
                            ldc: n,
                        });
                    }
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * (k as f32 + 1.0),
                            "{m}x{k}x{n} a_t={a_t} b_t={b_t} beta={beta} [{j}]: {g} against {w}"
                        );
                    }
                }
            }
        }
        // Overlapping rows: refused, nothing written.
        let (a, b) = (fill(4, 1), fill(4, 2));
        let mut c = vec![7.0f32; 4];
        // SAFETY: every element read or written is in its buffer.
        let done = unsafe {
            sgemm(
                mkl,
                RawGemm {
                    dims: (2, 2, 2),
                    a: (a.as_ptr(), 1, 1),
                    b: (b.as_ptr(), 2, 1),
                    beta: 0.0,
                    c: c.as_mut_ptr(),
                    ldc: 2,
                },
            )
        };
        assert!(!done);
        assert_eq!(c, [7.0; 4]);
    }
}
