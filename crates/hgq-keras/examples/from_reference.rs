//! Writes a `.keras` archive from a model config and variables by Keras path, for Keras to load:
//! the config of IN.keras, the variables of REF.json (`tests/data/keras/gen.py`'s format, each in
//! its Keras dtype), laid out by `KerasArchive::from_variables`.
//!
//! ```text
//! cargo run -p hgq-keras --example from_reference -- tests/data/keras/mlp.json \
//!     tests/data/keras/mlp.keras /tmp/mlp_rust.keras
//! KERAS_BACKEND=torch .venv/bin/python tests/data/keras/gen.py check /tmp/mlp_rust.keras \
//!     tests/data/keras/mlp.json
//! ```
#[path = "../tests/common/mod.rs"]
mod common;

use hgq_keras::KerasArchive;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, input, output] = &args[..] else {
        return Err("usage: from_reference REF.json IN.keras OUT.keras".into());
    };
    let vars = common::Reference::from_path(reference.as_ref()).arrays();
    let config = KerasArchive::read(input)?.config;
    let archive = KerasArchive::from_variables(config, &vars)?;
    archive.write(output)?;
    println!(
        "{output}: {} variables in {} datasets",
        vars.len(),
        archive.weights.len()
    );
    Ok(())
}
