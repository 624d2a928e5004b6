//! What the firmware checks share (`cargo xtask interop`, the `hgq-interop` binary and the
//! `reference_exports` example): the rows every model is run on.
use tch::{Device, Kind, Tensor};

/// The number of rows of [`probe_rows`].
pub const PROBE_ROWS: i64 = 512;

/// 512 rows of inputs `[512, *dims]`: normal values at scales 1/2 to 8 by row (so that WRAP
/// and saturation matter), drawn from torch's generator seeded 0 (the same rows on every
/// machine and in every program that asks).
///
/// ```
/// let x = hgq_torch::interop::probe_rows(&[8, 8, 1]);
/// assert_eq!(x.size(), [512, 8, 8, 1]);
/// ```
pub fn probe_rows(dims: &[usize]) -> Tensor {
    let shape: Vec<i64> = std::iter::once(PROBE_ROWS)
        .chain(dims.iter().map(|&d| d as i64))
        .collect();
    let ones: Vec<i64> = std::iter::once(PROBE_ROWS)
        .chain(dims.iter().map(|_| 1))
        .collect();
    tch::manual_seed(0);
    let scale = Tensor::from_slice(&[0.5f32, 1.0, 2.0, 4.0, 8.0, 1.0, 2.0, 0.5])
        .repeat([PROBE_ROWS / 8])
        .reshape(ones.as_slice());
    Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * scale
}
