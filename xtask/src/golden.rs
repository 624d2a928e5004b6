//! `cargo xtask golden [DIR] [--family NAME]... [--backend core|torch] [--device cpu|cuda]
//! [--reference RDIR] [-v]`
//!
//! xtask checks nothing itself (it links no crate of the project); it checks the arguments and
//! runs a program of the workspace, passing its exit code on:
//! - `core` (the default): every family of the golden set DIR, on hgq-core, by hgq-golden's
//!   `hgq-golden` binary (`crates/hgq-golden/src/bin/hgq-golden.rs`; no libtorch needed). The
//!   families of hgq2's layer models (`cnn`, `graph`, `more`) are hgq-torch's alone (hgq-core
//!   has no layers): the binary prints for each that it runs on the torch backend only, and how
//!   to run it, without failing.
//! - `torch`: by hgq-torch's `hgq-golden-torch` binary, after making sure libtorch is installed
//!   (`setup::ensure`): the golden families that run on a backend (`fixed_fn`, `layers`, from
//!   DIR) through hgq-torch's modules and autograd, and hgq2's layer models (`cnn`, `graph`,
//!   `more`, from `tests/data/reference` or `--reference RDIR`): a training step, tracing and
//!   inference compared with hgq2's values (`hgq_torch::golden::reference`). All five without
//!   `--family`.
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Entry point of `cargo xtask golden`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut dir: Option<PathBuf> = None;
    let mut families: Vec<String> = Vec::new();
    let mut verbose = false;
    let mut backend = "core".to_string();
    let mut device: Option<String> = None;
    let mut reference: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--family" => families.push(it.next().ok_or("--family needs a name")?.clone()),
            "--backend" => backend = it.next().ok_or("--backend needs core or torch")?.clone(),
            "--device" => device = Some(it.next().ok_or("--device needs cpu or cuda")?.clone()),
            "--reference" => {
                reference = Some(it.next().ok_or("--reference needs a folder")?.clone())
            }
            "-v" | "--verbose" => verbose = true,
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            s => {
                if dir.replace(PathBuf::from(s)).is_some() {
                    return Err("give one directory".into());
                }
            }
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("tests/data/golden"));
    match backend.as_str() {
        "core" if device.is_some() => Err("--device applies to --backend torch".into()),
        "core" if reference.is_some() => Err("--reference applies to --backend torch".into()),
        "core" => run_core(&dir, &families, verbose),
        "torch" => run_torch(
            &dir,
            &families,
            device.as_deref(),
            reference.as_deref(),
            verbose,
        ),
        other => Err(format!("unknown backend {other:?} (core or torch)")),
    }
}

/// The arguments both checkers take: `DIR [--family NAME]... [-v]`.
fn checker_args(dir: &std::path::Path, families: &[String], verbose: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![dir.into()];
    for f in families {
        args.extend(["--family".into(), f.into()]);
    }
    if verbose {
        args.push("-v".into());
    }
    args
}

/// `--backend core`: `cargo run --release -q -p hgq-golden --bin hgq-golden -- DIR
/// [--family NAME]... [-v]`. Without `--family` the binary checks every family DIR has (and
/// names `cnn`, `graph`, `more` as torch-only, as it does when they are asked for).
fn run_core(dir: &std::path::Path, families: &[String], verbose: bool) -> Result<ExitCode, String> {
    crate::cargo::run(
        "hgq-golden",
        &["--bin", "hgq-golden"],
        checker_args(dir, families, verbose),
    )
}

/// `--backend torch`: `cargo run --release -q -p hgq-torch --features golden --bin
/// hgq-golden-torch -- DIR [--family NAME]... [--device D] [--reference RDIR] [-v]` after
/// `setup::ensure()`. Without `--family` the binary checks `fixed_fn`, `layers`, `cnn`, `graph`
/// and `more`.
fn run_torch(
    dir: &std::path::Path,
    families: &[String],
    device: Option<&str>,
    reference: Option<&str>,
    verbose: bool,
) -> Result<ExitCode, String> {
    let mut args = checker_args(dir, families, verbose);
    if let Some(d) = device {
        args.extend(["--device".into(), d.into()]);
    }
    if let Some(r) = reference {
        args.extend(["--reference".into(), r.into()]);
    }
    crate::torch::run(&["--features", "golden", "--bin", "hgq-golden-torch"], args)
}
