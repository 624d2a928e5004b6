//! Keeping freed CPU memory in the process (glibc's `malloc` tuning for large tensors).
//!
//! libtorch allocates CPU tensors with `malloc`. glibc serves blocks of 128 KiB and up (and any
//! block of a thread's own arena) from memory it hands back to the kernel when the block is
//! freed, so a training step that allocates the same large tensors as the previous one
//! page-faults all of them in again: the kernel zeroes every 4 KiB page on first touch. On a
//! virtual machine that costs about as much as the quantizer itself (16 MiB: 4096 faults,
//! 5 to 15 ms, against 3 ms for a copy of the same bytes). Caching allocators (jax's, torch's
//! CUDA one) keep such memory; [`retain_cpu_memory`] makes glibc do the same.

/// Makes glibc's `malloc` keep freed memory for reuse: one arena for all threads
/// (`M_ARENA_MAX = 1`), no `mmap` for large blocks (`M_MMAP_MAX = 0`), and no trimming of the
/// heap (`M_TRIM_THRESHOLD` at its maximum). Call it once, first thing in `main`, before
/// threads start; it affects the whole process and is opt-in for that reason: the process keeps
/// its peak heap size, and threads that allocate at the same time share one lock.
///
/// Returns whether the settings took effect: `false` on other C libraries and systems (where it
/// does nothing).
///
/// ```no_run
/// let tuned = hgq_torch::retain_cpu_memory();
/// println!("large CPU tensors reuse freed memory: {tuned}");
/// ```
pub fn retain_cpu_memory() -> bool {
    imp::retain()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::ffi::c_int;

    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_MAX: c_int = -4;
    const M_ARENA_MAX: c_int = -8;

    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    pub(super) fn retain() -> bool {
        // SAFETY: `mallopt` only changes allocator parameters; valid at any time.
        unsafe {
            mallopt(M_ARENA_MAX, 1) == 1
                && mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn retain() -> bool {
        false
    }
}
