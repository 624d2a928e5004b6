//! `hgq-interop DIR INPUTS OUT`: the model of an export folder (`DIR/model.json`,
//! `DIR/weights.safetensors`) read into hgq-torch (`Sequential::from_keras_json` for a chain of
//! layers, else `Functional::from_keras_json`; one input and one output), its variables set
//! (`load_keras_variables`), run in inference on the `x` tensor of the safetensors file INPUTS;
//! writes `x` and the outputs `y` to the safetensors file OUT. `cargo xtask interop` runs it
//! before hgq2 and hls4ml's firmware take the same inputs.
use std::path::PathBuf;
use std::process::ExitCode;

use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Functional, Sequential};
use tch::{Device, Kind, Tensor, nn};

type Error = Box<dyn std::error::Error>;

/// A model's inference on one input.
type Infer = Box<dyn Fn(&Tensor) -> hgq_torch::Result<Tensor>>;

fn run(dir: PathBuf, inputs: PathBuf, out: PathBuf) -> Result<(), Error> {
    let json = std::fs::read_to_string(dir.join("model.json"))
        .map_err(|e| format!("{}: {e}", dir.join("model.json").display()))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let weights = Tensor::read_safetensors(dir.join("weights.safetensors"))?;
    let model: Infer = match Sequential::from_keras_json(&vs.root(), &json) {
        Ok(m) => {
            m.load_keras_variables(&weights)?;
            Box::new(move |x| Ok(m.forward(x, CallMode::Inference)?.y))
        }
        Err(_) => {
            let m = Functional::from_keras_json(&vs.root(), &json)?;
            m.load_keras_variables(&weights)?;
            Box::new(move |x| {
                let mut ys = m.forward(&[x], CallMode::Inference)?.ys;
                Ok(ys.swap_remove(0))
            })
        }
    };
    let x = Tensor::read_safetensors(&inputs)?
        .into_iter()
        .find(|(n, _)| n == "x")
        .map(|(_, t)| t)
        .ok_or_else(|| format!("{}: no tensor named x", inputs.display()))?
        .to_kind(Kind::Float);
    let y = tch::no_grad(|| model(&x))?;
    Tensor::write_safetensors(&[("x", &x), ("y", &y)], &out)?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [dir, inputs, out] = <[PathBuf; 3]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("usage: hgq-interop DIR INPUTS OUT");
        std::process::exit(2)
    });
    match run(dir, inputs, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hgq-interop: {e}");
            ExitCode::FAILURE
        }
    }
}
