//! Helpers shared by hgq-torch's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use std::sync::Mutex;

pub mod reference;

use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor};

/// Held while a test seeds torch's global generator and draws from it.
static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Runs `draw` with torch's global generator seeded with `seed`, holding a lock: the tests of
/// a binary run in parallel threads, and another test drawing between the seeding and the
/// draws would change the values (every draw from torch's generator in these tests goes
/// through here).
pub fn seeded<R>(seed: i64, draw: impl FnOnce() -> R) -> R {
    let _held = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// splitmix64: inputs reproducible without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn int(&mut self, lo: i64, hi: i64) -> f64 {
        (lo + (self.next() % (hi - lo + 1) as u64) as i64) as f64
    }
    /// Uniform in `0..n` (`n` at least 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The CUDA device. Tests that use it are `#[ignore = "needs CUDA ..."]`, run with `--ignored`
/// on a machine with a GPU, where a missing device fails the test instead of skipping it.
pub fn cuda() -> Device {
    assert!(
        hgq_torch::cuda_available(),
        "needs CUDA: no usable CUDA device (libtorch with CUDA, a driver and a GPU)"
    );
    Device::Cuda(0)
}

/// A quantizer's raw variable by name (`k`, `b`, `i`, `f`, ...): a handle to the `VarStore`'s
/// tensor.
pub fn var(q: &Quantizer, name: &str) -> Tensor {
    q.variables()
        .into_iter()
        .find(|(n, _)| n.as_str() == name)
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

/// The digits demo's network: 64-32-10 `QDense` (ReLU between; hgq2's default quantizers,
/// WRAP inputs), beta 1e-4, built in `vs` from torch's generator as it stands.
pub fn demo_mlp(vs: &tch::nn::VarStore) -> hgq_torch::layers::Sequential {
    use hgq_torch::layers::{Activation, QDense, Sequential};
    let mut m = Sequential::new();
    m.add(
        &vs.root(),
        QDense::builder(64, 32)
            .activation(Activation::Relu)
            .beta(1e-4),
    )
    .unwrap();
    m.add(&vs.root(), QDense::builder(32, 10).beta(1e-4))
        .unwrap();
    m
}
