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
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/ros_image.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run .venv/bin/python (scripts/setup.sh creates it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "rosbags helper failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
