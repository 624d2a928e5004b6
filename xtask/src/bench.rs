//! `cargo xtask bench [--json] [--quick] [--reps N] [--no-torch] [--reference]
//! [--reference-python PATH]`: kernel timings as ratios against a plain copy of the same bytes,
//! measured in the same run.
//!
//! xtask measures nothing itself (it links no crate of the project). The core cases are measured
//! by hgq-golden's `hgq-bench-core` binary (`crates/hgq-golden/src/bin/hgq-bench-core.rs`, which
//! describes the work and the statistic), run through cargo; it prints its rows as JSON lines,
//! which this module prints as a table (or, with `--json`, as JSON rounded to 0.1 µs and a
//! ratio of 0.001) as they come.
//!
//! After the core cases it runs hgq-torch's `hgq-bench-torch` binary (xtask does not link
//! libtorch): the KIF quantizer module with autograd on the same work (`torch/...` through the
//! fused kernel in the C++ autograd function, `torch-ops/...` through plain torch ops), each
//! against a torch tensor copy measured in the same run, printed in the same format. `--no-torch`
//! skips it.
//!
//! `--reference` then times the Python reference on the same work in the same run:
//! `benches/hgq2_ref.py` (hgq2 on Keras 3, jax backend; see `reference.rs` for where its Python
//! comes from) and prints `vs-jax/...` rows: the reference's time, ours, and how many times
//! faster ours is; once with the reference pinned to one CPU against our one-thread rows, once
//! unpinned against our rows on all threads. Both sides use the reference's statistic, the
//! fastest of `reps` calls back to back after a warm-up (hgq-bench-torch's `min_ms`).
//!
//! `cargo xtask bench --device cuda ...` times the quantizer on a GPU instead (see
//! `bench_cuda.rs`).
//!
//! `cargo xtask bench --step [--reference] [--reference-python PATH] [--json] [--epochs E]
//! [--filter S] [--path P] [--rounds R]` times something else: the steady-state training step of small QDense MLPs
//! (hgq-torch's `hgq-bench-step`, on one thread and on all), with `--reference` against hgq2 on
//! jax (`benches/hgq2_step.py`, pinned to one CPU and unpinned) in the same run; see `step.rs`.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::json;
use crate::reference::{Cpus, Run};

/// The shape of x in hgq-bench-core's work (for the table's heading).
const ROWS: usize = 1024;
/// See [`ROWS`].
const COLS: usize = 4096;

/// One row of `hgq-bench-core`.
#[derive(Debug)]
struct CoreRow {
    case: String,
    threads: u64,
    ms: f64,
    copy_ms: f64,
    ratio: f64,
}

/// Reads one line of `hgq-bench-core`'s output; `None` for a line that is no JSON object.
fn core_row(line: &str) -> Result<Option<CoreRow>, String> {
    let Some(r) = json::Row::read(line, "hgq-bench-core")? else {
        return Ok(None);
    };
    Ok(Some(CoreRow {
        case: r.text("case")?,
        threads: r.int("threads")?,
        ms: r.num("ms")?,
        copy_ms: r.num("copy_ms")?,
        ratio: r.num("ratio")?,
    }))
}

/// One core row as printed: a table line, or with `json` a JSON line rounded to 0.1 µs and a
/// ratio of 0.001.
fn core_line(r: &CoreRow, json: bool) -> String {
    if json {
        json::object([
            ("case", r.case.as_str().into()),
            ("threads", r.threads.into()),
            ("ms", ((r.ms * 1e4).round() / 1e4).into()),
            ("copy_ms", ((r.copy_ms * 1e4).round() / 1e4).into()),
            ("ratio", ((r.ratio * 1e3).round() / 1e3).into()),
        ])
        .to_string()
    } else {
        format!(
            "{:<22} {:>7} {:>10.3} {:>10.3} {:>7.2}",
            r.case, r.threads, r.ms, r.copy_ms, r.ratio
        )
    }
}

/// `cargo run --release -q -p hgq-golden --bin hgq-bench-core -- --reps N`, printing each row
/// (see [`core_line`]) as it comes; an error if it fails or prints no row.
fn run_core(reps: usize, json: bool) -> Result<(), String> {
    let mut rows = 0;
    crate::cargo::each_line(
        "hgq-golden",
        &["--bin", "hgq-bench-core"],
        ["--reps".into(), reps.to_string().into()],
        |line| {
            if let Some(r) = core_row(line)? {
                println!("{}", core_line(&r, json));
                rows += 1;
            }
            Ok(())
        },
    )?;
    if rows == 0 {
        return Err("hgq-bench-core printed no rows".into());
    }
    Ok(())
}

/// Entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    if args.iter().any(|a| a == "--step") {
        return crate::step::run(args);
    }
    // `--device cuda` is the GPU bench; `--device cpu` is this one.
    let mut args = args.to_vec();
    if let Some(p) = args.iter().position(|a| a == "--device") {
        match args.get(p + 1).map(String::as_str) {
            Some("cuda") => return crate::bench_cuda::run(&args),
            Some("cpu") => drop(args.drain(p..p + 2)),
            other => {
                return Err(format!(
                    "--device {}: cpu or cuda",
                    other.unwrap_or("(missing)")
                ));
            }
        }
    }
    let mut json = false;
    let mut reps = 15;
    let mut torch = true;
    let mut reference = false;
    let mut ref_python: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--quick" => reps = 5,
            "--no-torch" => torch = false,
            "--reference" => reference = true,
            "--reference-python" => {
                reference = true;
                ref_python = Some(
                    it.next()
                        .ok_or("--reference-python needs the path of a Python interpreter")?
                        .into(),
                );
            }
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| v > 0)
                    .ok_or("--reps needs a positive integer")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if reference && !torch {
        return Err(
            "--reference compares hgq-torch's timings with the reference: drop --no-torch".into(),
        );
    }
    // Before anything is timed: a missing reference is found (or installed) first.
    let ref_python = if reference {
        Some(crate::reference::python(ref_python.as_deref())?)
    } else {
        None
    };
    if !json {
        println!(
            "x: {ROWS} x {COLS} f32, KIF k=1 i=2 f=4 RND SAT; median of {reps}; ratio = ms / copy_ms"
        );
        println!(
            "{:<22} {:>7} {:>10} {:>10} {:>7}",
            "case", "threads", "ms", "copy_ms", "ratio"
        );
    }
    run_core(reps, json)?;
    if !torch {
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        println!();
    }
    match ref_python {
        None => run_torch(json, reps),
        Some(py) => {
            let ours = torch_rows(reps)?;
            print_torch(&ours, json, reps);
            for cpus in [Cpus::One, Cpus::All] {
                let theirs = crate::reference::time(&py, reps, cpus)?;
                compare(&ours, &theirs, cpus, json, reps)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One row of `hgq-bench-torch --json`.
struct TorchRow {
    case: String,
    threads: u64,
    ms: f64,
    copy_ms: f64,
    ratio: f64,
    min_ms: f64,
}

/// hgq-bench-torch's rows (`--json`, captured).
fn torch_rows(reps: usize) -> Result<Vec<TorchRow>, String> {
    let out = crate::torch::output(
        &["--bin", "hgq-bench-torch"],
        ["--reps".into(), reps.to_string().into(), "--json".into()],
    )?;
    out.lines()
        .filter_map(|l| json::Row::read(l, "hgq-bench-torch").transpose())
        .map(|r| {
            let r = r?;
            Ok(TorchRow {
                case: r.text("case")?,
                threads: r.int("threads")?,
                ms: r.num("ms")?,
                copy_ms: r.num("copy_ms")?,
                ratio: r.num("ratio")?,
                min_ms: r.num("min_ms")?,
            })
        })
        .collect()
}

/// Prints hgq-bench-torch's rows as it prints them itself.
fn print_torch(rows: &[TorchRow], json: bool, reps: usize) {
    if !json {
        println!(
            "hgq-torch: median of {reps}; ratio = ms / copy_ms (torch copy_); min_ms = fastest of \
             {reps} calls back to back"
        );
        println!(
            "{:<28} {:>7} {:>10} {:>10} {:>7} {:>10}",
            "case", "threads", "ms", "copy_ms", "ratio", "min_ms"
        );
    }
    for r in rows {
        if json {
            let v = json::object([
                ("case", r.case.as_str().into()),
                ("threads", r.threads.into()),
                ("ms", r.ms.into()),
                ("copy_ms", r.copy_ms.into()),
                ("ratio", r.ratio.into()),
                ("min_ms", r.min_ms.into()),
            ]);
            println!("{v}");
        } else {
            println!(
                "{:<28} {:>7} {:>10.3} {:>10.3} {:>7.2} {:>10.3}",
                r.case, r.threads, r.ms, r.copy_ms, r.ratio, r.min_ms
            );
        }
    }
}

/// The `vs-jax/...` rows of one run of the reference: for each case it timed, its time
/// against ours (`torch/<case>`, or `torch/copy` for its copy), both the fastest of `reps`
/// calls. [`Cpus::One`]: the reference on one CPU against our one-thread rows; [`Cpus::All`]:
/// the reference on every CPU against our rows with the most threads.
fn compare(
    ours: &[TorchRow],
    theirs: &Run,
    cpus: Cpus,
    json: bool,
    reps: usize,
) -> Result<(), String> {
    let threads = match cpus {
        Cpus::One => 1,
        Cpus::All => ours.iter().map(|r| r.threads).max().unwrap_or(1),
    };
    if !json {
        println!();
        println!(
            "against the reference (benches/hgq2_ref.py, hgq2 on jax) on {} CPU(s), ours on {threads} \
             thread(s): fastest of {reps} on both sides; speedup = jax_ms / ms; the reference's \
             process used {:.2} CPU s per wall s",
            theirs.cpus, theirs.cpu_per_wall
        );
        println!(
            "{:<28} {:>7} {:>10} {:>10} {:>8}",
            "case", "threads", "jax_ms", "ms", "speedup"
        );
    }
    for t in &theirs.timings {
        let name = format!("torch/{}", t.case);
        let Some(o) = ours.iter().find(|r| r.threads == threads && r.case == name) else {
            return Err(format!(
                "hgq-bench-torch has no {threads}-thread case {name} to compare with the \
                 reference's {}",
                t.case
            ));
        };
        let speedup = t.ms / o.min_ms;
        let case = format!("vs-jax/{}", t.case);
        if json {
            let v = json::object([
                ("case", case.as_str().into()),
                ("threads", threads.into()),
                ("jax_ms", t.ms.into()),
                ("jax_cpus", theirs.cpus.into()),
                (
                    "jax_cpu_per_wall",
                    ((theirs.cpu_per_wall * 1e3).round() / 1e3).into(),
                ),
                ("ms", o.min_ms.into()),
                ("speedup", ((speedup * 1e3).round() / 1e3).into()),
            ]);
            println!("{v}");
        } else {
            println!(
                "{case:<28} {threads:>7} {:>10.3} {:>10.3} {speedup:>8.2}",
                t.ms, o.min_ms
            );
        }
    }
    Ok(())
}

/// `cargo run --release -q -p hgq-torch --bin hgq-bench-torch -- [--json] --reps N`, after
/// `setup::ensure()`; its exit code passes on.
fn run_torch(json: bool, reps: usize) -> Result<ExitCode, String> {
    let mut args = vec!["--reps".into(), reps.to_string().into()];
    if json {
        args.push("--json".into());
    }
    crate::torch::run(&["--bin", "hgq-bench-torch"], args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hgq-bench-core's lines read back and print as `cargo xtask bench` printed the rows when
    /// it measured them itself (serde_json's format for `--json`).
    #[test]
    fn core_rows_print_as_before() {
        let line = "{\"case\":\"train/per_element\",\"threads\":1,\"ms\":10.334137,\
                    \"copy_ms\":1.5886310000000001,\"ratio\":6.505058128665499}";
        let r = core_row(line).unwrap().unwrap();
        assert_eq!(
            core_line(&r, false),
            "train/per_element            1     10.334      1.589    6.51"
        );
        assert_eq!(
            core_line(&r, true),
            "{\"case\":\"train/per_element\",\"threads\":1,\"ms\":10.3341,\"copy_ms\":1.5886,\
             \"ratio\":6.505}"
        );
        let copy = "{\"case\":\"copy\",\"threads\":2,\"ms\":1.5,\"copy_ms\":1.5,\"ratio\":1.0}";
        assert_eq!(
            core_line(&core_row(copy).unwrap().unwrap(), true),
            "{\"case\":\"copy\",\"threads\":2,\"ms\":1.5,\"copy_ms\":1.5,\"ratio\":1.0}"
        );
    }

    #[test]
    fn core_rows_skip_other_lines_and_reject_bad_ones() {
        assert!(core_row("warming up").unwrap().is_none());
        assert!(core_row("{oops").unwrap_err().contains("not JSON"));
        let no_ratio = "{\"case\":\"copy\",\"threads\":1,\"ms\":1.0,\"copy_ms\":1.0}";
        assert!(core_row(no_ratio).unwrap_err().contains("no ratio"));
        let float_threads =
            "{\"case\":\"copy\",\"threads\":1.0,\"ms\":1,\"copy_ms\":1,\"ratio\":1}";
        assert!(core_row(float_threads).unwrap_err().contains("no threads"));
    }
}
