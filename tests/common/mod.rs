//! Helpers the binary's end-to-end tests share: running `overparam`, reading its output, and
//! the checkpoints most tests start from. Each test file uses a subset, hence the allow.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `overparam` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overparam"))
}

/// Runs `overparam ARGS` to the end.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run overparam")
}

/// stdout then stderr, as one text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// [`text`] of a run that must have succeeded.
pub fn ok(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "{t}");
    t
}

/// `overparam init ARGS --random-bn -o PATH` (random BatchNorm statistics, so folds are tested
/// against non-trivial statistics); returns `path`.
pub fn init(path: PathBuf, args: &[&str]) -> PathBuf {
    ok(&bin()
        .arg("init")
        .args(args)
        .arg("--random-bn")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("run overparam init"));
    path
}

/// A tiny multi-task SFO model (width 0.125, 48×48) folded to `dir/m.deploy.safetensors`.
pub fn deploy_mtl(dir: &Path) -> PathBuf {
    let op = init(
        dir.join("m.op.safetensors"),
        &[
            "--model",
            "mtl",
            "--method",
            "sfo",
            "--width",
            "0.125",
            "--image-size",
            "48",
        ],
    );
    let d = dir.join("m.deploy.safetensors");
    ok(&bin()
        .arg("fuse")
        .arg(&op)
        .arg("-o")
        .arg(&d)
        .output()
        .unwrap());
    d
}

/// The import fixtures (`tests/python/import_blocks.py`: PyTorch blocks exported by both
/// exporters) written into `dir` with `.venv`'s torch.
pub fn import_blocks(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/python/import_blocks.py"))
        .arg(dir)
        .output()
        .expect("run the virtualenv's python (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the independent Python ROS 2 camera (`bridge/tests/python/ros_camera.py`) on `job` and waits for its `ready` (its session listens).
pub fn ros_camera(job: &serde_json::Value) -> (Child, BufReader<std::process::ChildStdout>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("bridge/tests/python/ros_camera.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run .venv/bin/python (scripts/setup.sh installs rosbags and eclipse-zenoh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the camera did not start: {line}");
    (child, out)
}
