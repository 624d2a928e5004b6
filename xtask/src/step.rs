//! `cargo xtask bench --step [--reference] [--reference-python PATH] [--json] [--epochs E]
//! [--filter S] [--path P] [--rounds R]`: the steady-state training step of small QDense MLPs,
//! ours against hgq2 on jax in the same run.
//!
//! Ours is hgq-torch's `hgq-bench-step` binary (`crates/hgq-torch/src/bin/bench_step.rs`
//! describes the models, the data and the statistic: the median epoch after the first, divided
//! by the steps of an epoch), run through cargo once on one thread and once on all threads.
//! `--reference` times `benches/hgq2_step.py` (the same models, data and statistic through
//! Keras' `model.fit` on the jax backend) right after each of our runs: pinned to one CPU after
//! our one-thread run, unpinned after our all-thread run (see `reference.rs`), and prints per
//! model our ms per step, the reference's, and how many times faster ours is (`speedup =
//! jax_ms_per_step / ms_per_step`), with both first epochs (the reference compiles in its
//! first) and both last epochs' mean losses (the same data, models and seeds' statistics: they
//! should be close). `--json` prints the rows as JSON lines instead of a table. `--path`
//! chooses how ours computes a step (`Sequential::train_step_on`): `auto` (the default, what
//! `train_step` does: the native step on these CPU float32 models), `native`, or `autograd`
//! (libtorch's autograd through the layers, the step before the native one).
//!
//! `--rounds R` (default 1) alternates R runs of ours and R of the reference (ours, theirs,
//! ours, theirs, ...), so that a machine whose speed drifts between minutes (a shared VM) slows
//! both sides alike; each side's rows are then the median over the rounds, and the speedup is
//! the median of the rounds' own ratios, printed with their smallest and largest.
//!
//! Our rows also carry the step's floor on this machine, `products_ms_per_step`: the matrix
//! products a step must do, timed alone (see `bench_step.rs`). Against the reference it gives
//! `max_speedup = jax_ms_per_step / products_ms_per_step`, the largest speedup any step that
//! does these products could reach on this machine (`floor` and `max_x` in the table).
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::json::{self, Value};
use crate::reference::{Cpus, Lines};

/// One row of `hgq-bench-step` or of `hgq2_step.py`.
#[derive(Debug, Clone, PartialEq)]
struct StepRow {
    case: String,
    threads: u64,
    ms_per_step: f64,
    epoch_ms: f64,
    first_epoch_ms: f64,
    steps: u64,
    loss: f64,
    /// The step's matrix products alone (ours only; `hgq2_step.py` does not time them).
    products_ms: Option<f64>,
}

/// Reads one JSON row of `who`.
fn step_row(v: &Value, who: &str) -> Result<StepRow, String> {
    let missing = |k: &str| format!("{who} printed {v}: no {k}");
    let num = |k: &str| v[k].as_f64().ok_or_else(|| missing(k));
    let int = |k: &str| v[k].as_u64().ok_or_else(|| missing(k));
    Ok(StepRow {
        case: v["case"]
            .as_str()
            .ok_or_else(|| missing("case"))?
            .to_string(),
        threads: int("threads")?,
        ms_per_step: num("ms_per_step")?,
        epoch_ms: num("epoch_ms")?,
        first_epoch_ms: num("first_epoch_ms")?,
        steps: int("steps")?,
        loss: num("loss")?,
        products_ms: v["products_ms_per_step"].as_f64(),
    })
}

/// The rows in `hgq-bench-step`'s output (lines that are no JSON object are skipped).
fn our_rows(stdout: &str) -> Result<Vec<StepRow>, String> {
    let rows: Vec<StepRow> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v = json::parse(l)
                .map_err(|e| format!("hgq-bench-step printed {l:?}, not JSON: {e}"))?;
            step_row(&v, "hgq-bench-step")
        })
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Err("hgq-bench-step printed no rows".into());
    }
    Ok(rows)
}

/// `hgq-bench-step --path P --threads T --epochs E [--filter S]`, through cargo.
fn ours(threads: usize, epochs: usize, filter: &str, path: &str) -> Result<Vec<StepRow>, String> {
    let mut args: Vec<OsString> = vec![
        "--path".into(),
        path.into(),
        "--threads".into(),
        threads.to_string().into(),
        "--epochs".into(),
        epochs.to_string().into(),
    ];
    if !filter.is_empty() {
        args.extend(["--filter".into(), filter.into()]);
    }
    our_rows(&crate::torch::output(&["--bin", "hgq-bench-step"], args)?)
}

/// Our rows with each case's median over the rounds.
fn median_rows(rounds: &[Vec<StepRow>]) -> Result<Vec<StepRow>, String> {
    let first = rounds.first().ok_or("no rounds")?;
    first
        .iter()
        .map(|o| {
            let rows: Vec<&StepRow> = rounds
                .iter()
                .map(|r| {
                    r.iter()
                        .find(|t| t.case == o.case)
                        .ok_or_else(|| format!("a round has no case {}", o.case))
                })
                .collect::<Result<_, _>>()?;
            Ok(Paired::median_row(&rows))
        })
        .collect()
}

/// Rounds to `digits` decimals (for the JSON lines).
fn round(v: f64, digits: i32) -> Value {
    let s = 10f64.powi(digits);
    ((v * s).round() / s).into()
}

/// An optional number for a JSON line (`null` where absent).
fn opt(v: Option<f64>, digits: i32) -> Value {
    v.map_or(Value::Null, |v| round(v, digits))
}

/// An optional number for a table cell (`-` where absent).
fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Our rows alone: a table line or a JSON line each.
fn print_ours(rows: &[StepRow], json: bool) {
    for r in rows {
        if json {
            let v = json::object([
                ("case", r.case.as_str().into()),
                ("threads", r.threads.into()),
                ("ms_per_step", round(r.ms_per_step, 4)),
                ("epoch_ms", round(r.epoch_ms, 3)),
                ("first_epoch_ms", round(r.first_epoch_ms, 3)),
                ("steps", r.steps.into()),
                ("loss", round(r.loss, 5)),
                ("products_ms_per_step", opt(r.products_ms, 4)),
            ]);
            println!("{v}");
        } else {
            println!(
                "{:<20} {:>7} {:>10.3} {:>10.2} {:>10.2} {:>6} {:>10.4} {:>9}",
                r.case,
                r.threads,
                r.ms_per_step,
                r.epoch_ms,
                r.first_epoch_ms,
                r.steps,
                r.loss,
                cell(r.products_ms, 3)
            );
        }
    }
}

/// The median of non-empty `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One case's rows over the rounds: ours and theirs, one of each per round.
struct Paired<'a> {
    ours: Vec<&'a StepRow>,
    theirs: Vec<&'a StepRow>,
}

impl Paired<'_> {
    /// A side's row with the median over the rounds of its times.
    fn median_row(rows: &[&StepRow]) -> StepRow {
        let of = |f: fn(&StepRow) -> f64| median(rows.iter().map(|r| f(r)).collect());
        StepRow {
            ms_per_step: of(|r| r.ms_per_step),
            epoch_ms: of(|r| r.epoch_ms),
            first_epoch_ms: of(|r| r.first_epoch_ms),
            products_ms: rows
                .iter()
                .map(|r| r.products_ms)
                .collect::<Option<Vec<f64>>>()
                .map(median),
            ..rows[0].clone()
        }
    }

    /// The rounds' speedups (theirs over ours, round by round): median, smallest, largest.
    fn speedups(&self) -> (f64, f64, f64) {
        let r: Vec<f64> = self
            .ours
            .iter()
            .zip(&self.theirs)
            .map(|(o, t)| t.ms_per_step / o.ms_per_step)
            .collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(r), lo, hi)
    }
}

/// One compared row: a table line, or a JSON line with both sides' numbers (medians over the
/// rounds, the speedup the median of the rounds' ratios with their range).
fn compare_line(p: &Paired<'_>, theirs: &Lines, json: bool) -> String {
    let (o, t) = (Paired::median_row(&p.ours), Paired::median_row(&p.theirs));
    let (o, t) = (&o, &t);
    let (speedup, lo, hi) = p.speedups();
    let rounds = p.ours.len();
    let max_speedup = o.products_ms.map(|f| t.ms_per_step / f);
    if json {
        json::object([
            ("case", o.case.as_str().into()),
            ("threads", o.threads.into()),
            ("ms_per_step", round(o.ms_per_step, 4)),
            ("jax_ms_per_step", round(t.ms_per_step, 4)),
            ("speedup", round(speedup, 3)),
            ("speedup_min", round(lo, 3)),
            ("speedup_max", round(hi, 3)),
            ("rounds", (rounds as u64).into()),
            ("products_ms_per_step", opt(o.products_ms, 4)),
            ("max_speedup", opt(max_speedup, 3)),
            ("steps", o.steps.into()),
            ("first_epoch_ms", round(o.first_epoch_ms, 3)),
            ("jax_first_epoch_ms", round(t.first_epoch_ms, 3)),
            ("loss", round(o.loss, 5)),
            ("jax_loss", round(t.loss, 5)),
            ("jax_cpus", theirs.cpus.into()),
            ("jax_cpu_per_wall", round(theirs.cpu_per_wall, 3)),
        ])
        .to_string()
    } else {
        format!(
            "{:<20} {:>7} {:>8.3} {:>10.3} {:>8.2} {:>11} {:>8} {:>6} {:>6} {:>9.1} {:>10.1} {:>9.4} {:>9.4}",
            o.case,
            o.threads,
            o.ms_per_step,
            t.ms_per_step,
            speedup,
            format!("{lo:.2}-{hi:.2}"),
            cell(o.products_ms, 3),
            cell(max_speedup, 1),
            o.steps,
            o.first_epoch_ms,
            t.first_epoch_ms,
            o.loss,
            t.loss
        )
    }
}

/// Our rows against the reference's, round by round (one run of each side per round), matched
/// by case; an error where a round lacks one of the first round's cases or the two count
/// steps differently.
fn compare(ours: &[Vec<StepRow>], theirs: &[Lines], json: bool) -> Result<Vec<String>, String> {
    let their_rows: Vec<Vec<StepRow>> = theirs
        .iter()
        .map(|l| l.rows.iter().map(|v| step_row(v, "hgq2_step.py")).collect())
        .collect::<Result<_, _>>()?;
    let (Some(first), Some(lines)) = (ours.first(), theirs.first()) else {
        return Err("no rounds to compare".into());
    };
    if ours.len() != theirs.len() {
        return Err(format!(
            "{} rounds of ours against {} of the reference",
            ours.len(),
            theirs.len()
        ));
    }
    first
        .iter()
        .map(|o| {
            fn find<'r>(rows: &'r [StepRow], case: &str, who: &str) -> Result<&'r StepRow, String> {
                rows.iter()
                    .find(|t| t.case == case)
                    .ok_or_else(|| format!("{who} has no case {case}"))
            }
            let mut p = Paired {
                ours: Vec::new(),
                theirs: Vec::new(),
            };
            for (mine, rows) in ours.iter().zip(&their_rows) {
                let m = find(mine, &o.case, "hgq-bench-step")?;
                let t = find(rows, &o.case, "hgq2_step.py")?;
                if t.steps != m.steps {
                    return Err(format!(
                        "{}: {} steps per epoch in hgq2_step.py, {} in hgq-bench-step",
                        o.case, t.steps, m.steps
                    ));
                }
                p.ours.push(m);
                p.theirs.push(t);
            }
            Ok(compare_line(&p, lines, json))
        })
        .collect()
}

/// Entry point of `cargo xtask bench --step ...` (`args` as given to `bench`).
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut json = false;
    let mut epochs = 30usize;
    let mut filter = String::new();
    let mut reference = false;
    let mut ref_python: Option<PathBuf> = None;
    let mut path = "auto".to_string();
    let mut rounds = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--step" => {}
            "--json" => json = true,
            "--reference" => reference = true,
            "--reference-python" => {
                reference = true;
                ref_python = Some(
                    it.next()
                        .ok_or("--reference-python needs the path of a Python interpreter")?
                        .into(),
                );
            }
            "--epochs" => {
                epochs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| v >= 2)
                    .ok_or("--epochs needs an integer of at least 2 (the first is dropped)")?;
            }
            "--path" => {
                path = it
                    .next()
                    .filter(|p| ["auto", "native", "autograd"].contains(&p.as_str()))
                    .ok_or("--path needs auto, native or autograd")?
                    .clone();
            }
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| v >= 1)
                    .ok_or("--rounds needs an integer of at least 1")?;
            }
            "--filter" => {
                filter = it
                    .next()
                    .ok_or("--filter needs a case name or part of one")?
                    .clone();
            }
            other => return Err(format!("unknown argument {other:?} for bench --step")),
        }
    }
    // Before anything is timed: a missing reference is found (or installed) first.
    let ref_python = if reference {
        Some(crate::reference::python(ref_python.as_deref())?)
    } else {
        None
    };
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = vec![(1, Cpus::One)];
    if all > 1 {
        runs.push((all, Cpus::All));
    }
    if !json {
        println!(
            "training step: 1438 rows x 64 features, {epochs} epochs; ms/step = median epoch \
             after the first / steps per epoch; {rounds} round(s), each side's median"
        );
    }
    for (i, (threads, cpus)) in runs.into_iter().enumerate() {
        // Ours and theirs alternate, round by round.
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            mine.push(ours(threads, epochs, &filter, &path)?);
            if let Some(py) = &ref_python {
                theirs.push(crate::reference::time_step(py, epochs, &filter, cpus)?);
            }
        }
        let Some(first) = theirs.first() else {
            if !json && i == 0 {
                println!(
                    "{:<20} {:>7} {:>10} {:>10} {:>10} {:>6} {:>10} {:>9}",
                    "case", "threads", "ms/step", "epoch_ms", "first_ms", "steps", "loss", "floor"
                );
            }
            print_ours(&median_rows(&mine)?, json);
            continue;
        };
        let lines = compare(&mine, &theirs, json)?;
        let theirs = first;
        if !json {
            println!();
            println!(
                "ours on {threads} thread(s) against hgq2 on jax (benches/hgq2_step.py) on {} \
                 CPU(s), whose process used {:.2} CPU s per wall s; speedup = jax / ours",
                theirs.cpus, theirs.cpu_per_wall
            );
            println!(
                "{:<20} {:>7} {:>8} {:>10} {:>8} {:>11} {:>8} {:>6} {:>6} {:>9} {:>10} {:>9} {:>9}",
                "case",
                "threads",
                "ms/step",
                "jax_ms/st",
                "speedup",
                "range",
                "floor",
                "max_x",
                "steps",
                "first_ms",
                "jax_first",
                "loss",
                "jax_loss"
            );
        }
        for l in lines {
            println!("{l}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three rounds where the machine slowed both sides in the second: each side's median,
    /// and the median of the rounds' own ratios with their range.
    #[test]
    fn rounds_pair_each_run_with_the_reference_run_beside_it() {
        let row = |ms: f64| StepRow {
            case: "step/demo/b64".into(),
            threads: 1,
            ms_per_step: ms,
            epoch_ms: ms * 23.0,
            first_epoch_ms: 3.0,
            steps: 23,
            loss: 2.5,
            products_ms: Some(ms / 4.0),
        };
        let jax = |ms: f64| Lines {
            rows: vec![
                json::parse(&format!(
                    "{{\"case\":\"step/demo/b64\",\"threads\":1,\"ms_per_step\":{ms},\
                     \"epoch_ms\":1.0,\"first_epoch_ms\":4000.0,\"steps\":23,\"loss\":2.4}}"
                ))
                .unwrap(),
            ],
            cpu_per_wall: 1.0,
            cpus: 1,
        };
        let ours = [vec![row(0.1)], vec![row(0.2)], vec![row(0.1)]];
        let theirs = [jax(0.5), jax(0.8), jax(0.6)];
        let v = json::parse(&compare(&ours, &theirs, true).unwrap()[0]).unwrap();
        assert_eq!(v["ms_per_step"], 0.1);
        assert_eq!(v["jax_ms_per_step"], 0.6);
        // Round ratios 5, 4, 6: their median, not 0.6 / 0.1.
        assert_eq!(v["speedup"], 5.0);
        assert_eq!(v["speedup_min"], 4.0);
        assert_eq!(v["speedup_max"], 6.0);
        assert_eq!(v["rounds"], 3);
        // The floor's median (0.025 ms) under the reference's median (0.6 ms).
        assert_eq!(v["products_ms_per_step"], 0.025);
        assert_eq!(v["max_speedup"], 24.0);
        assert_eq!(median_rows(&ours).unwrap()[0].ms_per_step, 0.1);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    const OURS: &str = "{\"case\":\"step/mlp/h16/b64\",\"threads\":1,\"ms_per_step\":1.0324,\
        \"epoch_ms\":23.745,\"first_epoch_ms\":30.639,\"steps\":23,\"loss\":3.13247,\
        \"products_ms_per_step\":0.25}";

    #[test]
    fn reads_our_rows_and_skips_other_lines() {
        let rows = our_rows(&format!("starting\n{OURS}\n")).unwrap();
        assert_eq!(
            rows,
            vec![StepRow {
                case: "step/mlp/h16/b64".into(),
                threads: 1,
                ms_per_step: 1.0324,
                epoch_ms: 23.745,
                first_epoch_ms: 30.639,
                steps: 23,
                loss: 3.13247,
                products_ms: Some(0.25),
            }]
        );
        // Rows without the floor (the reference's form) read as `None`.
        let no_floor = OURS.replace(",\"products_ms_per_step\":0.25", "");
        assert_eq!(our_rows(&no_floor).unwrap()[0].products_ms, None);
        assert!(our_rows("nothing\n").unwrap_err().contains("no rows"));
        assert!(our_rows("{oops\n").unwrap_err().contains("not JSON"));
        let no_steps = OURS.replace(",\"steps\":23", "");
        assert!(our_rows(&no_steps).unwrap_err().contains("no steps"));
    }

    #[test]
    fn compares_by_case_and_checks_the_steps() {
        let ours = our_rows(OURS).unwrap();
        let jax = |steps: u64, case: &str| Lines {
            rows: vec![
                json::parse(&format!(
                    "{{\"backend\":\"jax\",\"case\":\"{case}\",\"threads\":1,\
                     \"ms_per_step\":2.0648,\"epoch_ms\":47.49,\"first_epoch_ms\":4288.2,\
                     \"steps\":{steps},\"loss\":3.12102}}"
                ))
                .unwrap(),
            ],
            cpu_per_wall: 1.0,
            cpus: 1,
        };
        let one = |l: Lines| vec![l];
        let lines = compare(
            std::slice::from_ref(&ours),
            &one(jax(23, "step/mlp/h16/b64")),
            true,
        )
        .unwrap();
        let v = json::parse(&lines[0]).unwrap();
        assert_eq!(v["speedup"], 2.0);
        assert_eq!(v["speedup_min"], 2.0);
        assert_eq!(v["rounds"], 1);
        assert_eq!(v["jax_first_epoch_ms"], 4288.2);
        assert_eq!(v["jax_cpus"], 1);
        assert_eq!(v["max_speedup"], 8.259);
        let table = compare(
            std::slice::from_ref(&ours),
            &one(jax(23, "step/mlp/h16/b64")),
            false,
        )
        .unwrap();
        assert!(table[0].starts_with("step/mlp/h16/b64"), "{}", table[0]);
        assert!(
            table[0].contains("    2.00   2.00-2.00    0.250    8.3 "),
            "{}",
            table[0]
        );
        let steps = compare(
            std::slice::from_ref(&ours),
            &one(jax(2, "step/mlp/h16/b64")),
            true,
        )
        .unwrap_err();
        assert!(steps.contains("steps per epoch"), "{steps}");
        let missing = compare(
            std::slice::from_ref(&ours),
            &one(jax(23, "step/demo/b64")),
            true,
        )
        .unwrap_err();
        assert!(missing.contains("no case step/mlp/h16/b64"), "{missing}");
        let uneven = compare(
            &[ours.clone(), ours.clone()],
            &one(jax(23, "step/mlp/h16/b64")),
            true,
        );
        assert!(uneven.unwrap_err().contains("2 rounds of ours against 1"));
    }
}
