//! `cargo xtask golden [DIR] [--family NAME]... [--backend core|torch] [--device cpu|cuda]`
//!
//! `core` (the default) checks every family in this process with hgq-core. `torch` checks the
//! families that run on a backend (`fixed_fn`, `layers`) through hgq-torch's modules and
//! autograd; xtask does not link libtorch, so it makes sure libtorch is installed
//! (`setup::ensure`) and runs hgq-torch's `hgq-golden-torch` binary, passing its exit code on.
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut dir: Option<PathBuf> = None;
    let mut families: Vec<String> = Vec::new();
    let mut verbose = false;
    let mut backend = "core".to_string();
    let mut device: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--family" => families.push(it.next().ok_or("--family needs a name")?.clone()),
            "--backend" => backend = it.next().ok_or("--backend needs core or torch")?.clone(),
            "--device" => device = Some(it.next().ok_or("--device needs cpu or cuda")?.clone()),
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
        "core" if device.is_some() => {
            return Err("--device applies to --backend torch".into());
        }
        "core" => {}
        "torch" => return run_torch(&dir, &families, device.as_deref(), verbose),
        other => return Err(format!("unknown backend {other:?} (core or torch)")),
    }
    let named = !families.is_empty();
    if !named {
        families = hgq_golden::FAMILIES
            .iter()
            .map(|f| f.0.to_string())
            .collect();
    }
    let (mut cases, mut mismatches, mut failed) = (0, 0, false);
    for fam in &families {
        let path = dir.join(format!("{fam}.json"));
        if !named && !path.exists() {
            // A default run checks the families the directory has.
            continue;
        }
        match hgq_golden::check(&dir, fam) {
            Ok(r) => {
                for d in r.details.iter().take(if verbose { usize::MAX } else { 20 }) {
                    eprintln!("  {d}");
                }
                println!("{r}");
                cases += r.cases;
                mismatches += r.mismatches;
            }
            Err(e) => {
                println!("{fam}: error: {e}");
                failed = true;
            }
        }
    }
    println!("golden: cases={cases} mismatches={mismatches}");
    Ok(if failed || mismatches > 0 || cases == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `--backend torch`: `cargo run --release -q -p hgq-torch --features golden --bin
/// hgq-golden-torch -- DIR [--family NAME]... [--device D] [-v]` after `setup::ensure()`. Without
/// `--family` the binary checks `fixed_fn` and `layers`.
fn run_torch(
    dir: &std::path::Path,
    families: &[String],
    device: Option<&str>,
    verbose: bool,
) -> Result<ExitCode, String> {
    let mut args: Vec<std::ffi::OsString> = vec![dir.into()];
    for f in families {
        args.extend(["--family".into(), f.into()]);
    }
    if let Some(d) = device {
        args.extend(["--device".into(), d.into()]);
    }
    if verbose {
        args.push("-v".into());
    }
    crate::torch::run(&["--features", "golden", "--bin", "hgq-golden-torch"], args)
}
