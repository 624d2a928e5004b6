//! Finds libtorch through torch-sys, makes it findable at run time, and compiles the C++
//! autograd bridge.
//!
//! torch-sys (`links = "tch"`) hands its libtorch `lib` folder over as `DEP_TCH_LIBTORCH_LIB`;
//! the headers are at `<lib>/../include` (torch-sys itself reads `LIBTORCH`, which
//! `.cargo/config.toml` points at `.venv/libtorch`, made by `cargo xtask setup`).
//!
//! Run time: Cargo puts a build script's link-search paths on the library path of the programs
//! that `cargo run` and `cargo test` start, but only paths inside the profile folder
//! (`target/debug`, `target/release`, ...). `OUT_DIR` is such a path, so a symlink
//! `$OUT_DIR/libtorch-lib -> <libtorch>/lib` plus a link-search path to it lets every test and
//! binary that depends on this crate find libtorch, in every profile, without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/bridge.cpp");
    println!("cargo:rerun-if-changed=src/dist");
    println!("cargo:rerun-if-changed=build.rs");
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(l) => PathBuf::from(l),
        Err(_) => panic!(
            "torch-sys did not report libtorch's lib folder (DEP_TCH_LIBTORCH_LIB); \
             run `cargo xtask setup`"
        ),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let link = out.join("libtorch-lib");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).expect("remove old libtorch-lib link");
    }
    // Absolute target: the link must work from wherever the loader sees it.
    let target = std::fs::canonicalize(&lib).unwrap_or_else(|e| {
        panic!(
            "libtorch lib folder {} is not there ({e}); run `cargo xtask setup`",
            lib.display()
        )
    });
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &link).expect("link libtorch-lib");
    println!("cargo:rustc-link-search=native={}", link.display());
    // Where `cuda::Nvrtc` looks first when nothing on the library path names torch.
    println!("cargo:rustc-env=HGQ_TORCH_LIB={}", target.display());
    // torch-sys links torch_cuda when libtorch has it, but Rust links with `--as-needed` and
    // nothing uses a symbol of libtorch_cuda directly, so the linker drops it and libtorch never
    // registers its CUDA backend (no CUDA device even on a GPU machine; loading it later with
    // dlopen is too late, libtorch caches the hooks at first use). bridge.cpp therefore refers
    // to one libtorch_cuda symbol when HGQ_TORCH_CUDA is defined, which keeps the library in
    // every binary that uses this crate. Its nvidia dependencies come from the same torch
    // installation (`$ORIGIN`-relative rpaths) and load fine on a machine without a GPU.
    let cuda = target.join("libtorch_cuda.so").exists();
    let root = target.parent().expect("libtorch root").to_path_buf();
    let mut build = cc::Build::new();
    if cuda {
        build.define("HGQ_TORCH_CUDA", None);
        // The kernel route asks libc10_cuda for torch's current stream (see bridge.cpp).
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        // A thin layer over libtorch: -O1 without debug info compiles in a fraction of the
        // time of -O3 -g (libtorch's headers are heavy) and runs no slower.
        .opt_level(1)
        .debug(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/bridge.cpp")
        .compile("hgq_torch_bridge");
    // c10d's process groups (the `distributed` module). The wheel has c10d's headers but not
    // Gloo's: `src/dist/gloo` declares the few Gloo types ProcessGroupGloo.hpp names.
    let mut dist = cc::Build::new();
    if let Some(includes) = cuda.then(|| nccl_includes(&root)).flatten() {
        // ProcessGroupNCCL (in libtorch_cuda) for CUDA tensors.
        dist.define("HGQ_NCCL", None)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for i in includes {
            dist.include(i);
        }
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    dist.cpp(true)
        .pic(true)
        .warnings(false)
        .opt_level(1)
        .debug(false)
        .include("src/dist")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .file("src/dist/dist.cpp")
        .compile("hgq_torch_dist");
}

/// The include folders c10d's NCCL header needs, from the nvidia wheels beside torch: NCCL's
/// (a dependency of torch) and the CUDA runtime's, with the toolkit's `crt/` and `nv/` headers
/// that only the `nvidia-cuda-crt` and `nvidia-cuda-cccl` wheels have (`cargo xtask setup`
/// installs them). None where any is missing: the build then has Gloo alone.
fn nccl_includes(torch_root: &std::path::Path) -> Option<Vec<PathBuf>> {
    let nvidia = torch_root.parent()?.join("nvidia");
    let (nccl, cu) = (nvidia.join("nccl/include"), nvidia.join("cu13/include"));
    // A header wheel installed later changes this folder: the build runs again and finds it.
    if cu.is_dir() {
        println!("cargo:rerun-if-changed={}", cu.display());
    }
    let needed = [
        nccl.join("nccl.h"),
        cu.join("cuda_runtime_api.h"),
        cu.join("crt/host_config.h"),
        cu.join("nv/target"),
    ];
    needed.iter().all(|p| p.exists()).then(|| vec![nccl, cu])
}
