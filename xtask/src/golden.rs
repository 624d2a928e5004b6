//! `cargo xtask golden DIR [--family NAME]...`
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut dir: Option<PathBuf> = None;
    let mut families: Vec<String> = Vec::new();
    let mut verbose = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--family" => families.push(it.next().ok_or("--family needs a name")?.clone()),
            "-v" | "--verbose" => verbose = true,
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            s => {
                if dir.replace(PathBuf::from(s)).is_some() {
                    return Err("give one directory".into());
                }
            }
        }
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("tests/data/golden"));
    let named = !families.is_empty();
    if !named {
        families = hgq_golden::FAMILIES
            .iter()
            .map(|f| f.0.to_string())
            .collect();
    }
    let (mut cases, mut mismatches, mut failed) = (0, 0, false);
    for fam in &families {
        let path = dir.join(format!("{fam}.json"));
        if !named && !path.exists() {
            // A default run checks the families the directory has.
            continue;
        }
        match hgq_golden::check(&dir, fam) {
            Ok(r) => {
                for d in r.details.iter().take(if verbose { usize::MAX } else { 20 }) {
                    eprintln!("  {d}");
                }
                println!("{r}");
                cases += r.cases;
                mismatches += r.mismatches;
            }
            Err(e) => {
                println!("{fam}: error: {e}");
                failed = true;
            }
        }
    }
    println!("golden: cases={cases} mismatches={mismatches}");
    Ok(if failed || mismatches > 0 || cases == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
