//! The CUDA kernel's host side, on any machine: every mode's source compiles with NVRTC, and
//! the same source built as host C++ gives hgq-core's bits (outputs, dx and both bit widths'
//! gradients) on every mode, bit-width rule, stochastic rounding and the zero mask.
mod common;

use std::ffi::c_void;

use common::Rng;
use hgq_core::{
    BitWidths, FixedGrads, FixedPoint, OverflowMode, Path as KernelPath, RoundMode, Stochastic,
    TensorRef,
};
use hgq_torch::cuda::host::{Buffers, HostKernels};
use hgq_torch::cuda::{
    Args, BACKWARD_KERNEL, COLUMNS_KERNEL, Elem, FORWARD_KERNEL, KernelKey, Layout, Nvrtc, Read,
};

const ROUNDS: [RoundMode; 9] = RoundMode::ALL;
const OVERFLOWS: [OverflowMode; 4] = OverflowMode::ALL;

/// Every distinct kernel: the rounding ids (S_ modes deterministic and stochastic), overflow,
/// training, element type.
fn keys() -> Vec<KernelKey> {
    let mut v = Vec::new();
    for elem in [Elem::F32, Elem::F64] {
        for training in [false, true] {
            for o in OVERFLOWS {
                for (j, r) in ROUNDS.iter().enumerate() {
                    // The S_ modes: once deterministic (their twins'), once with noise.
                    let stochastic = j == 7 && training;
                    if j == 8 || (j == 7 && !training) {
                        continue;
                    }
                    // WRAP_SM takes RND and RND_CONV (and their S_ twins) only.
                    if let Ok(key) = KernelKey::new(*r, stochastic, o, training, elem) {
                        v.push(key);
                    }
                }
            }
        }
    }
    v
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    let nvrtc = Nvrtc::load().expect("NVRTC from the torch wheel (cargo xtask setup installs it)");
    let (major, _) = nvrtc.version().unwrap();
    assert!(major >= 12, "NVRTC {major}");
    let keys = keys();
    // Per element type: training 3 overflows x 8 roundings + WRAP_SM's 3, inference 3 x 7 + 2.
    assert_eq!(keys.len(), 2 * (27 + 23));
    assert!(KernelKey::new(RoundMode::Trn, false, OverflowMode::WrapSm, true, Elem::F32).is_err());
    // And the float64 programs on float32 buffers (types wider than float32 holds).
    let all: std::collections::HashSet<KernelKey> = keys
        .iter()
        .flat_map(|k| [*k, k.stored_as(Elem::F32)])
        .collect();
    assert_eq!(all.len(), 3 * (27 + 23));
    for key in all {
        let ptx = nvrtc
            .compile(&key.source(), "fixed.cu", 90)
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
        for k in [FORWARD_KERNEL, BACKWARD_KERNEL, COLUMNS_KERNEL] {
            assert!(ptx.contains(&format!(".entry {k}(")), "{key:?}: no {k}");
        }
        assert!(ptx.contains(".target sm_90"), "{key:?}");
        // The bit-width check's status word, ORed atomically by the failing elements.
        assert!(ptx.contains(".or.b32"), "{key:?}: no atomic OR");
    }
}

/// The PTX cache: a second compile of the same program reads what the first wrote.
#[test]
fn compiled_ptx_is_cached_on_disk() {
    let dir = std::env::temp_dir().join(format!("hgq-ptx-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY of set_var: this test binary reads HGQ_CACHE_DIR nowhere else.
    unsafe { std::env::set_var("HGQ_CACHE_DIR", &dir) };
    let nvrtc = Nvrtc::load().unwrap();
    let key = KernelKey::new(RoundMode::Rnd, false, OverflowMode::Sat, true, Elem::F32).unwrap();
    let ptx = nvrtc.compile_cached(&key.source(), "fixed.cu", 90).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "one entry, no temporary left");
    let file = entries[0].path();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), ptx);
    // What the cache holds is what a second call returns (marked to tell it from a compile).
    let marked = format!("{ptx}\n// from the cache\n");
    std::fs::write(&file, &marked).unwrap();
    assert_eq!(
        nvrtc.compile_cached(&key.source(), "fixed.cu", 90).unwrap(),
        marked
    );
    // Another architecture or other modes are other entries.
    let other = KernelKey::new(RoundMode::Trn, false, OverflowMode::Sat, true, Elem::F32).unwrap();
    nvrtc
        .compile_cached(&other.source(), "fixed.cu", 90)
        .unwrap();
    nvrtc.compile_cached(&key.source(), "fixed.cu", 80).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    // An entry that is not PTX is compiled again.
    std::fs::write(&file, "garbage").unwrap();
    assert_eq!(
        nvrtc.compile_cached(&key.source(), "fixed.cu", 90).unwrap(),
        ptx
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_compile_error_returns_nvrtcs_log() {
    let nvrtc = Nvrtc::load().unwrap();
    let e = nvrtc
        .compile("__global__ void k() { undeclared_name(); }", "bad.cu", 90)
        .unwrap_err();
    assert!(e.to_string().contains("undeclared_name"), "{e}");
}

/// One case's operands, element-wise (each as large as x).
struct Case {
    x: Vec<f64>,
    k: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    dy: Vec<f64>,
}

/// x: values on and between the grid points of the bit widths, ties, signed zeros, values
/// far outside every range, infinities and NaN; bit widths by the rule (all narrow enough for
/// float32, so that hgq-core takes its float32 pass).
fn case(rule: BitWidths, n: usize, seed: u64) -> Case {
    let mut r = Rng(seed);
    let mut c = Case {
        x: Vec::new(),
        k: Vec::new(),
        a: Vec::new(),
        b: Vec::new(),
        dy: Vec::new(),
    };
    for j in 0..n {
        let k = (r.next() % 2) as f64;
        let (a, b) = match rule {
            BitWidths::Integer => (r.int(-6, 8), r.int(-4, 12)),
            // Raw values, ties to even among them.
            BitWidths::RoundHalfEven => {
                let t = |r: &mut Rng, lo, hi| {
                    if r.next().is_multiple_of(4) {
                        r.int(lo, hi) + 0.5
                    } else {
                        r.range(lo as f64, hi as f64)
                    }
                };
                (t(&mut r, -6, 7), t(&mut r, -4, 11))
            }
            // KBI's raw b and i.
            BitWidths::KbiRaw => (r.range(0.0, 14.0), r.range(-4.0, 8.0)),
        };
        let x = match j % 11 {
            0 => r.int(-300, 300) / 16.0,
            1 => r.int(-2000, 2000) / 64.0 + 1.0 / 128.0,
            2 => r.range(-1e4, 1e4),
            3 => [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN][(r.next() % 5) as usize],
            4 => r.int(-40, 40) * 0.5,
            _ => r.range(-40.0, 40.0),
        };
        c.x.push(x);
        c.k.push(k);
        c.a.push(a);
        c.b.push(b);
        c.dy.push(r.range(-2.0, 2.0));
    }
    c
}

fn same<T: hgq_core::Real>(what: &str, key: &KernelKey, got: &[T], want: &[T]) {
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = g.to_f64().to_bits() == w.to_f64().to_bits() || (g.is_nan() && w.is_nan());
        assert!(ok, "{key:?} {what}[{j}]: kernel {g:?}, hgq-core {w:?}");
    }
}

struct Setup {
    round: RoundMode,
    overflow: OverflowMode,
    training: bool,
    stochastic: bool,
    rule: BitWidths,
    mask: bool,
}

/// The kernel's forward and backward against hgq-core's scalar path on one case.
fn compare<T: hgq_core::Element<C = T> + hgq_core::Real>(
    s: &Setup,
    key: &KernelKey,
    host: &HostKernels,
    c: &Case,
) {
    let cast = |v: &[f64]| -> Vec<T> { v.iter().map(|&x| T::from_f64(x)).collect() };
    let (x, k, a, b, dy) = (cast(&c.x), cast(&c.k), cast(&c.a), cast(&c.b), cast(&c.dy));
    let n = x.len();
    let shape = [n];
    let seed = 0x5EED_u64;
    let q = FixedPoint::new(s.round, s.overflow)
        .unwrap()
        .with_bit_widths(s.rule)
        .with_zero_mask(s.mask)
        .with_stochastic(if s.stochastic {
            Stochastic::Seeded(seed)
        } else {
            Stochastic::Reference
        })
        .with_path(KernelPath::Scalar);
    fn t<'a, T: hgq_core::Element>(v: &'a [T], shape: &'a [usize]) -> TensorRef<'a, T> {
        TensorRef::new(v, shape).unwrap()
    }
    let mut want_y = vec![T::from_f64(0.0); n];
    q.forward(
        t(&x, &shape),
        t(&k, &shape),
        t(&a, &shape),
        t(&b, &shape),
        s.training,
        &mut want_y,
    )
    .unwrap();
    let (mut want_y2, mut want_dx, mut want_ga, mut want_gb) = (
        vec![T::from_f64(0.0); n],
        vec![T::from_f64(0.0); n],
        vec![T::from_f64(0.0); n],
        vec![T::from_f64(0.0); n],
    );
    let grads = FixedGrads {
        dx: &mut want_dx,
        di: &mut want_ga,
        df: &mut want_gb,
    };
    q.forward_backward(
        t(&x, &shape),
        t(&k, &shape),
        t(&a, &shape),
        t(&b, &shape),
        s.training,
        &dy,
        &mut want_y2,
        grads,
    )
    .unwrap();

    let layout = Layout::new(&shape, [&shape, &shape, &shape]).unwrap();
    let kbi = s.rule == BitWidths::KbiRaw;
    let args = Args {
        seed: if s.stochastic { seed } else { 0 },
        mask: i32::from(s.mask && !s.training),
        kbi: i32::from(kbi),
        // Element-wise bit widths: gradients stored per element, KBI's chain in the op.
        chain: i32::from(kbi),
        ..Args::default()
    };
    let mut y = vec![T::from_f64(0.0); n];
    let (mut y2, mut dx, mut ga, mut gb) = (y.clone(), y.clone(), y.clone(), y.clone());
    let buffers = |y: &mut [T], dx: &mut [T], ga: &mut [T], gb: &mut [T]| Buffers {
        x: x.as_ptr().cast(),
        k: k.as_ptr().cast(),
        a: a.as_ptr().cast(),
        b: b.as_ptr().cast(),
        dy: dy.as_ptr().cast(),
        y: y.as_mut_ptr().cast(),
        dx: dx.as_mut_ptr().cast(),
        ga: ga.as_mut_ptr().cast(),
        gb: gb.as_mut_ptr().cast(),
    };
    let none = std::ptr::null_mut::<c_void>();
    let mut forward = buffers(&mut y, &mut [], &mut [], &mut []);
    (forward.dx, forward.ga, forward.gb, forward.dy) = (none, none, none, std::ptr::null());
    // SAFETY: the host build's kernels of this element type, on buffers of n elements.
    unsafe {
        host.run(false, forward, n as i64, layout, args);
        host.run(
            true,
            buffers(&mut y2, &mut dx, &mut ga, &mut gb),
            n as i64,
            layout,
            args,
        );
    }
    same("y", key, &y, &want_y);
    same("y (backward)", key, &y2, &want_y2);
    same("dx", key, &dx, &want_dx);
    same("grad of the first bit width", key, &ga, &want_ga);
    same("grad of the second bit width", key, &gb, &want_gb);
}

#[test]
fn host_build_is_hgq_cores_scalar_path() {
    // Every mode for float32; float64 on a subset of the roundings (the same text).
    let mut setups = Vec::new();
    for elem in [Elem::F32, Elem::F64] {
        for training in [false, true] {
            for o in OVERFLOWS {
                for (j, r) in ROUNDS.iter().enumerate() {
                    if elem == Elem::F64 && ![1, 2, 7].contains(&j) {
                        continue;
                    }
                    let stochastic = j >= 7 && training;
                    if hgq_core::modes::check_modes(*r, o).is_err() {
                        continue;
                    }
                    setups.push((elem, r, o, training, stochastic));
                }
            }
        }
    }
    // Build in parallel (a compile each; HostKernels keeps them), then compare.
    let keys: Vec<KernelKey> = setups
        .iter()
        .map(|&(elem, r, o, training, stochastic)| {
            KernelKey::new(*r, stochastic, o, training, elem).unwrap()
        })
        .collect();
    std::thread::scope(|sc| {
        for chunk in keys.chunks(keys.len().div_ceil(4)) {
            sc.spawn(move || {
                chunk.iter().for_each(|k| {
                    HostKernels::of(k).unwrap();
                })
            });
        }
    });
    let mut compared = 0;
    for (key, &(elem, round, overflow, training, stochastic)) in keys.iter().zip(&setups) {
        let (round, key) = (*round, *key);
        let host = HostKernels::of(&key).unwrap();
        for rule in [
            BitWidths::Integer,
            BitWidths::RoundHalfEven,
            BitWidths::KbiRaw,
        ] {
            for mask in [false, true] {
                let s = Setup {
                    round,
                    overflow,
                    training,
                    stochastic,
                    rule,
                    mask,
                };
                let c = case(rule, 2000, compared as u64 + 1);
                match elem {
                    Elem::F32 => compare::<f32>(&s, &key, &host, &c),
                    Elem::F64 => compare::<f64>(&s, &key, &host, &c),
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, setups.len() * 6);
}

#[test]
fn layout_reads_what_numpy_broadcasting_reads() {
    let x = [2usize, 3, 4];
    let cases: [&[usize]; 7] = [&[], &[1], &[4], &[3, 1], &[1, 3, 1], &[2, 1, 4], &[2, 3, 4]];
    for op in cases {
        let n: usize = op.iter().product();
        let values: Vec<f64> = (0..n).map(|j| j as f64).collect();
        let want = hgq_core::shape::broadcast_to(&values, op, &x).unwrap();
        let l = Layout::new(&x, [op, &[], &x]).unwrap();
        let got: Vec<f64> = (0..24).map(|j| l.operand_at(0, j) as f64).collect();
        assert_eq!(got, want, "operand {op:?}");
        let strided: Vec<f64> = (0..24).map(|j| l.strided_at(0, j) as f64).collect();
        assert_eq!(strided, want, "operand {op:?} through the strides");
        assert_eq!((0..24).map(|j| l.operand_at(1, j)).max(), Some(0));
        assert_eq!(l.operand_at(2, 23), 23);
    }
    // The reads without a division per dimension.
    let read = |op: &[usize]| Layout::new(&x, [op, &[], &[]]).unwrap().read(0);
    assert_eq!(read(&[]), Read::First);
    assert_eq!(read(&[1, 1, 1]), Read::First);
    assert_eq!(read(&[2, 3, 4]), Read::Same);
    assert_eq!(read(&[4]), Read::Modulo(4));
    assert_eq!(read(&[3, 4]), Read::Modulo(12));
    assert_eq!(read(&[2, 1, 1]), Read::Quotient(12));
    assert_eq!(read(&[2, 3, 1]), Read::Quotient(4));
    assert_eq!(read(&[3, 1]), Read::Strided);
    assert_eq!(read(&[2, 1, 4]), Read::Strided);
    // x's dimensions of size 1 go either way.
    let l = Layout::new(&[4, 1, 3], [&[1, 1, 3][..], &[4, 1, 1], &[1, 1, 1]]).unwrap();
    assert_eq!(
        (l.read(0), l.read(1), l.read(2)),
        (Read::Modulo(3), Read::Quotient(3), Read::First)
    );
    for bad in [&[3usize][..], &[2, 3], &[1, 2, 3, 4], &[5, 1, 1]] {
        assert!(Layout::new(&x, [bad, &[], &[]]).is_err(), "{bad:?}");
    }
    assert!(Layout::new(&[1; 9], [&[], &[], &[]]).is_err());
}

/// The backward with per-column sums in the pass: dx as the per-element backward's, and each
/// partial sum the per-element gradients of its column and chunk added in row order from +0.
#[test]
fn column_sums_are_the_per_element_gradients_in_row_order() {
    use hgq_torch::cuda::LaunchShape;
    use hgq_torch::cuda::host::Columns;
    for (overflow, training, rule) in [
        (OverflowMode::Sat, true, BitWidths::RoundHalfEven),
        (OverflowMode::Wrap, false, BitWidths::Integer),
        (OverflowMode::SatSym, true, BitWidths::KbiRaw),
    ] {
        let key = KernelKey::new(RoundMode::Rnd, false, overflow, training, Elem::F32).unwrap();
        let host = HostKernels::of(&key).unwrap();
        let (rows, cols) = (70usize, 12usize);
        let c = case(rule, rows * cols, 5);
        let cast = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
        let (x, dy) = (cast(&c.x), cast(&c.dy));
        // One bit width per column: the case's first row of each.
        let (k, a, b) = (cast(&c.k[..cols]), cast(&c.a[..cols]), cast(&c.b[..cols]));
        let shape = [rows, cols];
        let layout = Layout::new(&shape, [&[cols][..], &[cols], &[cols]]).unwrap();
        let kbi = rule == BitWidths::KbiRaw;
        let args = Args {
            kbi: i32::from(kbi),
            ..Args::default()
        };
        let chunk_rows = LaunchShape::chunk_rows(rows as u64, cols as u64) as i64;
        let cl = Columns {
            rows: rows as i64,
            cols: cols as i64,
            chunk_rows,
        };
        let chunks = cl.chunks() as usize;
        assert_eq!(chunks, rows.div_ceil(16));
        let n = rows * cols;
        let (mut y, mut dx, mut ga, mut gb) =
            (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let (mut dx2, mut pa, mut pb) = (
            vec![0f32; n],
            vec![0f32; chunks * cols],
            vec![0f32; chunks * cols],
        );
        let buffers = |y: *mut c_void, dx: &mut [f32], ga: &mut [f32], gb: &mut [f32]| Buffers {
            x: x.as_ptr().cast(),
            k: k.as_ptr().cast(),
            a: a.as_ptr().cast(),
            b: b.as_ptr().cast(),
            dy: dy.as_ptr().cast(),
            y,
            dx: dx.as_mut_ptr().cast(),
            ga: ga.as_mut_ptr().cast(),
            gb: gb.as_mut_ptr().cast(),
        };
        // SAFETY: buffers of the sizes each kernel reads and writes.
        unsafe {
            let each = buffers(y.as_mut_ptr().cast(), &mut dx, &mut ga, &mut gb);
            host.run(true, each, n as i64, layout, args);
            let sums = buffers(std::ptr::null_mut(), &mut dx2, &mut pa, &mut pb);
            host.run_columns(sums, cl, layout, args);
        }
        same("dx", &key, &dx2, &dx);
        for ch in 0..chunks {
            for col in 0..cols {
                let (mut sa, mut sb) = (0f32, 0f32);
                for r in ch * 16..((ch + 1) * 16).min(rows) {
                    sa += ga[r * cols + col];
                    sb += gb[r * cols + col];
                }
                same("first sum", &key, &[pa[ch * cols + col]], &[sa]);
                same("second sum", &key, &[pb[ch * cols + col]], &[sb]);
            }
        }
    }
}
