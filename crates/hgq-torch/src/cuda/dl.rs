//! The dynamic loader (glibc's `dlopen` and `dlsym`): NVRTC, the CUDA driver and the kernel's
//! host builds are found at run time, so that a build links none of them. Libraries opened
//! here stay loaded for the life of the process (never closed).
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;

unsafe extern "C" {
    fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

/// A loaded library.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Library(*mut c_void);

/// Whether a library's symbols also resolve the libraries loaded after it (NVRTC's builtins,
/// which NVRTC looks up by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Global,
    Local,
}

/// Opens `file` (a path, or a bare name the loader looks up on its path).
pub(crate) fn open(file: &Path, scope: Scope) -> Option<Library> {
    let c = CString::new(file.as_os_str().as_encoded_bytes()).ok()?;
    let mode = RTLD_NOW
        | if scope == Scope::Global {
            RTLD_GLOBAL
        } else {
            0
        };
    // SAFETY: a NUL-terminated path; the library stays loaded.
    let h = unsafe { dlopen(c.as_ptr(), mode) };
    (!h.is_null()).then_some(Library(h))
}

impl Library {
    /// The address of symbol `name`.
    pub(crate) fn sym(self, name: &CStr) -> Option<*mut c_void> {
        // SAFETY: a live handle (never closed) and a NUL-terminated name.
        let p = unsafe { dlsym(self.0, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }
}
