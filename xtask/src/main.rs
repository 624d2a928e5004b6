//! `cargo xtask <task>`: the project's tasks, in Rust so they run wherever cargo does.
//!
//! xtask itself depends on std alone and links no crate of the project, so that it builds in
//! seconds on a fresh machine; the work that needs the project's crates happens in their
//! programs, which xtask runs through cargo (`cargo run --release -q -p PACKAGE ...`, see
//! `cargo.rs`) and whose exit codes it passes on:
//!
//! - `setup`: install libtorch (torch==2.11.0 from PyPI) into the project's `.venv`.
//! - `test`: everything `cargo test --workspace` checks, after setup, and `standalone`.
//! - `standalone`: `examples/standalone` built and run from a copy outside the workspace.
//! - `golden DIR [--family NAME]... [--backend core|torch]`: check golden vectors (`core`:
//!   hgq-golden's `hgq-golden` binary; `torch`: hgq-torch's `hgq-golden-torch` binary, which
//!   also checks hgq2's layer models, the families `cnn`, `graph`, `more`, torch-only).
//! - `bench [--json] [--no-torch] [--reference]`: time the kernels (hgq-golden's
//!   `hgq-bench-core` binary) and hgq-torch's quantizer with autograd (its `hgq-bench-torch`)
//!   against a plain copy; `--reference`: and against hgq2 on jax, in the same run.
//! - `bench --device cuda [--reps N] [--rows R,...] [--reference]`: the quantizer on a GPU
//!   (hgq-torch's `hgq-bench-cuda`) against a device copy; `--reference`: against hgq2 on
//!   Keras' torch backend with CUDA, in the same run.
//! - `bench --step [--reference] [--json] [--epochs E] [--filter S] [--path P] [--rounds R]`: the training step of small
//!   QDense MLPs (hgq-torch's `hgq-bench-step`), one thread and all; `--reference`: against
//!   hgq2 on jax (`benches/hgq2_step.py`), in the same run.
//! - `demo [--epochs N] ...`: the end-to-end training demo (digits, exported for hgq2; an
//!   example of hgq-torch).
//! - `interop DIR [--inputs FILE]`: an export read back by hgq-torch, hgq2 and hls4ml's
//!   firmware, all run on the same inputs.
mod bench;
mod bench_cuda;
mod cargo;
mod demo;
mod golden;
mod interop;
mod json;
mod reference;
mod setup;
mod standalone;
mod step;
mod torch;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <task>\n\
         tasks:\n  \
         setup [--force] [--check]    install libtorch (torch==2.11.0 from PyPI) into .venv\n  \
         test                         run all tests (what CI runs)\n  \
         standalone                   build and run examples/standalone from a copy outside\n  \
                                      the workspace, as the README's \"Use hgq in your project\"\n  \
         golden [DIR] [--family NAME]... [--backend core|torch] [--device cpu|cuda] [--reference RDIR] [-v]\n  \
                                      check golden vectors (default DIR: tests/data/golden);\n  \
                                      --backend torch also runs hgq2's layer models, families\n  \
                                      cnn, graph, more (torch only; RDIR: tests/data/reference)\n  \
         bench [--json] [--quick] [--reps N] [--no-torch] [--reference] [--reference-python PATH]\n  \
                                      time kernels against a plain copy of the same bytes\n  \
                                      (--reference: and hgq2 on jax, installed into .venv-ref)\n  \
         bench --device cuda [--reps N] [--rows R,...] [--json] [--reference] [--reference-python PATH]\n  \
                                      the quantizer on a GPU against a device copy (--reference:\n  \
                                      and hgq2 on Keras' torch backend with CUDA)\n  \
         bench --step [--reference] [--reference-python PATH] [--json] [--epochs E] [--filter S] [--path auto|native|autograd] [--rounds R]\n  \
                                      the training step of small QDense MLPs, one thread and all\n  \
                                      (--reference: against hgq2 on jax in the same run)\n  \
         demo [--epochs N] [--beta B] [--seed S] [--device auto|cpu|cuda] [--out DIR]\n  \
                                      train the digits demo and export it for hgq2\n  \
         interop DIR [--inputs FILE]  an export read back by us, hgq2 and hls4ml's bit-exact\n  \
                                      firmware, run on the same inputs (installs into .venv-ref)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        return usage();
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "golden" => golden::run(rest),
        "interop" => interop::run(rest),
        "bench" => bench::run(rest),
        "demo" => demo::run(rest),
        "setup" => setup::run(rest),
        "test" => run_tests(rest),
        "standalone" => standalone::run().map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        "-h" | "--help" | "help" => return usage(),
        other => {
            eprintln!("unknown task {other:?}");
            return usage();
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the workspace tests (with hgq-torch's `golden` feature, so the golden vectors also run
/// through the torch backend), passing extra arguments to `cargo test`; then a program outside
/// the workspace, and prints the SIMD levels hgq-core's tests compared with the scalar path
/// (x86-64-v4 where the CPU has AVX-512: hgq-core's `avx512` feature is on by default).
fn run_tests(rest: &[String]) -> Result<ExitCode, String> {
    setup::ensure()?;
    let workspace = [
        "test",
        "--workspace",
        "--release",
        "--features",
        "hgq-torch/golden",
    ];
    if !cargo(&workspace, rest)? {
        return Ok(ExitCode::FAILURE);
    }
    if !hgq2_opens_our_saves()? {
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("xtask test: examples/standalone, a program outside this workspace");
    if !standalone::run()? {
        return Ok(ExitCode::FAILURE);
    }
    // The same build as the workspace's tests (the same features of hgq-core): the test
    // prints the levels it compared with the scalar path (captured output shows).
    let levels = [
        "test",
        "--release",
        "-p",
        "hgq-core",
        "--test",
        "simd_vs_scalar",
    ];
    let shown = ["simd_levels_report", "--", "--nocapture"].map(String::from);
    Ok(if cargo(&levels, &shown)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where the reference's environment `.venv-ref` exists (`cargo xtask bench --reference` or
/// `cargo xtask interop` made it), hgq2 itself opens `.keras` archives that hgq-torch saved
/// and must give our outputs bit for bit (hgq-torch's test `keras_archives`, ignored in a
/// plain `cargo test` because it needs that Python). Without it, says so and passes.
fn hgq2_opens_our_saves() -> Result<bool, String> {
    let py = reference::venv_dir().join("bin").join("python");
    if !(py.exists() && reference::usable(&py)) {
        eprintln!(
            "xtask test: no usable .venv-ref (hgq2 on jax): hgq2 opening our .keras saves not \
             run (cargo xtask interop or bench --reference makes it)"
        );
        return Ok(true);
    }
    eprintln!("xtask test: hgq2 (.venv-ref, jax) opens .keras archives hgq-torch saved");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "test",
            "--release",
            "-p",
            "hgq-torch",
            "--features",
            "golden",
        ])
        .args(["--test", "keras_archives", "--", "--ignored"])
        .env("HGQ_KERAS_PYTHON", &py)
        .env("KERAS_BACKEND", "jax")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(status.success())
}

/// `cargo ARGS EXTRA...`; whether it succeeded.
fn cargo(args: &[&str], extra: &[String]) -> Result<bool, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(args)
        .args(extra)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(status.success())
}
