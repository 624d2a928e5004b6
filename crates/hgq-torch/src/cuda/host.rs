//! The kernels' text built for the host CPU (`fixed.cu` with `HGQ_HOST`, by the system's C++
//! compiler): the same arithmetic as the device build, one thread walking every element. The
//! kernel route runs it for CPU tensors, so that everything the route does around a launch
//! (layouts, arguments, the autograd function, the sums of the bit widths' gradients) is
//! tested on machines without a GPU.
use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::dl::{self, Scope};
use super::{Args, BACKWARD_KERNEL, COLUMNS_KERNEL, FORWARD_KERNEL, KernelKey, Layout};
use crate::{Result, TorchError};

type ForwardFn = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut c_void,
    i64,
    Layout,
    Args,
);
type BackwardFn = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    i64,
    Layout,
    Args,
);

type ColumnsFn = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *const c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    i64,
    i64,
    i64,
    Layout,
    Args,
);

/// x seen as rows x columns for [`COLUMNS_KERNEL`]: bit widths one per
/// column, their gradients summed over chunks of `chunk_rows` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Columns {
    /// Rows (x's elements over `cols`).
    pub rows: i64,
    /// Columns (the bit widths' elements).
    pub cols: i64,
    /// Rows per chunk ([`LaunchShape::chunk_rows`](super::LaunchShape::chunk_rows)).
    pub chunk_rows: i64,
}

impl Columns {
    /// The chunks, `ceil(rows / chunk_rows)`: the partial sums are chunks x cols.
    pub fn chunks(&self) -> i64 {
        (self.rows + self.chunk_rows - 1) / self.chunk_rows.max(1)
    }
}

/// One key's host build, loaded (the library stays loaded for the life of the process).
#[derive(Debug, Clone, Copy)]
pub struct HostKernels {
    forward: ForwardFn,
    backward: BackwardFn,
    columns: ColumnsFn,
}

/// The buffers of one launch (element arrays of the key's type; `y` may be null in a
/// backward, `dy`, `dx`, `ga`, `gb` are null in a forward).
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    /// The input.
    pub x: *const c_void,
    /// k, in its own shape.
    pub k: *const c_void,
    /// The first bit-width operand.
    pub a: *const c_void,
    /// The second bit-width operand.
    pub b: *const c_void,
    /// The upstream gradient (backward).
    pub dy: *const c_void,
    /// The output.
    pub y: *mut c_void,
    /// dx (backward).
    pub dx: *mut c_void,
    /// The first operand's gradient per element of x (backward).
    pub ga: *mut c_void,
    /// The second operand's gradient per element of x (backward).
    pub gb: *mut c_void,
}

impl HostKernels {
    /// The host build of `key`'s kernels, compiled once per key and process (`CXX`, else
    /// `c++`; IEEE operations without contraction, as NVRTC's `--fmad=false`).
    pub fn of(key: &KernelKey) -> Result<HostKernels> {
        static BUILT: OnceLock<Mutex<HashMap<KernelKey, HostKernels>>> = OnceLock::new();
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let built = BUILT.get_or_init(Default::default);
        // A poisoned lock only means a panic while another thread held it: the map is whole.
        let lock = || built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = lock().get(key) {
            return Ok(*h);
        }
        // Built outside the lock (threads may build different keys at once; a key built twice
        // is the same code).
        let h = build(key, BUILDS.fetch_add(1, Ordering::Relaxed))?;
        Ok(*lock().entry(*key).or_insert(h))
    }

    /// Runs [`COLUMNS_KERNEL`]: dx into `b.dx`, the partial sums of
    /// the two bit widths' gradients (chunks x cols) into `b.ga`, `b.gb` (`b.y` unused).
    ///
    /// # Safety
    /// The buffers hold what `cols` says (x, dy and dx rows x cols elements, a and b cols, the
    /// partial sums chunks x cols) of the key's type.
    pub unsafe fn run_columns(&self, b: Buffers, cols: Columns, layout: Layout, args: Args) {
        // SAFETY: the caller's buffers; the function has this signature (fixed.cu).
        unsafe {
            (self.columns)(
                b.x,
                b.k,
                b.a,
                b.b,
                b.dy,
                b.dx,
                b.ga,
                b.gb,
                cols.rows,
                cols.cols,
                cols.chunk_rows,
                layout,
                args,
            )
        }
    }

    /// Runs the forward (`backward` false: `x, k, a, b` into `y`) or the backward over `n`
    /// elements.
    ///
    /// # Safety
    /// The buffers hold `n` elements of the key's type (k, a, b as many as `layout` reads),
    /// and those a launch writes are writable.
    pub unsafe fn run(&self, backward: bool, b: Buffers, n: i64, layout: Layout, args: Args) {
        // SAFETY: the caller's buffers; the functions have these signatures (fixed.cu).
        unsafe {
            if backward {
                (self.backward)(
                    b.x, b.k, b.a, b.b, b.dy, b.y, b.dx, b.ga, b.gb, n, layout, args,
                )
            } else {
                (self.forward)(b.x, b.k, b.a, b.b, b.y, n, layout, args)
            }
        }
    }
}

fn build(key: &KernelKey, tag: usize) -> Result<HostKernels> {
    let fail = |why: String| TorchError::Cuda(format!("host build of {key:?}: {why}"));
    let dir: PathBuf = std::env::temp_dir().join(format!("hgq-cuda-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let src = dir.join(format!("k{tag}.cpp"));
    let lib = dir.join(format!("k{tag}.so"));
    std::fs::write(&src, format!("#define HGQ_HOST 1\n{}", key.source()))
        .map_err(|e| fail(format!("{}: {e}", src.display())))?;
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-O1", "-ffp-contract=off", "-fno-fast-math", "-std=c++17"])
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .map_err(|e| fail(format!("{cxx}: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    // Local: every key's build exports the same kernel names.
    let h = dl::open(&lib, Scope::Local)
        .ok_or_else(|| fail(format!("{} does not load", lib.display())))?;
    let get = |name: &str| -> Result<*mut c_void> {
        let n = CString::new(name).map_err(|e| fail(e.to_string()))?;
        h.sym(&n).ok_or_else(|| fail(format!("no {name}")))
    };
    // SAFETY: the symbols are fixed.cu's kernels, of these signatures.
    unsafe {
        Ok(HostKernels {
            forward: std::mem::transmute::<*mut c_void, ForwardFn>(get(FORWARD_KERNEL)?),
            backward: std::mem::transmute::<*mut c_void, BackwardFn>(get(BACKWARD_KERNEL)?),
            columns: std::mem::transmute::<*mut c_void, ColumnsFn>(get(COLUMNS_KERNEL)?),
        })
    }
}
