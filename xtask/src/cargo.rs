//! Running the workspace's programs through cargo: xtask links none of the project's crates (so
//! that it builds in seconds from std alone), so every task that needs them runs a binary or
//! example of theirs: `cargo run --release -q -p PACKAGE TARGET... -- ARGS...`.
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

/// `cargo run --release -q -p PACKAGE TARGET... -- ARGS...`, not started yet.
fn command(package: &str, target: &[&str], args: impl IntoIterator<Item = OsString>) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--release", "-q", "-p", package])
        .args(target)
        .arg("--")
        .args(args);
    cmd
}

/// What to call the program in messages.
fn name(package: &str, target: &[&str]) -> String {
    format!("cargo run -p {package} {}", target.join(" "))
}

/// Runs the program; its exit code passes through (1 if it was killed by a signal).
pub fn run(
    package: &str,
    target: &[&str],
    args: impl IntoIterator<Item = OsString>,
) -> Result<ExitCode, String> {
    let status = command(package, target, args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1).max(1)),
        None => ExitCode::FAILURE,
    })
}

/// Runs `n` copies of the program as the ranks of one data-parallel group on this machine
/// (torchrun's variables: `MASTER_ADDR`, a free `MASTER_PORT`, `RANK`, `WORLD_SIZE`,
/// `LOCAL_RANK`), built once first; success when every rank succeeds. Each rank gets its share
/// of the CPUs as its rayon threads (`RAYON_NUM_THREADS`, unless it is set), as torchrun sets
/// `OMP_NUM_THREADS`: ranks whose training steps each spin a team over all the CPUs leave
/// none for the collectives' threads (`benches/RESULTS.md`).
pub fn run_ranks(
    package: &str,
    target: &[&str],
    args: &[OsString],
    n: usize,
) -> Result<ExitCode, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--release", "-q", "-p", package])
        .args(target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !built.success() {
        return Ok(ExitCode::FAILURE);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let threads = std::env::var_os("RAYON_NUM_THREADS").unwrap_or_else(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        (cpus / n).max(1).to_string().into()
    });
    let mut ranks = Vec::new();
    for rank in 0..n {
        let child = command(package, target, args.iter().cloned())
            .env("RAYON_NUM_THREADS", &threads)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .spawn()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        ranks.push(child);
    }
    let mut ok = true;
    for (rank, mut c) in ranks.into_iter().enumerate() {
        let status = c.wait().map_err(|e| format!("rank {rank}: {e}"))?;
        if !status.success() {
            eprintln!("rank {rank} failed ({status})");
            ok = false;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the program and returns what it printed on standard output (its standard error passes
/// through); an error if it failed.
pub fn output(
    package: &str,
    target: &[&str],
    args: impl IntoIterator<Item = OsString>,
) -> Result<String, String> {
    let out = command(package, target, args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("`{}` failed:\n{stdout}", name(package, target)))
    }
}

/// Runs the program and hands each line of its standard output to `line` as soon as it is
/// printed (its standard error passes through). An error from `line` stops the program; an
/// error too if it fails.
pub fn each_line(
    package: &str,
    target: &[&str],
    args: impl IntoIterator<Item = OsString>,
    mut line: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    let mut child = command(package, target, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut seen = String::new();
    let mut result = Ok(());
    for l in BufReader::new(stdout).lines() {
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                result = Err(format!(
                    "cannot read `{}`'s output: {e}",
                    name(package, target)
                ));
                break;
            }
        };
        if let Err(e) = line(&l) {
            result = Err(e);
            break;
        }
        seen.push_str(&l);
        seen.push('\n');
    }
    // The pipe is closed now: a program stopped early by `line` ends at its next write.
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for cargo: {e}"))?;
    result?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed:\n{seen}", name(package, target)))
    }
}
