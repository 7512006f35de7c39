//! `overparam-fuzz`: a mutational fuzzer on the stable toolchain for every parser of outside
//! bytes. Not coverage-guided: inputs that produce a new kind of outcome (a new error message
//! shape, or success) join the corpus. A panic or a broken round-trip invariant is a crash; an
//! execution over 1 s is reported as slow, one over 10 s as a hang (the input is saved and the
//! run aborts). Crashing inputs go to `<artifacts>/<target>/`.
//!
//! overparam-fuzz [TARGET|all] [--runs N] [--seconds S] [--corpus DIR] [--artifacts DIR] [--seed N]
//!                [--write-seeds DIR]

mod mutate;
mod targets;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overparam_fuse::Rng;

struct Opts {
    target: String,
    runs: u64,
    seconds: Option<f64>,
    corpus: Option<PathBuf>,
    artifacts: PathBuf,
    seed: u64,
    write_seeds: Option<PathBuf>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        target: "all".into(),
        runs: 1_000_000,
        seconds: None,
        corpus: None,
        artifacts: PathBuf::from("fuzz/artifacts"),
        seed: 1,
        write_seeds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = val("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--seconds" => {
                o.seconds = Some(
                    val("--seconds")?
                        .parse()
                        .map_err(|e| format!("--seconds: {e}"))?,
                )
            }
            "--corpus" => o.corpus = Some(val("--corpus")?.into()),
            "--artifacts" => o.artifacts = val("--artifacts")?.into(),
            "--seed" => o.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--write-seeds" => o.write_seeds = Some(val("--write-seeds")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: overparam-fuzz [TARGET|all] [--runs N (1000000)] [--seconds S] [--corpus DIR] [--artifacts DIR] [--seed N] [--write-seeds DIR]"
                );
                println!(
                    "targets: {}",
                    targets::all()
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                std::process::exit(0);
            }
            t if !t.starts_with('-') => o.target = t.into(),
            _ => return Err(format!("unknown option {a}")),
        }
    }
    Ok(o)
}

/// The shape of an outcome: error messages with numbers and quoted names blanked, so that
/// "offset 12" and "offset 13" count as one kind.
fn kind(r: &targets::Outcome) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(m) => {
            let mut s = String::new();
            let mut quoted = false;
            for c in m.chars().take(48) {
                if c == '`' || c == '"' {
                    quoted = !quoted;
                    s.push('"');
                } else if !quoted && !c.is_ascii_digit() {
                    s.push(c);
                }
            }
            s
        }
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

struct Report {
    name: &'static str,
    execs: u64,
    seconds: f64,
    corpus: usize,
    kinds: usize,
    crashes: BTreeMap<String, PathBuf>,
    slow: usize,
    /// Mutated inputs the parser accepted (and whose round trip was then checked).
    accepted: u64,
}

fn save(dir: &Path, prefix: &str, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let p = dir.join(format!("{prefix}-{:016x}.bin", fnv(input)));
    let _ = std::fs::write(&p, input);
    p
}

fn fuzz(t: &targets::Target, o: &Opts) -> Report {
    let mut corpus: Vec<Vec<u8>> = (t.seeds)();
    if let Some(rd) = o
        .corpus
        .as_ref()
        .and_then(|d| std::fs::read_dir(d.join(t.name)).ok())
    {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        corpus.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
    }

    let mut kinds: BTreeSet<String> = corpus.iter().map(|c| kind(&(t.run)(c))).collect();
    let mut rng = Rng::new(o.seed ^ fnv(t.name.as_bytes()));
    let art = o.artifacts.join(t.name);
    let mut crashes = BTreeMap::new();
    let mut slow = 0;
    let mut accepted = 0u64;
    // The watchdog: an execution still running after 10 s is a hang; save it and abort.
    let current: Arc<Mutex<Vec<u8>>> = Arc::default();
    let started = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    {
        let (current, started, art) = (current.clone(), started.clone(), art.clone());
        let name = t.name;
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let s = started.load(Ordering::Relaxed);
                if s > 0 && epoch.elapsed().as_nanos() as u64 - s > 10_000_000_000 {
                    let input = current.lock().map(|g| g.clone()).unwrap_or_default();
                    let p = save(&art, "hang", &input);
                    eprintln!(
                        "{name}: HANG (> 10 s in one execution); input saved to {}",
                        p.display()
                    );
                    std::process::exit(3);
                }
            }
        });
    }
    let t0 = Instant::now();
    let mut execs = 0u64;
    let bar_every = (o.runs / 20).max(1);
    while execs < o.runs && o.seconds.is_none_or(|s| t0.elapsed().as_secs_f64() < s) {
        let a = &corpus[(rng.next_u64() % corpus.len() as u64) as usize];
        let b = &corpus[(rng.next_u64() % corpus.len() as u64) as usize];
        let input = mutate::mutate(a, b, &mut rng, (t.header)(a), t.text);
        if let Ok(mut g) = current.lock() {
            g.clear();
            g.extend_from_slice(&input);
        }
        let e0 = Instant::now();
        started.store(epoch.elapsed().as_nanos().max(1) as u64, Ordering::Relaxed);
        let r = catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        started.store(0, Ordering::Relaxed);
        execs += 1;
        if e0.elapsed() > Duration::from_secs(1) {
            slow += 1;
            save(&art, "slow", &input);
        }
        match r {
            Ok(outcome) => {
                accepted += outcome.is_ok() as u64;
                let k = kind(&outcome);
                if corpus.len() < 512 && kinds.insert(k) {
                    corpus.push(input);
                }
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                let where_ = LAST_PANIC.lock().map(|g| g.clone()).unwrap_or_default();
                let key = format!("{where_}: {}", msg.chars().take(160).collect::<String>());
                if let std::collections::btree_map::Entry::Vacant(slot) = crashes.entry(key) {
                    let path = save(&art, "crash", &input);
                    eprintln!(
                        "{}: CRASH {}\n  input: {}",
                        t.name,
                        slot.key(),
                        path.display()
                    );
                    slot.insert(path);
                }
            }
        }
        if execs.is_multiple_of(bar_every) {
            eprint!(
                "\r{}: {execs} execs, {} kinds, {} crashes   ",
                t.name,
                kinds.len(),
                crashes.len()
            );
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
    Report {
        name: t.name,
        execs,
        seconds: t0.elapsed().as_secs_f64(),
        corpus: corpus.len(),
        kinds: kinds.len(),
        crashes,
        slow,
        accepted,
    }
}

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e} (see --help)");
            std::process::exit(2);
        }
    };
    let all = targets::all();
    if let Some(dir) = &o.write_seeds {
        for t in &all {
            for (k, s) in (t.seeds)().iter().enumerate() {
                let d = dir.join(t.name);
                std::fs::create_dir_all(&d).expect("create the corpus directory");
                std::fs::write(d.join(format!("seed-{k}")), s).expect("write a seed");
            }
        }
        println!("wrote seeds under {}", dir.display());
        return;
    }
    let chosen: Vec<&targets::Target> = all
        .iter()
        .filter(|t| o.target == "all" || t.name == o.target)
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "error: no target {:?}; targets: {}",
            o.target,
            all.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        );
        std::process::exit(2);
    }
    // Panics are expected findings: record where, print nothing.
    std::panic::set_hook(Box::new(|info| {
        if let (Ok(mut g), Some(l)) = (LAST_PANIC.lock(), info.location()) {
            *g = format!("{}:{}", l.file(), l.line());
        }
    }));
    let reports: Vec<Report> = chosen.iter().map(|t| fuzz(t, &o)).collect();
    println!(
        "| target | executions | seconds | exec/s | accepted | corpus | outcome kinds | crashes | slow (>1 s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut bad = false;
    for r in &reports {
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} |",
            r.name,
            r.execs,
            r.seconds,
            r.execs as f64 / r.seconds.max(1e-9),
            r.accepted,
            r.corpus,
            r.kinds,
            r.crashes.len(),
            r.slow
        );
        bad |= !r.crashes.is_empty();
    }
    for r in &reports {
        for (k, p) in &r.crashes {
            println!("crash in {}: {k} (input {})", r.name, p.display());
        }
    }
    std::process::exit(if bad { 1 } else { 0 });
}
