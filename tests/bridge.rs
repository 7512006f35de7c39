//! `overparam bridge run` → `overparam bridge listen` across two processes on loopback, native
//! and ROS 2, from synthetic scenes and from a directory of PNGs.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::{bin, deploy_mtl, ok};

fn port() -> u16 {
    overparam_bridge::session::free_port().unwrap()
}

/// Starts a listener expecting `messages`, runs the bridge, and returns the listener's JSON.
fn round_trip(model: &Path, source: &str, frames: u64, extra: &[&str]) -> serde_json::Value {
    let p = port();
    let ep = format!("tcp/127.0.0.1:{p}");
    let listener = bin()
        .args([
            "bridge",
            "listen",
            "--listen",
            &ep,
            "--no-multicast-scouting",
            "--json",
        ])
        // Four topics: the class map, its colour map, depth and normals.
        .args(["--duration", "60", "--messages", &(4 * frames).to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = bin()
        .args([
            "bridge",
            "run",
            "--model",
            model.to_str().unwrap(),
            "--source",
            source,
        ])
        .args([
            "--frames",
            &frames.to_string(),
            "--connect",
            &ep,
            "--no-multicast-scouting",
        ])
        .args(["--wait-subscribers", "20"])
        .args(extra)
        .output()
        .unwrap();
    let t = ok(&run);
    assert!(t.contains(&format!("published {frames} frames")), "{t}");
    assert!(t.contains("(0 with no subscriber)"), "{t}");
    let out = listener.wait_with_output().unwrap();
    let text = ok(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn native_and_ros2_across_processes() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    for extra in [vec![], vec!["--ros2", "--domain-id", "9"]] {
        let j = round_trip(&m, "synthetic:3", 25, &extra);
        let c = &j["counters"];
        assert_eq!(c["received"], 100, "{j}");
        assert_eq!(c["dropped"], 0);
        assert_eq!(c["decode_errors"], 0);
        let topics = j["topics"].as_array().unwrap();
        assert_eq!(topics.len(), 4, "{j}");
        assert!(
            topics.iter().any(|t| t["key"]
                .as_str()
                .unwrap()
                .contains("cam0/segmentation/color")),
            "{j}"
        );
        for t in topics {
            assert_eq!(t["received"], 25);
            assert!(t["end_to_end_ms_p50"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn png_directory_source_and_a_bad_source() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let imgs = d.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    // Sizes differ from the model's 48×64: frames are resized.
    for (i, (w, h)) in [(80, 60), (64, 48), (33, 21)].into_iter().enumerate() {
        let rgb: Vec<u8> = (0..w * h * 3).map(|k| (k * 7 + i) as u8).collect();
        overparam_data::png::write_rgb(&imgs.join(format!("{i}.png")), w, h, &rgb).unwrap();
    }
    let j = round_trip(&m, &format!("images:{}", imgs.display()), 3, &[]);
    assert_eq!(j["counters"]["received"], 12, "{j}");

    let o = bin()
        .args([
            "bridge",
            "run",
            "--model",
            m.to_str().unwrap(),
            "--source",
            "webcam:0",
        ])
        .args(["--frames", "1", "--no-multicast-scouting"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("synthetic[:SEED]"));
}

/// Spawns `overparam args`, waits for a stderr line containing `ready` and then `after`, sends
/// SIGTERM, and returns the exit status, stdout and stderr once it has exited (within 20 s).
#[cfg(unix)]
fn terminate_when_ready(
    args: &[&str],
    ready: &str,
    after: std::time::Duration,
) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, Read};
    use std::time::{Duration, Instant};
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
        {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let t0 = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(ready) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no `{ready}` within 60 s: {}",
                    reader.join().unwrap_or_default()
                );
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(120));
    }
    std::thread::sleep(after);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t1.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("still running 20 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status, out, reader.join().unwrap())
}

/// SIGTERM (as Ctrl-C's SIGINT) stops `bridge listen` without --duration and `bridge run`
/// without --frames cleanly: exit 0 with the report printed, not a silent death.
#[cfg(unix)]
#[test]
fn sigterm_stops_listen_and_run_with_their_reports() {
    use std::time::Duration;
    let ep = format!("tcp/127.0.0.1:{}", port());
    let (status, out, err) = terminate_when_ready(
        &[
            "bridge",
            "listen",
            "--listen",
            &ep,
            "--no-multicast-scouting",
        ],
        "listening on",
        Duration::from_millis(300),
    );
    assert!(status.success(), "{status}: {out}{err}");
    assert!(out.contains("total: received 0"), "{out}{err}");
    assert!(err.contains("stopped by SIGTERM"), "{err}");

    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let ep = format!("tcp/127.0.0.1:{}", port());
    let (status, out, err) = terminate_when_ready(
        &[
            "bridge",
            "run",
            "--model",
            m.to_str().unwrap(),
            "--fps",
            "20",
            "--threads",
            "1",
            "--listen",
            &ep,
            "--no-multicast-scouting",
        ],
        "bridge: ",
        Duration::from_millis(1500),
    );
    assert!(status.success(), "{status}: {out}{err}");
    assert!(
        out.contains("published") && out.contains("inference p50"),
        "{out}{err}"
    );
    assert!(!out.contains("NaN"), "{out}");
    assert!(err.contains("stopped by SIGTERM"), "{err}");
}

/// `bridge run` refuses rates that are not rates and 0 frames as usage errors (exit 2, the
/// flag and the value named), before loading anything.
#[test]
fn bridge_run_refuses_bad_rates_and_zero_frames() {
    for (flag, value, needle) in [
        ("--fps", "0", "at least 0.01"),
        ("--fps", "-5", "at least 0.01"),
        ("--fps", "NaN", "at least 0.01"),
        ("--fps", "1e-9", "at least 0.01"),
        ("--frames", "0", "at least 1"),
    ] {
        let o = bin()
            .args([
                "bridge",
                "run",
                "--model",
                "m.onnx",
                "--source",
                "synthetic",
            ])
            .args([&format!("{flag}={value}"), "--no-multicast-scouting"])
            .output()
            .unwrap();
        let t = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {t}");
        assert!(t.contains(needle), "{flag} {value}: {t}");
        assert!(
            t.contains(flag) && t.contains(&format!("`{value}`")),
            "{flag} {value}: {t}"
        );
    }
}

/// `--ros2-qos sensor-data` is a ROS 2 profile: without `--ros2` it is a usage error naming
/// the flag it needs.
#[test]
fn sensor_data_qos_needs_ros2() {
    let o = bin()
        .args([
            "bridge",
            "run",
            "--model",
            "m.onnx",
            "--ros2-qos",
            "sensor-data",
        ])
        .args(["--no-multicast-scouting"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("--ros2"), "{t}");
}

/// `--source-timeout S`: a camera source that never sends ends the run after S seconds (the
/// run returns; nothing is waited for by the test but its exit).
#[test]
fn a_silent_camera_ends_the_run_after_the_source_timeout() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let o = bin()
        .args(["bridge", "run", "--model", m.to_str().unwrap()])
        .args([
            "--source",
            "zenoh:overparam/silent/camera",
            "--source-timeout",
            "0.5",
        ])
        .args(["--no-multicast-scouting"])
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(
        t.contains("0 frames") || t.contains("frames: 0") || t.contains("published 0"),
        "{t}"
    );
}

/// `--output NAME=ROLE`: a name the model does not have is refused with the names it has, a
/// role its shape cannot carry names both, and a role that does not exist is a usage error;
/// nothing is published in any case.
#[test]
fn output_roles_that_cannot_work_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = common::deploy_mtl(d.path());
    // Each run fails, publishes nothing, and gives its exit status and text.
    let refused = |role: &str| {
        let o = bin()
            .args(["bridge", "run", "--model"])
            .arg(&m)
            .args(["--source", "synthetic", "--frames", "1", "--output", role])
            .args(["--listen", "tcp/127.0.0.1:0", "--no-multicast-scouting"])
            .output()
            .unwrap();
        let t = common::text(&o);
        assert!(!o.status.success(), "{role}: {t}");
        assert!(!t.contains("published"), "{role}: {t}");
        (o.status.code(), t)
    };
    let (_, t) = refused("logits=class_logits");
    assert!(
        t.contains("no output \"logits\"") && t.contains("segmentation, depth, normals"),
        "{t}"
    );
    let (_, t) = refused("depth=normals");
    assert!(
        t.contains("output depth as normals") && t.contains("want 1×3×H×W"),
        "{t}"
    );
    let (code, t) = refused("depth=height");
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains("`height` is not a role"), "{t}");
    refused("logits=depth");
    // Class names that do not fit the segmentation's classes: the file and both counts.
    let labels = d.path().join("labels.txt");
    std::fs::write(&labels, "wall\nfloor\n").unwrap();
    let o = bin()
        .args(["bridge", "run", "--model"])
        .arg(&m)
        .args(["--source", "synthetic", "--frames", "1", "--labels"])
        .arg(&labels)
        .args(["--listen", "tcp/127.0.0.1:0", "--no-multicast-scouting"])
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("labels.txt") && t.contains("2 class names") && t.contains("13 classes"),
        "{t}"
    );
}
