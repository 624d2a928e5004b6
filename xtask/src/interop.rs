//! `cargo xtask interop PATH [--inputs FILE]`: a model read into hgq-torch (hgq-torch's
//! `hgq-interop`), into hgq2, and into the firmware hls4ml 1.3 makes of it (`bit_exact=True`,
//! compiled with g++), all three run on the same inputs. PATH is an export folder of this
//! project (`cargo xtask demo --out DIR`) or a `.keras` archive (saved by hgq2 or by us); the
//! inputs are the `x` tensor of FILE, default the export's own `predictions.safetensors`, or
//! for an archive 512 rows that `hgq-interop` draws:
//! `xtask/ref/interop.py` (the checks of `../shared/interop/check_keras.py` and
//! `check_hls4ml.py`, in the project) in `.venv-ref`, whose hls4ml and safetensors are installed
//! on first use. Prints the script's JSON line; exits 1 on any difference.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::{reference, setup};

/// What the check needs beside the reference (hgq2, keras, jax).
const REQUIREMENTS: [&str; 2] = ["hls4ml==1.3.0", "safetensors"];

fn usage() -> String {
    "usage: cargo xtask interop PATH [--inputs FILE]\n  \
     PATH: an export folder (model.json, weights.safetensors, predictions.safetensors),\n  \
     as `cargo xtask demo --out DIR` writes it, or a .keras archive\n  \
     FILE: a safetensors file whose tensor `x` is the inputs (default: the folder's own;\n  \
     for an archive, 512 rows drawn at several scales)"
        .to_string()
}

/// `cargo xtask interop DIR [--inputs FILE]`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let (dir, inputs) = match args {
        [dir] => (PathBuf::from(dir), None),
        [dir, flag, file] if flag == "--inputs" => (PathBuf::from(dir), Some(PathBuf::from(file))),
        _ => return Err(usage()),
    };
    let archive = dir.extension().is_some_and(|e| e == "keras");
    if archive && !dir.is_file() {
        return Err(format!("{}: no such file", dir.display()));
    }
    let needed: &[&str] = if archive {
        &[]
    } else {
        &[
            "model.json",
            "weights.safetensors",
            "predictions.safetensors",
        ]
    };
    for f in needed {
        if !dir.join(f).is_file() {
            return Err(format!(
                "{}: no {f} (is it an export folder?)\n{}",
                dir.display(),
                usage()
            ));
        }
    }
    let inputs = inputs.unwrap_or_else(|| {
        if archive {
            PathBuf::from("-")
        } else {
            dir.join("predictions.safetensors")
        }
    });
    if inputs.as_os_str() != "-" && !inputs.is_file() {
        return Err(format!("{}: no such file", inputs.display()));
    }
    let py = python()?;
    let ours = std::env::temp_dir().join(format!("hgq-interop-{}.safetensors", std::process::id()));
    let read_back = crate::torch::run(
        &["--bin", "hgq-interop"],
        [dir.clone().into(), inputs.into(), ours.clone().into()],
    )?;
    if read_back != ExitCode::SUCCESS {
        return Ok(ExitCode::FAILURE);
    }
    let script = setup::repo_root()
        .join("xtask")
        .join("ref")
        .join("interop.py");
    let status = Command::new(&py)
        .arg(&script)
        .arg(&dir)
        .arg(&ours)
        .env("KERAS_BACKEND", "jax")
        .status()
        .map_err(|e| format!("cannot run {}: {e}", py.display()));
    let _ = std::fs::remove_file(&ours);
    Ok(if status?.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `.venv-ref`'s interpreter with the reference and the check's requirements.
fn python() -> Result<PathBuf, String> {
    let py = reference::python(None)?;
    if !has(&py, "import hls4ml, safetensors") {
        eprintln!(
            "interop: installing {} into .venv-ref",
            REQUIREMENTS.join(" ")
        );
        let reqs: Vec<String> = REQUIREMENTS.iter().map(|r| r.to_string()).collect();
        setup::pip_install(&py, &reqs, false, false)?;
    }
    if has(&py, "import hls4ml, safetensors") {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import hls4ml and safetensors after pip install",
            py.display()
        ))
    }
}

fn has(py: &Path, code: &str) -> bool {
    Command::new(py)
        .args(["-c", code])
        .env("KERAS_BACKEND", "jax")
        .output()
        .is_ok_and(|o| o.status.success())
}
