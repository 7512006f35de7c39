//! `overparam experiment` on a tiny grid: the summary files appear; killing it midway and
//! rerunning completes only the remaining cells; sharding splits the cells.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = r#"
[run]
name = "tiny"
seed = 0
threads = 1

[model]
kind = "vgg_small"
width = 0.125
method = { kind = "plain" }

[data]
synthetic_train = 256
synthetic_test = 128

[optim]
epochs = 3
batch_size = 64
lr = 0.05
schedule = { kind = "cosine" }

[routine]
kind = "r1"
"#;

fn write_grid(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("base.toml"), BASE).unwrap();
    let exp = format!(
        r#"
[experiment]
name = "tiny"
base = "base.toml"
seeds = [0, 1]
dir = "{}"
calib_images = 64

[[experiment.cells]]
label = "plain"

[[experiment.cells]]
label = "sfo-r2"
set = ["model.method.kind=sfo", "routine={{kind=\"r2\", period=1}}"]
"#,
        dir.join("out").display()
    );
    let p = dir.join("exp.toml");
    std::fs::write(&p, exp).unwrap();
    p
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overparam"))
}

#[test]
fn a_killed_grid_resumes_and_summarises() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_grid(d.path());
    let out = d.path().join("out");
    // First run: kill it once the first cell has finished.
    let mut child = bin()
        .args(["experiment", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = out.join("plain-s0/cell.json");
    let t0 = Instant::now();
    while !first.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "first cell never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read(&first).unwrap();
    let done_before: Vec<bool> = ["plain-s0", "sfo-r2-s0", "plain-s1", "sfo-r2-s1"]
        .iter()
        .map(|c| out.join(c).join("cell.json").exists())
        .collect();
    assert!(
        !done_before.iter().all(|d| *d),
        "the kill came too late to test anything"
    );

    let o = bin()
        .args(["experiment", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    // Finished cells are skipped, not retrained; the rest complete.
    assert!(text.contains("plain-s0: done, skipped"), "{text}");
    assert_eq!(std::fs::read(&first).unwrap(), before);
    for c in ["plain-s0", "sfo-r2-s0", "plain-s1", "sfo-r2-s1"] {
        assert!(out.join(c).join("cell.json").exists(), "{c} missing");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| plain | 2 |") && md.contains("| sfo-r2 | 2 |"),
        "{md}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    for p in ["plot_metric.png", "plot_train_time.png", "plot_int8.png"] {
        assert!(std::fs::metadata(out.join(p)).unwrap().len() > 1000, "{p}");
    }
    // Same seeds, same numbers: summarising again reproduces the files byte for byte.
    let s = bin()
        .args(["experiment", "summarize", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(s.status.success());
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv
    );
}

#[test]
fn shards_partition_the_cells_and_slurm_scripts_name_them() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_grid(d.path());
    let list = |shard: &str| -> Vec<String> {
        let o = bin()
            .args([
                "experiment",
                "--config",
                cfg.to_str().unwrap(),
                "--list",
                "--shard",
                shard,
            ])
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(list("0/1").len(), 4);
    let (a, b) = (list("0/2"), list("1/2"));
    assert_eq!((a.len(), b.len()), (2, 2));
    assert!(a.iter().all(|c| !b.contains(c)));
    let slurm = d.path().join("run.sbatch");
    let o = bin()
        .args([
            "experiment",
            "--config",
            cfg.to_str().unwrap(),
            "--emit-slurm",
        ])
        .arg(&slurm)
        .args(["--shards", "2"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let s = std::fs::read_to_string(&slurm).unwrap();
    assert!(s.contains("#SBATCH --array=0-1"), "{s}");
    assert!(s.contains("--shard \"${SLURM_ARRAY_TASK_ID}/2\""), "{s}");
    // The job runs this binary by its absolute path (not target/release relative to the
    // submit directory), or $OVERPARAM_BIN; a CPU grid asks for no GPU; the comment names
    // the grid's real output directory.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_overparam")).unwrap();
    assert!(
        s.contains(&format!("\"${{OVERPARAM_BIN:-{}}}\"", exe.display())),
        "{s}"
    );
    assert!(!s.contains("exec target/release"), "{s}");
    assert!(!s.contains("gres"), "{s}");
    assert!(
        s.contains(&format!("summarize '{}'", d.path().join("out").display())),
        "{s}"
    );
    // Run as Slurm would, with OVERPARAM_BIN standing in for the binary.
    let job = Command::new("bash")
        .arg(&slurm)
        .env("SLURM_SUBMIT_DIR", d.path())
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("OVERPARAM_BIN", "echo")
        .output()
        .unwrap();
    assert!(job.status.success());
    assert_eq!(
        String::from_utf8_lossy(&job.stdout).trim(),
        format!("experiment --config {} --shard 1/2", cfg.display())
    );
    // A grid whose cells train on cuda asks for one GPU per task.
    let gpu_cfg = d.path().join("exp-gpu.toml");
    std::fs::write(
        &gpu_cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "calib_images = 64",
            "calib_images = 64\nset = [\"run.device=cuda\"]",
        ),
    )
    .unwrap();
    let o = bin()
        .args(["experiment", "--config", gpu_cfg.to_str().unwrap()])
        .arg("--emit-slurm")
        .arg(&slurm)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = std::fs::read_to_string(&slurm).unwrap();
    assert!(s.contains("#SBATCH --gres=gpu:1\n"), "{s}");
    let bad = bin()
        .args([
            "experiment",
            "--config",
            cfg.to_str().unwrap(),
            "--shard",
            "2/2",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
