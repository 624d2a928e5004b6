//! `cargo xtask setup`: libtorch for tch, from `torch==2.11.0` on PyPI, in the project's `.venv`.
//!
//! How the pieces find libtorch afterwards:
//! - Build time: `.cargo/config.toml` sets `LIBTORCH = <repo>/.venv/libtorch` (unless the
//!   environment already sets it); this task makes `.venv/libtorch` a relative symlink to the
//!   venv's `site-packages/torch` (which holds `lib/` and `include/`), so torch-sys finds it
//!   with a plain `cargo build`, in any profile and with any target directory.
//! - Run time: `crates/hgq-torch/build.rs` links `$OUT_DIR/libtorch-lib` to libtorch's `lib`
//!   folder and adds it as a link-search path. `OUT_DIR` lies inside the profile folder, and
//!   Cargo puts such paths on the library path of what `cargo run` / `cargo test` start, so
//!   debug and release binaries find libtorch without any environment variable.
//! - Outside Cargo (a binary copied to another machine) set `LD_LIBRARY_PATH` to a torch
//!   2.11 `lib` folder, e.g. the GPU machine's `python3 -c 'import torch,os;
//!   print(os.path.dirname(torch.__file__))'`/lib.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The PyTorch release that tch 0.24 expects.
pub const TORCH_VERSION: &str = "2.11.0";

/// Headers of CUDA 13.0 that c10d's NCCL header includes (`crt/host_config.h`, `nv/target`)
/// and torch's CUDA wheels lack: headers only (3 MB). With them beside a CUDA torch,
/// hgq-torch's build includes c10d's NCCL process group (its `distributed` module).
const CUDA_HEADER_WHEELS: [&str; 2] = ["nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85"];

/// The repository root (the parent of this crate's manifest folder).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `<repo>/.venv`.
pub fn venv_dir() -> PathBuf {
    repo_root().join(".venv")
}

/// `<repo>/.venv/libtorch`: the symlink that `LIBTORCH` names.
pub fn libtorch_dir() -> PathBuf {
    venv_dir().join("libtorch")
}

fn usage() -> String {
    "usage: cargo xtask setup [--force] [--check]\n  \
     (no flag)  install torch==2.11.0 into .venv if missing, link .venv/libtorch\n  \
     --force    reinstall torch even if it looks installed\n  \
     --check    only report whether libtorch is ready (exit 1 if not)"
        .to_string()
}

/// `cargo xtask setup [--force] [--check]`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let (mut force, mut check) = (false, false);
    for a in args {
        match a.as_str() {
            "--force" => force = true,
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if check {
        return Ok(match installed() {
            Ok(v) => {
                println!(
                    "libtorch {v} ready at {} ({})",
                    libtorch_dir().display(),
                    nccl_state()
                );
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("libtorch not ready: {why}\nrun `cargo xtask setup`");
                ExitCode::FAILURE
            }
        });
    }
    if force {
        install(true)?;
        cuda_headers();
    } else {
        ensure()?;
    }
    let v = installed()?;
    println!(
        "libtorch {v} ready at {} ({})",
        libtorch_dir().display(),
        nccl_state()
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes sure libtorch is installed and linked, with the CUDA headers beside a CUDA torch; fast
/// (a few file checks) when it already is.
pub fn ensure() -> Result<(), String> {
    if installed().is_err() {
        install(false)?;
    }
    cuda_headers();
    Ok(())
}

/// `<libtorch>/../nvidia/cu13/include` and whether the torch there is a CUDA build.
fn cuda_include() -> (PathBuf, bool) {
    let torch = libtorch_dir();
    (
        torch.join("../nvidia/cu13/include"),
        torch.join("lib/libtorch_cuda.so").exists(),
    )
}

/// Whether the NCCL headers are in place, in words.
fn nccl_state() -> &'static str {
    match cuda_include() {
        (_, false) => "a CPU torch: no NCCL",
        (inc, true) if inc.join("crt/host_config.h").exists() => "CUDA headers for NCCL in place",
        _ => "CUDA headers for NCCL missing: run `cargo xtask setup`",
    }
}

/// Installs [`CUDA_HEADER_WHEELS`] beside a CUDA torch where they are missing. Without them the
/// build has Gloo alone, so a failure (no network) is a warning, not an error.
fn cuda_headers() {
    let (inc, is_cuda) = cuda_include();
    if !is_cuda || (inc.join("crt/host_config.h").exists() && inc.join("nv/target").exists()) {
        return;
    }
    let py = venv_dir().join("bin").join("python");
    eprintln!("setup: pip install the CUDA headers c10d's NCCL process group needs (3 MB)");
    let reqs: Vec<String> = CUDA_HEADER_WHEELS.iter().map(|r| r.to_string()).collect();
    if let Err(e) = pip_install(&py, &reqs, true, false) {
        eprintln!(
            "setup: warning: {e}
setup: hgq-torch builds without NCCL (Gloo alone)"
        );
    }
}

/// The installed torch version, if `.venv/libtorch` is a usable libtorch of the right release.
fn installed() -> Result<String, String> {
    let dir = libtorch_dir();
    let lib = dir.join("lib");
    for f in ["libtorch_cpu.so", "libc10.so", "libtorch.so"] {
        if !lib.join(f).exists() {
            return Err(format!("{} is missing", lib.join(f).display()));
        }
    }
    let version = torch_version(&dir)?;
    if version.split('+').next() != Some(TORCH_VERSION) {
        return Err(format!(
            "{} holds torch {version}, this project needs {TORCH_VERSION}",
            dir.display()
        ));
    }
    Ok(version)
}

/// Reads `__version__` from `torch/version.py` (no Python start-up needed).
fn torch_version(torch_dir: &Path) -> Result<String, String> {
    let p = torch_dir.join("version.py");
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    text.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("__version__")?;
            let rest = rest.trim_start().strip_prefix(':').map_or(rest, |r| {
                // `__version__: str = '2.11.0+cu130'`
                r.split_once('=').map_or(r, |(_, v)| v)
            });
            let v = rest.trim_start().trim_start_matches('=').trim();
            Some(v.trim_matches(|c| c == '\'' || c == '"').to_string())
        })
        .ok_or_else(|| format!("no __version__ in {}", p.display()))
}

fn install(force: bool) -> Result<(), String> {
    let start = Instant::now();
    let venv = venv_dir();
    let py = venv.join("bin").join("python");
    make_venv(&venv)?;
    eprintln!(
        "setup: pip install torch=={TORCH_VERSION} into {} (the default PyPI wheel and the nvidia \
         CUDA libraries it links: about 4 GB installed, minutes on first install)",
        venv.display()
    );
    // One requirement per pip call, without pip's cache: the peak disk use is what is installed
    // plus one requirement's downloads (~5 GB), not two copies of all of them (~10 GB), which a
    // small CI disk does not have.
    // The link is made last, so an install cut short is never taken for a ready one.
    let link = libtorch_dir();
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)
            .map_err(|e| format!("cannot remove {}: {e}", link.display()))?;
    }
    pip_install(&py, &[format!("torch=={TORCH_VERSION}")], true, force)?;
    for req in runtime_requirements(&read_metadata(&venv)?) {
        pip_install(&py, &[req], false, false)?;
    }
    link_libtorch(&venv)?;
    let v = installed()?;
    eprintln!(
        "setup: libtorch {v} ready at {} ({:.0} s)",
        libtorch_dir().display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Creates a virtual environment with pip at `venv` (with `HGQ_PYTHON`, default `python3`)
/// unless it already has a Python; an error that says what to install where that fails.
pub fn make_venv(venv: &Path) -> Result<(), String> {
    let py = venv.join("bin").join("python");
    if !py.exists() {
        let python = std::env::var("HGQ_PYTHON").unwrap_or_else(|_| "python3".into());
        let version = Command::new(&python)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "cannot run `{python}` ({e}). {} is a virtual environment made with it, \
                     into which pip installs from PyPI (libtorch comes from torch=={TORCH_VERSION}): \
                     install Python 3.10-3.13 (Debian/Ubuntu: `apt-get install python3 \
                     python3-venv`), or name another interpreter with HGQ_PYTHON=/path/to/python3",
                    venv.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        eprintln!(
            "setup: creating {} with {python} ({version})",
            venv.display()
        );
        let out = Command::new(&python)
            .args(["-m", "venv"])
            .arg(venv)
            .output()
            .map_err(|e| format!("cannot run `{python} -m venv`: {e}"))?;
        if !out.status.success() {
            // A half-made venv would make the next run skip this step.
            let _ = std::fs::remove_dir_all(venv);
            return Err(format!(
                "`{python} -m venv {}` failed:\n{}\nOn Debian/Ubuntu install the venv module: \
                 `apt-get install python3-venv` (or python3.X-venv), then rerun",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let pip_ok = Command::new(&py)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        return Err(format!(
            "{} has no pip: remove {} and install pip for your Python (Debian/Ubuntu: \
             `apt-get install python3-pip python3-venv`), then rerun",
            py.display(),
            venv.display()
        ));
    }
    Ok(())
}

/// Runs `python -m pip install --no-cache-dir --no-warn-conflicts [--no-deps] [--force-reinstall]
/// REQS`.
pub fn pip_install(py: &Path, reqs: &[String], no_deps: bool, force: bool) -> Result<(), String> {
    let mut cmd = Command::new(py);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-cache-dir",
        // Requirements go in one at a time (see `install`), so until the last one is in, pip's
        // check after each call finds torch's other requirements missing and prints a page of
        // `ERROR:` lines about a state that is on its way to complete; `installed()` checks
        // the result instead.
        "--no-warn-conflicts",
    ]);
    if no_deps {
        cmd.arg("--no-deps");
    }
    if force {
        cmd.arg("--force-reinstall");
    }
    cmd.args(reqs);
    let status = cmd.status().map_err(|e| format!("cannot run pip: {e}"))?;
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "`{} -m pip install {}` failed (see pip's message above). pip needs to reach PyPI (or a \
         mirror set with PIP_INDEX_URL) and about 5 GB of free disk{}",
        py.display(),
        reqs.join(" "),
        free_disk(py)
            .map(|f| format!(" ({f} free now)"))
            .unwrap_or_default()
    ))
}

/// The installed torch's `METADATA` (its requirements), from `site-packages/torch-*.dist-info`.
fn read_metadata(venv: &Path) -> Result<String, String> {
    let lib = venv.join("lib");
    let pythons =
        std::fs::read_dir(&lib).map_err(|e| format!("cannot read {}: {e}", lib.display()))?;
    for py in pythons.flatten() {
        let site = py.path().join("site-packages");
        let Ok(entries) = std::fs::read_dir(&site) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("torch-") && name.ends_with(".dist-info") {
                let meta = e.path().join("METADATA");
                return std::fs::read_to_string(&meta)
                    .map_err(|e| format!("cannot read {}: {e}", meta.display()));
            }
        }
    }
    Err(format!(
        "pip installed torch, but no torch-*.dist-info/METADATA exists under {}",
        lib.display()
    ))
}

/// What libtorch needs of torch's `Requires-Dist` lines on this platform: every requirement
/// without a marker or with a `platform_system` marker that names this system, but no extras and
/// not triton (the GPU kernel compiler behind Python's `torch.compile`, 640 MB that libtorch
/// never loads).
fn runtime_requirements(metadata: &str) -> Vec<String> {
    let system = match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        other => other,
    };
    metadata
        .lines()
        .filter_map(|l| l.strip_prefix("Requires-Dist:"))
        .filter_map(|r| {
            let (req, marker) = match r.split_once(';') {
                Some((req, marker)) => (req.trim(), marker.trim()),
                None => (r.trim(), ""),
            };
            let applies = marker.is_empty()
                || marker.replace('\'', "\"") == format!("platform_system == \"{system}\"");
            let name = req
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
                .next()
                .unwrap_or("");
            (applies && !name.eq_ignore_ascii_case("triton")).then(|| req.to_string())
        })
        .collect()
}

/// The free space on `path`'s file system as `df -h` prints it, if `df` runs.
fn free_disk(path: &Path) -> Option<String> {
    let dir = path.ancestors().find(|p| p.is_dir())?;
    let out = Command::new("df").arg("-Ph").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)
        .map(str::to_string)
}

/// Points `.venv/libtorch` at `.venv/lib/pythonX.Y/site-packages/torch` (relative link).
fn link_libtorch(venv: &Path) -> Result<(), String> {
    let lib = venv.join("lib");
    let mut found = None;
    let entries =
        std::fs::read_dir(&lib).map_err(|e| format!("cannot read {}: {e}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("python") {
            let rel = PathBuf::from("lib")
                .join(&name)
                .join("site-packages")
                .join("torch");
            if venv.join(&rel).join("lib").is_dir() {
                found = Some(rel);
            }
        }
    }
    let rel = found.ok_or_else(|| {
        format!(
            "pip reported success but no {}/lib/python*/site-packages/torch/lib exists",
            venv.display()
        )
    })?;
    let link = venv.join("libtorch");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)
            .map_err(|e| format!("cannot replace {}: {e}", link.display()))?;
    }
    symlink(&rel, &link)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), String> {
    std::os::unix::fs::symlink(target, link).map_err(|e| {
        format!(
            "cannot link {} -> {}: {e}",
            link.display(),
            target.display()
        )
    })
}

#[cfg(not(unix))]
fn symlink(_target: &Path, link: &Path) -> Result<(), String> {
    Err(format!(
        "linking {} is only implemented on Unix; set LIBTORCH to the venv's torch folder",
        link.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_py() {
        let d = std::env::temp_dir().join(format!("hgq-setup-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("version.py"),
            "from typing import Optional\n__version__ = '2.11.0+cu130'\ngit_version = 'x'\n",
        )
        .unwrap();
        assert_eq!(torch_version(&d).unwrap(), "2.11.0+cu130");
        std::fs::write(d.join("version.py"), "__version__: str = \"2.11.0\"\n").unwrap();
        assert_eq!(torch_version(&d).unwrap(), "2.11.0");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn runtime_requirements_of_torch_2_11() {
        let meta = "Name: torch\n\
Requires-Dist: filelock\n\
Requires-Dist: sympy>=1.13.3\n\
Requires-Dist: cuda-toolkit[cublas,cudart]==13.0.2; platform_system == \"Linux\"\n\
Requires-Dist: nvidia-cudnn-cu13==9.19.0.56; platform_system == \"Linux\"\n\
Requires-Dist: triton==3.6.0; platform_system == \"Linux\"\n\
Requires-Dist: optree>=0.13.0; extra == \"optree\"\n\
Requires-Dist: pywin; platform_system == 'Windows'\n";
        let reqs = runtime_requirements(meta);
        let mut want = vec!["filelock", "sympy>=1.13.3"];
        if cfg!(target_os = "linux") {
            want.push("cuda-toolkit[cublas,cudart]==13.0.2");
            want.push("nvidia-cudnn-cu13==9.19.0.56");
        }
        if cfg!(target_os = "windows") {
            want.push("pywin");
        }
        assert_eq!(reqs, want);
    }
}
