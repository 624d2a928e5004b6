//! `cargo xtask bench --device cuda [--reps N] [--rows R[,R...]] [--json] [--reference]
//! [--reference-python PATH]`: the fixed-point quantizer on a GPU, as ratios against a device copy
//! of the same bytes measured in the same run (hgq-torch's `hgq-bench-cuda`, which describes the
//! work and the routes), and with `--reference` against hgq2 on Keras' torch backend with CUDA
//! torch (`benches/hgq2_ref.py --device cuda`) on the same work in the same run.
//!
//! The comparison pairs hgq2's `{infer,train}/{per_column,per_element}` (KIF, RND, SAT) with our
//! `module` route on the same case: the quantizer module as a layer runs it, which is what hgq2's
//! script times of hgq2. Ours is the median of `reps` repetitions, hgq2's the fastest of its
//! repeats (its script's statistic), so the speedup printed is a lower bound.
//!
//! The reference's Python needs hgq2, Keras and a CUDA torch: `--reference-python PATH`, or the
//! project's `.venv-ref` (made by `cargo xtask bench --reference`) once torch is installed into it
//! (`.venv-ref/bin/python -m pip install torch==2.11.0`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::json;
use crate::reference::Run;

/// One row of `hgq-bench-cuda`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    case: String,
    rows: u64,
    ms: f64,
    copy_ms: f64,
    ratio: f64,
}

/// Reads `hgq-bench-cuda`'s JSON lines (other lines skipped).
fn parse_rows(out: &str) -> Result<Vec<Row>, String> {
    out.lines()
        .filter_map(|l| json::Row::read(l, "hgq-bench-cuda").transpose())
        .map(|r| {
            let r = r?;
            Ok(Row {
                case: r.text("case")?,
                rows: r.int("rows")?,
                ms: r.num("ms")?,
                copy_ms: r.num("copy_ms")?,
                ratio: r.num("ratio")?,
            })
        })
        .collect()
}

/// One line of the comparison with hgq2: its case at `rows`, its time and ours.
#[derive(Debug, Clone, PartialEq)]
struct Versus {
    case: String,
    rows: u64,
    hgq2_ms: f64,
    ms: f64,
}

/// Pairs each of hgq2's timings at `rows` (but its copy) with our `module` route on the same
/// case (`cuda/module/{case}/SAT`); an error where ours lacks one.
fn versus(ours: &[Row], theirs: &Run, rows: u64) -> Result<Vec<Versus>, String> {
    theirs
        .timings
        .iter()
        .filter(|t| t.case != "copy")
        .map(|t| {
            let name = format!("cuda/module/{}/SAT", t.case);
            let o = ours
                .iter()
                .find(|r| r.rows == rows && r.case == name)
                .ok_or_else(|| {
                    format!(
                        "hgq-bench-cuda has no case {name} at {rows} rows for hgq2's {}",
                        t.case
                    )
                })?;
            Ok(Versus {
                case: t.case.clone(),
                rows,
                hgq2_ms: t.ms,
                ms: o.ms,
            })
        })
        .collect()
}

fn row_line(r: &Row, json: bool) -> String {
    if json {
        json::object([
            ("case", r.case.as_str().into()),
            ("rows", r.rows.into()),
            ("ms", r.ms.into()),
            ("copy_ms", r.copy_ms.into()),
            ("ratio", r.ratio.into()),
        ])
        .to_string()
    } else {
        format!(
            "{:<40} {:>6} {:>10.4} {:>10.4} {:>7.2}",
            r.case, r.rows, r.ms, r.copy_ms, r.ratio
        )
    }
}

fn versus_line(v: &Versus, json: bool) -> String {
    let speedup = v.hgq2_ms / v.ms;
    let case = format!("vs-hgq2-torch-cuda/{}", v.case);
    if json {
        json::object([
            ("case", case.as_str().into()),
            ("rows", v.rows.into()),
            ("hgq2_ms", v.hgq2_ms.into()),
            ("ms", v.ms.into()),
            ("speedup", ((speedup * 1e3).round() / 1e3).into()),
        ])
        .to_string()
    } else {
        format!(
            "{case:<40} {:>6} {:>10.4} {:>10.4} {speedup:>8.2}",
            v.rows, v.hgq2_ms, v.ms
        )
    }
}

/// The reference's interpreter: `given`, else `.venv-ref`'s; either must import hgq2 on Keras'
/// torch backend and see a CUDA device.
fn reference_python(given: Option<&Path>) -> Result<PathBuf, String> {
    let py = given.map_or_else(
        || crate::reference::venv_dir().join("bin").join("python"),
        Path::to_path_buf,
    );
    if crate::reference::usable_on_cuda(&py) {
        return Ok(py);
    }
    Err(format!(
        "{} cannot `import hgq, keras, torch` with KERAS_BACKEND=torch and a CUDA device: \
         `cargo xtask bench --reference` makes .venv-ref (hgq2 on jax); then \
         `.venv-ref/bin/python -m pip install torch==2.11.0`, or pass --reference-python",
        py.display()
    ))
}

/// Entry point of `cargo xtask bench --device cuda`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let (mut json, mut reps, mut rows) = (false, 20usize, vec![1024u64, 16384]);
    let (mut reference, mut ref_python) = (false, None::<PathBuf>);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => {
                let d = it.next().map_or("(missing)", String::as_str);
                if d != "cuda" {
                    return Err(format!("bench --device {d}: this is the cuda bench"));
                }
            }
            "--json" => json = true,
            "--reference" => reference = true,
            "--reference-python" => {
                reference = true;
                ref_python = Some(it.next().ok_or("--reference-python needs a path")?.into());
            }
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| v > 0)
                    .ok_or("--reps needs a positive integer")?;
            }
            "--rows" => {
                rows = it
                    .next()
                    .and_then(|v| v.split(',').map(|r| r.parse().ok()).collect())
                    .filter(|v: &Vec<u64>| v.iter().all(|&r| r > 0))
                    .ok_or("--rows needs positive integers separated by commas")?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} for bench --device cuda"
                ));
            }
        }
    }
    // A missing reference is found before anything is timed.
    let py = if reference {
        Some(reference_python(ref_python.as_deref())?)
    } else {
        None
    };
    let list = rows
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = crate::torch::output(
        &["--bin", "hgq-bench-cuda"],
        [
            "--reps".into(),
            reps.to_string().into(),
            "--rows".into(),
            list.into(),
        ],
    )?;
    let ours = parse_rows(&out)?;
    if ours.is_empty() {
        return Err("hgq-bench-cuda printed no rows".into());
    }
    if !json {
        println!(
            "x: R x 4096 f32 on CUDA, KIF k=1 i=2 f=4 RND; median of {reps}; ratio = ms / copy_ms"
        );
        println!(
            "{:<40} {:>6} {:>10} {:>10} {:>7}",
            "case", "rows", "ms", "copy_ms", "ratio"
        );
    }
    for r in &ours {
        println!("{}", row_line(r, json));
    }
    let Some(py) = py else {
        return Ok(ExitCode::SUCCESS);
    };
    if !json {
        println!(
            "\nagainst hgq2 on Keras' torch backend, CUDA (benches/hgq2_ref.py --device cuda): \
             hgq2's fastest of {reps} against our median; speedup = hgq2_ms / ms"
        );
        println!(
            "{:<40} {:>6} {:>10} {:>10} {:>8}",
            "case", "rows", "hgq2_ms", "ms", "speedup"
        );
    }
    for &r in &rows {
        let theirs = crate::reference::time_cuda(&py, reps, r as usize)?;
        for v in versus(&ours, &theirs, r)? {
            println!("{}", versus_line(&v, json));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Timing;

    const OURS: &str = "warming up\n\
        {\"case\":\"cuda/module/train/per_column/SAT\",\"rows\":1024,\"cols\":4096,\"ms\":0.5,\"copy_ms\":0.1,\"ratio\":5.0}\n\
        {\"case\":\"cuda/kernel/train/per_column/SAT\",\"rows\":1024,\"cols\":4096,\"ms\":0.2,\"copy_ms\":0.1,\"ratio\":2.0}\n\
        {\"case\":\"cuda/module/train/per_column/SAT\",\"rows\":16384,\"cols\":4096,\"ms\":4.0,\"copy_ms\":1.0,\"ratio\":4.0}\n";

    #[test]
    fn reads_the_bench_rows() {
        let rows = parse_rows(OURS).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            Row {
                case: "cuda/kernel/train/per_column/SAT".into(),
                rows: 1024,
                ms: 0.2,
                copy_ms: 0.1,
                ratio: 2.0
            }
        );
        assert!(
            parse_rows("{\"case\":\"x\"}")
                .unwrap_err()
                .contains("no rows")
        );
        assert!(parse_rows("{oops").unwrap_err().contains("not JSON"));
    }

    /// hgq2's cases pair with our module route at the same rows; its copy is not compared; a
    /// case ours lacks is an error, not a silent gap.
    #[test]
    fn pairs_hgq2_with_the_module_route() {
        let ours = parse_rows(OURS).unwrap();
        let timing = |case: &str, ms| Timing {
            case: case.into(),
            ms,
        };
        let run = Run {
            timings: vec![timing("copy", 0.1), timing("train/per_column", 10.0)],
            cpu_per_wall: 1.0,
            cpus: 16,
        };
        let v = versus(&ours, &run, 16384).unwrap();
        assert_eq!(
            v,
            vec![Versus {
                case: "train/per_column".into(),
                rows: 16384,
                hgq2_ms: 10.0,
                ms: 4.0
            }]
        );
        assert_eq!(
            versus_line(&v[0], true),
            "{\"case\":\"vs-hgq2-torch-cuda/train/per_column\",\"rows\":16384,\"hgq2_ms\":10.0,\
             \"ms\":4.0,\"speedup\":2.5}"
        );
        let more = Run {
            timings: vec![timing("train/per_element", 1.0)],
            ..run
        };
        assert!(
            versus(&ours, &more, 1024)
                .unwrap_err()
                .contains("per_element")
        );
    }
}
