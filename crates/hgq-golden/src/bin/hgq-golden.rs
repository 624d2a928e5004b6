//! `hgq-golden [DIR] [--family NAME]... [-v]`: checks golden vectors on hgq-core (the default
//! DIR is `tests/data/golden`). Without `--family` it checks every family: each must have its
//! file in DIR unless DIR's `manifest.json` declares it absent (then it prints
//! `FAMILY: absent: REASON` and skips it); a family named with `--family` must have its file.
//!
//! Prints `FAMILY: cases=N mismatches=M` per family (on standard error first the details of
//! its mismatches: 20 of them, all with `-v`), `FAMILY: error: ...` for a family that cannot be
//! checked (a missing file among them), and `golden: cases=N mismatches=M` at the end. Exits
//! non-zero on any mismatch, any error, or when no case was checked. `cargo xtask golden` (`--backend core`, the default)
//! runs it; it needs no libtorch.
//!
//! The families of layer models against hgq2 ([`hgq_golden::TORCH_FAMILIES`]: `cnn`, `graph`,
//! `more`) run on the torch backend only (hgq-core has no layers): named with `--family`, each
//! gets a line `FAMILY: torch backend only (...): cargo xtask golden --backend torch --family
//! FAMILY` and is neither checked nor a failure (a run of nothing but them exits 0); without
//! `--family` the same lines follow the families checked here.
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A checker: every recycled output buffer holds NaN, so that a pass leaving any element
    // unwritten fails its vectors.
    hgq_core::scratch::poison();
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
    let (mut cases, mut mismatches, mut failed) = (0, 0, false);
    // The torch-only families: named, never checked here, not a failure.
    let all = families.is_empty();
    let (torch, families): (Vec<String>, Vec<String>) = families
        .into_iter()
        .partition(|f| hgq_golden::TORCH_FAMILIES.contains(&f.as_str()));
    let only_torch = !all && families.is_empty();
    // Each family with the manifest's reason when the set leaves it out on purpose.
    let mut todo: Vec<(String, Option<String>)> = families.into_iter().map(|f| (f, None)).collect();
    if all {
        // Every family, as the set (and its manifest) has it; check() says why a missing one
        // fails (not declared absent).
        match hgq_golden::plan(&dir) {
            Ok(plan) => {
                todo = plan
                    .into_iter()
                    .map(|(fam, presence)| match presence {
                        hgq_golden::Presence::Absent(reason) => (fam.to_string(), Some(reason)),
                        _ => (fam.to_string(), None),
                    })
                    .collect()
            }
            Err(e) => {
                println!("golden: error: {e}");
                failed = true;
            }
        }
    }
    for (fam, absent) in &todo {
        if let Some(reason) = absent {
            println!("{fam}: absent ({}): {reason}", hgq_golden::MANIFEST);
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
    let torch: Vec<&str> = if all {
        hgq_golden::TORCH_FAMILIES.to_vec()
    } else {
        torch.iter().map(String::as_str).collect()
    };
    for fam in torch {
        println!("{}", hgq_golden::torch_only(fam));
    }
    println!("golden: cases={cases} mismatches={mismatches}");
    if failed || mismatches > 0 || (cases == 0 && !only_torch) {
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
