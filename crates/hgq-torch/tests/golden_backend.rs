//! The golden families that run on a backend (`fixed_fn`, `layers`) through
//! `hgq_torch::golden::TorchBackend` (modules in a `VarStore`, autograd), on both golden sets
//! (seed 0 and seed 7): every case must match. `cargo xtask test` enables the feature.
#![cfg(feature = "golden")]
use std::path::PathBuf;

use hgq_golden::{BACKEND_FAMILIES, check_with};
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

fn check_all(name: &str, device: Device) {
    let backend = TorchBackend { device };
    let mut total = 0;
    for fam in BACKEND_FAMILIES {
        let r =
            check_with(&dir(name), fam, &backend).unwrap_or_else(|e| panic!("{name}/{fam}: {e}"));
        assert!(r.cases > 0, "{name}/{fam}: no cases");
        assert_eq!(
            r.mismatches,
            0,
            "{name}/{fam} on {device:?}: {r}\n{}",
            r.details.join("\n")
        );
        total += r.cases;
    }
    println!("{name} on {device:?}: {total} cases, no mismatch");
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
fn golden_seed0_cuda() {
    if !hgq_torch::cuda_available() {
        println!("skipped: no CUDA device");
        return;
    }
    check_all("golden", Device::Cuda(0));
}

#[test]
fn golden_seed7_cuda() {
    if !hgq_torch::cuda_available() {
        println!("skipped: no CUDA device");
        return;
    }
    check_all("golden-seed7", Device::Cuda(0));
}
