//! The fixed-point quantizer as a CUDA kernel of our own, compiled at run time with NVRTC.
//!
//! What the host decides lives here and is tested on any machine: the kernel's source for a
//! set of modes ([`KernelKey::source`]), the operands' layout ([`Layout`]), the launch shape
//! ([`LaunchShape`]) and NVRTC itself ([`Nvrtc`]: the torch wheel ships `libnvrtc`, which
//! compiles CUDA C to PTX without a GPU). `fixed.cu` is hgq-core's element op written once
//! more in CUDA C, in the same order of operations; the tests compile it as host C++ and
//! compare every output and gradient bit with hgq-core's scalar path, and compile every mode's
//! source with NVRTC.
//!
//! ```no_run
//! use hgq_core::{OverflowMode, RoundMode};
//! use hgq_torch::cuda::{Elem, KernelKey, Nvrtc};
//! let key = KernelKey::new(RoundMode::Rnd, false, OverflowMode::Sat, true, Elem::F32)?;
//! let ptx = Nvrtc::load()?.compile(&key.source(), "fixed.cu", 90)?;
//! assert!(ptx.contains(".entry hgq_fixed_backward"));
//! # Ok::<(), hgq_torch::TorchError>(())
//! ```
mod dl;
mod driver;
pub mod host;
mod nvrtc;
pub(crate) mod rehearse;
pub(crate) mod route;
mod syncs;

pub use nvrtc::Nvrtc;
pub use rehearse::{HostReads, rehearse};
pub use route::{KernelSetting, Route, check_kernel, fixed_quantize_kernel, kernel_failure};
pub use syncs::count_syncs;

use hgq_core::{OverflowMode, RoundMode};

use crate::{Result, TorchError};

/// The kernel's text, before the modes' macros.
pub const FIXED_SOURCE: &str = include_str!("fixed.cu");

/// The names of the kernels in [`FIXED_SOURCE`].
pub const FORWARD_KERNEL: &str = "hgq_fixed_forward";
/// The kernel that writes the output, dx and the bit widths' gradients per element.
pub const BACKWARD_KERNEL: &str = "hgq_fixed_backward";
/// The backward that sums per-column bit widths' gradients in the pass (over chunks of rows).
pub const COLUMNS_KERNEL: &str = "hgq_fixed_backward_cols";

/// The element and compute type of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    /// float32.
    F32,
    /// float64 (also float32 values whose types are wider than float32 holds exactly).
    F64,
}

impl Elem {
    fn c_type(self) -> &'static str {
        match self {
            Elem::F32 => "float",
            Elem::F64 => "double",
        }
    }
}

/// What one compiled kernel is specialized for: the modes that are macros in `fixed.cu`
/// (each combination is a program of its own, compiled once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelKey {
    round: RoundMode,
    stochastic: bool,
    overflow: OverflowMode,
    training: bool,
    elem: Elem,
    /// The buffers' type (`elem` unless [`KernelKey::stored_as`] says otherwise).
    store: Elem,
}

impl KernelKey {
    /// A kernel for `round` (with `stochastic`, S_RND and S_RND_CONV add noise: hgq-core's
    /// `Stochastic::Seeded` in training), `overflow`, training or not, on `elem`; the pairs of
    /// modes that hgq-core refuses are refused here too.
    pub fn new(
        round: RoundMode,
        stochastic: bool,
        overflow: OverflowMode,
        training: bool,
        elem: Elem,
    ) -> Result<Self> {
        hgq_core::modes::check_modes(round, overflow)?;
        Ok(KernelKey {
            round,
            stochastic: stochastic && training && round.is_stochastic(),
            overflow,
            training,
            elem,
            store: elem,
        })
    }

    /// The same kernel computing in its type on buffers of `store` (float32 buffers computed
    /// in float64: types wider than float32 holds, rounded to float32 once per value).
    pub fn stored_as(mut self, store: Elem) -> Self {
        self.store = store;
        self
    }

    /// The rounding id of `fixed.cu` (its `R_` macros).
    fn round_id(self) -> u8 {
        if self.stochastic {
            return 7;
        }
        match self.round.deterministic() {
            RoundMode::Trn => 0,
            RoundMode::Rnd => 1,
            RoundMode::RndConv => 2,
            RoundMode::TrnZero => 3,
            RoundMode::RndZero => 4,
            RoundMode::RndInf => 5,
            // `deterministic` maps the S_ modes to RND and RND_CONV.
            RoundMode::RndMinInf | RoundMode::SRnd | RoundMode::SRndConv => 6,
        }
    }

    /// The overflow id of `fixed.cu` (its `O_` macros).
    fn overflow_id(self) -> u8 {
        match self.overflow {
            OverflowMode::Wrap => 0,
            OverflowMode::Sat => 1,
            OverflowMode::SatSym => 2,
            OverflowMode::WrapSm => 3,
        }
    }

    /// The macros that specialize `fixed.cu` for this key, as `(name, value)`.
    pub fn defines(&self) -> [(&'static str, String); 5] {
        [
            ("HGQ_T", self.elem.c_type().to_string()),
            ("HGQ_S", self.store.c_type().to_string()),
            ("HGQ_R", self.round_id().to_string()),
            ("HGQ_O", self.overflow_id().to_string()),
            ("HGQ_TRAIN", u8::from(self.training).to_string()),
        ]
    }

    /// The program's whole text: the macros, then [`FIXED_SOURCE`].
    pub fn source(&self) -> String {
        let mut s = String::with_capacity(FIXED_SOURCE.len() + 128);
        for (name, value) in self.defines() {
            s.push_str(&format!("#define {name} {value}\n"));
        }
        s.push_str(FIXED_SOURCE);
        s
    }
}

/// Dimensions a [`Layout`] describes (`HGQ_MAX_DIMS` in `fixed.cu`).
pub const MAX_DIMS: usize = 8;

/// How the kernel finds an operand's element for x's element `j`: the usual layouts without a
/// division per dimension (`READ_` in `fixed.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Through the strides of every dimension (any other broadcast).
    Strided,
    /// Element `j`: the operand is as large as x.
    Same,
    /// Element 0: one value.
    First,
    /// Element `j % period`: one value per element of x's last dimensions (per column).
    Modulo(i64),
    /// Element `j / period`: one value per index of x's first dimensions (per row).
    Quotient(i64),
}

impl Read {
    fn code(self) -> (i32, i64) {
        match self {
            Read::Strided => (0, 0),
            Read::Same => (1, 0),
            Read::First => (2, 0),
            Read::Modulo(p) => (3, p),
            Read::Quotient(p) => (4, p),
        }
    }

    /// How an operand whose aligned dimensions are `op` (x's rank, 1 where it broadcasts) is
    /// read along x of shape `x`.
    fn of(x: &[i64], op: &[i64]) -> Read {
        let along = |d: usize| op[d] == x[d];
        let ones = |d: usize| op[d] == 1;
        let size = |r: std::ops::Range<usize>| x[r].iter().product::<i64>();
        let nd = x.len();
        if x.contains(&0) {
            // No element of x: nothing is read.
            return Read::First;
        }
        // The first dimension from which the operand runs along x to the end.
        let tail = (0..=nd)
            .rev()
            .take_while(|&s| (s..nd).all(along))
            .last()
            .unwrap_or(nd);
        if (0..tail).all(ones) {
            return match (tail, size(tail..nd)) {
                (0, _) => Read::Same,
                (_, 1) => Read::First,
                (_, p) => Read::Modulo(p),
            };
        }
        // The first dimension from which the operand is 1 to the end.
        let head = (0..=nd)
            .rev()
            .take_while(|&s| (s..nd).all(ones))
            .last()
            .unwrap_or(nd);
        if (0..head).all(along) {
            return Read::Quotient(size(head..nd));
        }
        Read::Strided
    }
}

/// x's shape and, for each of the three bit-width operands, the stride of each of x's
/// dimensions in it (0 where the operand broadcasts) and how it is read ([`Read`]):
/// `HgqLayout` of `fixed.cu`, passed to the kernels by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    shape: [i64; MAX_DIMS],
    stride: [[i64; MAX_DIMS]; 3],
    period: [i64; 3],
    read: [i32; 3],
    nd: i32,
}

impl Layout {
    /// The layout of operands of shapes `operands` (numpy broadcasting: aligned on the right,
    /// each dimension 1 or x's) read along x of shape `x`.
    ///
    /// ```
    /// use hgq_torch::cuda::Layout;
    /// // A per-column operand of a 4 x 3 input: column j of every row reads element j.
    /// let l = Layout::new(&[4, 3], [&[1, 3][..], &[3], &[]]).unwrap();
    /// assert_eq!((0..12).map(|j| l.operand_at(1, j)).collect::<Vec<_>>(),
    ///            [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    /// assert!(Layout::new(&[4, 3], [&[2][..], &[3], &[3]]).is_err());
    /// ```
    pub fn new(x: &[usize], operands: [&[usize]; 3]) -> Result<Layout> {
        if x.len() > MAX_DIMS {
            return Err(TorchError::Invalid {
                what: "input rank",
                why: format!(
                    "{} dimensions; the CUDA kernel takes at most {MAX_DIMS}",
                    x.len()
                ),
            });
        }
        let mut shape = [1i64; MAX_DIMS];
        for (s, &n) in shape.iter_mut().zip(x) {
            *s = i64::try_from(n).map_err(|_| too_large(n))?;
        }
        let mut stride = [[0i64; MAX_DIMS]; 3];
        let (mut period, mut read) = ([0i64; 3], [0i32; 3]);
        for (q, op) in operands.iter().enumerate() {
            if op.len() > x.len() {
                return Err(not_broadcast(q, op, x));
            }
            // Right-aligned: operand dimension e reads x's dimension e + lead.
            let lead = x.len() - op.len();
            let mut acc = 1i64;
            for e in (0..op.len()).rev() {
                let (n, xn) = (op[e], x[lead + e]);
                if n == xn && n != 1 {
                    stride[q][lead + e] = acc;
                } else if n != 1 {
                    return Err(not_broadcast(q, op, x));
                }
                acc = acc
                    .checked_mul(i64::try_from(n).map_err(|_| too_large(n))?)
                    .ok_or_else(|| too_large(n))?;
            }
            let aligned: Vec<i64> = (0..x.len())
                .map(|d| if d < lead { 1 } else { op[d - lead] as i64 })
                .collect();
            (read[q], period[q]) = Read::of(&shape[..x.len()], &aligned).code();
        }
        Ok(Layout {
            shape,
            stride,
            period,
            read,
            nd: x.len() as i32,
        })
    }

    /// How operand `q` is read.
    ///
    /// ```
    /// use hgq_torch::cuda::{Layout, Read};
    /// let l = Layout::new(&[4, 3], [&[][..], &[1, 3], &[4, 1]]).unwrap();
    /// assert_eq!((l.read(0), l.read(1), l.read(2)), (Read::First, Read::Modulo(3), Read::Quotient(3)));
    /// ```
    pub fn read(&self, q: usize) -> Read {
        match (self.read[q], self.period[q]) {
            (1, _) => Read::Same,
            (2, _) => Read::First,
            (3, p) => Read::Modulo(p),
            (4, p) => Read::Quotient(p),
            _ => Read::Strided,
        }
    }

    /// The element of operand `q` (0: k, 1 and 2: the two bit widths) that x's element `j`
    /// reads: what the kernel computes per element (`operand_at` in `fixed.cu`).
    pub fn operand_at(&self, q: usize, j: i64) -> i64 {
        match self.read(q) {
            Read::Same => j,
            Read::First => 0,
            Read::Modulo(p) => j % p,
            Read::Quotient(p) => j / p,
            Read::Strided => self.strided_at(q, j),
        }
    }

    /// [`Layout::operand_at`] through the strides of every dimension, whatever the [`Read`].
    pub fn strided_at(&self, q: usize, mut j: i64) -> i64 {
        let mut off = 0;
        for d in (0..self.nd as usize).rev() {
            let n = self.shape[d];
            if n <= 0 {
                // An empty x has no element to read for.
                return 0;
            }
            off += (j % n) * self.stride[q][d];
            j /= n;
        }
        off
    }
}

fn too_large(n: usize) -> TorchError {
    TorchError::Invalid {
        what: "dimension",
        why: format!("{n} elements do not fit an i64"),
    }
}

fn not_broadcast(q: usize, op: &[usize], x: &[usize]) -> TorchError {
    TorchError::Invalid {
        what: ["k", "first bit width", "second bit width"][q],
        why: format!("shape {op:?} does not broadcast to the input's {x:?}"),
    }
}

/// The call's runtime switches: `HgqArgs` of `fixed.cu`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Args {
    /// Stochastic rounding's key (hgq-core's `Stochastic::Seeded`).
    pub seed: u64,
    /// Zero the output where `k + i + f <= 0` (inference only).
    pub mask: i32,
    /// The operands are KBI's raw `b` and `i` (hgq-core's `BitWidths::KbiRaw`).
    pub kbi: i32,
    /// With `kbi`: the gradients of `b` and `i` themselves (else those of the `i` and `f`
    /// formed from them).
    pub chain: i32,
    /// The operands are integer bit widths as they are (hgq-core's `BitWidths::Integer`:
    /// others are an error), else they are rounded half to even first.
    pub integer: i32,
    /// The address of the call's status word (an `i32` on the kernel's device: [`ST_WIDE`],
    /// [`ST_BAD`]), 0 for none.
    pub status: u64,
    /// 1: the launch checks the bit widths as hgq-core does, ORing its findings into the
    /// status word.
    pub check: i32,
    /// 0: the launch runs; [`GATE_NARROW`] or [`GATE_WIDE`]: only when the status word says
    /// the call's type is narrow (or wide).
    pub gate: i32,
}

/// The status word's bit for a type wider than float32 holds (the call runs in float64).
pub const ST_WIDE: i32 = 1;
/// The status word's bit for bit widths that hgq-core refuses.
pub const ST_BAD: i32 = 2;
/// [`Args::gate`]: run only when the status word has no [`ST_WIDE`].
pub const GATE_NARROW: i32 = 1;
/// [`Args::gate`]: run only when the status word has [`ST_WIDE`].
pub const GATE_WIDE: i32 = 2;

/// A kernel launch's grid: `grid` blocks of `block` threads over a grid-stride loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    /// Blocks.
    pub grid: u32,
    /// Threads per block.
    pub block: u32,
}

impl LaunchShape {
    /// Threads per block: a multiple of the warp that keeps several blocks per multiprocessor.
    pub const BLOCK: u32 = 256;
    /// Blocks per multiprocessor at most: beyond it the grid-stride loop gives each thread
    /// several elements instead of launching blocks that only index.
    pub const BLOCKS_PER_SM: u32 = 8;

    /// The launch for `n` elements on a device with `sm_count` multiprocessors: one thread
    /// per element up to `BLOCKS_PER_SM` full blocks per multiprocessor, and at least one
    /// block (an empty x is not launched at all).
    ///
    /// ```
    /// use hgq_torch::cuda::LaunchShape;
    /// assert_eq!(LaunchShape::for_len(1000, 132).grid, 4);
    /// assert_eq!(LaunchShape::for_len(1 << 26, 132).grid, 132 * 8);
    /// ```
    pub fn for_len(n: u64, sm_count: u32) -> LaunchShape {
        let blocks = n.div_ceil(u64::from(Self::BLOCK)).max(1);
        let cap = u64::from(sm_count.max(1)) * u64::from(Self::BLOCKS_PER_SM);
        LaunchShape {
            grid: blocks.min(cap) as u32,
            block: Self::BLOCK,
        }
    }

    /// Rows per chunk of [`COLUMNS_KERNEL`] over `rows` x `cols`: about 2^18 threads in all
    /// (a thread per column and chunk), at least 16 and at most 4096 rows each. A function of
    /// the shape alone, so that the sums' order, and so their bits, are the same on every
    /// device.
    ///
    /// ```
    /// use hgq_torch::cuda::LaunchShape;
    /// assert_eq!(LaunchShape::chunk_rows(1024, 4096), 16);
    /// assert_eq!(LaunchShape::chunk_rows(16384, 4096), 256);
    /// assert_eq!(LaunchShape::chunk_rows(1 << 20, 4096), 4096);
    /// ```
    pub fn chunk_rows(rows: u64, cols: u64) -> u64 {
        (rows.saturating_mul(cols) >> 18).clamp(16, 4096)
    }
}
