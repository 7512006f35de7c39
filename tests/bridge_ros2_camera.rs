//! `overparam bridge run --source ros2:TOPIC` against an independent ROS 2 camera: a Python
//! process (rosbags' CDR serializer and type hash, the eclipse-zenoh binding, rmw_zenoh's key and
//! attachment layout written from its sources; `bridge/tests/python/ros_camera.py`) publishes
//! `sensor_msgs/Image` frames with known stamps and reads the bridge's ROS 2 outputs back with
//! rosbags. Loopback only, multicast scouting off.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Output};

use serde_json::{Value, json};

mod common;
use common::{bin, deploy_mtl, ok, ros_camera as camera};

/// The camera's final JSON report.
fn report(mut child: Child, mut out: BufReader<std::process::ChildStdout>) -> Value {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success(), "camera failed: {line}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn bridge(model: &Path, ep: &str, domain: u32, frames: u64) -> Output {
    bridge_with(model, ep, domain, frames, &[])
}

fn bridge_with(model: &Path, ep: &str, domain: u32, frames: u64, extra: &[&str]) -> Output {
    bin()
        .args(["bridge", "run", "--model"])
        .arg(model)
        .args(["--source", "ros2:/camera/image_raw", "--ros2"])
        .args(["--domain-id", &domain.to_string(), "--threads", "1"])
        .args(["--frames", &frames.to_string(), "--connect", ep])
        .arg("--no-multicast-scouting")
        .args(extra)
        .output()
        .unwrap()
}

fn stamp(v: &Value) -> (i64, i64) {
    (v["sec"].as_i64().unwrap(), v["nanosec"].as_i64().unwrap())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Acceptance: 640×480 rgb8 at 30 Hz in, ROS 2 outputs whose header (stamp and frame_id) is
/// the camera frame's; the subscription is visible as an rmw_zenoh `MS` token; camera-to-output
/// latency is reported; received = processed + skipped (+ at most the one waiting at the end);
/// `/diagnostics` carries the health of a window of frames, decoded by rosbags.
#[test]
fn ros2_camera_frames_in_outputs_with_their_stamps_out() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let ep = format!(
        "tcp/127.0.0.1:{}",
        overparam_bridge::session::free_port().unwrap()
    );
    // More than a second of frames at 30 Hz, so a health window closes while they flow.
    let want = 40;
    let (child, out) = camera(&json!({
        "endpoint": ep, "domain": 7, "topic": "/camera/image_raw",
        "outputs": "7/perception/cam0/**/sensor_msgs::msg::dds_::Image_/*",
        "frames": [{"encoding": "rgb8", "height": 480, "width": 640}],
        "mode": "stream", "rate": 30.0, "want": want, "tasks": 4, "timeout": 60,
    }));
    let run = bridge(&m, &ep, 7, want);
    let r = report(child, out);
    let text = ok(&run);
    assert!(text.contains(&format!("published {want} frames")), "{text}");

    let published: std::collections::HashMap<(i64, i64), &Value> = r["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (stamp(p), p))
        .collect();
    let outputs = r["outputs"].as_array().unwrap();
    let mut per_frame: std::collections::BTreeMap<(i64, i64), Vec<&str>> = Default::default();
    let mut latency_ms = vec![];
    for o in outputs {
        let s = stamp(o);
        let p = published
            .get(&s)
            .unwrap_or_else(|| panic!("an output stamped {s:?}, which no camera frame had: {o}"));
        assert_eq!(o["frame_id"], "camera_front", "{o}");
        assert_eq!(o["attachment_len"], 33, "{o}");
        assert_eq!(
            (o["height"].as_u64(), o["width"].as_u64()),
            (Some(48), Some(64))
        );
        per_frame
            .entry(s)
            .or_default()
            .push(o["encoding"].as_str().unwrap());
        latency_ms
            .push((o["recv_ns"].as_i64().unwrap() - p["pub_ns"].as_i64().unwrap()) as f64 / 1e6);
    }
    assert_eq!(
        per_frame.len(),
        want as usize,
        "frames with outputs: {per_frame:?}"
    );
    for (s, encs) in &per_frame {
        let mut e = encs.clone();
        e.sort();
        assert_eq!(e, ["32FC1", "32FC3", "mono8", "rgb8"], "{s:?}");
    }
    assert!(latency_ms.iter().all(|&l| l > 0.0));
    let (p50, p99) = (
        percentile(&mut latency_ms, 50.0),
        percentile(&mut latency_ms, 99.0),
    );
    eprintln!(
        "camera (640×480 rgb8, 30 Hz) → bridge (resize to 48×64, model, 3 ROS 2 outputs) → camera process: latency p50 {p50:.2} ms, p99 {p99:.2} ms over {} outputs",
        latency_ms.len()
    );

    // The counts the bridge prints add up.
    let line = text
        .lines()
        .find(|l| l.starts_with("camera input:"))
        .unwrap_or_else(|| panic!("no camera input line: {text}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    let [received, skipped, refused] = nums[..] else {
        panic!("{line}")
    };
    assert_eq!(refused, 0, "{line}");
    assert!(
        want + skipped <= received && received <= want + skipped + 1,
        "{line}"
    );
    // Health every second, as rqt_runtime_monitor reads it.
    let diags = r["diagnostics"].as_array().unwrap();
    let flowing: Vec<&Value> = diags
        .iter()
        .map(|d| &d["status"][0])
        .filter(|s| s["level"] == 0)
        .collect();
    assert!(!flowing.is_empty(), "no OK health report: {diags:#?}");
    for s in &flowing {
        assert_eq!(s["name"], "overparam_bridge: cam0", "{s}");
        let v = &s["values"];
        let num = |k: &str| -> f64 {
            v[k].as_str()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("{k}: {s}"))
        };
        assert!(
            num("output_hz") > 0.0 && num("input_hz") >= num("output_hz"),
            "{s}"
        );
        assert!(
            num("pipeline_latency_ms_max") >= num("pipeline_latency_ms_p50")
                && num("pipeline_latency_ms_p50") > 0.0,
            "{s}"
        );
        assert!(num("processing_time_ms_p50") > 0.0, "{s}");
        assert_eq!(v["precision"], "fp32", "{s}");
        assert_eq!(v["frames_refused"], "0", "{s}");
        assert!(
            v["model"].as_str().unwrap().ends_with(".safetensors"),
            "{s}"
        );
    }
    assert!(
        diags.iter().all(|d| d["attachment_len"] == 33),
        "{diags:#?}"
    );

    // ros2 topic info would list the subscription: rmw_zenoh's MS token on the topic.
    let tokens: Vec<&str> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tokens.iter().any(|t| t.starts_with("@ros2_lv/7/")
            && t.contains("/MS/")
            && t.contains("/%camera%image_raw/sensor_msgs::msg::dds_::Image_/RIHS01_")),
        "{tokens:?}"
    );
}

/// Every supported encoding at odd sizes and padded rows gives outputs stamped as its frame;
/// unsupported encodings, broken CDR, a data field shorter than step × height and a sample
/// without rmw_zenoh's attachment give none, are counted, and each kind is reported once.
#[test]
fn ros2_camera_encodings_and_bad_frames() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let ep = format!(
        "tcp/127.0.0.1:{}",
        overparam_bridge::session::free_port().unwrap()
    );
    let good = |enc: &str, h: u32, w: u32, pad: u32, frame_id: &str| json!({"encoding": enc, "height": h, "width": w, "pad": pad, "frame_id": frame_id});
    let bad = |enc: &str, corrupt: Option<&str>| json!({"encoding": enc, "height": 4, "width": 6, "corrupt": corrupt, "expect_output": false});
    let frames = vec![
        good("rgb8", 480, 640, 0, "cam_rgb"),
        bad("yuv422", None),
        good("bgr8", 33, 21, 5, "c"),
        bad("16UC1", None),
        good("rgba8", 48, 64, 0, "cam"),
        bad("yuv422", None),
        bad("rgb8", Some("truncated")),
        good("bgra8", 7, 300, 3, "optical_frame"),
        bad("rgb8", Some("short_data")),
        bad("mono8", Some("no_attachment")),
        good("mono8", 1, 1, 0, ""),
        good("mono8", 1080, 1920, 0, "front_wide"),
    ];
    let n_good = frames
        .iter()
        .filter(|f| f["expect_output"].is_null())
        .count();
    let (child, out) = camera(&json!({
        "endpoint": ep, "domain": 0, "topic": "/camera/image_raw",
        "outputs": "0/perception/cam0/**/sensor_msgs::msg::dds_::Image_/*",
        "frames": frames, "mode": "paced", "settle": 0.3, "tasks": 4, "timeout": 60,
    }));
    let run = bridge(&m, &ep, 0, n_good as u64);
    let r = report(child, out);
    let text = ok(&run);
    assert!(
        text.contains(&format!("published {n_good} frames")),
        "{text}"
    );
    assert!(
        text.contains(&format!("received {}", frames.len())) && text.contains("refused 6"),
        "{text}"
    );
    let outputs = r["outputs"].as_array().unwrap();
    for p in r["published"].as_array().unwrap() {
        let mine: Vec<&Value> = outputs.iter().filter(|o| stamp(o) == stamp(p)).collect();
        let expected = if p["corrupt"].is_null()
            && ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]
                .contains(&p["encoding"].as_str().unwrap())
        {
            4
        } else {
            0
        };
        assert_eq!(mine.len(), expected, "{p}");
        for o in mine {
            assert_eq!(o["frame_id"], p["frame_id"], "{o}");
        }
    }
    // Each kind of refusal is printed once, then only counted.
    let stderr = String::from_utf8_lossy(&run.stderr);
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("refused a frame"))
        .collect();
    assert_eq!(refusals.len(), 5, "{refusals:#?}");
    for needle in [
        "\"yuv422\" is not supported",
        "\"16UC1\"",
        "CDR",
        "attachment",
        "need",
    ] {
        assert_eq!(
            refusals.iter().filter(|l| l.contains(needle)).count(),
            1,
            "{needle}: {refusals:#?}"
        );
    }
}

/// A camera that publishes its calibration on `camera_info` beside the image: every frame's
/// outputs come with a CameraInfo scaled to the outputs' resolution (image_proc's resize rule),
/// stamped as the frame, decoded by rosbags.
#[test]
fn camera_info_is_republished_scaled_with_the_frame_stamp() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let ep = format!(
        "tcp/127.0.0.1:{}",
        overparam_bridge::session::free_port().unwrap()
    );
    let frames: Vec<Value> = (0..3)
        .map(|_| json!({"encoding": "rgb8", "height": 480, "width": 640}))
        .collect();
    let (child, out) = camera(&json!({
        "endpoint": ep, "domain": 5, "topic": "/camera/image_raw",
        "outputs": "5/perception/cam0/**/sensor_msgs::msg::dds_::Image_/*",
        "camera_info": {"fx": 500.0, "fy": 480.0, "cx": 320.0, "cy": 240.0, "height": 480, "width": 640},
        "camera_info_out": "5/perception/cam0/camera_info/sensor_msgs::msg::dds_::CameraInfo_/*",
        "frames": frames, "mode": "paced", "tasks": 4, "timeout": 60,
    }));
    let run = bridge(&m, &ep, 5, 3);
    let r = report(child, out);
    ok(&run);
    let infos = r["camera_infos"].as_array().unwrap();
    let published: Vec<(i64, i64)> = r["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(stamp)
        .collect();
    assert_eq!(infos.len(), 3, "{infos:#?}");
    for i in infos {
        assert!(
            published.contains(&stamp(i)),
            "a CameraInfo stamped as no frame: {i}"
        );
        assert_eq!(i["frame_id"], "camera_front");
        // The model's outputs are 48×64: one tenth of 480×640.
        assert_eq!(
            (i["height"].as_u64(), i["width"].as_u64()),
            (Some(48), Some(64))
        );
        let k: Vec<f64> = i["k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            near(k[0], 50.0) && near(k[2], 32.0) && near(k[4], 48.0) && near(k[5], 24.0),
            "{k:?}"
        );
        assert_eq!(i["distortion_model"], "plumb_bob");
        assert_eq!(i["d"][0], 0.1);
    }
}

/// The roles beyond images, read by the independent subscriber: an output given the role raw
/// arrives as a `std_msgs/Float32MultiArray` with its NCHW layout and rmw_zenoh's attachment,
/// and the class names (`--labels`) as a `vision_msgs/LabelInfo` that a subscriber joining
/// after they were published still gets (transient local, from the publisher's cache), both
/// decoded by rosbags.
#[test]
fn raw_outputs_and_class_names_reach_a_late_ros2_subscriber() {
    let d = tempfile::tempdir().unwrap();
    let m = deploy_mtl(d.path());
    let names: Vec<String> = (0..overparam_data::nyuv2::CLASSES)
        .map(|i| format!("nyu class {i}"))
        .collect();
    let labels = d.path().join("labels.txt");
    std::fs::write(&labels, names.join("\n") + "\n").unwrap();
    let ep = format!(
        "tcp/127.0.0.1:{}",
        overparam_bridge::session::free_port().unwrap()
    );
    let frames: Vec<Value> = (0..3)
        .map(|_| json!({"encoding": "rgb8", "height": 48, "width": 64}))
        .collect();
    let (child, out) = camera(&json!({
        "endpoint": ep, "domain": 6, "topic": "/camera/image_raw",
        "outputs": "6/perception/cam0/**/sensor_msgs::msg::dds_::Image_/*",
        "typed": [{"key": "6/perception/cam0/raw/depth/std_msgs::msg::dds_::Float32MultiArray_/*",
                   "type": "std_msgs/msg/Float32MultiArray"}],
        "label_info": "6/perception/cam0/label_info/vision_msgs::msg::dds_::LabelInfo_/*",
        // The class map, its colour map and normals are images; depth is raw.
        "frames": frames, "mode": "paced", "tasks": 3, "timeout": 60,
    }));
    let run = bridge_with(
        &m,
        &ep,
        6,
        3,
        &[
            "--output",
            "depth=raw",
            "--labels",
            labels.to_str().unwrap(),
        ],
    );
    let r = report(child, out);
    let t = ok(&run);
    assert!(t.contains("depth as raw tensors"), "{t}");
    let images: Vec<&str> = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["encoding"].as_str().unwrap())
        .collect();
    assert!(
        !images.contains(&"32FC1"),
        "depth is raw, not an image: {images:?}"
    );
    assert_eq!(images.len(), 9, "{images:?}");
    let raw = r["typed"].as_array().unwrap();
    assert_eq!(raw.len(), 3, "{raw:#?}");
    for msg in raw {
        assert_eq!(msg["attachment_len"], 33);
        let dims: Vec<(String, u64, u64)> = msg["msg"]["layout"]["dim"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["label"].as_str().unwrap().to_string(),
                    d["size"].as_u64().unwrap(),
                    d["stride"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, u64, u64)> = [
            ("n", 1, 3072),
            ("c", 1, 3072),
            ("h", 48, 3072),
            ("w", 64, 64),
        ]
        .iter()
        .map(|&(l, s, st)| (l.to_string(), s, st))
        .collect();
        assert_eq!(dims, want);
        assert_eq!(msg["msg"]["data"].as_array().unwrap().len(), 48 * 64);
    }
    let li = r["label_info"].as_array().unwrap();
    assert!(!li.is_empty(), "the late subscriber got no LabelInfo: {r}");
    let map = li[0]["class_map"].as_array().unwrap();
    let got: Vec<(u64, &str)> = map
        .iter()
        .map(|c| {
            (
                c["class_id"].as_u64().unwrap(),
                c["class_name"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u64, n.as_str()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(li[0]["header"]["frame_id"], "cam0");
}
