//! Bad input to the layers and models of `hgq_torch::layers`: a clear error, and nothing built
//! or changed. Geometry Keras refuses, wrong shapes, kinds and arities, graphs used wrongly.
use hgq_torch::TorchError;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{
    Flatten, Functional, Layer, MergeOp, Padding, PoolKind, QBatchNorm, QConv, QDense, QMerge,
    QPool, Reshape, Sequential,
};
use tch::{Device, Kind, Tensor, nn};

fn invalid<T: std::fmt::Debug>(r: Result<T, TorchError>, what: &str) -> String {
    match r {
        Err(TorchError::Invalid { what: w, why }) if w == what => why,
        other => panic!("expected Invalid {{ what: {what:?} }}, got {other:?}"),
    }
}

#[test]
fn geometry_keras_refuses_is_an_error_and_builds_nothing() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut names = Default::default();
    let mut conv = |b: hgq_torch::layers::QConvBuilder| b.build(&vs.root(), &mut names).map(|_| ());
    // A window larger than the input with valid padding.
    let why = invalid(
        conv(QConv::builder_2d([4, 4, 1], 2, [5, 3])),
        "QConv geometry",
    );
    assert!(why.contains("window of 5"), "{why}");
    let mut names = Default::default();
    let mut conv = |b: hgq_torch::layers::QConvBuilder| b.build(&vs.root(), &mut names).map(|_| ());
    // Strides and dilation both above 1; groups not dividing the channels; causal in 2-D.
    invalid(
        conv(
            QConv::builder_2d([8, 8, 2], 2, [3, 3])
                .strides(&[2, 1])
                .dilation(&[1, 2]),
        ),
        "QConv geometry",
    );
    invalid(
        conv(QConv::builder_2d([8, 8, 3], 4, [3, 3]).groups(2)),
        "QConv geometry",
    );
    invalid(
        conv(QConv::builder_2d([8, 8, 2], 2, [3, 3]).padding(Padding::Causal)),
        "QConv geometry",
    );
    invalid(
        conv(QConv::builder_1d([8, 2], 2, 3).strides(&[0])),
        "QConv geometry",
    );
    let mut names = Default::default();
    let mut pool = |b: hgq_torch::layers::QPoolBuilder| b.build(&vs.root(), &mut names).map(|_| ());
    invalid(
        pool(QPool::builder_2d(PoolKind::Max, [3, 3, 1], [4, 4])),
        "QPool geometry",
    );
    invalid(
        pool(QPool::builder_1d(PoolKind::Average, [6, 1], 2).padding(Padding::Causal)),
        "QPool geometry",
    );
    invalid(
        pool(QPool::global(PoolKind::Max, &[4, 4, 4, 4])),
        "QPool geometry",
    );
    let mut names = Default::default();
    invalid(
        QBatchNorm::builder(&[4])
            .momentum(1.5)
            .build(&vs.root(), &mut names)
            .map(|_| ()),
        "QBatchNormalization",
    );
    invalid(
        QBatchNorm::builder(&[4])
            .epsilon(0.0)
            .build(&vs.root(), &mut names)
            .map(|_| ()),
        "QBatchNormalization",
    );
    invalid(
        QMerge::builder(MergeOp::Subtract, &[4], 3)
            .build(&vs.root(), &mut names)
            .map(|_| ()),
        "merge layer",
    );
    invalid(Reshape::new(&[64], &[8, 9]), "Reshape");
    invalid(Flatten::new(&[4, 0]), "Flatten input dimensions");
    // Nothing was built by the refused layers.
    assert_eq!(vs.variables().len(), 0, "{:?}", vs.variables().keys());
}

#[test]
fn wrong_inputs_are_errors_before_any_state_moves() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut names = Default::default();
    let bn = QBatchNorm::builder(&[6, 6, 3])
        .build(&vs.root(), &mut names)
        .unwrap();
    let before: Vec<Tensor> = bn.keras_variables().iter().map(|(_, t)| t.copy()).collect();
    let wrong = [
        Tensor::zeros([2, 6, 6, 4], (Kind::Float, Device::Cpu)),
        Tensor::zeros([2, 6, 3], (Kind::Float, Device::Cpu)),
        Tensor::zeros([2, 6, 6, 3], (Kind::Double, Device::Cpu)),
    ];
    for x in &wrong {
        assert!(bn.forward(x, CallMode::Training).is_err());
    }
    for ((p, t), b) in bn.keras_variables().iter().zip(&before) {
        assert!(t.equal(b), "{p} moved on a refused input");
    }
    let conv = QConv::builder_2d([6, 6, 3], 2, [3, 3])
        .build(&vs.root(), &mut names)
        .unwrap();
    assert!(matches!(
        conv.forward(&wrong[0], CallMode::Training),
        Err(TorchError::Shape { .. })
    ));
    let merge = QMerge::builder(MergeOp::Add, &[4], 2)
        .build(&vs.root(), &mut names)
        .unwrap();
    let a = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    invalid(merge.forward(&a, CallMode::Training), "merge layer input");
    invalid(
        merge.forward_inputs(&[&a, &a, &a], CallMode::Training),
        "merge layer inputs",
    );
    let b = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
    assert!(merge.forward_inputs(&[&a, &b], CallMode::Training).is_err());
    let dense = QDense::builder(4, 2).build(&vs.root(), &mut names).unwrap();
    invalid(
        dense.forward_inputs(&[&a, &a], CallMode::Training),
        "layer inputs",
    );
}

#[test]
fn graphs_used_wrongly_are_errors() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut g = Functional::new();
    invalid(g.input(&[]), "model input");
    let x = g.input(&[4]).unwrap();
    // A layer whose input does not fit; a merge of the wrong number or shape of values.
    invalid(g.add(&root, QDense::builder(5, 2), x), "layer input");
    invalid(
        g.merge(&root, QMerge::builder(MergeOp::Add, &[4], 3), &[x, x]),
        "merge layer inputs",
    );
    invalid(
        g.merge(&root, QMerge::builder(MergeOp::Add, &[5], 2), &[x, x]),
        "merge layer input",
    );
    let h = g.add(&root, QDense::builder(4, 4), x).unwrap();
    // Inputs come first; outputs must be values of the model.
    invalid(g.input(&[4]), "model input");
    let a = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    invalid(g.forward(&[&a], CallMode::Inference), "model outputs");
    invalid(g.to_keras_json(), "model outputs");
    invalid(g.set_outputs(&[]), "model outputs");
    let mut other = Functional::new();
    let far = {
        let i = other.input(&[4]).unwrap();
        let d = other.add(&root, QDense::builder(4, 4), i).unwrap();
        other.add(&root, QDense::builder(4, 4), d).unwrap()
    };
    invalid(g.set_outputs(&[far]), "model node");
    g.set_outputs(&[h]).unwrap();
    invalid(g.forward(&[&a, &a], CallMode::Inference), "model inputs");
    invalid(g.trace_minmax(&[]), "trace_minmax batches");
    assert_eq!(
        g.forward(&[&a], CallMode::Inference).unwrap().ys[0].size(),
        [2, 4]
    );
    // A chain refuses a layer that does not fit, and a JSON graph is not a chain.
    let mut s = Sequential::new();
    s.add(&root, QConv::builder_2d([6, 6, 1], 2, [3, 3]))
        .unwrap();
    invalid(s.add(&root, QDense::builder(8, 2)), "layer input");
    s.add(&root, Flatten::new(&[4, 4, 2]).unwrap()).unwrap();
    let json = {
        let mut r = Functional::new();
        let i = r.input(&[4]).unwrap();
        let d = r.add(&root, QDense::builder(4, 4), i).unwrap();
        let m = r
            .merge(&root, QMerge::builder(MergeOp::Add, &[4], 2), &[i, d])
            .unwrap();
        r.set_outputs(&[m]).unwrap();
        r.to_keras_json().unwrap()
    };
    assert!(Sequential::from_keras_json(&root, &json).is_err());
    let vs2 = nn::VarStore::new(Device::Cpu);
    assert!(Functional::from_keras_json(&vs2.root(), &json).is_ok());
}

/// The native training step does not run output quantizers: it refuses a model with one, and
/// the automatic path trains it through autograd.
#[test]
fn the_native_step_refuses_output_quantizers() {
    use hgq_torch::hgq_config::{Place, QuantizerConfig};
    use hgq_torch::layers::StepPath;
    use hgq_torch::optim::{Adam, AdamConfig};
    let vs = nn::VarStore::new(Device::Cpu);
    let oq = QuantizerConfig::builder_default(Place::Datalane)
        .build()
        .unwrap();
    let mut m = Sequential::new();
    m.add(&vs.root(), QDense::builder(4, 3).oq(oq)).unwrap();
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 2]);
    let e = m
        .train_step_on(StepPath::Native, &x, &labels, &mut opt)
        .unwrap_err();
    assert!(
        matches!(&e, TorchError::Unsupported(w) if w.contains("output quantizer")),
        "{e}"
    );
    m.train_step_on(StepPath::Auto, &x, &labels, &mut opt)
        .unwrap();
}
