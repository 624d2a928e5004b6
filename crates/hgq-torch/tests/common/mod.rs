//! Helpers shared by hgq-torch's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor};

/// The CUDA device when one is usable, else `None` after saying the test is skipped.
pub fn cuda() -> Option<Device> {
    if hgq_torch::cuda_available() {
        Some(Device::Cuda(0))
    } else {
        println!("skipped: no CUDA device");
        None
    }
}

/// A quantizer's raw variable by name (`k`, `b`, `i`, `f`, ...).
pub fn var<'a>(q: &'a Quantizer, name: &str) -> &'a Tensor {
    q.variables()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .1
}

/// The values of any tensor converted to `kind` (whose element type is `T`), flattened, from
/// any device.
fn values<T: tch::kind::Element + Default + Clone>(t: &Tensor, kind: Kind) -> Vec<T> {
    let t = t.detach().to_kind(kind).to_device(Device::Cpu).contiguous();
    let mut v = vec![T::default(); t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

/// The values of any float tensor as float32, flattened, from any device.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    values(t, Kind::Float)
}

/// The values of any float tensor as float64, flattened, from any device.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    values(t, Kind::Double)
}

/// The bit patterns of [`f32s`], for bit-exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    f32s(t).into_iter().map(f32::to_bits).collect()
}
