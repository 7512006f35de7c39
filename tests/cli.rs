//! End-to-end tests of the `overparam` binary: init → fuse → inspect, bad input handling, and
//! PyTorch golden checks of the weight names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overparam"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run overparam")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn init(dir: &Path, model: &str, method: &str, width: &str) -> PathBuf {
    let p = dir.join(format!("{model}.{method}.op.safetensors"));
    let o = run(&[
        "init",
        "--model",
        model,
        "--method",
        method,
        "--width",
        width,
        "--num-classes",
        "10",
        "--random-bn",
        "--seed",
        "3",
        "-o",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    p
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
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
name = "x"
dir = "{}"
threads = 1
[model]
kind = "vgg_small"
width = 0.125
method = {{ kind = "fnl" }}
[data]
synthetic_train = 600
synthetic_test = 100
[optim]
epochs = 4
batch_size = 20
lr = 0.05
weight_decay = 5e-4
schedule = {{ kind = "cosine" }}
"#,
            dir.path().display()
        ),
    )
    .unwrap();
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
