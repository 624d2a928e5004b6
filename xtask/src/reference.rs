//! The Python reference for `cargo xtask bench --reference`: hgq2 on Keras 3 with the jax
//! backend, timed by `benches/hgq2_ref.py` (the reference's own timing script, kept unchanged in
//! the repository) on the same work as hgq-torch's benchmark; and for `cargo xtask bench --step
//! --reference`, by `benches/hgq2_step.py` (the training step of small QDense MLPs, the work of
//! hgq-torch's `hgq-bench-step`).
//!
//! The reference lives in its own virtual environment, `<repo>/.venv-ref`, apart from the
//! libtorch one: it is only needed for this comparison, and jax and torch need not share a
//! Python. It is created on first use (pip needs to reach PyPI); `--reference-python PATH` uses
//! an interpreter that already has `hgq2`, `keras` and `jax` instead.
//!
//! `hgq2_ref.py --threads 1` sets XLA's flags for one thread, but jax 0.10's CPU runtime still
//! runs the timed calls on every core (on a 2-core machine the process used 1.7 to 1.8 CPU
//! seconds per second of those calls, and its copy ran at twice one core's speed). So "one
//! thread" here is one CPU: the script runs with its CPU affinity set to one CPU before jax is
//! imported (every thread it starts inherits it). The all-core comparison runs it unpinned.
//! Each run also reports the CPU time the process used per second of wall time, so that the
//! pinning can be seen to hold.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::json::Value;
use crate::setup;

/// What `.venv-ref` gets: the reference release and the versions it was measured with.
const REQUIREMENTS: [&str; 6] = [
    "hgq2==0.2.0",
    "quantizers==1.2.2",
    "keras==3.15.1",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "numpy",
];

/// `<repo>/.venv-ref`.
pub fn venv_dir() -> PathBuf {
    setup::repo_root().join(".venv-ref")
}

/// `<repo>/benches/hgq2_ref.py`.
fn script() -> PathBuf {
    setup::repo_root().join("benches").join("hgq2_ref.py")
}

/// `<repo>/benches/hgq2_step.py`.
fn step_script() -> PathBuf {
    setup::repo_root().join("benches").join("hgq2_step.py")
}

/// Whether `python` can import the reference on the jax backend.
pub fn usable(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import hgq, keras, jax"])
        .env("KERAS_BACKEND", "jax")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The interpreter to time the reference with: `given` if it has the reference, else
/// `.venv-ref`'s, installed first when missing.
pub fn python(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return if usable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "{} cannot `import hgq, keras, jax` with KERAS_BACKEND=jax: install {} into it, \
                 or leave out --reference-python to use the project's .venv-ref",
                p.display(),
                REQUIREMENTS.join(" ")
            ))
        };
    }
    let venv = venv_dir();
    let py = venv.join("bin").join("python");
    if py.exists() && usable(&py) {
        return Ok(py);
    }
    eprintln!(
        "bench: installing the reference ({}) into {}",
        REQUIREMENTS.join(" "),
        venv.display()
    );
    setup::make_venv(&venv)?;
    let reqs: Vec<String> = REQUIREMENTS.iter().map(|r| r.to_string()).collect();
    setup::pip_install(&py, &reqs, false, false)?;
    if usable(&py) {
        Ok(py)
    } else {
        Err(format!(
            "{} still cannot `import hgq, keras, jax` after pip install; remove {} and retry",
            py.display(),
            venv.display()
        ))
    }
}

/// Which CPUs the reference may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpus {
    /// The first CPU of the current affinity set only.
    One,
    /// Every CPU it is allowed (its own choice of threads).
    All,
}

/// Runs the script (`argv[2:]`) under `runpy` with the affinity `argv[1]` asks for, then prints the
/// process's CPU time per wall second as one more JSON line.
const WRAPPER: &str = "\
import json, os, runpy, sys, time
if sys.argv[1] == 'one':
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
sys.argv = sys.argv[2:]
w, c = time.perf_counter(), time.process_time()
runpy.run_path(sys.argv[0], run_name='__main__')
w, c = time.perf_counter() - w, time.process_time() - c
print(json.dumps(dict(backend=os.environ['KERAS_BACKEND'], case='_process', cpu_per_wall=c / w, cpus=len(os.sched_getaffinity(0)))))
";

/// What one run of the reference printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Its timings, in the order printed.
    pub timings: Vec<Timing>,
    /// CPU time per wall second of the whole process (imports and compilation included).
    pub cpu_per_wall: f64,
    /// How many CPUs it was allowed.
    pub cpus: u64,
}

/// One line of `hgq2_ref.py`'s output.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// `copy`, `infer/per_column`, `train/per_element`, ...
    pub case: String,
    /// The fastest of the repeats, in ms.
    pub ms: f64,
}

/// Runs `hgq2_ref.py --threads N --repeats REPEATS` on jax (N = 1 on one CPU, else the
/// number of CPUs allowed) and returns what it printed.
pub fn time(python: &Path, repeats: usize, cpus: Cpus) -> Result<Run, String> {
    run_script(python, &script(), repeats, cpus)
}

/// What one run of `hgq2_step.py` printed: its rows as JSON objects, in the order printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    /// Every JSON line of the script (the wrapper's excluded).
    pub rows: Vec<Value>,
    /// CPU time per wall second of the whole process (imports and compilation included).
    pub cpu_per_wall: f64,
    /// How many CPUs it was allowed.
    pub cpus: u64,
}

/// Runs `hgq2_step.py --threads N --epochs EPOCHS [--filter FILTER]` on jax (N as for
/// [`time`]) and returns its JSON lines.
pub fn time_step(python: &Path, epochs: usize, filter: &str, cpus: Cpus) -> Result<Lines, String> {
    let mut args = vec!["--epochs".to_string(), epochs.to_string()];
    if !filter.is_empty() {
        args.extend(["--filter".to_string(), filter.to_string()]);
    }
    let stdout = run_wrapped(python, &step_script(), &args, cpus, "jax")?;
    lines(&stdout, "hgq2_step.py", "jax")
}

/// [`time`] with another script (the tests' stand-in for the reference).
fn run_script(python: &Path, script: &Path, repeats: usize, cpus: Cpus) -> Result<Run, String> {
    let args = ["--repeats".to_string(), repeats.to_string()];
    parse(&run_wrapped(python, script, &args, cpus, "jax")?, "jax")
}

/// Whether `python` can import the reference on Keras' torch backend and sees a CUDA device.
pub fn usable_on_cuda(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import hgq, keras, torch; assert torch.cuda.is_available()",
        ])
        .env("KERAS_BACKEND", "torch")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `hgq2_ref.py --device cuda --rows ROWS --repeats REPEATS` on Keras' torch backend
/// (each repeat between two device synchronizations) and returns what it printed.
pub fn time_cuda(python: &Path, repeats: usize, rows: usize) -> Result<Run, String> {
    let args = [
        "--device".to_string(),
        "cuda".to_string(),
        "--rows".to_string(),
        rows.to_string(),
        "--repeats".to_string(),
        repeats.to_string(),
    ];
    parse(
        &run_wrapped(python, &script(), &args, Cpus::All, "torch")?,
        "torch",
    )
}

/// Runs `script --threads N ARGS...` on Keras' `backend` through [`WRAPPER`] with the affinity
/// `cpus` asks for (N = 1 on one CPU, else the number of CPUs allowed); its standard output.
fn run_wrapped(
    python: &Path,
    script: &Path,
    args: &[String],
    cpus: Cpus,
    backend: &str,
) -> Result<String, String> {
    let threads = match cpus {
        Cpus::One => 1,
        Cpus::All => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let out = Command::new(python)
        .args(["-c", WRAPPER])
        .arg(match cpus {
            Cpus::One => "one",
            Cpus::All => "all",
        })
        .arg(script)
        .args(["--threads", &threads.to_string()])
        .args(args)
        .env("KERAS_BACKEND", backend)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "`{} {}` failed:\n{}{}",
            python.display(),
            script.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// The JSON lines of a reference script (`name`) and of the wrapper (other lines, e.g. from
/// Keras, are skipped); an error if there are none, one names another backend than `backend`,
/// or the wrapper's is missing.
fn lines(stdout: &str, name: &str, backend: &str) -> Result<Lines, String> {
    let mut rows = Vec::new();
    let mut process = None;
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v = crate::json::parse(line)
            .map_err(|e| format!("{name} printed {line:?}, not JSON: {e}"))?;
        if v["backend"] != backend {
            return Err(format!("{name} ran on {}, not {backend}", v["backend"]));
        }
        if v["case"] == "_process" {
            process = v["cpu_per_wall"].as_f64().zip(v["cpus"].as_u64());
            continue;
        }
        rows.push(v);
    }
    if rows.is_empty() {
        return Err(format!("{name} printed no timings:\n{stdout}"));
    }
    let (cpu_per_wall, cpus) =
        process.ok_or_else(|| format!("no CPU use of the reference's process in:\n{stdout}"))?;
    Ok(Lines {
        rows,
        cpu_per_wall,
        cpus,
    })
}

/// [`lines`] of `hgq2_ref.py` on `backend`, each with a case and a time.
fn parse(stdout: &str, backend: &str) -> Result<Run, String> {
    let l = lines(stdout, "hgq2_ref.py", backend)?;
    let timings = l
        .rows
        .iter()
        .map(|v| match (v["case"].as_str(), v["ms"].as_f64()) {
            (Some(case), Some(ms)) => Ok(Timing {
                case: case.to_string(),
                ms,
            }),
            _ => Err(format!("hgq2_ref.py printed {v}: no case or ms")),
        })
        .collect::<Result<_, String>>()?;
    Ok(Run {
        timings,
        cpu_per_wall: l.cpu_per_wall,
        cpus: l.cpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_lines_and_skips_the_rest() {
        let out = "Using jax backend\n\
            {\"backend\": \"jax\", \"case\": \"copy\", \"elements\": 4194304, \"threads\": 1, \"ms\": 0.7925}\n\
            {\"backend\": \"jax\", \"case\": \"train/per_column\", \"elements\": 4194304, \"threads\": 1, \"ms\": 17.6302}\n\
            {\"backend\": \"jax\", \"case\": \"_process\", \"cpu_per_wall\": 1.01, \"cpus\": 1}\n";
        let run = parse(out, "jax").unwrap();
        assert_eq!((run.cpu_per_wall, run.cpus), (1.01, 1));
        assert_eq!(
            run.timings,
            vec![
                Timing {
                    case: "copy".into(),
                    ms: 0.7925
                },
                Timing {
                    case: "train/per_column".into(),
                    ms: 17.6302
                }
            ]
        );
    }

    /// The wrapper pins the script to one CPU (or not) before it runs, passes its arguments
    /// on, and adds the process line: run with a stand-in script that reports what it saw.
    #[test]
    fn wrapper_pins_and_passes_arguments() {
        let dir = std::env::temp_dir().join(format!("hgq-xtask-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("stand_in.py");
        std::fs::write(
            &script,
            "import json, os, sys\n\
             print(json.dumps(dict(backend=os.environ['KERAS_BACKEND'], case=' '.join(sys.argv[1:]), \
             ms=float(len(os.sched_getaffinity(0))))))\n",
        )
        .unwrap();
        let python = std::env::var("HGQ_PYTHON").unwrap_or_else(|_| "python3".into());
        let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
        let one = run_script(Path::new(&python), &script, 3, Cpus::One).unwrap();
        let all = run_script(Path::new(&python), &script, 3, Cpus::All).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // The stand-in's "ms" is the number of CPUs it was allowed.
        assert_eq!(one.timings[0].case, "--threads 1 --repeats 3");
        assert_eq!((one.timings[0].ms, one.cpus), (1.0, 1));
        assert_eq!(
            all.timings[0].case,
            format!("--threads {allowed} --repeats 3")
        );
        // Unpinned: all the CPUs of the affinity set (which a cgroup quota may make larger
        // than `available_parallelism`).
        assert_eq!(all.timings[0].ms, all.cpus as f64);
        assert!(one.cpu_per_wall >= 0.0 && one.cpu_per_wall.is_finite());
    }

    #[test]
    fn rejects_another_backend_and_empty_output() {
        let torch = "{\"backend\": \"torch\", \"case\": \"copy\", \"ms\": 1.0}\n";
        assert!(parse(torch, "jax").unwrap_err().contains("not jax"));
        let unwrapped = "{\"backend\": \"jax\", \"case\": \"copy\", \"ms\": 1.0}\n";
        assert!(parse(unwrapped, "jax").unwrap_err().contains("CPU use"));
        assert!(
            parse("nothing\n", "jax")
                .unwrap_err()
                .contains("no timings")
        );
        assert!(parse("{oops\n", "jax").unwrap_err().contains("not JSON"));
        let jax = "{\"backend\": \"jax\", \"case\": \"copy\", \"ms\": 1.0}\n";
        assert!(parse(jax, "torch").unwrap_err().contains("not torch"));
    }
}
