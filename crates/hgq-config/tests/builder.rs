//! Each golden configuration built with the typed Rust API from its `python` expression, and
//! written byte for byte as the reference wrote it.
mod common;
use hgq_config::{
    BitwidthMapperConfig, KerasModel, Place, QType, QuantizerConfig, QuantizerLayer, Result,
};
use hgq_core::OverflowMode;
use hgq_core::mapper::Axes;
use rstest::rstest;

fn plain(q: QType, p: Place) -> Result<QuantizerConfig> {
    QuantizerConfig::builder(q, p).build()
}

/// The Rust expression for each golden case (its `python` in comments).
fn build(name: &str) -> Result<String> {
    use Place::*;
    use QType::*;
    let places = [
        ("weight", Weight),
        ("datalane", Datalane),
        ("bias", Bias),
        ("table", Table),
    ];
    for (q, qt) in [("kbi", Kbi), ("kif", Kif), ("float", Float)] {
        for (p, pl) in places {
            if name == format!("config/{q}/{p}") {
                // QuantizerConfig('<q>', '<p>')
                return plain(qt, pl).map(|c| c.to_json());
            }
        }
    }
    Ok(match name {
        // QuantizerConfig('default', 'weight')
        "config/default/weight" => QuantizerConfig::builder_default(Weight).build()?.to_json(),
        // QuantizerConfig('dummy')
        "config/dummy" => QuantizerConfig::builder(Dummy, Datalane).build()?.to_json(),
        // QuantizerConfig('kbi', 'weight', b0=6, i0=3, overflow_mode='SAT', heterogeneous_axis=(-1,))
        "config/kbi/override" => QuantizerConfig::builder(Kbi, Weight)
            .b0(6)
            .i0(3)
            .overflow_mode(OverflowMode::Sat)
            .heterogeneous_axis([-1])
            .build()?
            .to_json(),
        // QuantizerConfig('kif', 'datalane', scaler=0.5, qnoise_factor=0.25, affine=(2.0, -1.0))
        "config/kif/scaled" => QuantizerConfig::builder(Kif, Datalane)
            .scaler(0.5)
            .qnoise_factor(0.25)
            .affine(2.0, -1.0)
            .build()?
            .to_json(),
        // QuantizerConfig('float', 'weight', m0=4, e0=3, e00=-2, homogeneous_axis=(0,))
        "config/float/override" => QuantizerConfig::builder(Float, Weight)
            .m0(4)
            .e0(3)
            .e00(-2)
            .homogeneous_axis([0])
            .build()?
            .to_json(),
        // HardTanhConfig(symmetric=True)
        "config/hardtanh" => QuantizerConfig::hard_tanh(true).build()?.to_json(),
        // HardSigmoidConfig()
        "config/hardsigmoid" => QuantizerConfig::hard_sigmoid().build()?.to_json(),
        // Quantizer(QuantizerConfig('kbi', 'weight')) built on (8, 4)
        "layer/quantizer_kbi_weight" => QuantizerLayer::new("quantizer", plain(Kbi, Weight)?)
            .built_on([Some(8), Some(4)])
            .to_json(),
        // Quantizer('kif', 'datalane', f0=3)
        "layer/quantizer_kif_kwargs" => QuantizerLayer::new(
            "quantizer_1",
            QuantizerConfig::builder(Kif, Datalane).f0(3).build()?,
        )
        .to_json(),
        // DefaultBitwidthMapper(homogeneous_axis=(0,)) after inference on (16, 8, 3)
        "mapper/homogeneous_0" => {
            let mut m = BitwidthMapperConfig::new(Axes::Homogeneous(vec![0])).unwrap();
            m.infer(3)?;
            m.to_json()
        }
        // Sequential([Input((16,)), QDense(8, activation='relu'), QDense(5)]): the model's
        // Keras layers are not typed here; its six quantizer configurations are built and put
        // in place, and the whole document must come out the same.
        "model/qdense_mlp" => {
            let mut m = KerasModel::from_json(&common::json_of(name))?;
            assert_eq!(m.quantizers.len(), 6);
            for f in &mut m.quantizers {
                f.config = match f.key.as_str() {
                    // QDense's defaults: iq 'default' datalane, kq 'default' weight,
                    // bq 'default' bias.
                    "iq_conf" => QuantizerConfig::builder_default(Datalane).build()?,
                    "kq_conf" => QuantizerConfig::builder_default(Weight).build()?,
                    "bq_conf" => QuantizerConfig::builder_default(Bias).build()?,
                    k => panic!("unexpected quantizer key {k}"),
                };
            }
            let paths: Vec<String> = m
                .quantizers
                .iter()
                .map(|f| format!("{}:{}", f.layer_path(), f.key))
                .collect();
            assert_eq!(
                paths,
                [
                    "sequential/q_dense:iq_conf",
                    "sequential/q_dense:kq_conf",
                    "sequential/q_dense:bq_conf",
                    "sequential/q_dense_1:iq_conf",
                    "sequential/q_dense_1:kq_conf",
                    "sequential/q_dense_1:bq_conf",
                ]
            );
            assert_eq!(
                m.quantizers[0].json_path(),
                "$.config.layers[1].config.iq_conf"
            );
            m.to_json()
        }
        _ => panic!("no Rust expression for {name}"),
    })
}

#[test]
fn every_golden_case_is_built() {
    let cases = common::cases();
    assert_eq!(cases.len(), 23);
    for c in cases {
        let got = build(&c.name).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(got, c.json, "{} ({})", c.name, c.python);
    }
}

#[rstest]
#[case::kbi(QType::Kbi)]
#[case::kif(QType::Kif)]
#[case::float(QType::Float)]
fn defaults_read_back_equal(#[case] q: QType) {
    for p in Place::ALL {
        let c = plain(q, p).unwrap();
        assert_eq!(QuantizerConfig::from_json(&c.to_json()).unwrap(), c);
    }
}

#[test]
fn default_resolves_by_place() {
    for (p, q) in [
        (Place::Weight, QType::Kbi),
        (Place::Bias, QType::Kbi),
        (Place::Table, QType::Kbi),
        (Place::Datalane, QType::Kif),
    ] {
        let c = QuantizerConfig::builder_default(p).build().unwrap();
        assert_eq!(c.q_type(), q);
        assert_eq!(c, plain(q, p).unwrap());
    }
}

#[test]
fn float_overrides_keep_their_type() {
    let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(6.0)
        .build()
        .unwrap();
    assert!(c.to_json().contains(r#""b0": 6.0, "i0": 2"#));
    let c = QuantizerConfig::builder(QType::Kif, Place::Weight)
        .k0(false)
        .build()
        .unwrap();
    assert!(c.to_json().contains(r#""k0": false"#));
}
