//! `overparam fuse` as a user meets it: the verdict in f64 with relative and absolute errors
//! labelled, reduced precisions as measurements, and arguments that would break something
//! refused before anything is read or written.

use std::path::{Path, PathBuf};

mod common;
use common::{run, text};

/// A resnet18_cifar train checkpoint (width 0.125) with `method` in `dir`.
fn init(dir: &Path, method: &str) -> PathBuf {
    common::init(
        dir.join(format!("{method}.op.safetensors")),
        &[
            "--model",
            "resnet18_cifar",
            "--method",
            method,
            "--width",
            "0.125",
        ],
    )
}

#[test]
fn the_report_separates_the_verdict_from_the_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let op = init(dir.path(), "qarepvgg");
    let out = dir.path().join("d.safetensors");
    let o = run(&["fuse", op.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("exactness (the verdict): f64"), "{t}");
    assert!(t.contains("PASS: exact in f64"), "{t}");
    // Every error line says which number is relative and which absolute.
    for l in t.lines().filter(|l| l.contains("max|Δ|")) {
        assert!(l.contains("rel ") && l.contains("abs max|Δ|"), "{l}");
    }
    for p in [
        "fp32 ",
        "tf32 (simulated)",
        "bf16 (simulated)",
        "fp16 (simulated)",
    ] {
        assert!(t.contains(p), "{p} not measured: {t}");
    }
    assert!(t.contains("measurements, not a gate"), "{t}");

    let o = run(&[
        "fuse",
        op.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--measure",
        "bf16",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exact"]["precision"], "fp64");
    assert_eq!(v["measured"].as_array().unwrap().len(), 1);
    assert_eq!(v["measured"][0]["precision"], "bf16 (simulated)");
}

#[test]
fn a_zero_batch_and_the_input_as_output_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let op = init(dir.path(), "sfo");
    let before = std::fs::read(&op).unwrap();
    let out = dir.path().join("d.safetensors");
    let o = run(&[
        "fuse",
        op.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--batch",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--batch"), "{}", text(&o));
    assert!(!out.exists());

    // The same file, by the same and by another spelling of its path.
    let other = dir.path().join(".").join(op.file_name().unwrap());
    for target in [op.clone(), other] {
        let o = run(&["fuse", op.to_str().unwrap(), "-o", target.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(t.contains("the output is the input"), "{t}");
        assert_eq!(std::fs::read(&op).unwrap(), before);
    }
    let o = run(&[
        "fuse",
        op.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--measure",
        "fp8",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("fp8"),
        "{}",
        text(&o)
    );
}
