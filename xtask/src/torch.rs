//! Running hgq-torch's programs from xtask: xtask cannot link libtorch (its `setup` installs
//! it), so the tasks that need tensors run a binary or example of hgq-torch through cargo.
use std::ffi::OsString;
use std::process::{Command, ExitCode, Stdio};

use crate::setup;

/// `cargo run --release -q -p hgq-torch TARGET... -- ARGS...`, after [`setup::ensure`].
fn cargo_run(target: &[&str], args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    setup::ensure()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--release", "-q", "-p", "hgq-torch"])
        .args(target)
        .arg("--")
        .args(args);
    Ok(cmd)
}

/// Runs the program (see [`cargo_run`]); its exit code passes through.
pub fn run(target: &[&str], args: impl IntoIterator<Item = OsString>) -> Result<ExitCode, String> {
    let status = cargo_run(target, args)?
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1).max(1)),
        None => ExitCode::FAILURE,
    })
}

/// Like [`run`], but returns what the program printed on standard output (its standard error
/// passes through); an error if it failed.
pub fn output(target: &[&str], args: impl IntoIterator<Item = OsString>) -> Result<String, String> {
    let out = cargo_run(target, args)?
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`cargo run -p hgq-torch {}` failed:\n{stdout}",
            target.join(" ")
        ))
    }
}
