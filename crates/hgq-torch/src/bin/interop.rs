//! `hgq-interop PATH INPUTS OUT`: a model read into hgq-torch and run in inference, for `cargo
//! xtask interop` to compare with hgq2 and hls4ml's firmware. PATH is an export folder
//! (`PATH/model.json`, `PATH/weights.safetensors`: `from_keras_json` and
//! `load_keras_variables`) or a `.keras` archive (`load_keras`); the model is a chain of
//! layers (`Sequential`) or else a graph (`Functional`), of one input and one output. INPUTS is
//! a safetensors file whose `x` tensor is the inputs, or `-` for 512 rows drawn here (normal,
//! at scales 1/2 to 8, seed 0). Writes `x` and the outputs `y` to the safetensors file OUT.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Functional, Sequential};
use tch::{Device, Kind, Tensor, nn};

type Error = Box<dyn std::error::Error>;

/// A model's inference on one input, and its input's dimensions after the batch.
type Infer = (
    Box<dyn Fn(&Tensor) -> hgq_torch::Result<Tensor>>,
    Vec<usize>,
);

fn open(vs: &nn::VarStore, path: &Path) -> Result<Infer, Error> {
    let archive = path.extension().is_some_and(|e| e == "keras");
    let chain = if archive {
        Sequential::load_keras(&vs.root(), path)
    } else {
        let json = std::fs::read_to_string(path.join("model.json"))
            .map_err(|e| format!("{}: {e}", path.join("model.json").display()))?;
        Sequential::from_keras_json(&vs.root(), &json).and_then(|m| {
            m.load_keras_variables(&Tensor::read_safetensors(path.join("weights.safetensors"))?)?;
            Ok(m)
        })
    };
    if let Ok(m) = chain {
        let dims = m
            .layers()
            .first()
            .map(|l| l.input_dims().to_vec())
            .unwrap_or_default();
        return Ok((
            Box::new(move |x| Ok(m.forward(x, CallMode::Inference)?.y)),
            dims,
        ));
    }
    let g = if archive {
        Functional::load_keras(&vs.root(), path)?
    } else {
        let json = std::fs::read_to_string(path.join("model.json"))?;
        let g = Functional::from_keras_json(&vs.root(), &json)?;
        g.load_keras_variables(&Tensor::read_safetensors(path.join("weights.safetensors"))?)?;
        g
    };
    let [(_, dims)] = g.inputs() else {
        return Err(format!(
            "{}: a model of {} inputs (one here)",
            path.display(),
            g.inputs().len()
        )
        .into());
    };
    let dims = dims.clone();
    Ok((
        Box::new(move |x| Ok(g.forward(&[x], CallMode::Inference)?.ys.swap_remove(0))),
        dims,
    ))
}

fn run(path: PathBuf, inputs: PathBuf, out: PathBuf) -> Result<(), Error> {
    let vs = nn::VarStore::new(Device::Cpu);
    let (model, dims) = open(&vs, &path)?;
    let x = if inputs.as_os_str() == "-" {
        hgq_torch::interop::probe_rows(&dims)
    } else {
        Tensor::read_safetensors(&inputs)?
            .into_iter()
            .find(|(n, _)| n == "x")
            .map(|(_, t)| t)
            .ok_or_else(|| format!("{}: no tensor named x", inputs.display()))?
            .to_kind(Kind::Float)
    };
    let y = tch::no_grad(|| model(&x))?;
    Tensor::write_safetensors(&[("x", &x.contiguous()), ("y", &y.contiguous())], &out)?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [path, inputs, out] = <[PathBuf; 3]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("usage: hgq-interop PATH INPUTS OUT");
        std::process::exit(2)
    });
    match run(path, inputs, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hgq-interop: {e}");
            ExitCode::FAILURE
        }
    }
}
