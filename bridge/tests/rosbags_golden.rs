//! The ROS 2 encoding against the `rosbags` Python package (the golden reference): same CDR
//! bytes for every task's Image at several sizes, and the same RIHS01 type hash.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use overparam_bridge::ros2::{self, IMAGE_TYPE_HASH};
use overparam_bridge::wire::{Stamps, Task, TensorData, TensorMsg};

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

fn golden(img: &ros2::Image) -> (Vec<u8>, String) {
    golden_in(img, true)
}

fn golden_in(img: &ros2::Image, little_endian: bool) -> (Vec<u8>, String) {
    let hex: String = img.data.iter().map(|b| format!("{b:02x}")).collect();
    let req = serde_json::json!({
        "sec": img.header.stamp.sec, "nanosec": img.header.stamp.nanosec,
        "frame_id": img.header.frame_id, "height": img.height, "width": img.width,
        "encoding": img.encoding, "step": img.step, "data": hex,
        "little_endian": little_endian,
    });
    let v = helper("ros_image.py", req);
    let cdr = v["cdr"].as_str().unwrap();
    let bytes = (0..cdr.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cdr[i..i + 2], 16).unwrap())
        .collect();
    (bytes, v["hash"].as_str().unwrap().to_string())
}

#[test]
fn cdr_bytes_and_type_hash_equal_rosbags() {
    let mut rng = overparam_base::Rng::new(11);
    // Odd sizes and frame ids of every length mod 4 exercise CDR alignment after the strings.
    for (task, h, w, frame) in [
        (Task::Segmentation, 3, 5, "c"),
        (Task::Depth, 2, 3, "cam"),
        (Task::Normals, 2, 2, "cam0"),
        (Task::Depth, 288, 384, "front_camera"),
    ] {
        let ch = if task == Task::Normals { 3 } else { 1 };
        let n = h * w * ch;
        let data = if task == Task::Segmentation {
            TensorData::U8((0..n).map(|_| (rng.next_u64() % 13) as u8).collect())
        } else {
            TensorData::F32((0..n).map(|_| rng.uniform() as f32 - 0.5).collect())
        };
        let shape = if ch == 1 { vec![h, w] } else { vec![h, w, ch] };
        let msg = TensorMsg {
            stream_id: 0,
            frame_id: 1,
            task,
            stamps: Stamps {
                capture_ns: 1_732_000_000_987_654_321,
                ..Stamps::default()
            },
            shape,
            data,
        };
        let ours = ros2::encode_image(&msg, frame).unwrap();
        let img = ros2::decode_image(&ours).unwrap();
        let (theirs, hash) = golden(&img);
        assert_eq!(hash, IMAGE_TYPE_HASH);
        assert_eq!(ours.len(), theirs.len(), "{task:?} {h}x{w} {frame}");
        assert!(
            ours == theirs,
            "CDR bytes differ for {task:?} {h}x{w} {frame}"
        );
    }
}

/// Camera Images as rosbags serialises them, in both CDR byte orders, every camera encoding,
/// padded rows and frame ids of every length mod 4, parse to the fields that went in and to the
/// right RGB.
#[test]
fn rosbags_camera_images_decode_in_either_byte_order() {
    for (i, (enc, ch)) in ros2::CAMERA_ENCODINGS.into_iter().enumerate() {
        let (h, w, pad) = (3 + i, 5 + 2 * i, i % 3);
        let step = w * ch + pad;
        let img = ros2::Image {
            header: ros2::Header {
                stamp: ros2::Time {
                    sec: 1_732_000_000 + i as i32,
                    nanosec: 987_654_321,
                },
                frame_id: "camera_front"[..i % 4 + 3].to_string(),
            },
            height: h as u32,
            width: w as u32,
            encoding: enc.to_string(),
            is_bigendian: 0,
            step: step as u32,
            data: (0..h * step).map(|k| (k * 31 + i) as u8).collect(),
        };
        for le in [true, false] {
            let (bytes, _) = golden_in(&img, le);
            assert_eq!(bytes[..2], if le { [0, 1] } else { [0, 0] });
            let got = ros2::parse_image_cdr(&bytes).unwrap();
            assert_eq!(got, img, "{enc} little_endian={le}");
            let (gh, gw, rgb) = ros2::camera_rgb(&got).unwrap();
            assert_eq!((gh, gw), (h, w));
            let (y, x) = (h - 1, w - 1);
            let p = &img.data[y * step + x * ch..][..ch];
            let want = match enc {
                "rgb8" | "rgba8" => [p[0], p[1], p[2]],
                "bgr8" | "bgra8" => [p[2], p[1], p[0]],
                _ => [p[0]; 3],
            };
            let last = &rgb[(y * w + x) * 3..][..3];
            for k in 0..3 {
                assert_eq!(last[k], want[k] as f32 / 255.0, "{enc} {le} channel {k}");
            }
        }
    }
}

/// Runs `ros_msgs.py` on a job.
fn rosbags(job: serde_json::Value) -> serde_json::Value {
    helper("ros_msgs.py", job)
}

/// Runs one of `tests/python/`'s rosbags helpers on a JSON job (stdin) and returns its JSON
/// answer (stdout).
fn helper(script: &str, job: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python())
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(script),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run .venv/bin/python (scripts/setup.sh creates it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "rosbags helper {script} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every type the bridge defines hashes as rosbags hashes it, and a DiagnosticArray the bridge
/// writes (strings of every length mod 4, an empty value list) decodes in rosbags to its fields.
#[test]
fn other_types_hash_and_decode_as_rosbags_says() {
    use overparam_bridge::health::{Health, ModelInfo};
    use overparam_bridge::msgs::{self, DEFS, DiagnosticArray, DiagnosticStatus};
    let names: Vec<&str> = DEFS.iter().map(|d| d.name).collect();
    let h = Health::new(
        ModelInfo {
            model: "runs/x/int8.onnx".into(),
            precision: "int8".into(),
            runtime: "onnxruntime CPU EP".into(),
        },
        std::time::Instant::now(),
    );
    h.record(1.25, 7.5);
    let report = h.report(
        std::time::Instant::now() + std::time::Duration::from_millis(900),
        &Default::default(),
    );
    let array = DiagnosticArray {
        header: ros2::Header {
            stamp: ros2::Time {
                sec: 1_732_000_000,
                nanosec: 5,
            },
            frame_id: "abc".into(),
        },
        status: vec![
            report.to_status("overparam_bridge: cam0", "cam0"),
            DiagnosticStatus {
                level: 3,
                name: "x".into(),
                message: String::new(),
                hardware_id: "hw".into(),
                values: vec![],
            },
        ],
    };
    let cdr: String = msgs::to_cdr(&array)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let classes = msgs::Classification {
        header: ros2::Header {
            stamp: ros2::Time { sec: 7, nanosec: 8 },
            frame_id: "camera_front".into(),
        },
        results: vec![
            msgs::ObjectHypothesis {
                class_id: "281".into(),
                score: 0.75,
            },
            msgs::ObjectHypothesis {
                class_id: "3".into(),
                score: 0.125,
            },
        ],
    };
    let labels = msgs::LabelInfo {
        header: ros2::Header {
            stamp: ros2::Time { sec: 1, nanosec: 2 },
            frame_id: "camera_front".into(),
        },
        class_map: ["wall", "floor", "a chair"]
            .iter()
            .enumerate()
            .map(|(i, n)| msgs::VisionClass {
                class_id: i as u16 + 254,
                class_name: n.to_string(),
            })
            .collect(),
        threshold: 0.0,
    };
    let raw =
        msgs::Float32MultiArray::row_major(&[1, 2, 1, 3], vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.0]);
    let hex = |b: Vec<u8>| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
    let v = rosbags(serde_json::json!({
        "hashes": names,
        "decode": [
            {"type": msgs::DIAGNOSTIC_ARRAY, "cdr": cdr},
            {"type": msgs::CLASSIFICATION, "cdr": hex(msgs::to_cdr(&classes).unwrap())},
            {"type": msgs::LABEL_INFO, "cdr": hex(msgs::to_cdr(&labels).unwrap())},
            {"type": msgs::FLOAT32_MULTI_ARRAY, "cdr": hex(msgs::to_cdr(&raw).unwrap())},
        ],
    }));
    let l = &v["decoded"][2];
    assert_eq!(l["header"]["frame_id"], "camera_front");
    assert_eq!(l["class_map"][2]["class_id"], 256);
    assert_eq!(l["class_map"][2]["class_name"], "a chair");
    assert_eq!(l["class_map"].as_array().unwrap().len(), 3);
    let r = &v["decoded"][3];
    assert_eq!(
        r["data"],
        serde_json::json!([0.5, -1.0, 2.0, 3.0, 4.0, 5.0])
    );
    assert_eq!(r["layout"]["dim"][1]["label"], "c");
    assert_eq!(r["layout"]["dim"][2]["stride"], 3);
    let c = &v["decoded"][1];
    assert_eq!(c["header"]["frame_id"], "camera_front");
    assert_eq!(c["results"][0]["class_id"], "281");
    assert_eq!(c["results"][0]["score"], 0.75);
    assert_eq!(c["results"][1]["score"], 0.125);
    for n in &names {
        assert_eq!(
            v["hashes"][n].as_str().unwrap(),
            msgs::rihs01(n).unwrap(),
            "{n}"
        );
    }
    let d = &v["decoded"][0];
    assert_eq!(d["header"]["stamp"]["sec"], 1_732_000_000);
    assert_eq!(d["header"]["frame_id"], "abc");
    let st = d["status"].as_array().unwrap();
    assert_eq!(st.len(), 2);
    for (got, want) in st.iter().zip(&array.status) {
        assert_eq!(got["level"], want.level);
        assert_eq!(got["name"], want.name.as_str());
        assert_eq!(got["message"], want.message.as_str());
        assert_eq!(got["hardware_id"], want.hardware_id.as_str());
        let kv = got["values"].as_array().unwrap();
        assert_eq!(kv.len(), want.values.len());
        for (g, w) in kv.iter().zip(&want.values) {
            assert_eq!(
                (g["key"].as_str(), g["value"].as_str()),
                (Some(w.key.as_str()), Some(w.value.as_str()))
            );
        }
    }
    assert!(
        st[0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv["key"] == "pipeline_latency_ms_max" && kv["value"] == "7.500"),
        "{d}"
    );
}
