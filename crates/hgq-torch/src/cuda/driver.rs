//! The CUDA driver, loaded at run time (`libcuda.so.1`, the GPU driver's library; absent on
//! machines without one): modules from NVRTC's PTX, one per kernel key and device, and launches
//! on torch's current stream, in torch's context for the device (its primary context).
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use super::dl::{self, Scope};
use super::host::{Buffers, Columns};
use super::{
    Args, BACKWARD_KERNEL, COLUMNS_KERNEL, FORWARD_KERNEL, KernelKey, LaunchShape, Layout, Nvrtc,
};
use crate::{Result, TorchError};

type Ptr = *mut c_void;
type InitFn = unsafe extern "C" fn(c_uint) -> c_int;
type DeviceGetFn = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type AttributeFn = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
type RetainFn = unsafe extern "C" fn(*mut Ptr, c_int) -> c_int;
type PushFn = unsafe extern "C" fn(Ptr) -> c_int;
type PopFn = unsafe extern "C" fn(*mut Ptr) -> c_int;
type LoadFn = unsafe extern "C" fn(*mut Ptr, *const c_void) -> c_int;
type GetFunctionFn = unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> c_int;
type LaunchFn = unsafe extern "C" fn(
    Ptr,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    Ptr,
    *mut Ptr,
    *mut Ptr,
) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

const MULTIPROCESSOR_COUNT: c_int = 16;
const CAPABILITY_MAJOR: c_int = 75;
const CAPABILITY_MINOR: c_int = 76;

/// The driver's entry points.
#[derive(Clone, Copy)]
struct Api {
    init: InitFn,
    device_get: DeviceGetFn,
    attribute: AttributeFn,
    retain: RetainFn,
    push: PushFn,
    pop: PopFn,
    load: LoadFn,
    get_function: GetFunctionFn,
    launch: LaunchFn,
    error_string: ErrorStringFn,
}

/// A device as the launches need it.
#[derive(Clone, Copy)]
struct DeviceInfo {
    context: Ptr,
    sm_count: u32,
    arch: u32,
}

/// One key's kernels on one device.
#[derive(Clone, Copy)]
struct Functions {
    forward: Ptr,
    backward: Ptr,
    columns: Ptr,
}

/// The loaded driver with what it has made (contexts, modules), kept for the process.
struct Driver {
    api: Api,
    devices: HashMap<c_int, DeviceInfo>,
    functions: HashMap<(KernelKey, c_int), Functions>,
}

// SAFETY: the raw handles are driver objects that any thread may use (the driver is
// thread-safe); the map is behind a Mutex.
unsafe impl Send for Driver {}

fn driver() -> Result<&'static Mutex<Driver>> {
    static DRIVER: OnceLock<std::result::Result<Mutex<Driver>, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let api = load_api()?;
            // SAFETY: cuInit with flags 0, as the driver requires before any other call.
            let r = unsafe { (api.init)(0) };
            if r != 0 {
                return Err(format!("cuInit: error {r}"));
            }
            Ok(Mutex::new(Driver {
                api,
                devices: HashMap::new(),
                functions: HashMap::new(),
            }))
        })
        .as_ref()
        .map_err(|e| TorchError::Cuda(e.clone()))
}

fn load_api() -> std::result::Result<Api, String> {
    let lib = ["libcuda.so.1", "libcuda.so"]
        .iter()
        .find_map(|n| dl::open(Path::new(n), Scope::Local))
        .ok_or("no CUDA driver (libcuda.so.1) on this machine")?;
    let sym = |name: &CStr| -> std::result::Result<Ptr, String> {
        lib.sym(name)
            .ok_or_else(|| format!("the CUDA driver has no {name:?}"))
    };
    // SAFETY: each symbol is the driver's function of that signature (cuda.h).
    unsafe {
        Ok(Api {
            init: std::mem::transmute::<Ptr, InitFn>(sym(c"cuInit")?),
            device_get: std::mem::transmute::<Ptr, DeviceGetFn>(sym(c"cuDeviceGet")?),
            attribute: std::mem::transmute::<Ptr, AttributeFn>(sym(c"cuDeviceGetAttribute")?),
            retain: std::mem::transmute::<Ptr, RetainFn>(sym(c"cuDevicePrimaryCtxRetain")?),
            push: std::mem::transmute::<Ptr, PushFn>(sym(c"cuCtxPushCurrent_v2")?),
            pop: std::mem::transmute::<Ptr, PopFn>(sym(c"cuCtxPopCurrent_v2")?),
            load: std::mem::transmute::<Ptr, LoadFn>(sym(c"cuModuleLoadData")?),
            get_function: std::mem::transmute::<Ptr, GetFunctionFn>(sym(c"cuModuleGetFunction")?),
            launch: std::mem::transmute::<Ptr, LaunchFn>(sym(c"cuLaunchKernel")?),
            error_string: std::mem::transmute::<Ptr, ErrorStringFn>(sym(c"cuGetErrorString")?),
        })
    }
}

impl Driver {
    fn check(&self, r: c_int, what: &str) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: a valid out-pointer; the driver returns a static string or nothing.
        let known = unsafe { (self.api.error_string)(r, &mut p) } == 0 && !p.is_null();
        let msg = if known {
            // SAFETY: a NUL-terminated static string.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        } else {
            format!("error {r}")
        };
        Err(TorchError::Cuda(format!("{what}: {msg}")))
    }

    fn device(&mut self, ordinal: c_int) -> Result<DeviceInfo> {
        if let Some(d) = self.devices.get(&ordinal) {
            return Ok(*d);
        }
        let mut dev = 0;
        // SAFETY: valid out-pointers throughout.
        unsafe {
            self.check((self.api.device_get)(&mut dev, ordinal), "cuDeviceGet")?;
            let mut context: Ptr = std::ptr::null_mut();
            self.check(
                (self.api.retain)(&mut context, dev),
                "cuDevicePrimaryCtxRetain",
            )?;
            let attr = |a: c_int| -> Result<u32> {
                let mut v = 0;
                self.check((self.api.attribute)(&mut v, a, dev), "cuDeviceGetAttribute")?;
                Ok(v.max(0) as u32)
            };
            let info = DeviceInfo {
                context,
                sm_count: attr(MULTIPROCESSOR_COUNT)?,
                arch: attr(CAPABILITY_MAJOR)? * 10 + attr(CAPABILITY_MINOR)?,
            };
            self.devices.insert(ordinal, info);
            Ok(info)
        }
    }

    /// `key`'s functions on device `ordinal` (its context current).
    fn functions(&mut self, key: &KernelKey, ordinal: c_int, arch: u32) -> Result<Functions> {
        if let Some(f) = self.functions.get(&(*key, ordinal)) {
            return Ok(*f);
        }
        let ptx = Nvrtc::load()?.compile_cached(&key.source(), "fixed.cu", arch)?;
        let ptx = CString::new(ptx).map_err(|_| TorchError::Cuda("PTX with a NUL byte".into()))?;
        let mut module: Ptr = std::ptr::null_mut();
        // SAFETY: NUL-terminated PTX text; valid out-pointers; the module is kept.
        unsafe {
            self.check(
                (self.api.load)(&mut module, ptx.as_ptr().cast()),
                "cuModuleLoadData",
            )?;
            let get = |name: &str| -> Result<Ptr> {
                let n = CString::new(name).map_err(|_| TorchError::Cuda(name.into()))?;
                let mut f: Ptr = std::ptr::null_mut();
                self.check(
                    (self.api.get_function)(&mut f, module, n.as_ptr()),
                    "cuModuleGetFunction",
                )?;
                Ok(f)
            };
            let f = Functions {
                forward: get(FORWARD_KERNEL)?,
                backward: get(BACKWARD_KERNEL)?,
                columns: get(COLUMNS_KERNEL)?,
            };
            self.functions.insert((*key, ordinal), f);
            Ok(f)
        }
    }
}

/// A kernel parameter as `cuLaunchKernel` takes it: a pointer to the value.
fn p<T>(r: &mut T) -> Ptr {
    std::ptr::from_mut(r).cast()
}

/// Launches `key`'s forward or backward over `n` elements on device `ordinal`'s `stream`
/// (asynchronous: ordered after torch's work on that stream, as a torch operation is).
///
/// # Safety
/// The buffers are device memory of `ordinal` holding what [`Buffers`] says, alive until
/// the stream has run the kernel (torch's caching allocator keeps them: they are tensors the
/// caller holds or returns).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch(
    key: &KernelKey,
    backward: bool,
    columns: Option<Columns>,
    b: Buffers,
    n: i64,
    layout: Layout,
    args: Args,
    ordinal: c_int,
    stream: Ptr,
) -> Result<()> {
    let d = driver()?;
    let mut drv = d.lock().unwrap_or_else(|e| e.into_inner());
    let info = drv.device(ordinal)?;
    // SAFETY: the device's primary context, pushed and popped around the driver's calls.
    drv.check(unsafe { (drv.api.push)(info.context) }, "cuCtxPushCurrent")?;
    let out = (|| -> Result<()> {
        let f = drv.functions(key, ordinal, info.arch)?;
        let threads = columns.map_or(n, |c| c.chunks() * c.cols);
        let shape = LaunchShape::for_len(threads as u64, info.sm_count);
        let (mut x, mut k, mut a, mut bb, mut dy) = (b.x, b.k, b.a, b.b, b.dy);
        let (mut y, mut dx, mut ga, mut gb) = (b.y, b.dx, b.ga, b.gb);
        let (mut n, mut layout, mut args) = (n, layout, args);
        let mut c = columns.unwrap_or(Columns {
            rows: 0,
            cols: 0,
            chunk_rows: 1,
        });
        let mut params: Vec<Ptr> = match (backward, columns) {
            (true, Some(_)) => vec![
                p(&mut x),
                p(&mut k),
                p(&mut a),
                p(&mut bb),
                p(&mut dy),
                p(&mut dx),
                p(&mut ga),
                p(&mut gb),
                p(&mut c.rows),
                p(&mut c.cols),
                p(&mut c.chunk_rows),
            ],
            (true, None) => vec![
                p(&mut x),
                p(&mut k),
                p(&mut a),
                p(&mut bb),
                p(&mut dy),
                p(&mut y),
                p(&mut dx),
                p(&mut ga),
                p(&mut gb),
                p(&mut n),
            ],
            (false, _) => vec![
                p(&mut x),
                p(&mut k),
                p(&mut a),
                p(&mut bb),
                p(&mut y),
                p(&mut n),
            ],
        };
        params.extend([p(&mut layout), p(&mut args)]);
        let func = match (backward, columns) {
            (true, Some(_)) => f.columns,
            (true, None) => f.backward,
            (false, _) => f.forward,
        };
        // SAFETY: the kernel's parameters in order, each a pointer to a value of its type.
        let r = unsafe {
            (drv.api.launch)(
                func,
                shape.grid,
                1,
                1,
                shape.block,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        drv.check(r, "cuLaunchKernel")
    })();
    let mut old: Ptr = std::ptr::null_mut();
    // SAFETY: pops the context pushed above.
    let popped = unsafe { (drv.api.pop)(&mut old) };
    out.and(drv.check(popped, "cuCtxPopCurrent"))
}
