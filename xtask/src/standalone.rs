//! `cargo xtask standalone`: builds and runs `examples/standalone` (a program of a user's own on
//! hgq-torch) from a copy outside this workspace, as the README's "Use hgq in your project"
//! says: its own `Cargo.toml` with hgq-torch as a path dependency, `LIBTORCH` naming the
//! project's libtorch, `cargo run`. `cargo xtask test` runs it after the workspace's tests.
//!
//! Two things differ from a user's first build, both to save CI minutes, neither to make it
//! work: the copy gets this workspace's `Cargo.lock` (the same versions of tch and the rest)
//! and this workspace's target folder (`CARGO_TARGET_DIR`), so what the tests built is reused.
use std::path::Path;
use std::process::Command;

use crate::setup;

/// Copies the template to a temporary folder, points its hgq-torch dependency at this
/// checkout, builds and runs it; whether it succeeded.
pub fn run() -> Result<bool, String> {
    setup::ensure()?;
    let root = setup::repo_root();
    let template = root.join("examples").join("standalone");
    let dir = std::env::temp_dir().join(format!("hgq-standalone-{}", std::process::id()));
    let result = build_and_run(&root, &template, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn build_and_run(root: &Path, template: &Path, dir: &Path) -> Result<bool, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(dir.join("src")).map_err(|e| io("cannot create", dir, e))?;
    let manifest = template.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| io("cannot read", &manifest, e))?;
    let crate_dir = root.join("crates").join("hgq-torch");
    let relative = r#"path = "../../crates/hgq-torch""#;
    if !text.contains(relative) {
        return Err(format!("{} no longer has `{relative}`", manifest.display()));
    }
    let text = text.replace(
        relative,
        &format!("path = {:?}", crate_dir.display().to_string()),
    );
    let write = |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| io("cannot write", p, e));
    write(&dir.join("Cargo.toml"), &text)?;
    for (from, to) in [
        (
            template.join("src").join("main.rs"),
            dir.join("src").join("main.rs"),
        ),
        (root.join("Cargo.lock"), dir.join("Cargo.lock")),
    ] {
        std::fs::copy(&from, &to).map_err(|e| io("cannot copy", &from, e))?;
    }
    let libtorch = std::fs::canonicalize(setup::libtorch_dir())
        .map_err(|e| io("no libtorch at", &setup::libtorch_dir(), e))?;
    eprintln!(
        "xtask: examples/standalone from {} (LIBTORCH={}, cargo run --release)",
        dir.display(),
        libtorch.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--", "out"])
        .current_dir(dir)
        .env("LIBTORCH", &libtorch)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(status.success())
}
