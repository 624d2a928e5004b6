//! A Keras functional model: a graph of layers with several inputs and outputs, merge layers
//! taking the outputs of several others (residual blocks, two-branch networks).
use hgq_config::sequential::GraphModelSpec;
use hgq_core::CallMode;
use tch::{Tensor, nn};

use super::spec::AnyBuilder;
use super::{Layer, LayerBuilder, Names, QMergeBuilder, model};
use crate::{Result, TorchError};

/// A value of a [`Functional`] model: one of its inputs or a layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(usize);

/// What [`Functional::forward`] returns.
#[derive(Debug)]
pub struct FunctionalOutput {
    /// The outputs, in the order [`Functional::set_outputs`] gave.
    pub ys: Vec<Tensor>,
    /// The sum of `beta * ebops` over the layers (zero in inference).
    pub ebops_loss: Tensor,
}

/// A graph of layers as Keras' functional API builds it: inputs, layers each applied once to
/// earlier values (a merge layer to several), outputs. Layers are kept in the order they
/// were added, which is an order the graph can run in.
///
/// ```
/// use hgq_torch::layers::{Activation, Functional, MergeOp, QDense, QMerge};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
///
/// // A residual block: x + dense(dense(x)), then a classifier.
/// let vs = nn::VarStore::new(Device::Cpu);
/// let root = vs.root();
/// let mut g = Functional::new();
/// let x = g.input(&[8])?;
/// let h = g.add(&root, QDense::builder(8, 8).activation(Activation::Relu), x)?;
/// let h = g.add(&root, QDense::builder(8, 8), h)?;
/// let s = g.merge(&root, QMerge::builder(MergeOp::Add, &[8], 2), &[x, h])?;
/// let y = g.add(&root, QDense::builder(8, 3), s)?;
/// g.set_outputs(&[y])?;
/// let out = g.forward(&[&Tensor::randn([4, 8], (Kind::Float, Device::Cpu))], CallMode::Training)?;
/// assert_eq!(out.ys[0].size(), [4, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Functional {
    names: Names,
    /// Each input's name and dimensions after the batch.
    inputs: Vec<(String, Vec<usize>)>,
    layers: Vec<Box<dyn Layer>>,
    /// Each layer's inputs, in argument order.
    inbound: Vec<Vec<NodeId>>,
    outputs: Vec<NodeId>,
    /// The model's name in Keras JSON (read from a file; else Keras' default).
    pub(crate) model_name: Option<String>,
}

impl Functional {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an input of `[batch, *dims]` (named as Keras names them: `input_layer`,
    /// `input_layer_1`, ...).
    pub fn input(&mut self, dims: &[usize]) -> Result<NodeId> {
        let name = self.names.next("input_layer");
        self.input_named(name, dims)
    }

    /// Adds an input with a name of one's own.
    pub fn input_named(&mut self, name: impl Into<String>, dims: &[usize]) -> Result<NodeId> {
        if !self.layers.is_empty() {
            return Err(TorchError::Invalid {
                what: "model input",
                why: "inputs come before the layers".into(),
            });
        }
        if dims.is_empty() || dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "model input",
                why: format!("dimensions {dims:?} (at least one, all positive)"),
            });
        }
        self.inputs.push((name.into(), dims.to_vec()));
        Ok(NodeId(self.inputs.len() - 1))
    }

    /// The dimensions after the batch of a value of this model.
    pub fn dims(&self, node: NodeId) -> Result<Vec<usize>> {
        let n = self.inputs.len();
        match node.0 {
            k if k < n => Ok(self.inputs[k].1.clone()),
            k if k - n < self.layers.len() => Ok(self.layers[k - n].output_dims()),
            k => Err(TorchError::Invalid {
                what: "model node",
                why: format!("node {k} is not in this model"),
            }),
        }
    }

    fn push(&mut self, layer: Box<dyn Layer>, on: Vec<NodeId>) -> NodeId {
        self.layers.push(layer);
        self.inbound.push(on);
        NodeId(self.inputs.len() + self.layers.len() - 1)
    }

    /// Builds a layer under `root` and applies it to `on`, whose dimensions must be the
    /// layer's input dimensions (an error before anything is built).
    pub fn add(&mut self, root: &nn::Path, layer: impl LayerBuilder, on: NodeId) -> Result<NodeId> {
        let (have, want) = (self.dims(on)?, layer.input_dims());
        if have != want {
            return Err(TorchError::Invalid {
                what: "layer input",
                why: format!("{want:?} on a value of {have:?}"),
            });
        }
        let l = layer.build_layer(root, &mut self.names)?;
        Ok(self.push(l, vec![on]))
    }

    /// Builds a merge layer under `root` and applies it to `on` (as many values as it takes,
    /// each of its input dimensions).
    pub fn merge(
        &mut self,
        root: &nn::Path,
        layer: QMergeBuilder,
        on: &[NodeId],
    ) -> Result<NodeId> {
        if on.len() != layer.inputs() {
            return Err(TorchError::Invalid {
                what: "merge layer inputs",
                why: format!("{} values for a merge of {}", on.len(), layer.inputs()),
            });
        }
        for &n in on {
            let have = self.dims(n)?;
            if have != layer.input_dims() {
                return Err(TorchError::Invalid {
                    what: "merge layer input",
                    why: format!("{:?} on a value of {have:?}", layer.input_dims()),
                });
            }
        }
        let l = layer.build(root, &mut self.names)?;
        Ok(self.push(Box::new(l), on.to_vec()))
    }

    /// Sets the outputs (at least one value of this model).
    pub fn set_outputs(&mut self, outputs: &[NodeId]) -> Result<()> {
        if outputs.is_empty() {
            return Err(TorchError::Invalid {
                what: "model outputs",
                why: "none given".into(),
            });
        }
        for &o in outputs {
            self.dims(o)?;
        }
        self.outputs = outputs.to_vec();
        Ok(())
    }

    /// The inputs' names and dimensions.
    pub fn inputs(&self) -> &[(String, Vec<usize>)] {
        &self.inputs
    }
    /// The layers, in an order the graph runs in.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }
    /// Each layer's inputs (parallel to [`Functional::layers`]).
    pub fn inbound(&self) -> &[Vec<NodeId>] {
        &self.inbound
    }
    /// The outputs.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }
    /// The layer whose output `node` is (`None` for an input).
    pub fn layer_of(&self, node: NodeId) -> Option<&dyn Layer> {
        node.0
            .checked_sub(self.inputs.len())
            .and_then(|k| self.layers.get(k))
            .map(|l| l.as_ref())
    }
    /// The name of a value: its input's or its layer's.
    pub fn node_name(&self, node: NodeId) -> Option<&str> {
        match self.layer_of(node) {
            Some(l) => Some(l.name()),
            None => self.inputs.get(node.0).map(|(n, _)| n.as_str()),
        }
    }

    /// Runs the graph on one tensor per input: the outputs and the EBOPs terms.
    pub fn forward(&self, xs: &[&Tensor], mode: CallMode) -> Result<FunctionalOutput> {
        if self.outputs.is_empty() {
            return Err(TorchError::Invalid {
                what: "model outputs",
                why: "not set (Functional::set_outputs)".into(),
            });
        }
        if xs.len() != self.inputs.len() {
            return Err(TorchError::Invalid {
                what: "model inputs",
                why: format!("{} tensors for {} inputs", xs.len(), self.inputs.len()),
            });
        }
        let mut values: Vec<Tensor> = xs.iter().map(|x| x.shallow_clone()).collect();
        let mut loss: Option<Tensor> = None;
        for (l, on) in self.layers.iter().zip(&self.inbound) {
            let args: Vec<&Tensor> = on.iter().map(|n| &values[n.0]).collect();
            let o = l.forward_inputs(&args, mode)?;
            loss = Some(match loss {
                Some(a) => a.f_add(&o.ebops_loss.f_to_device(a.device())?)?,
                None => o.ebops_loss,
            });
            values.push(o.y);
        }
        Ok(FunctionalOutput {
            ys: self
                .outputs
                .iter()
                .map(|n| values[n.0].shallow_clone())
                .collect(),
            ebops_loss: loss.unwrap_or_else(|| Tensor::from(0.0f32)),
        })
    }

    /// The total EBOPs of the last training or tracing call.
    pub fn ebops(&self) -> u64 {
        model::ebops(&self.layers)
    }
    /// Sets every layer's `beta` (layers without EBOPs are left as they are).
    pub fn set_beta(&self, beta: f64) -> Result<()> {
        model::set_beta(&self.layers, beta)
    }
    /// Applies every constraint (after an optimizer step).
    pub fn apply_constraints(&self) -> Result<()> {
        model::apply_constraints(&self.layers)
    }
    /// Whether any layer has a regularizer.
    pub fn has_regularization(&self) -> bool {
        model::has_regularization(&self.layers)
    }
    /// The regularization losses.
    pub fn regularization_loss(&self) -> Result<Tensor> {
        model::regularization_loss(&self.layers)
    }
    /// hgq2's `trace_minmax` over batches of one tensor per input: resets the WRAP tracking,
    /// runs the batches in tracing mode, returns the EBOPs; on an error every variable is as
    /// before the call.
    pub fn trace_minmax(&self, batches: &[Vec<Tensor>]) -> Result<u64> {
        model::trace(&self.layers, batches, |b, mode| {
            let xs: Vec<&Tensor> = b.iter().collect();
            self.forward(&xs, mode).map(|_| ())
        })
    }
    /// Every variable with its Keras path.
    pub fn keras_variables(&self) -> Vec<(String, Tensor)> {
        model::keras_variables(&self.layers)
    }
    /// Sets every variable by Keras path, all or nothing (see
    /// [`super::Sequential::load_keras_variables`]).
    pub fn load_keras_variables(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        model::load_keras_variables(&self.layers, tensors)
    }

    /// Saves the model as a Keras 3 `.keras` archive (`config.json`, `metadata.json`,
    /// `model.weights.h5`) that `keras.models.load_model(path)` opens after `import hgq`,
    /// every variable (bit widths, WRAP integer bits, `beta`, the EBOPs) as this model has it.
    pub fn save_keras(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        super::archive::save(&self.layers, self.to_keras_json()?, path.as_ref())
    }

    /// Opens a `.keras` archive (hgq2's `model.save(path)` or [`Self::save_keras`]): the
    /// model its `config.json` describes, built under `root`, every variable, `beta` and kept
    /// EBOPs set from `model.weights.h5` (an optimizer's state, if saved, is not restored). A
    /// missing or corrupt archive, an unknown layer or option, a weight of another shape: an
    /// error, and nothing is returned.
    pub fn load_keras(root: &nn::Path, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let (archive, json) = super::archive::read(path.as_ref())?;
        let model = Self::from_keras_json(root, &json)?;
        super::archive::load(&model.layers, &archive)?;
        Ok(model)
    }

    /// The model as hgq2's Keras JSON, byte for byte what hgq2's `model.to_json()` gives for
    /// the same graph (layers in Keras' order).
    pub fn to_keras_json(&self) -> Result<String> {
        if self.outputs.is_empty() {
            return Err(TorchError::Invalid {
                what: "model outputs",
                why: "not set (Functional::set_outputs)".into(),
            });
        }
        let mut g = GraphModelSpec::new();
        if let Some(n) = &self.model_name {
            g = g.name(n.as_str());
        }
        for (name, dims) in &self.inputs {
            g = g.input(name.as_str(), dims.clone());
        }
        let name_of = |n: &NodeId| self.node_name(*n).unwrap_or_default().to_string();
        for (l, on) in self.layers.iter().zip(&self.inbound) {
            g = g.node(l.keras_spec()?, on.iter().map(name_of));
        }
        for o in &self.outputs {
            g = g.output(name_of(o));
        }
        g.sort_nodes()?;
        Ok(g.to_json()?)
    }

    /// The model a Keras JSON describes (hgq2's `model.to_json()` of a functional model of
    /// the layers of this module), its variables created under `root` at their initial
    /// values (load trained ones with [`Functional::load_keras_variables`]). What this crate
    /// does not build is an error naming the layer, before anything is built.
    pub fn from_keras_json(root: &nn::Path, json: &str) -> Result<Functional> {
        let spec = GraphModelSpec::from_json(json)?;
        let names = spec.layer_names()?;
        let shapes = spec.output_shapes()?;
        let mut dims_of: std::collections::HashMap<&str, Vec<usize>> = spec
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.shape.clone()))
            .collect();
        let mut builders = Vec::with_capacity(spec.nodes.len());
        for ((node, name), out) in spec.nodes.iter().zip(&names).zip(&shapes) {
            let ins: Vec<Vec<usize>> = node
                .inbound
                .iter()
                .map(|n| dims_of.get(n.as_str()).cloned().unwrap_or_default())
                .collect();
            builders.push((AnyBuilder::of(&node.layer, name, &ins, out)?, &node.inbound));
            dims_of.insert(name.as_str(), out.clone());
        }
        let mut g = Functional::new();
        let mut ids: std::collections::HashMap<String, NodeId> = std::collections::HashMap::new();
        for i in &spec.inputs {
            ids.insert(i.name.clone(), g.input_named(i.name.as_str(), &i.shape)?);
        }
        for ((b, inbound), name) in builders.into_iter().zip(&names) {
            let on: Vec<NodeId> = inbound
                .iter()
                .map(|n| {
                    ids.get(n).copied().ok_or_else(|| TorchError::Invalid {
                        what: "model JSON",
                        why: format!("{name} takes {n}, which is not before it"),
                    })
                })
                .collect::<Result<_>>()?;
            let id = match (b, on.as_slice()) {
                (AnyBuilder::Merge(m), _) => g.merge(root, m, &on)?,
                (b, [one]) => g.add(root, b, *one)?,
                (_, _) => {
                    return Err(TorchError::Invalid {
                        what: "model JSON",
                        why: format!("{name} takes {} inputs", on.len()),
                    });
                }
            };
            ids.insert(name.clone(), id);
        }
        let outs: Vec<NodeId> = spec
            .outputs
            .iter()
            .map(|o| {
                ids.get(o).copied().ok_or_else(|| TorchError::Invalid {
                    what: "model JSON",
                    why: format!("output {o} is not a layer"),
                })
            })
            .collect::<Result<_>>()?;
        g.set_outputs(&outs)?;
        g.model_name = Some(spec.name);
        Ok(g)
    }
}
