//! `cargo xtask bench [--json]`: kernel timings as ratios against a plain copy.
use std::process::ExitCode;

pub fn run(_args: &[String]) -> Result<ExitCode, String> {
    Err("not implemented yet".into())
}
