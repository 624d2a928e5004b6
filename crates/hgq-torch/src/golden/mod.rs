//! The golden checks that run on hgq-torch (feature `golden`; `cargo xtask golden --backend
//! torch` runs them through the `hgq-golden-torch` binary):
//!
//! - hgq-golden's [`Backend`] on tensors ([`TorchBackend`]): the `fixed_fn` family through
//!   [`fixed_quantize`] and autograd (its float64, float16 and bfloat16 cases on tensors of that
//!   kind, as any kind reaches the quantizer), the `layers` family through [`Quantizer`] modules
//!   in a `VarStore`;
//! - [`reference`]: the layer models against hgq2 itself, the families `cnn`, `graph` and
//!   `more` (`tests/data/reference/{cnn,graph,more}.json`): Sequential and functional models
//!   of every layer, a training step, `trace_minmax` and inference compared with hgq2's values.
//!   hgq-core has no layers, so these run here only.
use hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_core::quantizer::Props;
use hgq_core::{CallMode, FixedPoint};
use hgq_golden::{
    Backend, Dtype, FixedFnOut, GradTolerance, LayerOut, LayerUnderTest, TypedInputs, TypedOut,
    VarInfo,
};
use tch::{Device, Kind, Tensor, nn};

use crate::fixed_quantize;
use crate::quantizer::Quantizer;

pub mod reference;

/// The torch backend on one device (CPU: the fused kernels through the autograd bridge;
/// CUDA: torch ops).
#[derive(Debug, Clone, Copy)]
pub struct TorchBackend {
    /// Where the tensors live.
    pub device: Device,
}

impl TorchBackend {
    /// The gradient tolerance to check this backend under (hgq-golden's
    /// [`check_with_options`](hgq_golden::check_with_options)).
    ///
    /// On the CPU hgq-golden's default (1e-5 relative plus 1e-6 absolute). On CUDA, torch sums
    /// a gradient over many elements (the bit widths' gradients of a layer quantizer, summed
    /// over the axes that share a bit width) in another order than the reference, which moves
    /// it by a few 1e-6 (seen on an H100: at most 3e-6 on gradients of about 1e-2, on 10 of
    /// the 100 layer cases of the seed-7 set): 1e-5 relative plus 1e-5 absolute there, for every
    /// gradient element. Values are compared bit for bit on both.
    pub fn grad_tolerance(&self) -> GradTolerance {
        match self.device {
            Device::Cpu => GradTolerance::DEFAULT,
            _ => GradTolerance {
                rel: 1e-5,
                abs: 1e-5,
            },
        }
    }
}

fn tensor(v: &[f32], shape: &[usize], device: Device) -> Result<Tensor, String> {
    let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_slice(v)
        .and_then(|t| t.f_reshape(s.as_slice()))
        .and_then(|t| t.f_to_device(device))
        .map_err(|e| e.to_string())
}

fn vec_of(t: &Tensor) -> Result<Vec<f32>, String> {
    crate::host::read_f32(t, "values").map_err(|e| e.to_string())
}

/// A gradient (zeros when autograd left it undefined: the input took no part).
fn grad_of(t: &Tensor) -> Result<Vec<f32>, String> {
    let g = t.grad();
    if g.defined() {
        vec_of(&g)
    } else {
        Ok(vec![0.0; t.numel()])
    }
}

/// The tensor kind of a golden dtype.
fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::Bf16 => Kind::BFloat16,
    }
}

/// Values of `kind` (held exactly by f64) as a tensor of that kind.
fn tensor_of(v: &[f64], shape: &[usize], kind: Kind, device: Device) -> Result<Tensor, String> {
    let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_slice(v)
        .and_then(|t| t.f_reshape(s.as_slice()))
        .and_then(|t| t.f_to_kind(kind))
        .and_then(|t| t.f_to_device(device))
        .map_err(|e| e.to_string())
}

/// A tensor of any float kind as f64 values (exact).
fn vec64_of(t: &Tensor) -> Result<Vec<f64>, String> {
    t.f_to_kind(Kind::Double)
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_view(-1))
        .and_then(|t| Vec::<f64>::try_from(&t))
        .map_err(|e| e.to_string())
}

/// [`grad_of`] as f64 values.
fn grad64_of(t: &Tensor) -> Result<Vec<f64>, String> {
    let g = t.grad();
    if g.defined() {
        vec64_of(&g)
    } else {
        Ok(vec![0.0; t.numel()])
    }
}

impl Backend for TorchBackend {
    fn name(&self) -> &'static str {
        "torch"
    }

    fn fixed_fn(
        &self,
        q: FixedPoint,
        shape: &[usize],
        x: &[f32],
        k: &[f32],
        i: &[f32],
        f: &[f32],
        training: bool,
        dy: &[f32],
    ) -> Result<FixedFnOut, String> {
        let d = self.device;
        let xt = tensor(x, shape, d)?.set_requires_grad(true);
        let kt = tensor(k, shape, d)?;
        let it = tensor(i, shape, d)?.set_requires_grad(true);
        let ft = tensor(f, shape, d)?.set_requires_grad(true);
        let y = fixed_quantize(&q, &xt, &kt, &it, &ft, training).map_err(|e| e.to_string())?;
        let dyt = tensor(dy, shape, d)?;
        (&y * &dyt).sum(Kind::Float).backward();
        Ok(FixedFnOut {
            y: vec_of(&y)?,
            y_forward: None,
            dx: grad_of(&xt)?,
            di: grad_of(&it)?,
            df: grad_of(&ft)?,
        })
    }

    /// Every dtype: x, k, i, f tensors of its kind through the quantizer that
    /// [`fixed_quantize`] calls (on the CPU float16/bfloat16 through the fused kernel in
    /// float32, stored in their kind; float64 and every kind on CUDA through the torch-ops
    /// path), gradients by autograd into tensors of the kind.
    fn fixed_fn_typed(
        &self,
        q: FixedPoint,
        a: &TypedInputs<'_>,
    ) -> Result<Option<TypedOut>, String> {
        let (d, kind) = (self.device, kind_of(a.dtype));
        let xt = tensor_of(a.x, a.shape, kind, d)?.set_requires_grad(true);
        let kt = tensor_of(a.k, a.shape, kind, d)?;
        let it = tensor_of(a.i, a.shape, kind, d)?.set_requires_grad(true);
        let ft = tensor_of(a.f, a.shape, kind, d)?.set_requires_grad(true);
        let y = crate::quantize(&q, &xt, kind, [&kt, &it, &ft], a.training)
            .map_err(|e| e.to_string())?;
        let dyt = tensor_of(a.dy, a.shape, kind, d)?;
        (&y * &dyt).sum(Kind::Double).backward();
        Ok(Some(TypedOut {
            y: vec64_of(&y)?,
            y_forward: None,
            dx: grad64_of(&xt)?,
            di: grad64_of(&it)?,
            df: grad64_of(&ft)?,
        }))
    }

    fn layer(
        &self,
        spec: &QuantizerSpec,
        input_shape: &[usize],
    ) -> Result<Box<dyn LayerUnderTest>, String> {
        let vs = nn::VarStore::new(self.device);
        let input: Vec<Option<usize>> = input_shape.iter().copied().map(Some).collect();
        let core = CoreQuantizer {
            spec: spec.clone(),
            scaler: None,
            qnoise_factor: None,
            affine: None,
        };
        let q = Quantizer::new(&vs.root(), &core, &input).map_err(|e| e.to_string())?;
        Ok(Box::new(TorchLayer {
            _vs: vs,
            q,
            device: self.device,
        }))
    }
}

struct TorchLayer {
    _vs: nn::VarStore,
    q: Quantizer,
    device: Device,
}

impl TorchLayer {
    fn var(&self, name: &str) -> Option<Tensor> {
        self.q
            .variables()
            .into_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, t)| t)
    }
}

impl LayerUnderTest for TorchLayer {
    fn variables(&self) -> Vec<VarInfo> {
        let trainable = self.q.trainable_names();
        self.q
            .variables()
            .into_iter()
            .map(|(name, t)| VarInfo {
                name: name.as_str().to_string(),
                shape: t.size().iter().map(|&d| d as usize).collect(),
                trainable: trainable.contains(&name),
            })
            .collect()
    }

    fn set(&mut self, name: &str, values: &[f32]) -> Result<(), String> {
        let t = self
            .var(name)
            .ok_or_else(|| format!("no variable {name:?}"))?;
        let size: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let v = tensor(values, &size, self.device)?;
        tch::no_grad(|| t.shallow_clone().f_copy_(&v)).map_err(|e| e.to_string())
    }

    fn get(&self, name: &str) -> Option<Vec<f32>> {
        self.var(name).and_then(|t| vec_of(&t).ok())
    }

    fn props(&self) -> Result<Props<Vec<f32>>, String> {
        let p = self.q.props().map_err(|e| e.to_string())?;
        Ok(Props {
            bits: vec_of(&p.bits)?,
            fbits: vec_of(&p.fbits)?,
            min: vec_of(&p.min)?,
            max: vec_of(&p.max)?,
            epsilon: vec_of(&p.epsilon)?,
        })
    }

    fn call(
        &mut self,
        x: &[f32],
        shape: &[usize],
        mode: CallMode,
        dy: &[f32],
    ) -> Result<LayerOut, String> {
        let train = mode == CallMode::Training;
        let xt = tensor(x, shape, self.device)?.set_requires_grad(train);
        let y = self.q.forward(&xt, mode).map_err(|e| e.to_string())?;
        if !train {
            return Ok(LayerOut {
                y: vec_of(&y)?,
                dx: None,
                grads: Vec::new(),
            });
        }
        let dyt = tensor(dy, shape, self.device)?;
        (&y * &dyt).sum(Kind::Float).backward();
        let mut grads = Vec::new();
        for name in self.q.trainable_names() {
            let t = self
                .q
                .variable(name)
                .ok_or_else(|| format!("no variable {name}"))?;
            grads.push((name.as_str().to_string(), grad_of(&t)?));
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        Ok(LayerOut {
            y: vec_of(&y)?,
            dx: Some(grad_of(&xt)?),
            grads,
        })
    }
}
