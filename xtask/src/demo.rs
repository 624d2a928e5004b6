//! `cargo xtask demo [FLAGS]`: installs libtorch when it is missing, then runs the digits demo
//! (`crates/hgq-torch/examples/demo.rs`) with the flags given (`--epochs`, `--beta`, `--seed`,
//! `--device`, `--out`; `--help` lists them).
use std::process::ExitCode;

/// Runs the demo; its exit code passes through.
pub fn run(rest: &[String]) -> Result<ExitCode, String> {
    crate::torch::run(&["--example", "demo"], rest.iter().map(Into::into))
}
