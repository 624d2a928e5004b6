//! Configurations to hgq-core quantizer descriptions and back.
mod common;
use hgq_config::{
    ConfigError, CoreQuantizer, Place, PyValue, QType, QuantizerConfig, QuantizerSpec, Regularizer,
    find_quantizers,
};
use hgq_core::mapper::Axes;
use hgq_core::quantizer::{Constraint as CoreConstraint, CpuQuantizer};
use hgq_core::{OverflowMode, RoundMode};

#[test]
fn defaults_round_trip_through_core() {
    for q in [QType::Kbi, QType::Kif, QType::Float, QType::Dummy] {
        for p in Place::ALL {
            let c = QuantizerConfig::builder(q, p).build().unwrap();
            if (q, p) == (QType::Float, Place::Bias) {
                // The reference's float/bias defaults set both axis lists; its own quantizer
                // refuses them, and so does the conversion.
                assert!(matches!(c.to_core(), Err(ConfigError::Convert(_))));
                continue;
            }
            let core = c.to_core().unwrap();
            let back = QuantizerConfig::from_core(&core, p).unwrap();
            assert_eq!(back, c, "{q} {p}");
            assert_eq!(back.to_json(), c.to_json());
        }
    }
}

#[test]
fn kbi_weight_spec() {
    let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(6)
        .overflow_mode(OverflowMode::Sat)
        .heterogeneous_axis([-1])
        .build()
        .unwrap();
    let core = c.to_core().unwrap();
    let QuantizerSpec::Kbi(s) = &core.spec else {
        panic!("not kbi")
    };
    assert_eq!((s.k0, s.b0, s.i0), (1.0, 6.0, 2.0));
    assert_eq!(s.fixed.round, RoundMode::Rnd);
    assert_eq!(s.fixed.overflow, OverflowMode::Sat);
    assert_eq!(s.fixed.axes, Axes::Heterogeneous(vec![-1]));
    assert!(s.fixed.is_weight && s.fixed.trainable);
    assert_eq!(s.fixed.i_decay_speed, f64::INFINITY);
    assert_eq!(
        s.bc,
        Some(CoreConstraint::MinMax {
            min: 0.0,
            max: 23.0
        })
    );
    // The spec builds a working hgq-core quantizer.
    CpuQuantizer::<f32>::new(QuantizerSpec::Kbi(s.clone()), &[Some(4), Some(3)]).unwrap();
}

#[test]
fn hard_sigmoid_keeps_fixed_values_and_affine() {
    let c = QuantizerConfig::hard_sigmoid().build().unwrap();
    let core = c.to_core().unwrap();
    assert_eq!(core.affine, Some((0.25, 0.5)));
    let QuantizerSpec::Kif(s) = &core.spec else {
        panic!("not kif")
    };
    assert_eq!((s.k0, s.i0, s.f0), (1.0, 1.0, 6.0));
    assert_eq!(s.ic, Some(CoreConstraint::Constant(1.0)));
    assert_eq!(s.fixed.overflow, OverflowMode::Sat);
}

#[test]
fn every_golden_quantizer_converts() {
    for case in common::cases() {
        let v = PyValue::parse(&case.json).unwrap();
        for f in find_quantizers(&v).unwrap() {
            let r = f.config.to_core();
            if f.config.q_type() == QType::Float && f.config.place == Place::Bias {
                // Both axis lists set by the reference's float/bias defaults.
                assert!(
                    matches!(&r, Err(ConfigError::Convert(m)) if m.contains("exactly one of")),
                    "{}: {r:?}",
                    case.name
                );
            } else {
                let core: CoreQuantizer = r.unwrap_or_else(|e| panic!("{}: {e}", case.name));
                let back = QuantizerConfig::from_core(&core, f.config.place).unwrap();
                assert_eq!(back.to_core().unwrap(), core, "{}", case.name);
            }
        }
    }
}

#[test]
fn l1l2_without_core_counterpart() {
    let c = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .ir(Regularizer::L1L2 { l1: 0.1, l2: 0.2 })
        .build()
        .unwrap();
    assert!(matches!(c.to_core(), Err(ConfigError::Convert(_))));
}

#[test]
fn a_minifloat_that_does_not_train_gets_no_gradients() {
    let c = QuantizerConfig::builder(QType::Float, Place::Datalane)
        .trainable(false)
        .build()
        .unwrap();
    let core = c.to_core().unwrap();
    let QuantizerSpec::Float(s) = &core.spec else {
        panic!("not a minifloat")
    };
    assert!(!s.trainable);
    assert_eq!(
        QuantizerConfig::from_core(&core, Place::Datalane).unwrap(),
        c
    );
    let mut q = CpuQuantizer::<f32>::new(core.spec.clone(), &[None, Some(2)]).unwrap();
    let x = hgq_core::TensorRef::new(&[0.3f32, 1.7], &[1, 2]).unwrap();
    let (mut y, mut dx) = ([0.0f32; 2], [0.0f32; 2]);
    let g = q.forward_backward(x, &[1.0; 2], &mut y, &mut dx).unwrap();
    assert_eq!(g, hgq_core::quantizer::Grads::default());
    assert!(q.variables().iter().all(|v| !v.trainable));
    // The same spec that trains has gradients for m, e and e0.
    let mut trains = s.clone();
    trains.trainable = true;
    let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Float(trains), &[None, Some(2)]).unwrap();
    let g = q.forward_backward(x, &[1.0; 2], &mut y, &mut dx).unwrap();
    assert!(g.m.is_some() && g.e.is_some() && g.e0.is_some());
}

/// A bit-width mapper of the user's own.
#[derive(Debug)]
struct OwnMapper;

impl hgq_core::BitwidthMapper for OwnMapper {
    fn bw_shape(&self, input: &[Option<usize>]) -> hgq_core::Result<Vec<usize>> {
        Ok(vec![1; input.len()])
    }
}

#[test]
fn a_users_mapper_has_no_keras_config() {
    let c = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .build()
        .unwrap();
    let mut core = c.to_core().unwrap();
    let QuantizerSpec::Kif(s) = &mut core.spec else {
        panic!("not kif")
    };
    let own = Axes::Mapper(std::sync::Arc::new(OwnMapper));
    s.fixed.axes = own.clone();
    let e = QuantizerConfig::from_core(&core, Place::Datalane).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Convert(m) if m.contains("OwnMapper") && m.contains("no Keras config")),
        "{e}"
    );
    assert!(matches!(
        hgq_config::BitwidthMapperConfig::new(own),
        Err(ConfigError::Convert(_))
    ));
}
