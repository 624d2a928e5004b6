//! `cargo xtask demo [FLAGS] [--nproc N]`: installs libtorch when it is missing, then runs the
//! digits demo (`crates/hgq-torch/examples/demo.rs`) with the flags given (`--epochs`, `--beta`,
//! `--seed`, `--device`, `--out`; `--help` lists them). `--nproc N` runs it as N data-parallel
//! processes on this machine (c10d's Gloo group; the same program starts under torchrun or any
//! launcher that sets `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`).
use std::ffi::OsString;
use std::process::ExitCode;

/// Runs the demo; its exit code passes through.
pub fn run(rest: &[String]) -> Result<ExitCode, String> {
    let mut nproc = 1usize;
    let mut args: Vec<OsString> = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if a == "--nproc" {
            let n = it.next().ok_or("--nproc needs a number")?;
            nproc = n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("--nproc {n}: a positive number"))?;
        } else {
            args.push(a.into());
        }
    }
    if nproc == 1 {
        return crate::torch::run(&["--example", "demo"], args);
    }
    crate::setup::ensure()?;
    crate::cargo::run_ranks("hgq-torch", &["--example", "demo"], &args, nproc)
}
