//! Layer-level quantizers: building, bad input, state, stochastic rounding, element types.
use half::{bf16, f16};
use hgq_core::mapper::Axes;
use hgq_core::quantizer::{
    Constraint, CpuQuantizer, DualArith, FloatSpec, Grads, KbiSpec, KifSpec, QuantizerSpec,
    Regularizer, VarName,
};
use hgq_core::{CallMode, CoreError, OverflowMode, Path, RoundMode, Stochastic, TensorRef};
use rstest::rstest;

/// A KIF quantizer with one bit width per feature for inputs `[batch, features]`.
fn kif(
    k: f64,
    i: f64,
    f: f64,
    rm: RoundMode,
    om: OverflowMode,
    features: usize,
) -> CpuQuantizer<f32> {
    let spec = KifSpec::new(k, i, f, rm, om).with_axes(Axes::Homogeneous(vec![0]));
    CpuQuantizer::new(QuantizerSpec::Kif(spec), &[None, Some(features)]).unwrap()
}

fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

#[test]
fn specs_the_reference_rejects_are_errors() {
    assert!(matches!(
        CpuQuantizer::<f32>::new(
            QuantizerSpec::Kbi(KbiSpec::new(
                2.0,
                4.0,
                1.0,
                RoundMode::Rnd,
                OverflowMode::Sat
            )),
            &[Some(2)]
        ),
        Err(CoreError::InvalidK(_))
    ));
    assert!(matches!(
        CpuQuantizer::<f32>::new(
            QuantizerSpec::Kbi(KbiSpec::new(
                1.0,
                -1.0,
                1.0,
                RoundMode::Rnd,
                OverflowMode::Sat
            )),
            &[Some(2)]
        ),
        Err(CoreError::InvalidParameter { name: "b0", .. })
    ));
    assert!(matches!(
        CpuQuantizer::<f32>::new(
            QuantizerSpec::Kif(KifSpec::new(
                1.0,
                -3.0,
                1.0,
                RoundMode::Rnd,
                OverflowMode::Sat
            )),
            &[Some(2)]
        ),
        Err(CoreError::InvalidParameter { .. })
    ));
    assert!(matches!(
        CpuQuantizer::<f32>::new(
            QuantizerSpec::Kif(KifSpec::new(
                1.0,
                1.0,
                1.0,
                RoundMode::Trn,
                OverflowMode::WrapSm
            )),
            &[Some(2)]
        ),
        Err(CoreError::WrapSmRounding(_))
    ));
    let r = CpuQuantizer::<f32>::new(
        QuantizerSpec::Kbi(KbiSpec::new(
            f64::NAN,
            4.0,
            1.0,
            RoundMode::Rnd,
            OverflowMode::Sat,
        )),
        &[Some(2)],
    );
    assert!(
        matches!(r, Err(CoreError::InvalidK(k)) if k.is_nan()),
        "{r:?}"
    );
}

#[test]
fn bad_axes_and_shapes_are_errors_not_panics() {
    let mut spec = KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat);
    spec.fixed.axes = Axes::Heterogeneous(vec![0]);
    assert!(matches!(
        CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec.clone()), &[None, Some(4)]),
        Err(CoreError::UnknownAxisSize { axis: 0, .. })
    ));
    spec.fixed.axes = Axes::Homogeneous(vec![2]);
    assert!(matches!(
        CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(4)]),
        Err(CoreError::Axis { axis: 2, ndim: 2 })
    ));
    // A bit-width shape too large to hold, or whose size overflows, is an error.
    let big = KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat);
    assert!(matches!(
        CpuQuantizer::<f32>::new(QuantizerSpec::Kif(big.clone()), &[Some(1 << 40), Some(2)]),
        Err(CoreError::TooLarge { .. })
    ));
    assert!(matches!(
        CpuQuantizer::<f32>::new(QuantizerSpec::Kif(big), &[Some(1 << 40), Some(1 << 40)]),
        Err(CoreError::TooLarge { .. })
    ));
    assert!(matches!(
        TensorRef::new(&[] as &[f32], &[1 << 32, 1 << 32]),
        Err(CoreError::TooLarge { .. })
    ));

    let mut q = kif(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat, 4);
    let x = [0.5f32; 8];
    let mut y = [0.0f32; 8];
    assert!(matches!(
        q.forward(
            TensorRef::new(&x, &[4, 2]).unwrap(),
            CallMode::Inference,
            &mut y
        ),
        Err(CoreError::InputShape { .. })
    ));
    assert!(matches!(
        q.forward(
            TensorRef::new(&x, &[8]).unwrap(),
            CallMode::Inference,
            &mut y
        ),
        Err(CoreError::InputShape { .. })
    ));
    let mut short = [0.0f32; 3];
    let r = q.forward(
        TensorRef::new(&x, &[2, 4]).unwrap(),
        CallMode::Inference,
        &mut short,
    );
    assert!(
        matches!(
            r,
            Err(CoreError::Length {
                what: "y",
                len: 3,
                expected: 8,
                ..
            })
        ),
        "{r:?}"
    );
    let mut dx = [0.0f32; 8];
    let r = q.forward_backward(
        TensorRef::new(&x, &[2, 4]).unwrap(),
        &[1.0; 7],
        &mut y,
        &mut dx,
    );
    assert!(
        matches!(
            r,
            Err(CoreError::Length {
                what: "dy",
                len: 7,
                expected: 8,
                ..
            })
        ),
        "{r:?}"
    );
    // The batch may change from call to call.
    let x3 = [0.5f32; 12];
    let mut y3 = [0.0f32; 12];
    q.forward(
        TensorRef::new(&x3, &[3, 4]).unwrap(),
        CallMode::Inference,
        &mut y3,
    )
    .unwrap();
    assert_eq!(y3, [0.5; 12]);
}

#[test]
fn wrap_tracking_rejects_non_finite_input_and_keeps_its_state() {
    let mut spec = KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Wrap)
        .with_axes(Axes::Homogeneous(vec![0]));
    spec.fixed.i_decay_speed = 0.5;
    let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(2)]).unwrap();
    let before: Vec<_> = q.variables().to_vec();
    let mut y = [0.0f32; 4];
    for bad in [f32::NAN, f32::INFINITY] {
        let x = [0.5f32, bad, 1.0, -1.0];
        let r = q.forward(
            TensorRef::new(&x, &[2, 2]).unwrap(),
            CallMode::Training,
            &mut y,
        );
        assert!(
            matches!(r, Err(CoreError::InvalidParameter { name: "x", .. })),
            "{r:?}"
        );
        let r = q.forward(
            TensorRef::new(&x, &[2, 2]).unwrap(),
            CallMode::Tracing,
            &mut y,
        );
        assert!(
            matches!(r, Err(CoreError::InvalidParameter { name: "x", .. })),
            "{r:?}"
        );
        assert_eq!(
            q.variables(),
            &before[..],
            "state must not change on an error"
        );
    }
    // Inference of NaN is NaN (the reference's result), and leaves the state alone too.
    let x = [f32::NAN, 0.25, 1.0, -1.0];
    q.forward(
        TensorRef::new(&x, &[2, 2]).unwrap(),
        CallMode::Inference,
        &mut y,
    )
    .unwrap();
    assert!(y[0].is_nan());
    assert_eq!(y[1], 0.25);
}

#[test]
fn tracing_records_integer_bits_and_signs() {
    let mut spec = KifSpec::new(0.0, 0.0, 3.0, RoundMode::Rnd, OverflowMode::Wrap);
    spec.fixed.axes = Axes::Homogeneous(vec![0]);
    let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(2)]).unwrap();
    q.reset_trace().unwrap();
    assert_eq!(q.variable(VarName::I).unwrap().value, vec![-1e9, -1e9]);
    let x = [3.0f32, 0.25, -5.5, 0.5];
    let mut y = [0.0f32; 4];
    q.forward(
        TensorRef::new(&x, &[2, 2]).unwrap(),
        CallMode::Tracing,
        &mut y,
    )
    .unwrap();
    assert_eq!(y, x);
    assert_eq!(q.variable(VarName::K).unwrap().value, vec![1.0, 0.0]);
    // |x| up to 5.5 needs 3 integer bits; 0.5 (+ 2^-3) needs 0.
    assert_eq!(q.variable(VarName::I).unwrap().value, vec![3.0, 0.0]);
}

#[test]
fn inference_zeroes_values_without_bits() {
    // KBI with b = 0, k = 0: k + i + f = b = 0 -> output 0.
    let mut q = CpuQuantizer::<f32>::new(
        QuantizerSpec::Kbi(KbiSpec::new(
            0.0,
            0.0,
            1.0,
            RoundMode::Rnd,
            OverflowMode::Sat,
        )),
        &[Some(3)],
    )
    .unwrap();
    let x = [0.7f32, -2.0, 5.0];
    let mut y = [1.0f32; 3];
    q.forward(
        TensorRef::new(&x, &[3]).unwrap(),
        CallMode::Inference,
        &mut y,
    )
    .unwrap();
    assert_eq!(y, [0.0; 3]);
}

#[test]
fn constraints_and_regularizers() {
    let mut spec = KbiSpec::new(1.0, 4.0, 1.0, RoundMode::Rnd, OverflowMode::Sat)
        .with_axes(Axes::Homogeneous(vec![0]));
    spec.br = Some(Regularizer::MonoL1(0.5));
    spec.ic = Some(Constraint::Max(3.0));
    let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kbi(spec), &[None, Some(2)]).unwrap();
    assert_eq!(q.regularization_loss(), 4.0);
    for v in q.variables_mut() {
        if v.name == VarName::B {
            v.value = vec![-3.0, 40.0];
        }
        if v.name == VarName::I {
            v.value = vec![5.0, 1.0];
        }
    }
    q.apply_constraints().unwrap();
    assert_eq!(q.variable(VarName::B).unwrap().value, vec![0.0, 12.0]);
    assert_eq!(q.variable(VarName::I).unwrap().value, vec![3.0, 1.0]);
    let x = [0.3f32, 0.2];
    let (mut y, mut dx) = ([0.0f32; 2], [0.0f32; 2]);
    let mut g = q
        .forward_backward(
            TensorRef::new(&x, &[1, 2]).unwrap(),
            &[1.0, 1.0],
            &mut y,
            &mut dx,
        )
        .unwrap();
    let before = g.b.clone().unwrap();
    q.add_regularization_grads(1.0, &mut g);
    let after = g.b.unwrap();
    assert_eq!(after[0] - before[0], 0.5);
}

fn train_once(stochastic: Stochastic, seed_calls: usize) -> Vec<f32> {
    let mut spec = KifSpec::new(1.0, 4.0, 2.0, RoundMode::SRnd, OverflowMode::Sat);
    spec.fixed.stochastic = stochastic;
    spec.fixed.axes = Axes::Homogeneous(vec![0, 1]);
    let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(4096)]).unwrap();
    let x = data(2 * 4096, 3, 4.0);
    let mut y = vec![0.0f32; x.len()];
    for _ in 0..seed_calls {
        q.forward(
            TensorRef::new(&x, &[2, 4096]).unwrap(),
            CallMode::Training,
            &mut y,
        )
        .unwrap();
    }
    y
}

#[test]
fn stochastic_rounding_is_seeded_reproducible_and_unbiased() {
    let a = train_once(Stochastic::Seeded(7), 1);
    assert_eq!(
        a,
        train_once(Stochastic::Seeded(7), 1),
        "same seed, same step: same noise"
    );
    assert_ne!(a, train_once(Stochastic::Seeded(8), 1), "another seed");
    assert_ne!(
        a,
        train_once(Stochastic::Seeded(7), 2),
        "the next step draws new noise"
    );
    let reference = train_once(Stochastic::Reference, 1);
    let x = data(2 * 4096, 3, 4.0);
    // Every output is one of the two neighbours on the 2^-2 grid.
    for ((&y, &r), &x) in a.iter().zip(&reference).zip(&x) {
        assert!((y - x).abs() < 0.25, "{y} from {x}");
        assert_eq!(y * 4.0, (y * 4.0).round());
        assert!((r - x).abs() <= 0.125);
    }
    // Unbiased: the mean error is far smaller than the deterministic rounding step.
    let mean_err: f64 =
        a.iter().zip(&x).map(|(&y, &x)| (y - x) as f64).sum::<f64>() / x.len() as f64;
    assert!(mean_err.abs() < 0.01, "mean error {mean_err}");
    assert!(a.iter().zip(&reference).any(|(a, b)| a != b));
}

#[rstest]
#[case(RoundMode::Rnd, OverflowMode::Sat)]
#[case(RoundMode::Trn, OverflowMode::Wrap)]
#[case(RoundMode::RndConv, OverflowMode::SatSym)]
fn narrow_and_wide_element_types_agree_with_f32(#[case] rm: RoundMode, #[case] om: OverflowMode) {
    // Inputs exactly representable in f16 and bf16: the results must be the f32 results.
    let x: Vec<f32> = data(64, 11, 6.0)
        .iter()
        .map(|v| bf16::from_f32(*v).to_f32())
        .collect();
    let shape = [8, 8];
    let mut q = kif(1.0, 2.0, 3.0, rm, om, 8);
    let mut want = vec![0.0f32; 64];
    q.forward(
        TensorRef::new(&x, &shape).unwrap(),
        CallMode::Inference,
        &mut want,
    )
    .unwrap();

    let xh: Vec<f16> = x.iter().map(|v| f16::from_f32(*v)).collect();
    let mut yh = vec![f16::ZERO; 64];
    q.forward(
        TensorRef::new(&xh, &shape).unwrap(),
        CallMode::Inference,
        &mut yh,
    )
    .unwrap();
    assert_eq!(yh.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), want);

    let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(*v)).collect();
    let mut yb = vec![bf16::ZERO; 64];
    q.forward(
        TensorRef::new(&xb, &shape).unwrap(),
        CallMode::Inference,
        &mut yb,
    )
    .unwrap();
    assert_eq!(yb.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), want);

    let mut q64 = CpuQuantizer::<f64>::new(
        QuantizerSpec::Kif(
            KifSpec::new(1.0, 2.0, 3.0, rm, om).with_axes(Axes::Homogeneous(vec![0])),
        ),
        &[None, Some(8)],
    )
    .unwrap();
    let xd: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    let mut yd = vec![0.0f64; 64];
    q64.forward(
        TensorRef::new(&xd, &shape).unwrap(),
        CallMode::Inference,
        &mut yd,
    )
    .unwrap();
    assert_eq!(yd.iter().map(|v| *v as f32).collect::<Vec<_>>(), want);
}

#[test]
fn minifloat_layer_gradients_reach_every_parameter() {
    let mut q = CpuQuantizer::<f32>::new(
        QuantizerSpec::Float(FloatSpec::new(2.0, 3.0, 0.0).with_axes(Axes::Homogeneous(vec![0]))),
        &[None, Some(3)],
    )
    .unwrap();
    let x = [100.0f32, 0.3, -1e-4, 7.3, -2.2, 0.0];
    let (mut y, mut dx) = ([0.0f32; 6], [0.0f32; 6]);
    let g = q
        .forward_backward(
            TensorRef::new(&x, &[2, 3]).unwrap(),
            &[1.0; 6],
            &mut y,
            &mut dx,
        )
        .unwrap();
    assert_eq!(dx, [1.0; 6]);
    assert_eq!(y[0], 14.0, "saturates at (2 - 2^-2) * 2^3");
    for name in [VarName::M, VarName::E, VarName::E0] {
        assert_eq!(
            g.get(name).unwrap().len(),
            3,
            "{name} is reduced to the bit-width shape"
        );
    }
    let p = q.props().unwrap();
    assert_eq!(p.max, vec![14.0; 3]);
    assert_eq!(p.bits, vec![6.0; 3]);
}

/// hgq2's `get_minimal_i` and `get_any_k`: what tracing records, without recording it.
#[test]
fn minimal_i_and_any_k_of_the_data() {
    use hgq_core::quantizer::{Cpu, CpuTensor, Quantizer};
    let mut spec = KifSpec::new(0.0, 0.0, 3.0, RoundMode::Rnd, OverflowMode::Wrap);
    spec.fixed.axes = Axes::Homogeneous(vec![0]);
    let q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(2)]).unwrap();
    let Quantizer::Fixed(fq) = q.inner() else {
        panic!("a fixed-point quantizer")
    };
    let x = [3.0f32, 0.25, -5.5, 0.5];
    let xt = CpuTensor::borrowed(TensorRef::new(&x, &[2, 2]).unwrap());
    let b = Cpu::<f32>::new();
    // |x| up to 5.5 with 3 fractional bits needs 3 integer bits; 0.5 (+ 2^-3) needs 0.
    assert_eq!(fq.minimal_i(&b, &xt).unwrap(), vec![3.0, 0.0]);
    assert_eq!(fq.any_k(&b, &xt).unwrap(), vec![true, false]);
    let bad = CpuTensor::borrowed(TensorRef::new(&x, &[4, 1]).unwrap());
    assert!(matches!(
        fq.minimal_i(&b, &bad),
        Err(CoreError::InputShape { .. })
    ));
}

/// A bit width per index of the last axis of 3-D inputs, one for all of other ranks: a rule
/// `Axes` lists cannot state.
#[derive(Debug)]
struct LastAxisOf3d;

impl hgq_core::BitwidthMapper for LastAxisOf3d {
    fn bw_shape(&self, input: &[Option<usize>]) -> hgq_core::Result<Vec<usize>> {
        let mut s = vec![1; input.len()];
        if input.len() == 3 {
            s[2] = input[2].ok_or(CoreError::NotBuilt)?;
        }
        Ok(s)
    }
}

/// A mapper that gives a shape that does not broadcast to its input.
#[derive(Debug)]
struct Broken;

impl hgq_core::BitwidthMapper for Broken {
    fn bw_shape(&self, input: &[Option<usize>]) -> hgq_core::Result<Vec<usize>> {
        Ok(vec![5; input.len()])
    }
}

#[test]
fn a_users_bit_width_mapper_is_plugged_in() {
    use std::sync::Arc;
    let mapper = Axes::Mapper(Arc::new(LastAxisOf3d));
    let spec = |axes: Axes| {
        let mut s = KifSpec::new(1.0, 1.0, 2.0, RoundMode::Rnd, OverflowMode::Wrap).with_axes(axes);
        s.fixed.i_decay_speed = 0.0;
        QuantizerSpec::Kif(s)
    };
    let shape = [None, Some(2), Some(3)];
    let mut mine = CpuQuantizer::<f32>::new(spec(mapper.clone()), &shape).unwrap();
    let mut lists = CpuQuantizer::<f32>::new(spec(Axes::Heterogeneous(vec![2])), &shape).unwrap();
    assert_eq!(mine.layout().unwrap().bw_shape, vec![1, 1, 3]);
    assert_eq!(mine.layout().unwrap().homogeneous, vec![0, 1]);
    // The same bit widths as the axes that say the same: the same values and the same
    // integer bits tracked (WRAP, reduced over the shared axes).
    let x = data(12, 3, 6.0);
    let (mut a, mut b) = ([0.0f32; 12], [0.0f32; 12]);
    for mode in [CallMode::Training, CallMode::Tracing, CallMode::Inference] {
        let t = TensorRef::new(&x, &[2, 2, 3]).unwrap();
        mine.forward(t, mode, &mut a).unwrap();
        lists.forward(t, mode, &mut b).unwrap();
        assert_eq!(a, b, "{mode:?}");
    }
    assert_eq!(mine.variables(), lists.variables());
    // 2-D inputs: one bit width for all.
    let flat = CpuQuantizer::<f32>::new(spec(mapper), &[None, Some(4)]).unwrap();
    assert_eq!(flat.layout().unwrap().bw_shape, vec![1, 1]);
    // A shape that does not broadcast is refused when the quantizer is built.
    let r = CpuQuantizer::<f32>::new(spec(Axes::Mapper(Arc::new(Broken))), &shape);
    assert!(
        matches!(&r, Err(CoreError::MapperShape { bw_shape, .. }) if bw_shape == &vec![5, 5, 5]),
        "{r:?}"
    );
    // The mapper's own errors come through.
    let r = CpuQuantizer::<f32>::new(spec(Axes::Mapper(Arc::new(LastAxisOf3d))), &[None; 3]);
    assert!(matches!(r, Err(CoreError::NotBuilt)), "{r:?}");
}

#[test]
fn the_dummy_quantizer_is_the_identity_in_every_mode() {
    let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Dummy, &[None, Some(3)]).unwrap();
    assert!(q.variables().is_empty());
    assert!(q.layout().is_none());
    let x = [0.3f32, -7.25, f32::NAN, f32::INFINITY, -0.0, 1e30];
    let t = TensorRef::new(&x, &[2, 3]).unwrap();
    let mut y = [0.0f32; 6];
    for mode in [CallMode::Training, CallMode::Tracing, CallMode::Inference] {
        q.forward(t, mode, &mut y).unwrap();
        let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&x), "{mode:?}");
    }
    // The gradient passes straight through; there are no bit widths to train.
    let dy = [1.0f32, -2.0, 0.5, 3.0, -0.25, 4.0];
    let mut dx = [0.0f32; 6];
    let g = q.forward_backward(t, &dy, &mut y, &mut dx).unwrap();
    assert_eq!(dx, dy);
    assert_eq!(
        (g.b, g.i, g.f, g.m, g.e, g.e0),
        (None, None, None, None, None, None)
    );
    // The reference's properties: 0 bits, +-1e9, Keras' epsilon.
    let p = q.props().unwrap();
    assert_eq!(
        (p.bits, p.fbits, p.min, p.max, p.epsilon),
        (vec![0.0], vec![0.0], vec![-1e9], vec![1e9], vec![1e-7])
    );
    assert_eq!(q.regularization_loss(), 0.0);
    // A wrong input shape is an error, the same as for the other quantizers.
    let bad = TensorRef::new(&x, &[3, 2]).unwrap();
    assert!(matches!(
        q.forward(bad, CallMode::Inference, &mut y),
        Err(CoreError::InputShape { .. })
    ));
}

/// A forward whose backward comes later gives the bits of the fused forward-and-backward call,
/// and the same state, for every kind of quantizer; so does one on a shared input, which the
/// pass keeps without a copy (the same memory).
#[rstest]
#[case::kif_rnd_sat(QuantizerSpec::Kif(KifSpec::new(1.0, 2.0, 3.0, RoundMode::Rnd, OverflowMode::Sat).with_axes(Axes::Homogeneous(vec![0]))))]
#[case::kif_srnd_wrap(QuantizerSpec::Kif({let mut s = KifSpec::new(1.0, 1.0, 4.0, RoundMode::SRnd, OverflowMode::Wrap).with_axes(Axes::Homogeneous(vec![0])); s.fixed.i_decay_speed = 0.25; s}))]
#[case::kbi_rnd_sat_sym(QuantizerSpec::Kbi(KbiSpec::new(1.0, 5.0, 1.0, RoundMode::Rnd, OverflowMode::SatSym).with_axes(Axes::Heterogeneous(vec![-1]))))]
#[case::kbi_trn_wrap(QuantizerSpec::Kbi(KbiSpec::new(1.0, 6.0, 2.0, RoundMode::Trn, OverflowMode::Wrap).with_axes(Axes::Homogeneous(vec![0]))))]
#[case::float(QuantizerSpec::Float(FloatSpec::new(2.0, 3.0, 1.0).with_axes(Axes::Homogeneous(vec![0]))))]
#[case::dummy(QuantizerSpec::Dummy)]
fn a_saved_forward_then_backward_is_the_fused_call(#[case] spec: QuantizerSpec) {
    // Every buffer the passes take from `scratch` holds NaN: an element a pass leaves
    // unwritten shows. 4 x 5 is below the sizes it keeps; 400 x 5 is kept and handed out
    // again on the later steps.
    hgq_core::scratch::poison();
    for rows in [4, 400] {
        saved_passes_are_fused_calls(spec.clone(), rows);
    }
}

fn saved_passes_are_fused_calls(spec: QuantizerSpec, rows: usize) {
    let shape = [None, Some(5)];
    let n = rows * 5;
    let (mut fused, mut saved_q, mut shared_q) = (
        CpuQuantizer::<f32>::new(spec.clone(), &shape).unwrap(),
        CpuQuantizer::<f32>::new(spec.clone(), &shape).unwrap(),
        CpuQuantizer::<f32>::new(spec, &shape).unwrap(),
    );
    let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
    for step in 0..3u64 {
        let x = data(n, step, 6.0);
        let dy = data(n, step + 100, 1.0);
        let x_shape = [rows, 5];
        let t = TensorRef::new(&x, &x_shape).unwrap();
        let (mut y1, mut dx1) = (vec![0.0f32; n], vec![0.0f32; n]);
        let g1 = fused.forward_backward(t, &dy, &mut y1, &mut dx1).unwrap();
        let (mut y2, mut dx2) = (vec![0.0f32; n], vec![0.0f32; n]);
        let saved = saved_q
            .forward_saved(t, CallMode::Training, &mut y2)
            .unwrap();
        // The saved pass keeps what it read: changing the variables does not reach it.
        let before: Vec<_> = saved_q.variables().to_vec();
        for v in saved_q.variables_mut() {
            v.value.iter_mut().for_each(|e| *e += 0.5);
        }
        let g2 = saved.backward(&dy, &mut dx2).unwrap();
        saved_q.variables_mut().clone_from_slice(&before);
        assert_eq!(bits(&y1), bits(&y2), "step {step}: y");
        assert_eq!(bits(&dx1), bits(&dx2), "step {step}: dx");
        assert_eq!(g1, g2, "step {step}: gradients");
        assert_eq!(fused.variables(), saved_q.variables(), "step {step}: state");
        let shared_x = std::sync::Arc::new(x.clone());
        let (y3, pass) = shared_q
            .inner_mut()
            .forward_saved_shared(&shared_x, &[rows, 5], CallMode::Training, Path::Simd)
            .unwrap();
        assert!(std::ptr::eq(pass.input().as_ptr(), shared_x.as_ptr()));
        let mut dx3 = vec![0.0f32; n];
        let g3 = pass.backward(&dy, &mut dx3).unwrap();
        assert_eq!(bits(&y1), bits(&y3), "step {step}: y, shared");
        assert_eq!(bits(&dx1), bits(&dx3), "step {step}: dx, shared");
        assert_eq!(g1, g3, "step {step}: gradients, shared");
        assert_eq!(
            fused.variables(),
            shared_q.variables(),
            "step {step}: state, shared"
        );
        // Their buffers back for the next step's passes.
        saved.recycle();
        pass.recycle();
        hgq_core::scratch::give(y3);
    }
    // Wrong lengths are errors.
    let x = data(20, 9, 1.0);
    let mut y = [0.0f32; 20];
    let saved = saved_q
        .forward_saved(
            TensorRef::new(&x, &[4, 5]).unwrap(),
            CallMode::Training,
            &mut y,
        )
        .unwrap();
    let mut dx = [0.0f32; 20];
    assert!(matches!(
        saved.backward(&[1.0; 19], &mut dx),
        Err(CoreError::Length { what: "dy", .. })
    ));
    assert!(matches!(
        saved.backward(&[1.0; 20], &mut [0.0; 3]),
        Err(CoreError::Length { what: "dx", .. })
    ));
}

/// The regularization loss with its gradient added in place is the dual-number loss and its
/// backward added (bit for bit, on values without zeros): every regularizer, gradients that
/// exist and that do not yet, a non-trainable regularized variable left alone; a gradient of
/// the wrong length is an error that changes nothing.
#[test]
fn regularization_in_place_is_the_dual_loss_added() {
    let per_feature = || Axes::Homogeneous(vec![0]);
    let kif = KifSpec {
        ir: Some(Regularizer::L2(0.3)),
        fr: Some(Regularizer::L1(0.7)),
        ..KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat).with_axes(per_feature())
    };
    // A WRAP `i` is not trained: its regularizer adds to no gradient.
    let kbi = KbiSpec {
        br: Some(Regularizer::MonoL1(0.5)),
        ir: Some(Regularizer::L1(0.2)),
        ..KbiSpec::new(1.0, 4.0, 1.0, RoundMode::Rnd, OverflowMode::Wrap).with_axes(per_feature())
    };
    for spec in [QuantizerSpec::Kif(kif), QuantizerSpec::Kbi(kbi)] {
        let mut q = CpuQuantizer::<f32>::new(spec, &[None, Some(3)]).unwrap();
        for v in q.variables_mut() {
            let n = v.value.len();
            v.value = (0..n).map(|j| 1.25 - 0.75 * j as f32).collect();
        }
        let start = Grads {
            i: Some(vec![0.125, -2.0, 3.5]),
            ..Grads::default()
        };
        let inner = q.inner();
        let mut want = start.clone();
        let loss = inner
            .regularization_loss(&DualArith::<f32, Vec<f32>>::new())
            .unwrap()
            .expect("regularized");
        inner.add_trainable_grads(&loss, &[1.0], &mut want).unwrap();
        let mut got = start.clone();
        let total = inner.regularization_loss_and_grads(&mut got).unwrap();
        assert_eq!(total.map(f32::to_bits), Some(loss.value[0].to_bits()));
        for (name, (g, w)) in [
            (VarName::B, (&got.b, &want.b)),
            (VarName::I, (&got.i, &want.i)),
            (VarName::F, (&got.f, &want.f)),
        ] {
            let bits = |v: &Option<Vec<f32>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            assert_eq!(bits(g), bits(w), "{name:?}");
        }
        let mut bad = Grads {
            i: Some(vec![0.0; 2]),
            ..Grads::default()
        };
        let trains_i = inner.variable(VarName::I).is_some_and(|v| v.trainable);
        let r = inner.regularization_loss_and_grads(&mut bad);
        assert_eq!(r.is_err(), trains_i);
        if trains_i {
            assert_eq!(bad.i, Some(vec![0.0; 2]));
            assert!(bad.b.is_none() && bad.f.is_none());
        }
    }
}

/// A second process, as a [`hgq_core::sync::StateSync`]: its maxima are `other`'s.
struct OtherProcess(Vec<f64>);

impl hgq_core::sync::StateSync for OtherProcess {
    fn max(&self, values: &mut [f64]) -> Result<(), String> {
        if values.len() != self.0.len() {
            return Err(format!(
                "{} values, the other process {}",
                values.len(),
                self.0.len()
            ));
        }
        values
            .iter_mut()
            .zip(&self.0)
            .for_each(|(v, o)| *v = v.max(*o));
        Ok(())
    }
}

/// `sync::defer`: a KIF quantizer's training call under it gives the same output as one that
/// reduces at once, keeps its state until `finish_tracking`, and then has the same state;
/// KBI and tracing reduce at once; finishing without pending maxima or with another count is
/// an error that changes nothing.
#[test]
fn deferred_tracking_ends_in_the_state_of_tracking_at_once() {
    use hgq_core::quantizer::Cpu;
    use hgq_core::sync::{self, StateSync};
    use std::sync::Arc;
    let spec = || {
        let mut s = KifSpec::new(1.0, 0.0, 3.0, RoundMode::Rnd, OverflowMode::Wrap)
            .with_axes(Axes::Homogeneous(vec![0]));
        s.fixed.i_decay_speed = 0.5;
        QuantizerSpec::Kif(s)
    };
    let (rows, features) = (6, 4);
    let shape = [None, Some(features)];
    let dims = [rows, features];
    let mut at_once = CpuQuantizer::<f32>::new(spec(), &shape).unwrap();
    let mut deferred = CpuQuantizer::<f32>::new(spec(), &shape).unwrap();
    let mut alone = CpuQuantizer::<f32>::new(spec(), &shape).unwrap();
    // The other process sees larger values on two features, smaller on the others.
    let other = Arc::new(OtherProcess(vec![7.0, 0.1, 20.0, 0.0]));
    let b = Cpu::<f32>::new();
    let (mut y1, mut y2, mut y3) = (vec![0.0f32; 24], vec![0.0f32; 24], vec![0.0f32; 24]);
    for step in 0..4u64 {
        let x = data(rows * features, step, 3.0);
        let t = TensorRef::new(&x, &dims).unwrap();
        alone.forward(t, CallMode::Training, &mut y3).unwrap();
        let _sync = sync::install(other.clone());
        at_once.forward(t, CallMode::Training, &mut y1).unwrap();
        let before = deferred.variables().to_vec();
        {
            let _defer = sync::defer();
            deferred.forward(t, CallMode::Training, &mut y2).unwrap();
        }
        assert_eq!(y1, y2, "step {step}: the output");
        assert_eq!(
            y1, y3,
            "step {step}: the output does not depend on the other process"
        );
        assert_eq!(deferred.variables(), &before[..], "step {step}: state kept");
        let mut m = deferred.inner().pending_maxima().unwrap().to_vec();
        assert_eq!(m.len(), features);
        // Another count is refused and changes nothing.
        let r = deferred.inner_mut().finish_tracking(&b, &m[1..]);
        assert!(matches!(r, Err(CoreError::Length { .. })), "{r:?}");
        assert_eq!(deferred.variables(), &before[..]);
        other.max(&mut m).unwrap();
        deferred.inner_mut().finish_tracking(&b, &m).unwrap();
        assert_eq!(
            deferred.variables(),
            at_once.variables(),
            "step {step}: state"
        );
        assert!(deferred.inner().pending_maxima().is_none());
        // The other process's maxima mattered.
        assert_ne!(at_once.variables(), alone.variables(), "step {step}");
    }
    // Nothing pending: an error, nothing changes.
    let before = deferred.variables().to_vec();
    let r = deferred.inner_mut().finish_tracking(&b, &[0.0; 4]);
    assert!(matches!(r, Err(CoreError::Unsupported(_))), "{r:?}");
    assert_eq!(deferred.variables(), &before[..]);
    // Without a sync installed, `defer` changes nothing: the call tracks at once.
    let x = data(rows * features, 9, 3.0);
    let t = TensorRef::new(&x, &dims).unwrap();
    {
        let _defer = sync::defer();
        deferred.forward(t, CallMode::Training, &mut y2).unwrap();
    }
    assert!(deferred.inner().pending_maxima().is_none());
    assert_ne!(deferred.variables(), &before[..]);
    // KBI and tracing reduce at once under `defer`.
    let kbi = QuantizerSpec::Kbi(
        KbiSpec::new(1.0, 6.0, 0.0, RoundMode::Rnd, OverflowMode::Wrap)
            .with_axes(Axes::Homogeneous(vec![0])),
    );
    for (spec, mode) in [(kbi, CallMode::Training), (spec(), CallMode::Tracing)] {
        let mut q = CpuQuantizer::<f32>::new(spec.clone(), &shape).unwrap();
        let mut r = CpuQuantizer::<f32>::new(spec, &shape).unwrap();
        let _sync = sync::install(other.clone());
        r.forward(t, mode, &mut y1).unwrap();
        let _defer = sync::defer();
        q.forward(t, mode, &mut y2).unwrap();
        assert!(q.inner().pending_maxima().is_none(), "{mode:?}");
        assert_eq!(q.variables(), r.variables(), "{mode:?}");
        assert_eq!(y1, y2);
    }
    // Other kinds never leave any pending and refuse to finish.
    let mut dummy = CpuQuantizer::<f32>::new(QuantizerSpec::Dummy, &shape).unwrap();
    assert!(dummy.inner().pending_maxima().is_none());
    assert!(dummy.inner_mut().finish_tracking(&b, &[]).is_err());
}
