//! Running hgq-torch's programs from xtask: xtask cannot link libtorch (its `setup` installs
//! it), so the tasks that need tensors run a binary or example of hgq-torch through cargo
//! ([`mod@crate::cargo`]), after [`setup::ensure`].
use std::ffi::OsString;
use std::process::ExitCode;

use crate::setup;

/// `cargo run --release -q -p hgq-torch TARGET... -- ARGS...` after [`setup::ensure`]; its exit
/// code passes through.
pub fn run(target: &[&str], args: impl IntoIterator<Item = OsString>) -> Result<ExitCode, String> {
    setup::ensure()?;
    crate::cargo::run("hgq-torch", target, args)
}

/// Like [`run`], but returns what the program printed on standard output (its standard error
/// passes through); an error if it failed.
pub fn output(target: &[&str], args: impl IntoIterator<Item = OsString>) -> Result<String, String> {
    setup::ensure()?;
    crate::cargo::output("hgq-torch", target, args)
}
