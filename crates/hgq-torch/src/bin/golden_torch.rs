//! `hgq-golden-torch [DIR] [--family NAME]... [--device cpu|cuda] [--reference RDIR] [-v]`: the
//! golden families that run on hgq-torch.
//!
//! - `fixed_fn`, `layers`: hgq-golden's families that run on a backend, from the golden set DIR
//!   (default `tests/data/golden`), through hgq-torch's quantizer modules and autograd
//!   ([`TorchBackend`]). Gradients are compared under [`TorchBackend::grad_tolerance`] (looser
//!   on CUDA, whose sums run in another order; the count of gradient elements only that
//!   tolerance accepts is printed as `grad-tolerated=N`).
//! - `cnn`, `graph`, `more`: hgq2's layer models ([`hgq_torch::golden::reference`]), from
//!   `RDIR/{cnn,graph,more}.json` (default: the checkout's `tests/data/reference`), on the
//!   device. On CUDA values are compared within the gradient tolerance (see that module; the
//!   count of value elements only the tolerance accepts is printed as `value-tolerated=N`).
//!
//! Without `--family` it runs all five. Prints `FAMILY: cases=N mismatches=M` per family (then
//! the mismatches' details; with `-v` every detail, and for the reference families a line per
//! case) and `golden: cases=N mismatches=M`; exits non-zero on any mismatch or a family that
//! cannot be checked (an unreadable file, a reference document that misses a layer kind it must
//! cover). `cargo xtask golden --backend torch` runs it.
use std::path::PathBuf;
use std::process::ExitCode;

use hgq_golden::{BACKEND_FAMILIES, Options, check_with_options};
use hgq_torch::golden::TorchBackend;
use hgq_torch::golden::reference;
use tch::Device;

fn main() -> ExitCode {
    // A checker: every recycled output buffer holds NaN, so that a pass leaving any element
    // unwritten fails its vectors.
    hgq_core::scratch::poison();
    let mut dir = None;
    let mut reference_dir = None;
    let mut families = Vec::new();
    let mut device = Device::Cpu;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--family" => match args.next() {
                Some(f) => families.push(f),
                None => return usage("--family needs a name"),
            },
            "--device" => match args.next().as_deref() {
                Some("cpu") => device = Device::Cpu,
                Some("cuda") if hgq_torch::cuda_available() => device = Device::Cuda(0),
                Some("cuda") => return usage("--device cuda: no CUDA device here"),
                _ => return usage("--device takes cpu or cuda"),
            },
            "--reference" => match args.next() {
                Some(d) => reference_dir = Some(PathBuf::from(d)),
                None => return usage("--reference needs a folder"),
            },
            "-v" | "--verbose" => verbose = true,
            s if s.starts_with('-') => return usage(&format!("unknown flag {s}")),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("tests/data/golden"));
    let reference_dir = reference_dir.unwrap_or_else(reference::reference_dir);
    let known: Vec<&str> = BACKEND_FAMILIES
        .iter()
        .chain(reference::FAMILIES)
        .copied()
        .collect();
    if families.is_empty() {
        families = known.iter().map(|s| s.to_string()).collect();
    }
    if let Some(f) = families.iter().find(|f| !known.contains(&f.as_str())) {
        return usage(&format!(
            "family {f:?} does not run on the torch backend (it runs: {})",
            known.join(", ")
        ));
    }
    let backend = TorchBackend { device };
    let options = Options {
        grad: backend.grad_tolerance(),
    };
    let (mut cases, mut bad, mut failed) = (0, 0, false);
    for f in &families {
        if reference::FAMILIES.contains(&f.as_str()) {
            match reference::check_family(f, &reference_dir, device) {
                Ok(r) => {
                    println!("{r}");
                    for c in &r.cases {
                        match &c.result {
                            Ok(()) if verbose => println!("  ok: {}", c.name),
                            Ok(()) => {}
                            Err(e) => println!("  {e}"),
                        }
                    }
                    if let Err(e) = &r.document {
                        eprintln!("{f}: error: {e}");
                        failed = true;
                    }
                    cases += r.cases.len();
                    bad += r.mismatches();
                }
                Err(e) => {
                    eprintln!("{f}: error: {e}");
                    failed = true;
                }
            }
            continue;
        }
        match check_with_options(&dir, f, &backend, &options) {
            Ok(r) => {
                println!("{r}");
                if verbose || r.mismatches > 0 {
                    for d in r.details.iter().take(40) {
                        println!("  {d}");
                    }
                }
                cases += r.cases;
                bad += r.mismatches;
            }
            Err(e) => {
                eprintln!("{f}: error: {e}");
                failed = true;
            }
        }
    }
    println!("golden: cases={cases} mismatches={bad}");
    if failed || bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "hgq-golden-torch: {msg}\nusage: hgq-golden-torch [DIR] [--family NAME]... \
         [--device cpu|cuda] [--reference RDIR] [-v]"
    );
    ExitCode::from(2)
}
