//! `cargo xtask demo [FLAGS]`: installs libtorch when it is missing, then runs the digits demo
//! (`crates/hgq-torch/examples/demo.rs`) with the flags given (`--epochs`, `--beta`, `--seed`,
//! `--device`, `--out`; `--help` lists them).
use std::process::{Command, ExitCode};

use crate::setup;

/// Runs the demo; its exit code passes through.
pub fn run(rest: &[String]) -> Result<ExitCode, String> {
    setup::ensure()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "hgq-torch",
            "--example",
            "demo",
            "--",
        ])
        .args(rest)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    })
}
