//! `hgq-golden-torch [DIR] [--family NAME]... [--device cpu|cuda] [-v]`: the golden families
//! that run on a backend (`fixed_fn`, `layers`) through hgq-torch's modules and autograd.
//! Prints `FAMILY: cases=N mismatches=M` per family and `golden: cases=N mismatches=M`; exits
//! non-zero on any mismatch or unreadable family. Gradients are compared under
//! [`TorchBackend::grad_tolerance`] (looser on CUDA, whose sums run in another order; the count
//! of gradient elements only that tolerance accepts is printed as `grad-tolerated=N`).
//! `cargo xtask golden --backend torch` runs it.
use std::path::PathBuf;
use std::process::ExitCode;

use hgq_golden::{BACKEND_FAMILIES, Options, check_with_options};
use hgq_torch::golden::TorchBackend;
use tch::Device;

fn main() -> ExitCode {
    let mut dir = None;
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
            "-v" | "--verbose" => verbose = true,
            s if s.starts_with('-') => return usage(&format!("unknown flag {s}")),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("tests/data/golden"));
    if families.is_empty() {
        families = BACKEND_FAMILIES.iter().map(|s| s.to_string()).collect();
    }
    if let Some(f) = families
        .iter()
        .find(|f| !BACKEND_FAMILIES.contains(&f.as_str()))
    {
        return usage(&format!(
            "family {f:?} does not run on a backend (torch runs: {})",
            BACKEND_FAMILIES.join(", ")
        ));
    }
    let backend = TorchBackend { device };
    let options = Options {
        grad: backend.grad_tolerance(),
    };
    let (mut cases, mut bad, mut failed) = (0, 0, false);
    for f in &families {
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
        "hgq-golden-torch: {msg}\nusage: hgq-golden-torch [DIR] [--family NAME]... [--device cpu|cuda] [-v]"
    );
    ExitCode::from(2)
}
