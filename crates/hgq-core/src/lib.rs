//! # hgq-core
//!
//! The CPU core of HGQ (High Granularity Quantization): the reference's quantizers computed
//! bit-exactly, with their surrogate gradients, as SIMD kernels (pulp, runtime-dispatched) run
//! in parallel with rayon. No libtorch, no Python.
//!
//! - [`RoundMode`], [`OverflowMode`], [`CallMode`]: the modes, with the reference's strings.
//! - [`FixedPoint`]: the stateless fixed-point quantizer `Q(x, k, i, f)` (forward, gradients).
//! - [`minifloat`], [`minifloat_backward`]: the minifloat quantizer.
//! - [`minimal_i_given_xb`], [`minimal_i_given_xf`]: the integer bits a value needs.
//! - [`DefaultBitwidthMapper`]: bit-width shapes and the reductions over homogeneous axes.
//! - [`quantizer`]: the layer-level quantizers (KBI, KIF, minifloat, dummy) as plain state.
#![warn(missing_docs)]

mod entry;
pub mod error;
pub mod fold;
pub mod kernels;
pub mod mapper;
pub mod minimal_i;
pub mod modes;
mod ops;
pub mod quantizer;
pub mod real;
pub mod scratch;
pub mod shape;
pub mod simd;
pub mod stateless;
pub mod sync;
pub mod team;
mod wide;

pub use error::{CoreError, Result};
pub use kernels::float::log2_boundary;
pub use kernels::{Par, Path, Upstream};
pub use mapper::{BitwidthMapper, DefaultBitwidthMapper};
pub use minimal_i::{minimal_i_given_xb, minimal_i_given_xf};
pub use modes::{CallMode, OverflowMode, RoundMode};
pub use real::{Element, Real};
pub use shape::TensorRef;
pub use stateless::{
    BitWidths, FixedGrads, FixedPoint, FloatGrads, Screen, Stochastic, check_minifloat_bit_widths,
    minifloat, minifloat_backward,
};
