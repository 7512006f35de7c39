//! `overparam bench pipeline` on loopback: a rate the machine holds reports no missed frame,
//! a model slowed on purpose reports losses at a rate it cannot hold, and settings with no
//! meaning are refused before anything runs.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{bin, deploy_mtl, init, ok, text};

/// `bench pipeline --model MODEL` on one thread with `camera`-sized frames, as JSON.
fn bench_at(model: &Path, camera: &str, args: &[&str]) -> std::process::Output {
    bin()
        .args(["bench", "pipeline", "--model"])
        .arg(model)
        .args(["--threads", "1", "--camera-size", camera, "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn bench(model: &Path, args: &[&str]) -> std::process::Output {
    bench_at(model, "96x128", args)
}

/// `init ARGS` then `fuse`: the deploy checkpoint `dir/NAME.deploy.safetensors`.
fn folded(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let op = init(dir.join(format!("{name}.op.safetensors")), args);
    let m = dir.join(format!("{name}.deploy.safetensors"));
    ok(&bin()
        .arg("fuse")
        .arg(&op)
        .arg("-o")
        .arg(&m)
        .output()
        .unwrap());
    m
}

fn report(o: &std::process::Output) -> Value {
    let t = ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {t}"))
}

/// A tiny model at 5 Hz, ROS 2 mode: every frame sent in the window arrives on all three
/// output topics, and the report's files are written.
#[test]
fn a_rate_the_machine_holds_misses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let out = d.path().join("report");
    let o = bench(
        &m,
        &[
            "--rates",
            "5",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--ros2",
            "--domain-id",
            "11",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let r = report(&o);
    assert_eq!(r["mode"], "ros2");
    let run = &r["runs"][0];
    assert_eq!(run["target_hz"], 5.0);
    let sent = run["sent"].as_u64().unwrap();
    assert!((9..=11).contains(&sent), "{run}");
    assert_eq!(run["missed"], 0, "{run}");
    assert_eq!(run["delivered"].as_u64(), Some(sent));
    // The class map, its colour map, depth and normals.
    assert_eq!(run["outputs"].as_array().unwrap().len(), 4, "{run}");
    let lat = &run["latency_ms"];
    for k in ["p50", "p90", "p99", "max"] {
        assert!(lat[k].as_f64().unwrap() > 0.0, "{k}: {run}");
    }
    assert!(lat["max"].as_f64() >= lat["p50"].as_f64());
    assert!(run["jitter_ms_max_abs"].as_f64().unwrap() >= 0.0);
    assert!(run["cpu_percent"].as_f64().unwrap() >= 0.0, "{run}");
    assert_eq!(
        r["platform"]["cores"].as_u64().unwrap() as usize,
        std::thread::available_parallelism().unwrap().get()
    );
    for f in [
        "pipeline_bench.json",
        "pipeline_bench.md",
        "pipeline_bench.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(out.join("pipeline_bench.md")).unwrap();
    assert!(
        md.contains("| 5 | 5.0 |") && md.contains("## Platform"),
        "{md}"
    );
}

/// A model slowed on purpose (a wider, larger network, one thread), fed at four times the rate
/// its inference allows: the run reports the frames it missed.
#[test]
fn a_model_too_slow_for_the_rate_loses_frames() {
    let d = tempfile::tempdir().unwrap();
    let m = folded(
        d.path(),
        "slow",
        &[
            "--model",
            "mtl",
            "--method",
            "plain",
            "--width",
            "0.25",
            "--image-size",
            "96",
        ],
    );
    let b = ok(&bin()
        .arg("bench")
        .arg(&m)
        .args(["--threads", "1", "--iters", "10", "--warmup", "2", "--json"])
        .output()
        .unwrap());
    let v: Value = serde_json::from_str(&b[b.find('{').unwrap()..=b.rfind('}').unwrap()])
        .unwrap_or_else(|e| panic!("{e}: {b}"));
    let p50 = v["p50_ms"].as_f64().unwrap();
    let rate = (4000.0 / p50).clamp(20.0, 1000.0);
    let o = bench(
        &m,
        &[
            "--rates",
            &format!("{rate:.0}"),
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    let r = report(&o);
    let run = &r["runs"][0];
    assert_eq!(r["mode"], "native");
    let (sent, missed) = (
        run["sent"].as_u64().unwrap(),
        run["missed"].as_u64().unwrap(),
    );
    assert!(sent > 0 && missed > 0, "{run}");
    assert!(
        run["loss"].as_f64().unwrap() > 0.05,
        "inference p50 {p50} ms, {rate:.0} Hz: {run}"
    );
    assert!(run["achieved_hz"].as_f64().unwrap() < 0.95 * rate, "{run}");
}

#[test]
fn settings_with_no_meaning_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("absent.onnx");
    for (args, needle) in [
        (vec!["--rates", "0"], "--rates"),
        (vec!["--rates", "10,-5"], "--rates"),
        (vec!["--duration", "-1"], "--duration"),
        (vec!["--duration", "0"], "--duration"),
        (vec!["--warmup", "-0.5"], "--warmup"),
        (vec!["--camera-size", "0x640"], "--camera-size"),
        (vec!["--camera-size", "480"], "HxW"),
        (vec!["--max-loss-pct", "100"], "--max-loss"),
    ] {
        let o = bin()
            .args(["bench", "pipeline", "--model"])
            .arg(&m)
            .args(&args)
            .output()
            .unwrap();
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(t.contains(needle), "{args:?}: {t}");
    }
    let o = bench(&m, &["--rates", "10"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("absent.onnx"), "{}", text(&o));
}

/// A classifier has one output topic, its top-5 classes (JSON natively): every frame's
/// arrives with the frame's capture stamp.
#[test]
fn a_classifier_publishes_its_classes_for_every_frame() {
    let d = tempfile::tempdir().unwrap();
    let m = folded(
        d.path(),
        "c",
        &[
            "--model",
            "vgg_small",
            "--method",
            "plain",
            "--width",
            "0.125",
        ],
    );
    let o = bench_at(
        &m,
        "32x32",
        &["--rates", "10", "--duration", "1", "--warmup", "0.3"],
    );
    let r = report(&o);
    let run = &r["runs"][0];
    assert_eq!(
        run["outputs"],
        serde_json::json!(["overparam_bench/cam0/classes"]),
        "{run}"
    );
    assert_eq!(run["missed"], 0, "{run}");
    assert!(run["sent"].as_u64().unwrap() >= 9, "{run}");
}

/// `--camera-key`: an external ROS 2 camera (the independent Python camera, 20 Hz, its own
/// process and session) is measured as it runs: one run at its rate as measured, frames
/// counted from what the camera sent in the window; --rates with it is refused.
#[test]
fn an_external_ros2_camera_is_measured_at_its_own_rate() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let ep = format!(
        "tcp/127.0.0.1:{}",
        overparam_bridge::session::free_port().unwrap()
    );
    let (mut cam, _out) = common::ros_camera(&serde_json::json!({
        "endpoint": ep, "domain": 11, "topic": "/front/image_raw",
        // Nobody publishes there: the camera streams until it is stopped.
        "outputs": "11/nothing/**",
        "frames": [{"encoding": "rgb8", "height": 96, "width": 128}],
        "mode": "stream", "rate": 20.0, "want": 1_000_000_000u64, "timeout": 300,
    }));
    let args = [
        "--ros2",
        "--domain-id",
        "11",
        "--camera-key",
        "/front/image_raw",
        "--camera-connect",
        &ep,
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ];
    let o = bench(&m, &args);
    let refused = bench(&m, &[&args[..], &["--rates", "10"]].concat());
    let _ = cam.kill();
    let _ = cam.wait();
    let r = report(&o);
    assert_eq!(r["camera_key"], "/front/image_raw", "{r}");
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{r}");
    let run = &runs[0];
    // About 40 frames in 2 s at 20 Hz; the rate is the camera's, measured.
    let sent = run["sent"].as_u64().unwrap();
    assert!((20..=60).contains(&sent), "{run}");
    let hz = run["target_hz"].as_f64().unwrap();
    assert!((10.0..=30.0).contains(&hz), "{run}");
    assert!(run["delivered"].as_u64().unwrap() > 0, "{run}");
    assert!(run["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{run}");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("sets its own rate"),
        "{}",
        text(&refused)
    );
}
