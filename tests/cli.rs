//! End-to-end tests of the `overparam` binary: init → fuse → inspect, bad input handling, and
//! PyTorch golden checks of the weight names.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{bin, run, text};

/// A train checkpoint of `model` with `method` (10 classes, seed 3) in `dir`.
fn init(dir: &Path, model: &str, method: &str, width: &str) -> PathBuf {
    common::init(
        dir.join(format!("{model}.{method}.op.safetensors")),
        &[
            "--model",
            model,
            "--method",
            method,
            "--width",
            width,
            "--num-classes",
            "10",
            "--seed",
            "3",
        ],
    )
}

/// A tiny vgg_small run config (`[run]` into `dir`, one thread) with the given method and the
/// sections after `[model]` as written, at `dir/c.toml`.
fn vgg_config(dir: &Path, method: &str, rest: &str) -> PathBuf {
    let cfg = dir.join("c.toml");
    let head = format!(
        "[run]\nname = \"x\"\ndir = \"{}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 0.125\nmethod = {{ kind = \"{method}\" }}\n",
        dir.display()
    );
    std::fs::write(&cfg, head + rest).unwrap();
    cfg
}

#[test]
fn init_fuse_inspect_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let mut deploy_totals = vec![];
    for method in ["plain", "repvgg", "qarepvgg", "fnl", "sfo"] {
        let op = init(dir.path(), "resnet18_cifar", method, "0.25");
        let out = dir.path().join(format!("{method}.deploy.safetensors"));
        let o = run(&["fuse", op.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{method}: {}", text(&o));
        assert!(text(&o).contains("PASS"), "{}", text(&o));
        let o = run(&["inspect", out.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["stage"], "deploy");
        deploy_totals.push((
            v["total_params"].as_u64().unwrap(),
            v["total_macs"].as_u64().unwrap(),
        ));
        let o = run(&["inspect", op.to_str().unwrap()]);
        assert!(
            o.status.success() && text(&o).contains(method),
            "{}",
            text(&o)
        );
    }
    assert!(
        deploy_totals.windows(2).all(|w| w[0] == w[1]),
        "{deploy_totals:?}"
    );
}

/// Runs `fuse` on a bad input and checks: non-zero exit, the message names the file and the
/// `needle`, and an existing output file is untouched.
fn fuse_fails(input: &Path, needle: &str) {
    let dir = input.parent().unwrap();
    let out = dir.join("existing.deploy.safetensors");
    std::fs::write(&out, b"previous artefact").unwrap();
    let o = run(&["fuse", input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        !o.status.success(),
        "expected failure for {}: {t}",
        input.display()
    );
    assert!(
        t.contains(&input.display().to_string()),
        "file not named: {t}"
    );
    assert!(t.contains(needle), "`{needle}` not in: {t}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous artefact");
}

#[test]
fn bad_inputs_fail_clearly_and_destroy_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let op = init(dir.path(), "vgg_small", "sfo", "0.125");
    let good = std::fs::read(&op).unwrap();

    let trunc = dir.path().join("trunc.safetensors");
    std::fs::write(&trunc, &good[..good.len() / 2]).unwrap();
    fuse_fails(&trunc, "safetensors");

    // Flip the first f32 of one tensor to NaN in place: find its offset from the header.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let start = header["features.0.V"]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut nan = good.clone();
    nan[8 + n + start..8 + n + start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_path = dir.path().join("nan.safetensors");
    std::fs::write(&nan_path, &nan).unwrap();
    fuse_fails(&nan_path, "features.0.V");

    let missing = dir.path().join("missing.safetensors");
    std::fs::write(&missing, b"").unwrap();
    fuse_fails(&missing, "safetensors");

    let absent = dir.path().join("does-not-exist.safetensors");
    fuse_fails(&absent, "No such file");

    // A deploy checkpoint is refused, not folded again.
    let deploy = dir.path().join("d.safetensors");
    let o = run(&["fuse", op.to_str().unwrap(), "-o", deploy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    fuse_fails(&deploy, "already a deploy checkpoint");
}

#[test]
fn help_lists_every_subcommand() {
    let o = run(&["--help"]);
    let t = text(&o);
    for c in ["init", "fuse", "inspect"] {
        assert!(t.contains(c), "{t}");
    }
}

fn venv_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Plain train checkpoints use torchvision's names and deploy checkpoints load into the
/// bias-conv CIFAR ResNet, both with `load_state_dict(strict=True)`; PyTorch confirms the fold.
#[test]
fn checkpoints_load_strictly_into_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    for (model, width) in [("resnet18_cifar", "0.25"), ("resnet50_cifar", "0.125")] {
        let op = init(dir.path(), model, "plain", width);
        let deploy = dir.path().join(format!("{model}.deploy.safetensors"));
        let o = run(&["fuse", op.to_str().unwrap(), "-o", deploy.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/strict_load.py");
        let o = Command::new(venv_python())
            .args([
                script.to_str().unwrap(),
                model,
                width,
                "10",
                op.to_str().unwrap(),
                deploy.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{model}: {}", text(&o));
        assert!(text(&o).contains("strict load ok"));
    }
}

/// `train` killed with SIGKILL mid-run and resumed ends bit-identical to an uninterrupted run.
#[cfg(unix)]
#[test]
fn train_killed_and_resumed_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = vgg_config(
        dir.path(),
        "fnl",
        r#"[data]
synthetic_train = 600
synthetic_test = 100
[optim]
epochs = 4
batch_size = 20
lr = 0.05
weight_decay = 5e-4
schedule = { kind = "cosine" }
"#,
    );
    let c = cfg.to_str().unwrap();
    let o = run(&["train", "--config", c, "--set", "run.name=straight"]);
    assert!(o.status.success(), "{}", text(&o));
    // Kill once the first epoch's state is on disk, then resume.
    let mut child = bin()
        .args(["train", "--config", c, "--set", "run.name=killed"])
        .spawn()
        .unwrap();
    let metrics = dir.path().join("killed/metrics.csv");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |s| s.lines().count() < 2) {
        assert!(t0.elapsed().as_secs() < 120, "first epoch never finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let o = run(&[
        "train",
        "--config",
        c,
        "--set",
        "run.name=killed",
        "--resume",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["model.op.safetensors", "model.deploy.safetensors"] {
        let a = std::fs::read(dir.path().join("straight").join(f)).unwrap();
        let b = std::fs::read(dir.path().join("killed").join(f)).unwrap();
        assert!(a == b, "{f} differs after kill + resume");
    }
    // `eval` reports on either checkpoint.
    let data = dir.path().join("_data/synth-cifar100-600-100-seed0");
    let o = run(&[
        "eval",
        dir.path()
            .join("killed/model.deploy.safetensors")
            .to_str()
            .unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && text(&o).contains("top-1 error"),
        "{}",
        text(&o)
    );
}

#[test]
fn train_rejects_bad_configs_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[run]\nname = \"x\"\n[model]\nkind = \"vgg_small\"\nmethod = { kind = \"nope\" }\n[optim]\nepochs = 1\nbatch_size = 2\nlr = 0.1\n").unwrap();
    let o = run(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("nope") && text(&o).contains("c.toml"),
        "{}",
        text(&o)
    );
}

/// `overparam … | head -1`: the reader goes away; the writer ends quietly, without a panic.
#[test]
fn a_closed_output_pipe_ends_commands_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let op = init(dir.path(), "resnet18_cifar", "sfo", "0.25");
    let grid = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/experiments/proxy_cifar.toml");
    let cases: [Vec<&str>; 2] = [
        vec!["inspect", op.to_str().unwrap()],
        vec!["experiment", "--config", grid.to_str().unwrap(), "--list"],
    ];
    for args in cases {
        for read_first_line in [true, false] {
            let mut child = bin()
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            if read_first_line {
                // `head -1`: one line, then close (the rest may already sit in the pipe).
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                assert!(!line.is_empty(), "{args:?}");
            } else {
                // The reader is gone before anything is written: every write fails.
                drop(stdout);
            }
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert_ne!(o.status.code(), Some(101), "{args:?}: {err}");
        }
    }
}

/// An error's cause is printed once (not in the message and again as its source).
#[test]
fn error_causes_are_printed_once() {
    let o = run(&["inspect", "/nonexistent/model.safetensors"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/model.safetensors"), "{err}");
}

#[test]
fn bench_train_refuses_zero_sizes() {
    for flag in ["--steps", "--threads", "--batch", "--width"] {
        let mut args = vec!["bench", "train", "--model", "vgg_small", "--method", "sfo"];
        if flag != "--width" {
            args.extend(["--width", "0.125"]);
        }
        args.extend([flag, "0"]);
        let o = run(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{flag}: {t}");
        assert!(t.contains(flag) && !t.contains("panicked"), "{flag}: {t}");
        assert!(!t.contains("step ms"), "{flag}: {t}");
    }
}

#[test]
fn synthetic_data_never_overwrites_a_dataset_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar");
    let c = cifar.to_str().unwrap();
    let synth = |extra: &[&str]| {
        let mut a = vec![
            "data",
            "synth-cifar",
            "-o",
            c,
            "--train",
            "200",
            "--test",
            "100",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let o = synth(&[]);
    assert!(o.status.success(), "{}", text(&o));
    let before = std::fs::read(cifar.join("train.bin")).unwrap();
    let o = synth(&["--seed", "1"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(c) && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    assert!(std::fs::read(cifar.join("train.bin")).unwrap() == before);
    let o = synth(&["--seed", "1", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(cifar.join("train.bin")).unwrap() != before);
    // Nothing left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let nyu = dir.path().join("nyu");
    let n = nyu.to_str().unwrap();
    let scenes = |train: &str, extra: &[&str]| {
        let mut a = vec![
            "data",
            "synth-nyuv2",
            "-o",
            n,
            "--train",
            train,
            "--val",
            "1",
            "--height",
            "16",
            "--width",
            "16",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let count = || std::fs::read_dir(nyu.join("train/image")).unwrap().count();
    let o = scenes("3", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count(), 3);
    let o = scenes("1", &[]);
    assert!(!o.status.success() && text(&o).contains(n), "{}", text(&o));
    assert_eq!(count(), 3);
    // --force replaces the dataset: no stale scenes of the larger one stay behind.
    let o = scenes("1", &["--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count(), 1);

    // Sizes are refused before anything is allocated or created.
    let big = dir.path().join("big");
    let o = run(&[
        "data",
        "synth-nyuv2",
        "-o",
        big.to_str().unwrap(),
        "--height",
        "100000",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("100000") && !text(&o).contains("panicked"),
        "{}",
        text(&o)
    );
    assert!(!big.exists());
}

/// A run that fails before its first epoch leaves nothing worth protecting: the retry (fresh
/// or with --resume) starts it again instead of refusing.
#[test]
fn a_train_that_failed_at_start_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = vgg_config(
        dir.path(),
        "plain",
        r#"[data]
synthetic_train = 40
synthetic_test = 20
augment = false
[optim]
epochs = 1
batch_size = 64
lr = 0.05
"#,
    );
    let c = cfg.to_str().unwrap();
    // batch_size 64 > 40 images: fails after the run directory was made.
    for name in ["fresh", "resumed"] {
        let o = run(&["train", "--config", c, "--set", &format!("run.name={name}")]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("exceeds the training set"),
            "{}",
            text(&o)
        );
    }
    let o = run(&[
        "train",
        "--config",
        c,
        "--set",
        "run.name=fresh",
        "--set",
        "optim.batch_size=10",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&[
        "train",
        "--config",
        c,
        "--set",
        "run.name=resumed",
        "--set",
        "optim.batch_size=10",
        "--resume",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // A run with a finished epoch is still protected.
    let o = run(&["train", "--config", c, "--set", "run.name=fresh"]);
    assert!(
        !o.status.success() && text(&o).contains("already exists"),
        "{}",
        text(&o)
    );
    // run.threads = 0 is refused with its key, before a run directory is made.
    let o = run(&[
        "train",
        "--config",
        c,
        "--set",
        "run.name=zero",
        "--set",
        "run.threads=0",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("run.threads"),
        "{}",
        text(&o)
    );
    assert!(!dir.path().join("zero").exists());
}
