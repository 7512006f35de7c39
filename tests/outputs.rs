//! Outputs never destroy inputs (#25 §1): every command that writes refuses an output that
//! resolves to one of its inputs (directly, through a symlink or `..`), or that lies inside an
//! input dataset directory, before it reads anything; the error names both paths and every
//! file that existed before is byte-identical afterwards.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{deploy_mtl, ok, run, text};

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Runs `args`, which must fail naming `output` and `input`, leaving `dir` as it was.
fn refused(dir: &Path, args: &[&str], output: &str, input: &str) {
    let before = snapshot(dir);
    let o = run(args);
    let t = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded:\n{t}");
    assert!(
        t.contains(output) && t.contains(input),
        "{args:?}: the message names neither {output} nor {input}:\n{t}"
    );
    assert_eq!(
        snapshot(dir),
        before,
        "{args:?} changed files it was refused"
    );
}

#[test]
fn no_command_writes_over_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = deploy_mtl(dir.path());
    let ds = d.to_str().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let onnx = p("m.onnx");
    ok(&run(&["export", ds, "-o", &onnx]));
    std::os::unix::fs::symlink(&d, dir.path().join("alias.safetensors")).unwrap();
    let data = dir.path().join("nyu");
    ok(&run(&[
        "data",
        "synth-nyuv2",
        "-o",
        data.to_str().unwrap(),
        "--train",
        "2",
        "--val",
        "2",
        "--height",
        "48",
        "--width",
        "48",
    ]));
    let data_s = data.to_str().unwrap();

    refused(dir.path(), &["export", ds, "-o", ds], ds, ds);
    // Through a symlink and through `..`: the same file.
    refused(
        dir.path(),
        &["export", ds, "-o", &p("alias.safetensors")],
        "alias.safetensors",
        ds,
    );
    let dotdot = format!("{}/../m.deploy.safetensors", data_s);
    refused(dir.path(), &["export", ds, "-o", &dotdot], &dotdot, ds);
    refused(
        dir.path(),
        &[
            "engine",
            "accuracy",
            ds,
            "--data",
            data_s,
            "--sensitivity",
            "--partial-output",
            ds,
        ],
        ds,
        ds,
    );
    refused(
        dir.path(),
        &["engine", "build", &onnx, "-o", &onnx],
        &onnx,
        &onnx,
    );
    refused(
        dir.path(),
        &["init", "--from", ds, "--method", "sfo", "-o", ds],
        ds,
        ds,
    );
    refused(dir.path(), &["import", &onnx, "-o", &onnx], &onnx, &onnx);
    refused(
        dir.path(),
        &["fuse", &p("m.op.safetensors"), "-o", &p("m.op.safetensors")],
        "m.op.safetensors",
        "m.op.safetensors",
    );
    // Predictions go under the split's own file names: never into the dataset.
    let inside = format!("{data_s}/val");
    refused(
        dir.path(),
        &["eval", ds, "--data", data_s, "--dump-predictions", &inside],
        &inside,
        data_s,
    );
}

/// `args` is refused as a usage error (exit 2) naming `flag`, without a panic.
fn usage_error(args: &[&str], flag: &str) {
    let o = run(args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
    assert!(t.contains(flag) && !t.contains("panicked"), "{args:?}: {t}");
}

/// Numbers are checked where they enter, with one rule per kind of flag across sibling
/// commands (#25 §4): what `bench` refuses, `pipeline` refuses too, and seconds that no
/// `Duration` holds (inf, 1e300) are an error naming the flag, never a panic.
#[test]
fn numeric_flags_share_their_rules_across_commands() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("missing.onnx");
    let m = m.to_str().unwrap();
    for (args, flag) in [
        (
            vec!["bridge", "run", "--model", m, "--wait-subscribers", "inf"],
            "--wait-subscribers",
        ),
        (
            vec!["bridge", "run", "--model", m, "--wait-subscribers", "1e300"],
            "--wait-subscribers",
        ),
        (
            vec!["bridge", "run", "--model", m, "--wait-subscribers=-1"],
            "--wait-subscribers",
        ),
        (vec!["pipeline", "--iters", "0"], "--iters"),
        (vec!["pipeline", "--frames", "0"], "--frames"),
        (vec!["pipeline", "--budget-ms", "NaN"], "--budget-ms"),
        (vec!["pipeline", "--budget-ms=-5"], "--budget-ms"),
        (vec!["bench", m, "--iters", "0"], "--iters"),
        (vec!["bench", m, "--budget-ms", "inf"], "--budget-ms"),
        (vec!["bench", m, "--threads", "0"], "--threads"),
        (
            vec!["export", m, "-o", m, "--calib-images", "0"],
            "--calib-images",
        ),
        (
            vec!["export", m, "-o", m, "--percentile", "100.5"],
            "--percentile",
        ),
        (
            vec![
                "engine",
                "accuracy",
                m,
                "--data",
                m,
                "--heldout-images",
                "0",
            ],
            "--heldout-images",
        ),
        (vec!["pipeline", "--max-drop", "-0.1"], "--max-drop"),
        (
            vec!["init", "--model", "vgg_small", "-o", m, "--width", "-1"],
            "--width",
        ),
        (
            vec!["data", "synth-cifar", "-o", m, "--test", "0"],
            "--test",
        ),
        (vec!["bridge", "listen", "--messages", "0"], "--messages"),
        (
            vec!["import", m, "-o", m, "--mean", "0", "--std", "nan"],
            "--std",
        ),
    ] {
        usage_error(&args, flag);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The same rules hold for config keys (`--set` or the file) as for flags, and a grid is
/// checked whole: one bad cell fails `--emit-slurm` and a run before any cell trains, naming
/// every bad cell, with nothing written.
#[test]
fn config_keys_and_grid_cells_keep_the_flags_rules() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"r\"\ndir = \"{}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 0.125\nmethod = {{ kind = \"plain\" }}\n[data]\nsynthetic_train = 40\nsynthetic_test = 20\n[optim]\nepochs = 1\nbatch_size = 20\nlr = 0.01\n",
            dir.path().join("runs").display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    for (set, key) in [
        ("optim.weight_decay=nan", "optim.weight_decay"),
        ("optim.lr=inf", "optim.lr"),
        ("data.synthetic_train=0", "data.synthetic_train"),
        ("run.threads=0", "run.threads"),
    ] {
        let o = run(&["train", "--config", cfg_s, "--set", set]);
        let t = text(&o);
        assert!(!o.status.success(), "{set}: {t}");
        assert!(t.contains(key) && !t.contains("panicked"), "{set}: {t}");
    }
    let grid = dir.path().join("g.toml");
    std::fs::write(
        &grid,
        format!(
            "[experiment]\nname = \"g\"\nbase = \"{cfg_s}\"\nseeds = [0, 1]\ndir = \"{}\"\nint8 = false\n\n[[experiment.cells]]\nlabel = \"plain\"\n\n[[experiment.cells]]\nlabel = \"broken\"\nset = [\"optim.momentum=1.5\"]\n",
            dir.path().join("runs/g").display()
        ),
    )
    .unwrap();
    let before = snapshot(dir.path());
    let g = grid.to_str().unwrap();
    let slurm = dir.path().join("job.sh");
    for args in [
        vec![
            "experiment",
            "--config",
            g,
            "--emit-slurm",
            slurm.to_str().unwrap(),
        ],
        vec!["experiment", "--config", g],
    ] {
        let o = run(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        for named in ["broken-s0", "broken-s1", "optim.momentum", "(got 1.5)"] {
            assert!(t.contains(named), "{args:?} does not name {named}: {t}");
        }
        assert!(!t.contains("plain-s0"), "{args:?} blames a good cell: {t}");
        assert_eq!(snapshot(dir.path()), before, "{args:?} wrote something");
        assert!(
            !dir.path().join("runs").exists(),
            "{args:?} made the runs dir"
        );
    }
}

/// Runs cannot collide (#25 §2): while one `train` holds a run directory, a second one is
/// refused naming the holder's PID and changes nothing; after the holder is killed, the next
/// start takes the lock over and says so.
#[test]
fn a_second_trainer_of_a_run_is_refused_and_a_dead_ones_lock_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"r\"\ndir = \"{}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 0.125\nmethod = {{ kind = \"plain\" }}\n[data]\nsynthetic_train = 2000\nsynthetic_test = 100\n[optim]\nepochs = 500\nbatch_size = 20\nlr = 0.01\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let mut first = common::bin()
        .args(["train", "--config", cfg_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join("r/.lock");
    let pid = first.id().to_string();
    // Wait for the condition (the lock names the first trainer), not for a fixed time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::fs::read_to_string(&lock).unwrap_or_default() != pid {
        assert!(
            std::time::Instant::now() < deadline,
            "the first train never locked its run"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first train exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = snapshot(&dir.path().join("r"));
    let o = run(&["train", "--config", cfg_s]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains(&format!("in use by PID {pid}")), "{t}");
    let o = run(&["train", "--config", cfg_s, "--resume"]);
    assert!(
        text(&o).contains(&format!("in use by PID {pid}")),
        "{}",
        text(&o)
    );
    // The lock file is the only thing the refused runs may touch, and they did not.
    assert_eq!(
        snapshot(&dir.path().join("r")).get(&lock),
        before.get(&lock)
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // A dead trainer's lock is taken over, saying so (its epoch never finished, so the run
    // starts afresh; it is stopped as soon as the message shows).
    let mut next = common::bin()
        .args(["train", "--config", cfg_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(next.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 {
        seen += &line;
        if line.contains("taking it over") {
            break;
        }
        line.clear();
    }
    next.kill().unwrap();
    next.wait().unwrap();
    assert!(
        seen.contains(&format!("locked by PID {pid}, which is no longer running")),
        "{seen}"
    );
}

/// Names are checked where they enter (#25 §3): wildcard keys, ROS 2 names a graph cannot
/// show and domain ids beyond rmw_zenoh's range are refused naming the flag, before anything
/// connects; and so is an experiment name that would leave the runs directory.
#[test]
fn names_are_checked_where_they_enter() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("missing.onnx");
    let m = m.to_str().unwrap();
    for (extra, flag) in [
        (vec!["--camera", "**"], "--camera"),
        (vec!["--camera", ""], "--camera"),
        (vec!["--prefix", "a//b"], "--prefix"),
        (vec!["--ros2", "--namespace", "/my ns"], "--namespace"),
        (vec!["--ros2", "--node", "9node"], "--node"),
        (vec!["--ros2", "--domain-id", "300"], "--domain-id"),
    ] {
        let mut args = vec!["bridge", "run", "--model", m];
        args.extend(extra);
        usage_error(&args, flag);
    }
    let grid = dir.path().join("g.toml");
    std::fs::write(
        &grid,
        "[experiment]\nname = \"../../escaped\"\nbase = \"../configs/demo.toml\"\nseeds = [0]\n[[experiment.cells]]\nlabel = \"plain\"\n",
    )
    .unwrap();
    let o = run(&["experiment", "--config", grid.to_str().unwrap(), "--list"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("experiment.name"), "{t}");
    assert!(!dir.path().join("../escaped").exists());
}

/// Sizes are checked before allocating (#25 §5): a network far larger than the machine is
/// refused by `train`, `init` and `bench train` within seconds, with the estimate and the knob
/// to turn, and nothing written.
#[test]
fn oversized_models_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"r\"\ndir = \"{}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 300\nmethod = {{ kind = \"sfo\" }}\n[data]\nsynthetic_train = 40\nsynthetic_test = 20\n[optim]\nepochs = 1\nbatch_size = 20\nlr = 0.01\n",
            dir.path().join("runs").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("m.safetensors");
    for (args, knob) in [
        (
            vec!["train", "--config", cfg.to_str().unwrap()],
            "model.width",
        ),
        (
            vec![
                "init",
                "--model",
                "vgg_small",
                "--width",
                "300",
                "--method",
                "sfo",
                "-o",
                out.to_str().unwrap(),
            ],
            "--width",
        ),
        (
            vec![
                "bench",
                "train",
                "--model",
                "vgg_small",
                "--width",
                "300",
                "--steps",
                "1",
            ],
            "--width",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_overparam"))
            .args(&args)
            .env_remove("OVERPARAM_NO_MEMORY_CHECK")
            .output()
            .unwrap();
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(
            t.contains("needs about") && t.contains("GiB") && t.contains(knob),
            "{args:?}: {t}"
        );
        assert!(t.contains("nothing was allocated"), "{args:?}: {t}");
    }
    assert!(!out.exists());
    assert!(!dir.path().join("runs/r/model.op.safetensors").exists());
}
