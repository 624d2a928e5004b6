//! A per-element quantizer whose `k` holds one value everywhere hands the CPU pass that value
//! alone (no x-sized `k` stream). The outputs and gradients must be the bits of the pass given
//! the whole `k`, and every way of changing `k` (an in-place write, a `VarStore` load, a tracing
//! pass) must be seen by the next call.
mod common;

use common::{bits, var};
use hgq_torch::fixed_quantize;
use hgq_torch::hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_torch::hgq_core::mapper::Axes;
use hgq_torch::hgq_core::quantizer::{KbiSpec, KifSpec};
use hgq_torch::hgq_core::{BitWidths, CallMode, FixedPoint, OverflowMode, RoundMode};
use hgq_torch::optim::{Adam, AdamConfig};
use hgq_torch::quantizer::Quantizer;
use tch::{Device, Kind, Tensor, nn};

const ROWS: i64 = 64;
const COLS: i64 = 300;

fn quantizer(vs: &nn::VarStore, spec: QuantizerSpec) -> Quantizer {
    let core = CoreQuantizer {
        spec,
        scaler: None,
        qnoise_factor: None,
        affine: None,
    };
    let shape = [Some(ROWS as usize), Some(COLS as usize)];
    Quantizer::new(&vs.root(), &core, &shape).expect("quantizer")
}

fn kif(vs: &nn::VarStore, overflow: OverflowMode) -> Quantizer {
    let spec =
        KifSpec::new(1.0, 2.0, 3.0, RoundMode::Rnd, overflow).with_axes(Axes::Homogeneous(vec![]));
    quantizer(vs, QuantizerSpec::Kif(spec))
}

fn inputs() -> (Tensor, Tensor) {
    common::seeded(11, || {
        let x = Tensor::randn([ROWS, COLS], (Kind::Float, Device::Cpu)) * 6.0;
        let w = Tensor::randn([ROWS, COLS], (Kind::Float, Device::Cpu));
        (x, w)
    })
}

/// Per-element raw i, f with ties and spread, so that every element differs.
fn spread_bits(q: &Quantizer) {
    let n = (ROWS * COLS) as usize;
    let i: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.5 - 1.0).collect();
    let f: Vec<f32> = (0..n).map(|j| (j % 9) as f32 * 0.5 - 0.5).collect();
    set(&var(q, "i"), &i);
    set(&var(q, "f"), &f);
}

fn set(t: &Tensor, v: &[f32]) {
    let src = Tensor::from_slice(v).view(t.size().as_slice());
    tch::no_grad(|| t.shallow_clone().copy_(&src));
}

/// y, dx, di, df of the module's training call (gradients dropped before it, not zeroed:
/// `+0 + -0` would hide a sign).
fn module_call(vs: &nn::VarStore, q: &Quantizer, x: &Tensor, w: &Tensor) -> [Vec<u32>; 4] {
    Adam::new(vs, AdamConfig::default()).unwrap().zero_grad();
    let x = x.detach().set_requires_grad(true);
    let (i, f) = (var(q, "i"), var(q, "f"));
    let y = q.forward(&x, CallMode::Training).expect("forward");
    (&y * w).sum(Kind::Float).backward();
    [bits(&y), bits(&x.grad()), bits(&i.grad()), bits(&f.grad())]
}

/// The same through `fixed_quantize` with the whole `k` tensor as it is now.
fn reference_call(q: &Quantizer, x: &Tensor, w: &Tensor, overflow: OverflowMode) -> [Vec<u32>; 4] {
    let x = x.detach().set_requires_grad(true);
    let k = var(q, "k").detach().copy();
    let i = var(q, "i").detach().copy().set_requires_grad(true);
    let f = var(q, "f").detach().copy().set_requires_grad(true);
    let fq = FixedPoint::new(RoundMode::Rnd, overflow)
        .unwrap()
        .with_bit_widths(BitWidths::RoundHalfEven);
    let y = fixed_quantize(&fq, &x, &k, &i, &f, true).expect("reference");
    (&y * w).sum(Kind::Float).backward();
    [bits(&y), bits(&x.grad()), bits(&i.grad()), bits(&f.grad())]
}

fn assert_same(what: &str, a: &[Vec<u32>; 4], b: &[Vec<u32>; 4]) {
    for (n, (u, v)) in ["y", "dx", "di", "df"].iter().zip(a.iter().zip(b)) {
        let diff = u.iter().zip(v).filter(|(p, q)| p != q).count();

        assert_eq!(
            diff,
            0,
            "{what}: {n} differs in {diff} of {} elements",
            u.len()
        );
    }
}

#[test]
fn uniform_k_gives_the_bits_of_the_whole_k() {
    let (x, w) = inputs();
    for overflow in [OverflowMode::Sat, OverflowMode::SatSym] {
        let vs = nn::VarStore::new(Device::Cpu);
        let q = kif(&vs, overflow);
        spread_bits(&q);
        for kv in [1.0, 0.0] {
            let k = &var(&q, "k");
            tch::no_grad(|| {
                let _ = k.shallow_clone().fill_(kv);
            });
            let what = format!("{overflow} k = {kv}");
            let a = module_call(&vs, &q, &x, &w);
            assert_same(&what, &a, &reference_call(&q, &x, &w, overflow));
            // Twice: the second call reads the cached one-value k.
            assert_same(&what, &module_call(&vs, &q, &x, &w), &a);
        }
    }
}

#[test]
fn changes_to_k_are_seen() {
    let (x, w) = inputs();
    let overflow = OverflowMode::Sat;
    let vs = nn::VarStore::new(Device::Cpu);
    let q = kif(&vs, overflow);
    spread_bits(&q);
    let k = &var(&q, "k");
    let uniform = module_call(&vs, &q, &x, &w);
    // One element of k changed in place: no longer uniform.
    tch::no_grad(|| {
        let _ = k.get(3).get(5).fill_(0.0);
    });
    let one_off = module_call(&vs, &q, &x, &w);
    assert_same(
        "one element of k = 0",
        &one_off,
        &reference_call(&q, &x, &w, overflow),
    );
    assert_ne!(one_off[0], uniform[0], "k = 0 at one element changes y");

    // A VarStore load brings back the saved, uniform k.
    let dir = std::env::temp_dir().join(format!("hgq-k-uniform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("q.safetensors");
    let saved = nn::VarStore::new(Device::Cpu);
    let q_saved = kif(&saved, overflow);
    spread_bits(&q_saved);
    tch::no_grad(|| {
        let _ = var(&q_saved, "k").shallow_clone().fill_(0.0);
    });
    saved.save(&file).unwrap();
    let mut vs = vs;
    vs.load(&file).unwrap();
    let loaded = module_call(&vs, &q, &x, &w);
    assert_same(
        "after load (k = 0)",
        &loaded,
        &reference_call(&q, &x, &w, overflow),
    );
    assert_same(
        "after load (k = 0)",
        &loaded,
        &module_call(&saved, &q_saved, &x, &w),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tracing_that_sets_k_is_seen() {
    // KBI, WRAP: tracing sets k = 1 where the data were negative; the training call after it
    // must use that k.
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = KbiSpec::new(0.0, 6.0, 3.0, RoundMode::Rnd, OverflowMode::Wrap)
        .with_axes(Axes::Homogeneous(vec![]));
    let q = quantizer(&vs, QuantizerSpec::Kbi(spec));
    let (x, _) = inputs();
    // Only the first half of the columns sees negative values.
    let mask = Tensor::arange(COLS, (Kind::Float, Device::Cpu)).lt(COLS / 2);
    let xt = x.abs() * (mask.to_kind(Kind::Float) * -2.0 + 1.0);
    let before = bits(&q.forward(&xt, CallMode::Inference).unwrap());
    let _ = q.forward(&xt, CallMode::Tracing).unwrap();
    let k = common::f32s(&var(&q, "k"));
    assert!(
        k.contains(&1.0) && k.contains(&0.0),
        "tracing set k per element"
    );
    let after = bits(&q.forward(&xt, CallMode::Inference).unwrap());
    assert_ne!(before, after, "the traced k changes the output");
    // The reference: the same call with k given whole.
    let kt = var(&q, "k").detach().copy();
    let (b, i) = (var(&q, "b").detach(), var(&q, "i").detach());
    let iu = i.round();
    let f = b.round() - &iu;
    let fq = FixedPoint::new(RoundMode::Rnd, OverflowMode::Wrap).unwrap();
    let want = bits(&fixed_quantize(&fq, &xt, &kt, &iu, &f, false).unwrap());
    assert_eq!(after, want, "inference after tracing uses the traced k");
}
