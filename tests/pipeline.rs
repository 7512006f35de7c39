//! `overparam pipeline` end to end at a tiny size: the report says the fold verified, lists the
//! three precisions' accuracy and the latency percentiles, and counts every frame received
//! over zenoh; the classification variant runs the stages that apply.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overparam"))
}

/// A multi-task pipeline small enough for the test suite, into `dir`.
fn tiny_pipeline(dir: &std::path::Path, frames: &str, extra: &[&str]) -> std::process::Output {
    bin()
        .args([
            "pipeline",
            "--frames",
            frames,
            "--iters",
            "10",
            "--calib-images",
            "4",
        ])
        .args(extra)
        .args(["--set", &format!("run.dir=\"{}\"", dir.display())])
        .args(["--set", "model.width=0.125", "--set", "optim.epochs=1"])
        .args([
            "--set",
            "data.synthetic_train=8",
            "--set",
            "data.synthetic_test=4",
        ])
        .args([
            "--set",
            "data.synthetic_height=48",
            "--set",
            "data.synthetic_width=64",
        ])
        .output()
        .unwrap()
}

#[test]
fn multi_task_pipeline_reports_every_stage() {
    let d = tempfile::tempdir().unwrap();
    let o = tiny_pipeline(d.path(), "40", &[]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    for k in 1..=8 {
        assert!(
            text.contains(&format!("== [{k}/8]")),
            "stage {k} missing: {text}"
        );
    }
    let run = d.path().join("demo");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("**Fold verified: yes**"), "{md}");
    assert!(
        md.contains("| mIoU |") && md.contains("| fp32 | fp16 | int8 trt | int8 cpu |"),
        "{md}"
    );
    for p in [
        "| fp32 | `model.onnx` |",
        "| fp16 | `model.fp16.onnx` |",
        "| int8 trt | `model.int8.onnx` |",
        "| int8 cpu | `model.int8.cpu.onnx` |",
    ] {
        assert!(md.contains(p), "latency row {p} missing: {md}");
    }
    assert!(md.contains("p99 ms"), "{md}");
    // 40 frames × 4 topics: the class map, its colour map, depth, normals.
    assert!(md.contains("**Received 160 of 160 messages**"), "{md}");
    // Publishing uses the lowest p50 among the models within the accuracy floor (1% on each
    // dense metric by default; fp32 always is), and the report and the bridge say which.
    let lat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("latency.json")).unwrap()).unwrap();
    let rows = lat["models"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{lat}");
    let within = |r: &serde_json::Value| r["within_max_drop"].as_bool().unwrap();
    for r in rows {
        assert_eq!(within(r), r["drop"].as_f64().unwrap() <= 0.01, "{r}");
    }
    assert!(within(&rows[0]), "fp32 is always within: {lat}");
    let fastest_within = |rows: &[serde_json::Value], floor: bool| {
        rows.iter()
            .filter(|r| !floor || within(r))
            .min_by(|a, b| {
                a["p50_ms"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["p50_ms"].as_f64().unwrap())
            })
            .unwrap()["file"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let published = lat["published"].as_str().unwrap();
    assert_eq!(published, fastest_within(rows, true), "{lat}");
    assert!(md.contains("**Accuracy floor**"), "{md}");
    assert!(
        md.contains(&format!("**Published model: `{published}`")),
        "{md}"
    );
    assert!(
        md.contains(&format!("The published model (`{published}`")),
        "{md}"
    );
    for f in [
        "model.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
        "model.int8.cpu.onnx",
        "latency.json",
        "calib.json",
        "training_curves.png",
        "training_metrics.png",
        "latency_hist.png",
        "model.deploy.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // A second run reuses the trained model instead of refusing the existing run directory.
    // calib.json is the typed record: this model's, one rule per tensor, both INT8 files.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("calib.json")).unwrap()).unwrap();
    assert_eq!(rec["version"], 2, "{rec}");
    assert_eq!(rec["calibrator"], "auto", "{rec}");
    assert_eq!(
        rec["choice"].as_object().unwrap().len(),
        rec["thresholds"].as_object().unwrap().len()
    );
    assert_eq!(
        rec["models"]["model.int8.cpu.onnx"], "unsigned_offset",
        "{rec}"
    );
    // With no floor to speak of, the fastest model of all is published.
    let again = tiny_pipeline(d.path(), "5", &["--max-drop-dense-pct", "1e9"]);
    let t2 = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(again.status.success(), "{t2}");
    assert!(t2.contains("reusing the trained model"), "{t2}");
    let lat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("latency.json")).unwrap()).unwrap();
    let rows = lat["models"].as_array().unwrap();
    assert!(rows.iter().all(within), "{lat}");
    assert_eq!(
        lat["published"].as_str().unwrap(),
        fastest_within(rows, false)
    );
    // bridge run on the directory publishes its choice, or under --max-drop the fastest of
    // its models within that floor (no loss at all: fp32, or one that lost nothing).
    let bridge = |extra: &[&str]| {
        let mut c = bin();
        c.args(["bridge", "run", "--model"])
            .arg(&run)
            .args(["--frames", "2"])
            .args(extra);
        let o = c.output().unwrap();
        let t = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{t}");
        t
    };
    let t = bridge(&[]);
    let chosen = run.join(lat["published"].as_str().unwrap());
    assert!(t.contains(&format!("({})", chosen.display())), "{t}");
    let exact: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| r["drop"].as_f64() == Some(0.0))
        .cloned()
        .collect();
    let t = bridge(&["--max-drop-dense-pct", "0"]);
    let chosen = run.join(fastest_within(&exact, false));
    assert!(t.contains(&format!("({})", chosen.display())), "{t}");
    let o = bin()
        .args([
            "bridge",
            "run",
            "--max-drop",
            "0.1",
            "--frames",
            "1",
            "--model",
        ])
        .arg(run.join("model.onnx"))
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && t.contains("pipeline"), "{t}");
}

#[test]
fn classification_pipeline_skips_the_bridge() {
    let d = tempfile::tempdir().unwrap();
    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/proxy_cifar_sfo_r1.toml"
    );
    let o = bin()
        .args([
            "pipeline",
            "--config",
            cfg,
            "--iters",
            "5",
            "--calib-images",
            "32",
        ])
        .args(["--set", &format!("run.dir=\"{}\"", d.path().display())])
        .args(["--set", "model.width=0.125", "--set", "optim.epochs=1"])
        .args([
            "--set",
            "data.synthetic_train=256",
            "--set",
            "data.synthetic_test=100",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    let md = std::fs::read_to_string(d.path().join("proxy-cifar-sfo-r1/report.md")).unwrap();
    assert!(md.contains("**Fold verified: yes**"), "{md}");
    assert!(md.contains("| precision | top-1 err % |"), "{md}");
    for p in ["| int8 trt |", "| int8 cpu |"] {
        assert!(md.contains(p), "accuracy row {p} missing: {md}");
    }
    assert!(md.contains("**Published model: `"), "{md}");
    assert!(
        md.contains("Skipped: a classifier has no dense outputs"),
        "{md}"
    );
}
