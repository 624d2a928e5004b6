//! Keras functional models of any DAG of layers: several inputs and outputs, merge layers.
use std::collections::{HashMap, HashSet};

use super::{ChainModelSpec, KERAS_LAYERS_MODULE, LayerSpec, read_layer, value_err};
use crate::de::{At, dict};
use crate::error::{ConfigError, Result};
use crate::model::{KerasModel, find_quantizers};
use crate::model_json::{
    DEFAULT_MODEL_NAME, FUNCTIONAL_MODULE, check_name, check_size, first_difference, numbered, size,
};
use crate::pyjson::PyValue;

/// One input of a [`GraphModelSpec`]: `keras.Input(shape, name=name)`.
///
/// ```
/// use hgq_config::sequential::InputSpec;
/// let i = InputSpec::new("xa", [4]);
/// assert_eq!((i.name.as_str(), i.shape.as_slice()), ("xa", &[4][..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// The input layer's name (Keras' first automatic one is `input_layer`, the next
    /// `input_layer_1`, ...; here it is always given).
    pub name: String,
    /// The input shape without the batch axis: the input is `(batch, *shape)`.
    pub shape: Vec<usize>,
}

impl InputSpec {
    /// An input named `name` of `shape` (without batch).
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>) -> Self {
        InputSpec {
            name: name.into(),
            shape: shape.into(),
        }
    }
}

/// One layer of a [`GraphModelSpec`] and what it is called on.
///
/// ```
/// use hgq_config::sequential::{NodeSpec, QMergeSpec};
/// let n = NodeSpec::new(QMergeSpec::add(), ["input_layer", "q_dense_1"]);
/// assert_eq!(n.inbound, ["input_layer", "q_dense_1"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// The layer (called once: layers are not shared).
    pub layer: LayerSpec,
    /// The names of the inputs or layers whose outputs it takes, in argument order: one for
    /// a single-input layer (`layer(x)`), the list for a merge layer (`QAdd()([a, b])`; a
    /// name may repeat).
    pub inbound: Vec<String>,
}

impl NodeSpec {
    /// `layer` called on the outputs of `inbound` (names of inputs or layers).
    pub fn new(
        layer: impl Into<LayerSpec>,
        inbound: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        NodeSpec {
            layer: layer.into(),
            inbound: inbound.into_iter().map(Into::into).collect(),
        }
    }
}

/// A Keras functional model of any DAG of layers: `keras.Model(inputs, outputs)`, written
/// byte for byte as hgq2's `model.to_json()` writes it.
///
/// The residual model
///
/// ```python
/// inp = keras.Input((8,))
/// x = QDense(8, activation='relu')(inp)
/// x = QDense(8)(x)
/// x = QAdd()([inp, x])
/// out = QDense(3)(x)
/// keras.Model(inp, out)
/// ```
///
/// is
///
/// ```
/// use hgq_config::model_json::{Activation, QDenseSpec};
/// use hgq_config::sequential::{GraphModelSpec, QMergeSpec};
/// let g = GraphModelSpec::new()
///     .input("input_layer", [8])
///     .node(QDenseSpec::new(8).activation(Activation::Relu), ["input_layer"])
///     .node(QDenseSpec::new(8), ["q_dense"])
///     .node(QMergeSpec::add(), ["input_layer", "q_dense_1"])
///     .node(QDenseSpec::new(3), ["q_add"])
///     .output("q_dense_2");
/// assert_eq!(g.layer_names().unwrap(), ["q_dense", "q_dense_1", "q_add", "q_dense_2"]);
/// assert_eq!(g.output_shapes().unwrap(), [vec![8], vec![8], vec![8], vec![3]]);
/// let json = g.to_json().unwrap();
/// assert!(json.contains(r#""build_config": {"input_shape": [[null, 8], [null, 8]]}, "name": "q_add""#));
/// assert!(json.ends_with(r#""input_layers": ["input_layer", 0, 0], "output_layers": ["q_dense_2", 0, 0]}, "registered_name": "Functional", "build_config": {"input_shape": null}, "compile_config": {}}"#));
/// assert_eq!(GraphModelSpec::from_json(&json).unwrap(), g);
///
/// // A reference to a layer that is not there is an error naming its JSON path.
/// let bad = g.clone().node(QDenseSpec::new(2), ["q_dens"]).output("q_dense_3");
/// assert_eq!(
///     bad.validate().unwrap_err().path(),
///     Some("$.config.layers[5].inbound_nodes[0].args[0].config.keras_history[0]")
/// );
/// ```
///
/// ## What is written
///
/// The layers are written as in a chain ([`ChainModelSpec`]); what a graph adds:
///
/// - `config.layers` lists the input layers and the nodes in Keras' order (`model.layers`):
///   by decreasing depth (the longest path to an output), ties in the order a depth-first
///   walk from the outputs (in order, each node's inputs in argument order) first meets
///   them. An input that only feeds a late layer is listed late. [`Self::nodes`] must be in
///   that order (else [`Self::validate`] says which layer Keras lists where);
///   [`Self::sort_nodes`] puts them in it.
/// - a merge layer's `inbound_nodes` holds its inputs in one list
///   (`"args": [[tensor, tensor]]`), its `build_config.input_shape` a list of shapes, and its
///   config `iq_confs` one quantizer configuration per input (see [`QMergeSpec`]);
/// - `QBatchNormalization`'s `inbound_nodes` have `"kwargs": {"mask": null}` (its `call`
///   takes a mask), every other layer's `{}`;
/// - `input_layers` / `output_layers` are one `[name, 0, 0]` for one input / output (as
///   `keras.Model(inp, out)` writes them) and a list of them for several
///   (`keras.Model([a, b], [x, y])`). `keras.Model([inp], [out])` writes lists of one,
///   which is not described here (reading it is an error).
///
/// Unnamed layers take Keras' automatic names per class in the order of [`Self::nodes`];
/// Keras counts them in the order the Python code made the layers, which is the same in
/// most models. Where it is not, the names must be given.
///
/// Errors name JSON paths in the written document. Until the order of the layers is known
/// (bad names, unknown or forward references, the number of a layer's inputs), node `j` is
/// at `$.config.layers[inputs.len() + j]`, which is where Keras writes it when every input
/// comes first.
///
/// [`QMergeSpec`]: super::QMergeSpec
#[derive(Debug, Clone, PartialEq)]
pub struct GraphModelSpec {
    /// The model name (`functional` by default).
    pub name: String,
    /// The inputs, in the model's argument order (`keras.Model([xa, xb], ...)`).
    pub inputs: Vec<InputSpec>,
    /// The layers, in Keras' order (see above).
    pub nodes: Vec<NodeSpec>,
    /// The names of the layers whose outputs are the model's, in order.
    pub outputs: Vec<String>,
}

impl Default for GraphModelSpec {
    fn default() -> Self {
        Self::new()
    }
}

/// The graph with its names resolved: entities `0..inputs.len()` are the inputs, then the
/// nodes.
struct Resolved {
    /// The node names as written.
    names: Vec<String>,
    /// Per node, the entities it takes.
    inbound: Vec<Vec<usize>>,
    /// Keras' order of all entities.
    order: Vec<usize>,
    /// Per entity, its index in `config.layers`.
    pos: Vec<usize>,
}

impl GraphModelSpec {
    /// A model named `functional`, with no inputs, layers or outputs yet.
    pub fn new() -> Self {
        GraphModelSpec {
            name: DEFAULT_MODEL_NAME.into(),
            inputs: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Sets the model name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Appends an input named `name` of `shape` (without batch).
    pub fn input(mut self, name: impl Into<String>, shape: impl Into<Vec<usize>>) -> Self {
        self.inputs.push(InputSpec::new(name, shape));
        self
    }

    /// Appends `layer`, called on the outputs of `inbound` (names of inputs or layers).
    pub fn node(
        mut self,
        layer: impl Into<LayerSpec>,
        inbound: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.nodes.push(NodeSpec::new(layer, inbound));
        self
    }

    /// Appends an output: the output of the layer named `name`.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(name.into());
        self
    }

    /// The node names as written, in node order: explicit names, and Keras' automatic
    /// names (counted per class in node order, named layers not counting) for the rest.
    /// Errors on a name (the model's and the inputs' too) that is empty, holds `/` or is
    /// used twice, and on a convolution or pooling of a rank other than 1 or 2.
    pub fn layer_names(&self) -> Result<Vec<String>> {
        check_name(&self.name, "$.config.name")?;
        let mut seen = HashSet::new();
        for (k, i) in self.inputs.iter().enumerate() {
            let path = format!("$.config.layers[{k}].config.name");
            check_name(&i.name, &path)?;
            if !seen.insert(i.name.clone()) {
                return Err(value_err(
                    path,
                    format!("layer name `{}` is used twice", i.name),
                ));
            }
        }
        let ni = self.inputs.len();
        let mut auto: HashMap<&str, usize> = HashMap::new();
        let mut names = Vec::with_capacity(self.nodes.len());
        for (j, n) in self.nodes.iter().enumerate() {
            let at = format!("$.config.layers[{}]", ni + j);
            let Some(prefix) = n.layer.auto_name_prefix() else {
                return Err(value_err(
                    super::rank_path(&n.layer, &at),
                    "only ranks 1 and 2 (QConv1D/2D, pooling 1D/2D) are written",
                ));
            };
            let name = match n.layer.name() {
                Some(s) => s.to_string(),
                None => {
                    let k = auto.entry(prefix).or_insert(0);
                    *k += 1;
                    numbered(prefix, *k - 1)
                }
            };
            let path = format!("{at}.config.name");
            check_name(&name, &path)?;
            if !seen.insert(name.clone()) {
                return Err(value_err(
                    path,
                    format!("layer name `{name}` is used twice"),
                ));
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Resolves names and computes Keras' order; `strict`: the nodes must already be in it.
    fn resolve(&self, strict: bool) -> Result<Resolved> {
        let names = self.layer_names()?;
        if self.inputs.is_empty() {
            return Err(value_err(
                "$.config.input_layers",
                "a model needs at least one input",
            ));
        }
        if self.nodes.is_empty() {
            return Err(value_err(
                "$.config.layers",
                "a model needs at least one layer besides its inputs",
            ));
        }
        if self.outputs.is_empty() {
            return Err(value_err(
                "$.config.output_layers",
                "a model needs at least one output",
            ));
        }
        let ni = self.inputs.len();
        let n = ni + self.nodes.len();
        let ids: HashMap<&str, usize> = self
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .chain(names.iter().map(String::as_str))
            .enumerate()
            .map(|(e, s)| (s, e))
            .collect();

        let mut inbound = Vec::with_capacity(self.nodes.len());
        for (j, node) in self.nodes.iter().enumerate() {
            let at = format!("$.config.layers[{}]", ni + j);
            let merge = match &node.layer {
                LayerSpec::QMerge(m) => {
                    m.check_arity(node.inbound.len(), &at)?;
                    true
                }
                l => {
                    if node.inbound.len() != 1 {
                        return Err(value_err(
                            format!("{at}.inbound_nodes[0].args"),
                            format!(
                                "{} takes one input, not {}",
                                l.class_name().unwrap_or("this layer"),
                                node.inbound.len()
                            ),
                        ));
                    }
                    false
                }
            };
            let mut these = Vec::with_capacity(node.inbound.len());
            for (i, src) in node.inbound.iter().enumerate() {
                let path = if merge {
                    format!("{at}.inbound_nodes[0].args[0][{i}].config.keras_history[0]")
                } else {
                    format!("{at}.inbound_nodes[0].args[0].config.keras_history[0]")
                };
                let Some(&e) = ids.get(src.as_str()) else {
                    return Err(value_err(path, format!("no input or layer named `{src}`")));
                };
                if e == ni + j {
                    return Err(value_err(path, format!("`{src}` takes its own output")));
                }
                if strict && e > ni + j {
                    return Err(value_err(
                        path,
                        format!(
                            "`{src}` comes after this layer (a forward reference or a cycle): \
                             the nodes go in Keras' order"
                        ),
                    ));
                }
                these.push(e);
            }
            inbound.push(these);
        }

        let several = self.outputs.len() > 1;
        let output_path = |k: usize| {
            if several {
                format!("$.config.output_layers[{k}][0]")
            } else {
                "$.config.output_layers[0]".to_string()
            }
        };
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for (k, o) in self.outputs.iter().enumerate() {
            match ids.get(o.as_str()) {
                None => {
                    return Err(value_err(output_path(k), format!("no layer named `{o}`")));
                }
                Some(&e) if e < ni => {
                    return Err(value_err(
                        output_path(k),
                        format!("`{o}` is an input, not a layer"),
                    ));
                }
                Some(&e) => outputs.push(e),
            }
        }

        // Keras' `_build_map`: a depth-first walk from the outputs, numbering each layer
        // when first met, listing each after its inputs.
        let parents = |e: usize| -> &[usize] { if e < ni { &[] } else { &inbound[e - ni] } };
        const NEW: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;
        let mut state = vec![NEW; n];
        let mut index = vec![usize::MAX; n];
        let mut next_index = 0;
        let mut post = Vec::with_capacity(n);
        for &o in &outputs {
            if state[o] == DONE {
                continue;
            }
            let mut stack = vec![(o, 0usize)];
            state[o] = OPEN;
            index[o] = next_index;
            next_index += 1;
            while let Some((e, k)) = stack.last_mut() {
                let e = *e;
                if let Some(&c) = parents(e).get(*k) {
                    *k += 1;
                    match state[c] {
                        DONE => {}
                        OPEN => {
                            return Err(value_err(
                                format!("$.config.layers[{}].name", e),
                                format!("`{}` is part of a cycle", names[e - ni]),
                            ));
                        }
                        _ => {
                            state[c] = OPEN;
                            if index[c] == usize::MAX {
                                index[c] = next_index;
                                next_index += 1;
                            }
                            stack.push((c, 0));
                        }
                    }
                } else {
                    state[e] = DONE;
                    post.push(e);
                    stack.pop();
                }
            }
        }
        for (k, i) in self.inputs.iter().enumerate() {
            if state[k] != DONE {
                let path = if ni > 1 {
                    format!("$.config.input_layers[{k}]")
                } else {
                    "$.config.input_layers".to_string()
                };
                return Err(value_err(
                    path,
                    format!("input `{}` is not used by any output", i.name),
                ));
            }
        }
        for (j, name) in names.iter().enumerate() {
            if state[ni + j] != DONE {
                return Err(value_err(
                    format!("$.config.layers[{}].name", ni + j),
                    format!("`{name}` is not used by any output (Keras leaves it out)"),
                ));
            }
        }

        // Keras' `map_graph`: the depth of a layer is one more than the deepest of the
        // layers that take its output (outputs that nothing takes: 0).
        let mut depth = vec![None::<usize>; n];
        for &e in post.iter().rev() {
            let d = *depth[e].get_or_insert(0);
            for &p in parents(e) {
                depth[p] = Some(depth[p].map_or(d + 1, |q| q.max(d + 1)));
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&e| (std::cmp::Reverse(depth[e]), index[e]));
        let mut pos = vec![0; n];
        for (p, &e) in order.iter().enumerate() {
            pos[e] = p;
        }
        if strict {
            let listed = order.iter().enumerate().filter(|&(_, &e)| e >= ni);
            for (j, (p, &e)) in listed.enumerate() {
                if e != ni + j {
                    return Err(value_err(
                        format!("$.config.layers[{p}].name"),
                        format!(
                            "Keras lists `{}` here, not `{}` (sort_nodes puts the nodes in \
                             Keras' order)",
                            names[e - ni],
                            names[j]
                        ),
                    ));
                }
            }
        }
        Ok(Resolved {
            names,
            inbound,
            order,
            pos,
        })
    }

    /// Puts [`Self::nodes`] in Keras' order (see the type's documentation), keeping every
    /// layer's name: a layer whose automatic name would change in the new order is given
    /// its old one, and an explicit name equal to the automatic one becomes `None`. The
    /// nodes may be in any order before, but the graph must be acyclic, with every name
    /// known, every input and layer used by an output; errors as [`Self::validate`].
    ///
    /// ```
    /// use hgq_config::model_json::QDenseSpec;
    /// use hgq_config::sequential::{GraphModelSpec, QMergeSpec};
    /// // The merge is given first: its inputs come after it.
    /// let mut g = GraphModelSpec::new()
    ///     .input("x", [4])
    ///     .node(QMergeSpec::multiply(), ["a", "b"])
    ///     .node(QDenseSpec::new(4).name("a"), ["x"])
    ///     .node(QDenseSpec::new(4).name("b"), ["x"])
    ///     .output("q_multiply");
    /// assert!(g.validate().is_err());
    /// g.sort_nodes().unwrap();
    /// assert_eq!(g.layer_names().unwrap(), ["a", "b", "q_multiply"]);
    /// g.validate().unwrap();
    /// ```
    pub fn sort_nodes(&mut self) -> Result<()> {
        let r = self.resolve(false)?;
        let ni = self.inputs.len();
        let mut nodes: Vec<NodeSpec> = r
            .order
            .iter()
            .filter(|&&e| e >= ni)
            .map(|&e| {
                let mut node = self.nodes[e - ni].clone();
                *node.layer.name_mut() = Some(r.names[e - ni].clone());
                node
            })
            .collect();
        normalize_names(&mut nodes);
        self.nodes = nodes;
        Ok(())
    }

    /// The output shape of every node (in node order), without the batch axis, as Keras
    /// computes it.
    ///
    /// Errors, naming the JSON path of the offending value, on what [`Self::validate`]
    /// checks of the graph, on an input shape that is empty or has a size of 0
    /// (`$.config.layers[0].config.batch_shape[1]`), on geometry Keras refuses (see
    /// [`ChainModelSpec::output_shapes`]), on merge inputs of different shapes
    /// (`$.config.layers[3].build_config.input_shape[1]`), and on a
    /// `QBatchNormalization` axis out of range (`...config.axis`).
    pub fn output_shapes(&self) -> Result<Vec<Vec<usize>>> {
        let r = self.resolve(true)?;
        self.shapes(&r)
    }

    fn shapes(&self, r: &Resolved) -> Result<Vec<Vec<usize>>> {
        let ni = self.inputs.len();
        for (k, i) in self.inputs.iter().enumerate() {
            let at = format!("$.config.layers[{}].config.batch_shape", r.pos[k]);
            if i.shape.is_empty() {
                return Err(value_err(
                    at,
                    "the input needs at least one axis beside the batch",
                ));
            }
            for (d, &s) in i.shape.iter().enumerate() {
                check_size(s, &format!("{at}[{}]", d + 1))?;
            }
        }
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(self.nodes.len());
        for (j, node) in self.nodes.iter().enumerate() {
            let at = format!("$.config.layers[{}]", r.pos[ni + j]);
            for &e in &r.inbound[j] {
                if e >= ni {
                    let src_at = format!("$.config.layers[{}]", r.pos[e]);
                    let src_in = r.inbound[e - ni][0];
                    let src_input = if src_in < ni {
                        &self.inputs[src_in].shape
                    } else {
                        &shapes[src_in - ni]
                    };
                    if let Some(err) = self.nodes[e - ni].layer.keras_shape_err(src_input, &src_at)
                    {
                        return Err(err);
                    }
                }
            }
            let ins: Vec<&[usize]> = r.inbound[j]
                .iter()
                .map(|&e| {
                    if e < ni {
                        self.inputs[e].shape.as_slice()
                    } else {
                        shapes[e - ni].as_slice()
                    }
                })
                .collect();
            let out = match &node.layer {
                LayerSpec::QMerge(m) => m.output_shape(&ins, &at)?,
                l => l.output_shape(ins[0], &at)?,
            };
            for &s in &out {
                check_size(s, &format!("{at}.config"))?;
            }
            shapes.push(out);
        }
        Ok(shapes)
    }

    /// Checks what Keras would refuse (or what would not load), naming the JSON path of the
    /// offending value in the written document: [`Self::layer_names`]; at least one input,
    /// layer and output (`$.config.input_layers`, `$.config.layers`,
    /// `$.config.output_layers`); each node's inputs
    /// (`$.config.layers[j].inbound_nodes[0].args[0].config.keras_history[0]`, or
    /// `...args[0][i]...` for a merge): a name that is no input or layer, the node itself,
    /// a node after it; their number (one, or for a merge at least one, exactly two for
    /// `QSubtract`, and as many as `iq_confs` holds); the outputs
    /// (`$.config.output_layers[k][0]`): a name that is no layer, an input; an input or
    /// layer that no output uses; nodes not in Keras' order; [`Self::output_shapes`]; EBOPs
    /// only with an input quantizer.
    pub fn validate(&self) -> Result<()> {
        self.checked().map(|_| ())
    }

    /// [`Self::validate`], giving what it computed: the resolved graph and the shapes.
    fn checked(&self) -> Result<(Resolved, Vec<Vec<usize>>)> {
        let r = self.resolve(true)?;
        let shapes = self.shapes(&r)?;
        let ni = self.inputs.len();
        for (j, node) in self.nodes.iter().enumerate() {
            if node.layer.ebops_without_iq() {
                return Err(value_err(
                    format!("$.config.layers[{}].config.enable_ebops", r.pos[ni + j]),
                    "EBOPs need the input quantizer (enable_iq)",
                ));
            }
        }
        Ok((r, shapes))
    }

    /// The whole document as a value (see [`Self::to_json`]).
    pub fn to_value(&self) -> Result<PyValue> {
        let (r, shapes) = self.checked()?;
        let ni = self.inputs.len();
        let shape = |dims: &[usize]| {
            PyValue::List(
                std::iter::once(PyValue::Null)
                    .chain(dims.iter().map(|&n| PyValue::Int(n as i64)))
                    .collect(),
            )
        };
        let history =
            |name: &str| PyValue::List(vec![PyValue::str(name), PyValue::Int(0), PyValue::Int(0)]);
        let name_of = |e: usize| -> &str {
            if e < ni {
                &self.inputs[e].name
            } else {
                &r.names[e - ni]
            }
        };
        let shape_of = |e: usize| -> &[usize] {
            if e < ni {
                &self.inputs[e].shape
            } else {
                &shapes[e - ni]
            }
        };
        let tensor = |e: usize| {
            dict([
                ("class_name", PyValue::str("__keras_tensor__")),
                (
                    "config",
                    dict([
                        ("shape", shape(shape_of(e))),
                        ("dtype", PyValue::str("float32")),
                        ("keras_history", history(name_of(e))),
                    ]),
                ),
            ])
        };

        let mut layers = Vec::with_capacity(r.order.len());
        for &e in &r.order {
            if e < ni {
                let i = &self.inputs[e];
                layers.push(dict([
                    ("module", PyValue::str(KERAS_LAYERS_MODULE)),
                    ("class_name", PyValue::str("InputLayer")),
                    (
                        "config",
                        dict([
                            ("batch_shape", shape(&i.shape)),
                            ("dtype", PyValue::str("float32")),
                            ("sparse", PyValue::Bool(false)),
                            ("ragged", PyValue::Bool(false)),
                            ("name", PyValue::str(&i.name)),
                            ("optional", PyValue::Bool(false)),
                        ]),
                    ),
                    ("registered_name", PyValue::Null),
                    ("name", PyValue::str(&i.name)),
                    ("inbound_nodes", PyValue::List(vec![])),
                ]));
                continue;
            }
            let j = e - ni;
            let l = &self.nodes[j].layer;
            let name = &r.names[j];
            let ins = &r.inbound[j];
            let merge = matches!(l, LayerSpec::QMerge(_));
            let (args, input_shape) = if merge {
                (
                    PyValue::List(vec![PyValue::List(
                        ins.iter().map(|&i| tensor(i)).collect(),
                    )]),
                    PyValue::List(ins.iter().map(|&i| shape(shape_of(i))).collect()),
                )
            } else {
                (PyValue::List(vec![tensor(ins[0])]), shape(shape_of(ins[0])))
            };
            let kwargs = if l.takes_mask() {
                dict([("mask", PyValue::Null)])
            } else {
                dict([])
            };
            let class = l.class_name().expect("checked by layer_names");
            let mut entries = vec![
                ("module".to_string(), PyValue::str(l.module())),
                ("class_name".to_string(), PyValue::str(class)),
                (
                    "config".to_string(),
                    l.config_value(name, shape_of(ins[0]), &shapes[j], ins.len()),
                ),
                (
                    "registered_name".to_string(),
                    if l.is_hgq() {
                        PyValue::Str(format!("hgq>{class}"))
                    } else {
                        PyValue::Null
                    },
                ),
            ];
            // Keras builds a Reshape, an Activation or a ReLU when it is made: it writes no
            // build_config.
            if l.writes_build_config() {
                entries.push(("build_config".into(), dict([("input_shape", input_shape)])));
            }
            entries.push(("name".into(), PyValue::str(name)));
            entries.push((
                "inbound_nodes".into(),
                PyValue::List(vec![dict([("args", args), ("kwargs", kwargs)])]),
            ));
            layers.push(PyValue::Dict(entries));
        }
        let ends = |names: Vec<&str>| {
            if let [one] = names[..] {
                history(one)
            } else {
                PyValue::List(names.into_iter().map(history).collect())
            }
        };
        let input_layers = ends(self.inputs.iter().map(|i| i.name.as_str()).collect());
        let output_layers = ends(self.outputs.iter().map(String::as_str).collect());
        Ok(dict([
            ("module", PyValue::str(FUNCTIONAL_MODULE)),
            ("class_name", PyValue::str("Functional")),
            (
                "config",
                dict([
                    ("name", PyValue::str(&self.name)),
                    ("trainable", PyValue::Bool(true)),
                    ("layers", PyValue::List(layers)),
                    ("input_layers", input_layers),
                    ("output_layers", output_layers),
                ]),
            ),
            ("registered_name", PyValue::str("Functional")),
            ("build_config", dict([("input_shape", PyValue::Null)])),
            ("compile_config", dict([])),
        ]))
    }

    /// The exact text of the reference's `model.to_json()` for this model.
    pub fn to_json(&self) -> Result<String> {
        Ok(self.to_value()?.to_json())
    }

    /// The written document as a [`KerasModel`], with every quantizer configuration found
    /// and its layer path (`functional/q_add`) and key (`iq_conf`, `kq_conf`, `bq_conf`,
    /// `oq_conf`; `[0]`, `[1]`, ... for a merge layer's `iq_confs`).
    pub fn to_keras_model(&self) -> Result<KerasModel> {
        let root = self.to_value()?;
        let quantizers = find_quantizers(&root)?;
        Ok(KerasModel { root, quantizers })
    }

    /// Reads a document that [`Self::to_json`] (or the reference, for such a model) wrote, or a
    /// Keras `Sequential` document (`"class_name": "Sequential"`, read as a chain by
    /// [`ChainModelSpec::from_keras_sequential_value`]: the graph of that chain).
    ///
    /// The fields are read, the model is written again and compared with the input: any
    /// difference (a key this type does not describe, another initializer, a shared layer,
    /// a shape that is not the one Keras computes, ...) is an error naming the first JSON
    /// path where they differ. A layer name equal to the automatic name it would get is
    /// read as `None`, a `parallelization_factor` equal to the automatic one as `-1`, a
    /// pooling layer's `strides` equal to its `pool_size` as `None`, and a merge layer's
    /// `iq_confs` that are all equal as one configuration.
    ///
    /// ```
    /// use hgq_config::model_json::QDenseSpec;
    /// use hgq_config::sequential::{GraphModelSpec, QMergeSpec};
    /// let g = GraphModelSpec::new()
    ///     .input("xa", [4])
    ///     .input("xb", [4])
    ///     .node(QMergeSpec::subtract(), ["xa", "xb"])
    ///     .node(QDenseSpec::new(2), ["q_subtract"])
    ///     .output("q_dense")
    ///     .output("q_subtract");
    /// let json = g.to_json().unwrap();
    /// assert!(json.contains(r#""input_layers": [["xa", 0, 0], ["xb", 0, 0]], "output_layers": [["q_dense", 0, 0], ["q_subtract", 0, 0]]"#));
    /// assert_eq!(GraphModelSpec::from_json(&json).unwrap(), g);
    /// let bad = json.replacen(r#""keras_history": ["xb", 0, 0]"#, r#""keras_history": ["xc", 0, 0]"#, 1);
    /// let e = GraphModelSpec::from_json(&bad).unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[2].inbound_nodes[0].args[0][1].config.keras_history[0]"));
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(&PyValue::parse(text)?)
    }

    /// Reads a parsed document (see [`Self::from_json`]).
    pub fn from_value(v: &PyValue) -> Result<Self> {
        if super::keras_seq::is_sequential(v) {
            return ChainModelSpec::from_keras_sequential_value(v).map(Self::from);
        }
        let spec = read_graph(&At::root(v))?;
        let written = spec.to_value()?;
        match first_difference(v, &written, "$".into()) {
            None => Ok(spec),
            Some(path) => Err(ConfigError::Value {
                path,
                msg: "not what this graph model writes".into(),
            }),
        }
    }
}

impl From<ChainModelSpec> for GraphModelSpec {
    /// The same model: the chain's input, each layer called on the one before, the last
    /// one the output. Its JSON is the chain's.
    fn from(c: ChainModelSpec) -> Self {
        // The automatic names, as the chain writes them (a layer without one, of a rank
        // that is not written, gets a stand-in: the graph is as invalid as the chain).
        let mut auto: HashMap<&str, usize> = HashMap::new();
        let names: Vec<String> = c
            .layers
            .iter()
            .map(|l| match l.name() {
                Some(n) => n.to_string(),
                None => {
                    let prefix = l.auto_name_prefix().unwrap_or("layer");
                    let k = auto.entry(prefix).or_insert(0);
                    *k += 1;
                    numbered(prefix, *k - 1)
                }
            })
            .collect();
        let mut prev = c.input_name.clone();
        let mut nodes = Vec::with_capacity(c.layers.len());
        for (l, name) in c.layers.into_iter().zip(&names) {
            nodes.push(NodeSpec {
                layer: l,
                inbound: vec![std::mem::replace(&mut prev, name.clone())],
            });
        }
        GraphModelSpec {
            name: c.name,
            inputs: vec![InputSpec::new(c.input_name, c.input_shape)],
            outputs: if nodes.is_empty() { vec![] } else { vec![prev] },
            nodes,
        }
    }
}

/// Names equal to the automatic name they would get (in node order) become `None`.
fn normalize_names(nodes: &mut [NodeSpec]) {
    let mut auto: HashMap<&str, usize> = HashMap::new();
    for node in nodes {
        let Some(prefix) = node.layer.auto_name_prefix() else {
            continue;
        };
        let k = auto.entry(prefix).or_insert(0);
        if node.layer.name() == Some(numbered(prefix, *k).as_str()) {
            *node.layer.name_mut() = None;
        }
        if node.layer.name().is_none() {
            *k += 1;
        }
    }
}

/// `[name, 0, 0]` (one) or a list of them (several), as `input_layers` / `output_layers`.
fn read_ends(at: &At<'_>) -> Result<Vec<String>> {
    let items = at.list()?;
    let triple = |a: &At<'_>| -> Result<String> {
        let t = a.list()?;
        match t.first() {
            Some(n) => Ok(n.str()?.to_string()),
            None => Err(a.value_err("expected [name, node index, tensor index]")),
        }
    };
    match items.first() {
        Some(first) if matches!(first.v, PyValue::Str(_)) => Ok(vec![first.str()?.to_string()]),
        _ => items.iter().map(triple).collect(),
    }
}

/// The name in a `__keras_tensor__`'s `keras_history`.
fn read_tensor_source(at: &At<'_>) -> Result<String> {
    let mut d = at.dict()?;
    let mut c = d.req("config")?.dict()?;
    let h = c.req("keras_history")?;
    let items = h.list()?;
    match items.first() {
        Some(n) => Ok(n.str()?.to_string()),
        None => Err(h.value_err("expected [name, node index, tensor index]")),
    }
}

fn read_graph(root: &At<'_>) -> Result<GraphModelSpec> {
    let mut d = root.dict()?;
    let mut c = d.req("config")?.dict()?;
    let name = c.req("name")?.str()?.to_string();
    let layers_at = c.req("layers")?;
    let mut input_shapes: HashMap<String, Vec<usize>> = HashMap::new();
    let mut nodes = Vec::new();
    for l in layers_at.list()? {
        let mut ld = l.dict()?;
        let class = ld.req("class_name")?.str()?;
        let config = ld.req("config")?;
        if class == "InputLayer" {
            let mut ic = config.dict()?;
            let input_name = ic.req("name")?.str()?.to_string();
            let shape_at = ic.req("batch_shape")?;
            let shape = shape_at.list()?;
            let Some((_, dims)) = shape.split_first() else {
                return Err(shape_at.value_err("expected a batch shape [null, ...]"));
            };
            let dims = dims.iter().map(size).collect::<Result<Vec<_>>>()?;
            input_shapes.insert(input_name, dims);
            continue;
        }
        let layer = read_layer(&config, class, &l.path)?;
        let inbound_at = ld.req("inbound_nodes")?;
        let calls = inbound_at.list()?;
        let Some(call) = calls.first() else {
            return Err(inbound_at.value_err("a layer that is not called"));
        };
        let args_at = call.dict()?.req("args")?;
        let args = args_at.list()?;
        let Some(arg) = args.first() else {
            return Err(args_at.value_err("a call without arguments"));
        };
        let inbound = match arg.v {
            PyValue::List(_) => arg
                .list()?
                .iter()
                .map(read_tensor_source)
                .collect::<Result<Vec<_>>>()?,
            _ => vec![read_tensor_source(arg)?],
        };
        nodes.push(NodeSpec { layer, inbound });
    }
    let inputs_at = c.req("input_layers")?;
    let mut inputs = Vec::new();
    for n in read_ends(&inputs_at)? {
        let Some(shape) = input_shapes.get(&n) else {
            return Err(inputs_at.value_err(format!("no InputLayer named `{n}`")));
        };
        inputs.push(InputSpec::new(n, shape.clone()));
    }
    let outputs = read_ends(&c.req("output_layers")?)?;
    normalize_names(&mut nodes);
    let mut spec = GraphModelSpec {
        name,
        inputs,
        nodes,
        outputs,
    };
    // The automatic parallelization factors read as -1, QSoftmax's last axis as -1.
    let shapes = spec.output_shapes()?;
    let names = spec.layer_names()?;
    let mut shape_of: HashMap<&str, &[usize]> = spec
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.shape.as_slice()))
        .collect();
    shape_of.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(shapes.iter().map(Vec::as_slice)),
    );
    let inputs: Vec<Vec<usize>> = spec
        .nodes
        .iter()
        .map(|n| shape_of[n.inbound[0].as_str()].to_vec())
        .collect();
    for ((node, input), out) in spec.nodes.iter_mut().zip(&inputs).zip(&shapes) {
        node.layer.normalize_read(input, out);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_json::QDenseSpec;

    #[test]
    fn keras_order_lists_a_late_input_late() {
        // a -> d1 -> d2 -> add(d2, b): Keras lists a, d1, d2, b, add.
        let g = GraphModelSpec::new()
            .input("a", [4])
            .input("b", [4])
            .node(QDenseSpec::new(4).name("d1"), ["a"])
            .node(QDenseSpec::new(4).name("d2"), ["d1"])
            .node(super::super::QMergeSpec::add(), ["d2", "b"])
            .output("q_add");
        let r = g.resolve(true).unwrap();
        assert_eq!(r.order, [0, 2, 3, 1, 4]);
    }
}
