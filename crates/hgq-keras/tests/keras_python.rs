//! Keras itself loads what this crate writes: archives from `from_variables` (and an hgq2 archive
//! read and written back) go through `keras.models.load_model` in hgq2's Python, and every
//! variable must equal the reference (`tests/data/keras/gen.py check`). It needs a Python with
//! keras, hgq2, h5py and a Keras backend (`HGQ_KERAS_PYTHON`, else the repository's
//! `.venv/bin/python`), which a fresh checkout does not have, so it is ignored by default:
//! `cargo test -p hgq-keras -- --ignored` runs it, and fails where that Python is missing.
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{MODELS, Reference, data_dir};
use hgq_keras::KerasArchive;

fn python() -> Result<PathBuf, String> {
    let py = std::env::var_os("HGQ_KERAS_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        PathBuf::from,
    );
    if !py.exists() {
        return Err(format!("{} does not exist", py.display()));
    }
    let out = Command::new(&py)
        .args(["-c", "import keras, hgq, h5py"])
        .env("KERAS_BACKEND", backend())
        .output()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} cannot import keras, hgq and h5py: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    Ok(py)
}

fn backend() -> String {
    std::env::var("KERAS_BACKEND").unwrap_or_else(|_| "torch".into())
}

#[test]
#[ignore = "runs Keras: needs a Python with keras, hgq2 and h5py (HGQ_KERAS_PYTHON or .venv)"]
fn keras_loads_what_we_write() {
    let py =
        python().unwrap_or_else(|why| panic!("no Python with hgq2 to load the archives: {why}"));
    let dir = std::env::temp_dir().join(format!("hgq-keras-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(&py);
    cmd.arg(data_dir().join("gen.py"))
        .arg("check")
        .env("KERAS_BACKEND", backend());
    for name in MODELS {
        let original = KerasArchive::read(data_dir().join(format!("{name}.keras"))).unwrap();
        let r = Reference::load(name);
        let built = KerasArchive::from_variables(original.config.clone(), &r.arrays()).unwrap();
        for (tag, archive) in [("from_variables", &built), ("rewritten", &original)] {
            let path = dir.join(format!("{name}_{tag}.keras"));
            archive.write(&path).unwrap();
            cmd.arg(&path).arg(data_dir().join(format!("{name}.json")));
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
    std::fs::remove_dir_all(&dir).ok();
}
