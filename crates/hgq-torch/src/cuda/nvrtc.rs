//! NVRTC, loaded at run time from the torch installation (the wheel's `nvidia-cuda-nvrtc`):
//! CUDA C to PTX on the host, with or without a GPU.
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::dl::{self, Scope};
use crate::{Result, TorchError};

type Program = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type TextFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// NVRTC's entry points (the library stays loaded for the life of the process).
#[derive(Debug, Clone, Copy)]
pub struct Nvrtc {
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: TextFn,
    ptx_size: SizeFn,
    ptx: TextFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
    version: VersionFn,
}

/// The library's file names, newest first (torch 2.11's wheels ship CUDA 13's).
const NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// torch's `lib` folder as the build saw it (build.rs).
const BUILD_TORCH_LIB: &str = env!("HGQ_TORCH_LIB");

impl Nvrtc {
    /// Loads NVRTC once per process: the file `HGQ_NVRTC` names, else next to the torch
    /// libraries (the `lib` folders on `LD_LIBRARY_PATH` and the one this build used, and the
    /// wheels' `nvidia/cu13/lib` beside them), else wherever the loader finds it.
    pub fn load() -> Result<Nvrtc> {
        static LOADED: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
        LOADED
            .get_or_init(load_any)
            .clone()
            .map_err(TorchError::Cuda)
    }

    /// NVRTC's version, `(major, minor)`.
    pub fn version(&self) -> Result<(i32, i32)> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        self.check(unsafe { (self.version)(&mut major, &mut minor) }, "version")?;
        Ok((major, minor))
    }

    /// Compiles CUDA C `src` (named `name` in messages) to PTX for compute capability
    /// `arch` (90: sm_90), with IEEE operations and no contraction into fused multiply-adds
    /// (the CPU pass's bits). A compile error returns NVRTC's log.
    pub fn compile(&self, src: &str, name: &str, arch: u32) -> Result<String> {
        let src = cstring(src)?;
        let name = cstring(name)?;
        let options: Vec<CString> = [
            format!("--gpu-architecture=compute_{arch}"),
            "--fmad=false".to_string(),
            "--std=c++17".to_string(),
        ]
        .into_iter()
        .map(cstring)
        .collect::<Result<_>>()?;
        let ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the calls; no headers.
        let made = unsafe {
            (self.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        self.check(made, "create program")?;
        let out = self.compile_program(prog, &ptrs);
        // SAFETY: `prog` was created above and is destroyed once.
        unsafe { (self.destroy)(&mut prog) };
        out
    }

    /// [`Nvrtc::compile`] through a cache on disk: the PTX of a (source, architecture, NVRTC
    /// version) compiled before, by any process, is read back instead of compiled again (about
    /// a tenth of a second per program). The folder is `HGQ_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/hgq/ptx`, else `~/.cache/hgq/ptx`; a cache that cannot be read or
    /// written is no cache (the compile's result stands).
    pub fn compile_cached(&self, src: &str, name: &str, arch: u32) -> Result<String> {
        let version = self.version()?;
        let file = cache_dir().map(|d| d.join(cache_name(src, arch, version)));
        if let Some(ptx) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok())
            && ptx.contains(".target")
        {
            return Ok(ptx);
        }
        let ptx = self.compile(src, name, arch)?;
        if let Some(f) = file {
            store(&f, &ptx);
        }
        Ok(ptx)
    }

    fn compile_program(&self, prog: Program, options: &[*const c_char]) -> Result<String> {
        // SAFETY: a live program and `options.len()` valid option strings.
        let r = unsafe { (self.compile)(prog, options.len() as c_int, options.as_ptr()) };
        if r != 0 {
            let log = self.text(prog, self.log_size, self.log).unwrap_or_default();
            return Err(TorchError::Cuda(format!(
                "NVRTC could not compile the kernel ({}):\n{log}",
                self.message(r)
            )));
        }
        self.text(prog, self.ptx_size, self.ptx)
    }

    /// A program's log or PTX (`size` then `text`).
    fn text(&self, prog: Program, size: SizeFn, text: TextFn) -> Result<String> {
        let mut n = 0usize;
        // SAFETY: a live program and a valid out-pointer.
        self.check(unsafe { size(prog, &mut n) }, "size")?;
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: `buf` holds the `n` bytes NVRTC said it writes.
        self.check(unsafe { text(prog, buf.as_mut_ptr().cast()) }, "text")?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn check(&self, r: c_int, what: &str) -> Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(TorchError::Cuda(format!(
                "NVRTC {what}: {}",
                self.message(r)
            )))
        }
    }

    fn message(&self, r: c_int) -> String {
        // SAFETY: NVRTC returns a static string for any code.
        let p = unsafe { (self.error_string)(r) };
        if p.is_null() {
            return format!("error {r}");
        }
        // SAFETY: a NUL-terminated static string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The PTX cache's folder (see [`Nvrtc::compile_cached`]).
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HGQ_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hgq/ptx"))
}

/// A cache entry's file name: a hash of everything the PTX depends on (the text, which holds
/// the modes' macros, the architecture, NVRTC's version, the options).
fn cache_name(src: &str, arch: u32, version: (i32, i32)) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same name in every process of one build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (src, arch, version, "--fmad=false --std=c++17").hash(&mut h);
    format!("{:016x}-sm{arch}.ptx", h.finish())
}

/// Writes `ptx` to `file` whole or not at all (a temporary file renamed: processes that read
/// the cache meanwhile never see half of it). Failures leave no entry.
fn store(file: &Path, ptx: &str) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{}.{}",
        std::process::id(),
        file.file_name()
            .map_or_else(|| "ptx".into(), |n| n.to_string_lossy())
    ));
    if std::fs::write(&tmp, ptx).is_ok() && std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn cstring(s: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(s).map_err(|_| TorchError::Invalid {
        what: "CUDA source",
        why: "contains a NUL byte".into(),
    })
}

/// The folders to look in, in order.
fn candidates() -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    libs.push(PathBuf::from(BUILD_TORCH_LIB));
    let mut dirs = Vec::new();
    for d in libs {
        // The wheels install torch and nvidia side by side in site-packages.
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
            dirs.push(d.join("../..").join(sub));
        }
        dirs.push(d);
    }
    dirs
}

fn load_any() -> std::result::Result<Nvrtc, String> {
    if let Some(file) = std::env::var_os("HGQ_NVRTC") {
        let file = PathBuf::from(file);
        return open(&file)
            .ok_or_else(|| format!("HGQ_NVRTC={}: not a loadable NVRTC", file.display()));
    }
    for dir in candidates() {
        for name in NAMES {
            let file = dir.join(name);
            if file.exists()
                && let Some(n) = open(&file)
            {
                return Ok(n);
            }
        }
    }
    for name in NAMES {
        if let Some(n) = open(Path::new(name)) {
            return Ok(n);
        }
    }
    Err(
        "no NVRTC library found (torch's CUDA wheels ship it in nvidia/cu13/lib; \
         HGQ_NVRTC may name the file)"
            .into(),
    )
}

/// Opens one NVRTC file, its builtins first (NVRTC looks them up by name, which the loader
/// finds only on its path unless they are loaded already).
fn open(file: &Path) -> Option<Nvrtc> {
    if let Some(dir) = file.parent()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("libnvrtc-builtins.so") {
                dl::open(&e.path(), Scope::Global);
            }
        }
    }
    let lib = dl::open(file, Scope::Global)?;
    let sym = |name: &CStr| lib.sym(name);
    // SAFETY: each symbol is NVRTC's function of that signature (nvrtc.h).
    unsafe {
        Some(Nvrtc {
            create: std::mem::transmute::<*mut c_void, CreateFn>(sym(c"nvrtcCreateProgram")?),
            compile: std::mem::transmute::<*mut c_void, CompileFn>(sym(c"nvrtcCompileProgram")?),
            log_size: std::mem::transmute::<*mut c_void, SizeFn>(sym(c"nvrtcGetProgramLogSize")?),
            log: std::mem::transmute::<*mut c_void, TextFn>(sym(c"nvrtcGetProgramLog")?),
            ptx_size: std::mem::transmute::<*mut c_void, SizeFn>(sym(c"nvrtcGetPTXSize")?),
            ptx: std::mem::transmute::<*mut c_void, TextFn>(sym(c"nvrtcGetPTX")?),
            destroy: std::mem::transmute::<*mut c_void, DestroyFn>(sym(c"nvrtcDestroyProgram")?),
            error_string: std::mem::transmute::<*mut c_void, ErrorStringFn>(sym(
                c"nvrtcGetErrorString",
            )?),
            version: std::mem::transmute::<*mut c_void, VersionFn>(sym(c"nvrtcVersion")?),
        })
    }
}
