//! `hgq-golden [DIR] [--family NAME]... [-v]`: checks golden vectors on hgq-core (the default
//! DIR is `tests/data/golden`). Without `--family` it checks every family that DIR has a file
//! for; a family named with `--family` must have one.
//!
//! Prints `FAMILY: cases=N mismatches=M` per family (on standard error first the details of
//! its mismatches: 20 of them, all with `-v`), `FAMILY: error: ...` for a family that cannot be
//! checked, and `golden: cases=N mismatches=M` at the end. Exits non-zero on any mismatch, any
//! error, or when no case was checked. `cargo xtask golden` (`--backend core`, the default)
//! runs it; it needs no libtorch.
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut dir: Option<PathBuf> = None;
    let mut families: Vec<String> = Vec::new();
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--family" => match args.next() {
                Some(f) => families.push(f),
                None => return usage("--family needs a name"),
            },
            "-v" | "--verbose" => verbose = true,
            "-h" | "--help" => return usage("checks golden vectors on hgq-core"),
            s if s.starts_with("--") => return usage(&format!("unknown flag {s}")),
            _ => {
                if dir.replace(PathBuf::from(a)).is_some() {
                    return usage("give one directory");
                }
            }
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("tests/data/golden"));
    let named = !families.is_empty();
    if !named {
        families = hgq_golden::FAMILIES
            .iter()
            .map(|f| f.0.to_string())
            .collect();
    }
    let (mut cases, mut mismatches, mut failed) = (0, 0, false);
    for fam in &families {
        if !named && !dir.join(format!("{fam}.json")).exists() {
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
    if failed || mismatches > 0 || cases == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints `msg` and the usage on standard error; exit code 2.
fn usage(msg: &str) -> ExitCode {
    eprintln!("hgq-golden: {msg}\nusage: hgq-golden [DIR] [--family NAME]... [-v]");
    ExitCode::from(2)
}
