use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use hgq_config::sequential::ChainModelSpec;

use super::spec::AnyBuilder;
use super::{Layer, LayerBuilder, Names, model, native};
use crate::optim::Adam;
use crate::{Result, TorchError};

/// How [`Sequential::train_step_on`] computes a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepPath {
    /// [`StepPath::Native`] where it runs (float32 CPU tensors; `QDense`, `QConv` of one
    /// group, `QPool`, `Reshape` and `Flatten`; input quantizers without scaler, noise factor
    /// or affine map, no output quantizers), else [`StepPath::Autograd`].
    #[default]
    Auto,
    /// Without autograd: hgq-core's passes and gradients, matrix products and Adam in plain
    /// loops over the `VarStore`'s memory. An error where it cannot run.
    ///
    /// It runs on the threads of the current rayon pool: on more than one, its larger passes,
    /// products and Adam's update split over a [`hgq_core::team`] session held for the
    /// step, whose helper threads spin (a CPU each) until 2 ms after the step, so that the
    /// next step finds them awake. Install a one-thread pool to keep a step on one CPU. Any
    /// thread count gives the same bits. Its outputs and gradients are kept on the calling
    /// thread for the next step ([`hgq_core::scratch`]: at most 256 MiB of them per thread).
    Native,
    /// libtorch's autograd through the layers' forward (any device and kind).
    Autograd,
}

/// What a training step returns: scalars, detached, on the input's device (read them when
/// needed: reading a CUDA value waits for the device).
#[derive(Debug)]
pub struct StepOutput {
    /// The loss minimized: mean cross entropy + the layers' `beta * ebops` + the
    /// regularization losses (float32).
    pub loss: Tensor,
    /// How many rows' largest logit is their label (int64).
    pub correct: Tensor,
}

/// Layers applied in order.
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
    names: Names,
    /// The model's and the input layer's names in Keras JSON (read from a file; else Keras'
    /// defaults).
    keras_names: Option<(String, String)>,
}

/// What [`Sequential::forward`] returns.
#[derive(Debug)]
pub struct SequentialOutput {
    /// The last layer's output.
    pub y: Tensor,
    /// The sum of `beta * ebops` over the layers (zero in inference).
    pub ebops_loss: Tensor,
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a layer under `root` (Keras' unique names over this model) and appends it. A
    /// layer whose input does not fit the last layer's output is an error before anything is
    /// built.
    pub fn add(&mut self, root: &nn::Path, layer: impl LayerBuilder) -> Result<&dyn Layer> {
        if let Some(last) = self.layers.last() {
            let (out, input) = (last.output_dims(), layer.input_dims());
            if input != out {
                return Err(TorchError::Invalid {
                    what: "layer input",
                    why: format!("{input:?} after {} whose output is {out:?}", last.name()),
                });
            }
        }
        let l = layer.build_layer(root, &mut self.names)?;
        self.layers.push(l);
        Ok(self.layers[self.layers.len() - 1].as_ref())
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Layer `k` as its own type (`None` if there is no layer `k` or it is another type).
    ///
    /// ```
    /// use hgq_torch::layers::{QDense, Sequential};
    /// use tch::{nn, Device};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut m = Sequential::new();
    /// m.add(&vs.root(), QDense::builder(4, 3))?;
    /// assert_eq!(m.layer::<QDense>(0).unwrap().units(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn layer<T: Layer>(&self, k: usize) -> Option<&T> {
        self.layers.get(k)?.downcast_ref::<T>()
    }

    /// Sets every layer's `beta` (layers without EBOPs are left as they are).
    pub fn set_beta(&self, beta: f64) -> Result<()> {
        model::set_beta(&self.layers, beta)
    }

    /// Runs every layer in order.
    pub fn forward(&self, x: &Tensor, mode: CallMode) -> Result<SequentialOutput> {
        let mut y = x.shallow_clone();
        let mut loss: Option<Tensor> = None;
        for l in &self.layers {
            let o = l.forward(&y, mode)?;
            y = o.y;
            loss = Some(match loss {
                Some(a) => a + o.ebops_loss,
                None => o.ebops_loss,
            });
        }
        Ok(SequentialOutput {
            y,
            ebops_loss: loss.unwrap_or_else(|| Tensor::from(0.0f32)),
        })
    }

    /// One training step of a classifier: the forward in training mode, the mean cross entropy
    /// of the logits against `labels` (int64 class indices) plus the EBOPs and
    /// regularization losses, the gradients, one step of `opt`, the constraints. The path is
    /// [`StepPath::Auto`] (see [`Sequential::train_step_on`]).
    ///
    /// ```no_run
    /// use hgq_torch::layers::{Activation, QDense, Sequential};
    /// use hgq_torch::optim::{Adam, AdamConfig};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let mut model = Sequential::new();
    /// model.add(&vs.root(), QDense::builder(64, 32).activation(Activation::Relu))?;
    /// model.add(&vs.root(), QDense::builder(32, 10))?;
    /// let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?;
    /// let x = Tensor::rand([64, 64], (Kind::Float, Device::Cpu));
    /// let labels = Tensor::zeros([64], (Kind::Int64, Device::Cpu));
    /// let out = model.train_step(&x, &labels, &mut opt)?;
    /// println!("loss {}", out.loss.double_value(&[]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn train_step(&self, x: &Tensor, labels: &Tensor, opt: &mut Adam) -> Result<StepOutput> {
        self.train_step_on(StepPath::Auto, x, labels, opt)
    }

    /// [`Sequential::train_step`] on a chosen path. Both paths compute the same step (the
    /// quantizers' values bit for bit; the gradients up to the order of float32 sums in the
    /// matrix products); the native one skips libtorch's per-operation cost, which is most of
    /// a step of the small networks HGQ trains.
    pub fn train_step_on(
        &self,
        path: StepPath,
        x: &Tensor,
        labels: &Tensor,
        opt: &mut Adam,
    ) -> Result<StepOutput> {
        if self.layers.is_empty() {
            return Err(TorchError::Invalid {
                what: "model",
                why: "no layers to train".into(),
            });
        }
        // The native step's layers, made once: for the choice and for the step.
        let plan = match path {
            StepPath::Autograd => None,
            StepPath::Auto => native::prepare(self, x, labels).ok(),
            StepPath::Native => Some(native::prepare(self, x, labels).map_err(|why| {
                TorchError::Unsupported(format!("the native training step: {why}"))
            })?),
        };
        let Some(plan) = plan else {
            return self.train_step_autograd(x, labels, opt);
        };
        let (loss, correct) = native::step(self, plan, x, labels, opt)?;
        Ok(StepOutput {
            loss: Tensor::from(loss),
            correct: Tensor::from(correct),
        })
    }

    fn train_step_autograd(
        &self,
        x: &Tensor,
        labels: &Tensor,
        opt: &mut Adam,
    ) -> Result<StepOutput> {
        let out = self.forward(x, CallMode::Training)?;
        let mut loss = out
            .y
            .f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)?
            .f_add(&out.ebops_loss.f_to_device(out.y.device())?)?;
        if self.has_regularization() {
            loss = loss.f_add(&self.regularization_loss()?.f_to_device(out.y.device())?)?;
        }
        opt.backward_step(&loss)?;
        self.apply_constraints()?;
        let correct = tch::no_grad(|| -> Result<Tensor> {
            Ok(out
                .y
                .f_argmax(-1, false)?
                .f_eq_tensor(labels)?
                .f_sum(Kind::Int64)?)
        })?;
        Ok(StepOutput {
            loss: loss.f_detach()?,
            correct,
        })
    }

    /// The total EBOPs of the last training or tracing call (sum of the layers' uint32 values).
    pub fn ebops(&self) -> u64 {
        model::ebops(&self.layers)
    }

    /// Applies every constraint (after an optimizer step).
    pub fn apply_constraints(&self) -> Result<()> {
        model::apply_constraints(&self.layers)
    }

    /// Whether any layer has a regularizer (else [`Sequential::regularization_loss`] is 0).
    pub fn has_regularization(&self) -> bool {
        model::has_regularization(&self.layers)
    }

    /// The regularization losses.
    pub fn regularization_loss(&self) -> Result<Tensor> {
        model::regularization_loss(&self.layers)
    }

    /// hgq2's `trace_minmax`: resets the WRAP tracking, runs `batches` in tracing mode, and
    /// returns the EBOPs after it. No batch is an error (tracing nothing would leave every
    /// WRAP quantizer without integer bits); on an error every variable is as before the call.
    pub fn trace_minmax<'a>(&self, batches: impl IntoIterator<Item = &'a Tensor>) -> Result<u64> {
        let batches: Vec<&Tensor> = batches.into_iter().collect();
        model::trace(&self.layers, &batches, |b, mode| {
            self.forward(b, mode).map(|_| ())
        })
    }

    /// Every variable with its Keras path.
    pub fn keras_variables(&self) -> Vec<(String, Tensor)> {
        model::keras_variables(&self.layers)
    }

    /// The model a Keras JSON describes (what [`Sequential::to_keras_json`] and hgq2's
    /// `model.to_json()` write for a chain of the layers of this module: `QDense`,
    /// `QConv1D`/`QConv2D`, the poolings, `Flatten`, `Reshape`), its variables created under
    /// `root` at their initial values (load trained ones with
    /// [`Sequential::load_keras_variables`]). What this crate does not build yet (a frozen
    /// layer, an activation other than `linear` and `relu`, `keepdims`) is an error naming the
    /// layer, before anything is built.
    ///
    /// ```no_run
    /// use hgq_torch::layers::Sequential;
    /// use tch::{nn, Device, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let json = std::fs::read_to_string("out/demo/model.json")?;
    /// let model = Sequential::from_keras_json(&vs.root(), &json)?;
    /// model.load_keras_variables(&Tensor::read_safetensors("out/demo/weights.safetensors")?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_keras_json(root: &nn::Path, json: &str) -> Result<Sequential> {
        let spec = ChainModelSpec::from_json(json)?;
        let names = spec.layer_names()?;
        let shapes = spec.output_shapes()?;
        let mut dims = spec.input_shape.clone();
        let mut builders = Vec::with_capacity(spec.layers.len());
        for ((l, name), out) in spec.layers.iter().zip(&names).zip(&shapes) {
            builders.push(AnyBuilder::of(l, name, std::slice::from_ref(&dims), out)?);
            dims = out.clone();
        }
        let mut model = Sequential::new();
        for b in builders {
            model.add(root, b)?;
        }
        model.keras_names = Some((spec.name, spec.input_name));
        Ok(model)
    }

    /// Sets every variable from `tensors`, named by Keras variable paths (what
    /// [`Sequential::keras_variables`] names and `weights.safetensors` holds). All or nothing:
    /// a variable without a tensor, a tensor of another shape, a non-finite value, or a tensor
    /// no variable takes (beside hgq2's `.../ebops` and `.../beta` bookkeeping) is an error
    /// before any variable changes.
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

    /// The model as hgq2's Keras JSON (`keras.models.model_from_json` loads it; the weights
    /// go by [`Sequential::keras_variables`]): the input and the layers, each with its
    /// configuration as hgq2 writes it (byte for byte what hgq2's `model.to_json()` gives
    /// for the same model).
    pub fn to_keras_json(&self) -> Result<String> {
        let first = self.layers.first().ok_or_else(|| {
            TorchError::Unsupported("a model without layers has no Keras JSON".into())
        })?;
        let mut spec = ChainModelSpec::new(first.input_dims().to_vec());
        if let Some((model, input)) = &self.keras_names {
            spec = spec.name(model.as_str()).input_name(input.as_str());
        }
        for l in &self.layers {
            spec = spec.layer(l.keras_spec()?);
        }
        Ok(spec.to_json()?)
    }
}
