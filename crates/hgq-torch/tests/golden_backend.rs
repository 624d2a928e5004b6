//! The golden families that run on a backend (`fixed_fn`, `layers`) through
//! `hgq_torch::golden::TorchBackend` (modules in a `VarStore`, autograd), on both golden sets
//! (seed 0 and seed 7). The feature `golden` is on in every `cargo test` (the dev-dependency
//! of hgq-torch on itself turns it on).
//!
//! Values must match bit for bit on every device; gradients within
//! [`TorchBackend::grad_tolerance`], which hgq-golden applies to every element: its default
//! (1e-5 relative plus 1e-6 absolute) on the CPU, 1e-5 relative plus 1e-5 absolute on CUDA,
//! where torch sums the bit widths' gradients of a layer quantizer in another order than the
//! reference.
#![cfg(feature = "golden")]
mod common;

use std::path::PathBuf;

use hgq_golden::{BACKEND_FAMILIES, Options, check_with_options};
use hgq_torch::golden::TorchBackend;
use tch::Device;

/// `tests/data/NAME` (or `$HGQ_GOLDEN_ROOT/NAME` for a test binary run away from its checkout).
fn dir(name: &str) -> PathBuf {
    std::env::var_os("HGQ_GOLDEN_ROOT")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data"),
            PathBuf::from,
        )
        .join(name)
}

/// Checks both families of a set on `device` under the backend's gradient tolerance: every
/// case must match.
fn check_all(name: &str, device: Device) {
    let backend = TorchBackend { device };
    let options = Options {
        grad: backend.grad_tolerance(),
    };
    let (mut total, mut tolerated) = (0, 0);
    for fam in BACKEND_FAMILIES {
        let r = check_with_options(&dir(name), fam, &backend, &options)
            .unwrap_or_else(|e| panic!("{name}/{fam}: {e}"));
        assert!(r.cases > 0, "{name}/{fam}: no cases");
        assert_eq!(
            r.mismatches,
            0,
            "{name}/{fam} on {device:?}: {r}\n{}",
            r.details.join("\n")
        );
        total += r.cases;
        tolerated += r.tolerated;
    }
    println!(
        "{name} on {device:?}: {total} cases, 0 mismatches; {tolerated} gradient elements \
         outside the default tolerance, within {:?}",
        options.grad
    );
}

#[test]
fn cpu_checks_under_the_default_tolerance() {
    let cpu = TorchBackend {
        device: Device::Cpu,
    };
    assert_eq!(cpu.grad_tolerance(), hgq_golden::GradTolerance::DEFAULT);
    let cuda = TorchBackend {
        device: Device::Cuda(0),
    };
    assert!(cuda.grad_tolerance().accepts(1.0e-2 + 3e-6, 1.0e-2));
    assert!(!cuda.grad_tolerance().accepts(1.0e-2 + 3e-5, 1.0e-2));
}

#[test]
fn golden_seed0_cpu() {
    check_all("golden", Device::Cpu);
}

#[test]
fn golden_seed7_cpu() {
    check_all("golden-seed7", Device::Cpu);
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn golden_seed0_cuda() {
    common::cuda();
    check_all("golden", Device::Cuda(0));
}

#[test]
#[ignore = "needs CUDA: run with --ignored on a machine with a GPU"]
fn golden_seed7_cuda() {
    common::cuda();
    check_all("golden-seed7", Device::Cuda(0));
}
