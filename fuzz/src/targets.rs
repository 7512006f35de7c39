//! One target per parser of outside bytes. A target returns `Ok(())` or the parser's error
//! message; it panics only on a bug: a parser panic, or a broken round-trip invariant.

use std::path::Path;

use overparam_fuse::checkpoint;
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::shared_heads_example;
use overparam_fuse::{AnySpec, fold};

pub type Outcome = Result<(), String>;

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Bias mutations into the first bytes of an input (the header).
    pub header: fn(&[u8]) -> usize,
    /// Token-level (JSON/TOML) mutations as well.
    pub text: bool,
}

fn whole(b: &[u8]) -> usize {
    b.len()
}

pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "checkpoint",
            run: checkpoint_target,
            seeds: checkpoint_seeds,
            header: safetensors_header,
            text: false,
        },
        Target {
            name: "spec-json",
            run: spec_target,
            seeds: spec_seeds,
            header: whole,
            text: true,
        },
        Target {
            name: "cifar",
            run: cifar_target,
            seeds: cifar_seeds,
            header: |_| 2,
            text: false,
        },
        Target {
            name: "npy",
            run: npy_target,
            seeds: npy_seeds,
            header: |b| b.len().min(128),
            text: false,
        },
        Target {
            name: "idx",
            run: idx_target,
            seeds: idx_seeds,
            header: |b| b.len().min(24),
            text: false,
        },
        Target {
            name: "wire",
            run: wire_target,
            seeds: wire_seeds,
            header: |_| overparam_bridge::wire::HEADER_LEN,
            text: false,
        },
        Target {
            name: "cdr",
            run: cdr_target,
            seeds: cdr_seeds,
            header: |_| 64,
            text: false,
        },
        Target {
            name: "ros2-camera",
            run: camera_target,
            seeds: camera_seeds,
            header: |_| 64,
            text: false,
        },
        Target {
            name: "config",
            run: config_target,
            seeds: config_seeds,
            header: whole,
            text: true,
        },
    ]
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

// ---- checkpoint: safetensors header + the spec metadata, then layout checks -------------

fn safetensors_header(b: &[u8]) -> usize {
    let n = b
        .get(..8)
        .map(|h| u64::from_le_bytes(h.try_into().expect("8")) as usize)
        .unwrap_or(0);
    (8 + n).min(b.len())
}

fn toy() -> (
    AnySpec,
    AnySpec,
    overparam_fuse::Weights,
    overparam_fuse::Weights,
) {
    let spec = shared_heads_example();
    let w = init_train_weights(
        &spec,
        &InitOptions {
            seed: 1,
            random_bn: true,
        },
    )
    .expect("toy weights");
    let (d, dw) = fold(&spec, &w).expect("toy fold");
    (AnySpec::Train(spec), AnySpec::Deploy(d), w, dw)
}

fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let (t, d, w, dw) = toy();
    vec![
        checkpoint::to_bytes(&t, &w).expect("seed"),
        checkpoint::to_bytes(&d, &dw).expect("seed"),
    ]
}

fn checkpoint_target(b: &[u8]) -> Outcome {
    let ck = checkpoint::from_bytes(Path::new("fuzz.safetensors"), b).map_err(err)?;
    // Whatever loads must save and load back to the same thing.
    let again = checkpoint::to_bytes(&ck.spec, &ck.weights).expect("a loaded checkpoint saves");
    let back =
        checkpoint::from_bytes(Path::new("again"), &again).expect("a saved checkpoint loads");
    assert_eq!(back.spec, ck.spec, "spec round trip");
    for (k, v) in &ck.weights {
        let u = &back.weights[k];
        assert_eq!(u.shape, v.shape, "{k} shape round trip");
        assert!(
            u.data
                .iter()
                .zip(&v.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{k} data"
        );
    }
    Ok(())
}

// ---- spec JSON ---------------------------------------------------------------------------

fn spec_seeds() -> Vec<Vec<u8>> {
    let (t, d, _, _) = toy();
    vec![
        serde_json::to_vec(&t).expect("json"),
        serde_json::to_vec(&d).expect("json"),
    ]
}

fn spec_target(b: &[u8]) -> Outcome {
    let spec: AnySpec = serde_json::from_slice(b).map_err(err)?;
    spec.layout().map_err(err)?;
    overparam_fuse::inspect::summarize(&spec).map_err(err)?;
    Ok(())
}

// ---- CIFAR binary records ----------------------------------------------------------------

fn cifar_seeds() -> Vec<Vec<u8>> {
    let set = overparam_data::synth::image_set(2, 3, "train");
    let mut c100 = vec![];
    for i in 0..set.len() {
        c100.push(1u8);
        c100.push(set.labels[i] as u8);
        c100.extend_from_slice(set.image(i));
    }
    let mut c10 = vec![3u8];
    c10.extend_from_slice(set.image(0));
    vec![c100, c10]
}

fn cifar_target(b: &[u8]) -> Outcome {
    use overparam_data::cifar::{CifarKind, parse};
    let p = Path::new("fuzz.bin");
    let a = parse(p, b, CifarKind::Cifar100);
    let c = parse(p, b, CifarKind::Cifar10);
    if let Ok(s) = &a {
        assert_eq!(s.len() * (3072 + 2), b.len());
        assert!(s.labels.iter().all(|&l| l < 100));
    }
    a.or(c).map(|_| ()).map_err(err)
}

// ---- .npy --------------------------------------------------------------------------------

fn npy_seeds() -> Vec<Vec<u8>> {
    use overparam_data::npy::to_bytes;
    vec![
        to_bytes(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
        to_bytes(&[1, 2, 1], &[7.5, -1.0]),
        to_bytes(&[4], &[1.0; 4]),
    ]
}

fn npy_target(b: &[u8]) -> Outcome {
    let a = overparam_data::npy::parse(Path::new("fuzz.npy"), b).map_err(err)?;
    let n: usize = a.shape.iter().product();
    assert_eq!(n, a.data.len(), "shape and data agree");
    let again = overparam_data::npy::to_bytes(&a.shape, &a.data);
    let back = overparam_data::npy::parse(Path::new("again"), &again).expect("written npy parses");
    assert_eq!(back.shape, a.shape);
    Ok(())
}

// ---- IDX (MNIST family), raw and gzip ------------------------------------------------------

fn idx_seeds() -> Vec<Vec<u8>> {
    use overparam_data::idx::{gzip, synthetic_set, to_bytes};
    let set = synthetic_set(2, 6, 10, 3, "train");
    let labels: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
    vec![
        to_bytes(&[2, 6, 6], &set.images),
        to_bytes(&[2], &labels),
        gzip(&to_bytes(&[2], &labels)),
    ]
}

fn idx_target(b: &[u8]) -> Outcome {
    use overparam_data::idx::{parse, to_bytes};
    let a = parse(Path::new("fuzz-idx"), b).map_err(err)?;
    assert_eq!(
        a.dims.iter().product::<usize>(),
        a.data.len(),
        "dims and data agree"
    );
    if a.dims.len() == 1 {
        // As a label file it must then join a matching image file or name the bad label.
        let n = a.dims[0];
        let images = overparam_data::idx::IdxArray {
            dims: vec![n, 1, 1],
            data: vec![0; n],
        };
        let p = Path::new("fuzz-idx");
        if let Ok(s) = overparam_data::idx::image_set(p, images, p, a.clone(), 10) {
            assert!(s.labels.iter().all(|&l| l < 10));
        }
    }
    let back = parse(Path::new("again"), &to_bytes(&a.dims, &a.data)).expect("written IDX parses");
    assert_eq!(back, a);
    Ok(())
}

// ---- the bridge's native wire format -------------------------------------------------------

fn wire_seeds() -> Vec<Vec<u8>> {
    use overparam_bridge::wire::{Stamps, Task, TensorData, TensorMsg, encode};
    let m = |task, shape: Vec<usize>, data| TensorMsg {
        stream_id: 9,
        frame_id: 3,
        task,
        stamps: Stamps {
            capture_ns: 1,
            infer_start_ns: 2,
            infer_end_ns: 3,
            publish_ns: 4,
        },
        shape,
        data,
    };
    vec![
        encode(&m(
            Task::Segmentation,
            vec![2, 3],
            TensorData::U8(vec![1, 2, 3, 4, 5, 6]),
        ))
        .expect("seed"),
        encode(&m(
            Task::Normals,
            vec![1, 2, 3],
            TensorData::F32(vec![0.5; 6]),
        ))
        .expect("seed"),
    ]
}

fn wire_target(b: &[u8]) -> Outcome {
    use overparam_bridge::wire::{decode, decode_header, encode};
    // Validation in place accepts exactly what the full decoder accepts.
    let h = decode_header(b);
    let m = match decode(b) {
        Ok(m) => m,
        Err(e) => {
            assert!(
                h.is_err(),
                "decode_header accepted what decode refused: {e}"
            );
            return Err(err(e));
        }
    };
    let h = h.expect("decode accepted, so must decode_header");
    assert_eq!(
        (h.frame_id, &h.shape, h.task),
        (m.frame_id, &m.shape, m.task)
    );
    // The format is canonical: what decodes re-encodes to the same bytes.
    assert_eq!(
        encode(&m).expect("a decoded message encodes"),
        b,
        "wire round trip"
    );
    Ok(())
}

// ---- ROS 2 CDR Image + rmw_zenoh attachment ------------------------------------------------

fn cdr_seeds() -> Vec<Vec<u8>> {
    use overparam_bridge::ros2::encode_image;
    use overparam_bridge::wire::{Stamps, Task, TensorData, TensorMsg};
    let m = |task, shape: Vec<usize>, data| TensorMsg {
        stream_id: 0,
        frame_id: 0,
        task,
        stamps: Stamps {
            capture_ns: 1_700_000_000_000_000_001,
            ..Stamps::default()
        },
        shape,
        data,
    };
    vec![
        encode_image(
            &m(
                Task::Segmentation,
                vec![2, 3],
                TensorData::U8(vec![0, 1, 2, 3, 4, 5]),
            ),
            "cam0",
        )
        .expect("seed"),
        encode_image(
            &m(Task::Depth, vec![1, 2], TensorData::F32(vec![1.0, 2.0])),
            "c",
        )
        .expect("seed"),
        encode_image(
            &m(
                Task::Normals,
                vec![1, 1, 3],
                TensorData::F32(vec![0.0, 0.0, 1.0]),
            ),
            "front",
        )
        .expect("seed"),
    ]
}

fn cdr_target(b: &[u8]) -> Outcome {
    use overparam_bridge::ros2::{decode_image, image_to_tensor, parse_attachment};
    let _ = parse_attachment(&b[..b.len().min(33)]);
    let img = decode_image(b).map_err(err)?;
    let (_, shape, data) = image_to_tensor(&img).map_err(err)?;
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "image shape and data agree"
    );
    Ok(())
}

// ---- training config TOML ----------------------------------------------------------------

fn config_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../configs/demo.toml").to_vec(),
        include_bytes!("../../configs/proxy_cifar_sfo_r3.toml").to_vec(),
        include_bytes!("../../configs/nyuv2_stl_depth.toml").to_vec(),
        include_bytes!("../../configs/fashion_mnist_vgg_small.toml").to_vec(),
    ]
}

fn config_target(b: &[u8]) -> Outcome {
    use overparam_config::TrainConfig;
    let text = std::str::from_utf8(b).map_err(err)?;
    let c = TrainConfig::parse(text, Path::new("fuzz.toml"), &[]).map_err(err)?;
    let back = TrainConfig::parse(&c.to_toml(), Path::new("again.toml"), &[])
        .expect("a written config parses");
    // NaN never equals itself; compare the serialised forms.
    assert_eq!(back.to_toml(), c.to_toml(), "config round trip");
    Ok(())
}

// ---- ros2-camera: a camera's sensor_msgs/Image CDR (either byte order) → RGB ---------------

/// Small camera Images in every accepted encoding, padded rows, both CDR byte orders.
fn camera_seeds() -> Vec<Vec<u8>> {
    use overparam_bridge::ros2::{CAMERA_ENCODINGS, Header, Image, Time, serialize_image};
    let mut out = vec![];
    for (i, (enc, ch)) in CAMERA_ENCODINGS.iter().enumerate() {
        let (h, w, pad) = (2 + i % 2, 3, i % 3);
        let step = w * ch + pad;
        let img = Image {
            header: Header {
                stamp: Time {
                    sec: 1_700_000_000 + i as i32,
                    nanosec: 123,
                },
                frame_id: "cam"[..i % 4].to_string(),
            },
            height: h as u32,
            width: w as u32,
            encoding: enc.to_string(),
            is_bigendian: 0,
            step: step as u32,
            data: (0..h * step).map(|k| (k * 37) as u8).collect(),
        };
        out.push(serialize_image(&img, true).expect("seed"));
        if i % 2 == 0 {
            out.push(serialize_image(&img, false).expect("seed"));
        }
    }
    out
}

fn camera_target(b: &[u8]) -> Outcome {
    use overparam_bridge::ros2::{camera_rgb, parse_image_cdr};
    let img = parse_image_cdr(b).map_err(err)?;
    let (h, w, rgb) = camera_rgb(&img).map_err(err)?;
    assert_eq!(rgb.len(), h * w * 3, "camera RGB has H×W×3 values");
    assert!(
        rgb.iter().all(|v| (0.0..=1.0).contains(v)),
        "camera RGB lies in [0, 1]"
    );
    Ok(())
}
