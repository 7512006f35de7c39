//! Loopback round trips (explicit endpoints, multicast off, every wait bounded).

use std::time::{Duration, Instant};

use overparam_bridge::listener::{Event, ListenConfig, Listener};
use overparam_bridge::publisher::{FrameOutputs, PerceptionPublisher, PublishConfig};
use overparam_bridge::ros2::Ros2Names;
use overparam_bridge::session::{ZenohOptions, free_port, now_ns};
use overparam_bridge::wire::{Stamps, Task, TensorData};
use zenoh::Wait;

const H: usize = 288;
const W: usize = 384;
const WAIT: Duration = Duration::from_secs(10);

fn frame(id: u64) -> FrameOutputs {
    let mut rng = overparam_base::Rng::new(id + 1);
    let seg: Vec<u8> = (0..H * W).map(|_| (rng.next_u64() % 13) as u8).collect();
    let depth: Vec<f32> = (0..H * W).map(|_| rng.uniform() as f32 * 10.0).collect();
    let normals: Vec<f32> = (0..H * W * 3)
        .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
        .collect();
    let t = now_ns();
    FrameOutputs {
        frame_id: id,
        header: None,
        camera_info: None,
        stamps: Stamps {
            capture_ns: t,
            infer_start_ns: t,
            infer_end_ns: t,
            publish_ns: 0,
        },
        tensors: vec![
            (Task::Segmentation, vec![H, W], TensorData::U8(seg)),
            (Task::Depth, vec![H, W], TensorData::F32(depth)),
            (Task::Normals, vec![H, W, 3], TensorData::F32(normals)),
        ],
    }
}

/// Receives until `n` messages arrived or the deadline passed.
fn collect(l: &mut Listener, n: usize) -> Vec<(String, overparam_bridge::wire::TensorMsg)> {
    let t0 = Instant::now();
    let mut got = vec![];
    while got.len() < n && t0.elapsed() < WAIT {
        if let Some(Event::Message { key, msg }) = l.recv(Duration::from_millis(200)).unwrap() {
            got.push((key, msg));
        }
    }
    got
}

fn pair() -> (zenoh::Session, zenoh::Session) {
    let port = free_port().unwrap();
    let sub = ZenohOptions::loopback(Some(port), None).open().unwrap();
    let publ = ZenohOptions::loopback(None, Some(port)).open().unwrap();
    (sub, publ)
}

#[test]
fn native_round_trip_at_288x384_is_exact() {
    let (s_sub, s_pub) = pair();
    let mut l = Listener::new(&s_sub, ListenConfig::native("op")).unwrap();
    let mut cfg = PublishConfig::native("op", "cam0");
    cfg.status = false;
    let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
    assert!(p.wait_for_subscribers(WAIT).unwrap());
    let frames: Vec<FrameOutputs> = (0..3).map(frame).collect();
    for f in &frames {
        p.publish(f).unwrap();
    }
    let got = collect(&mut l, 9);
    assert_eq!(got.len(), 9);
    for (key, m) in got {
        let f = &frames[m.frame_id as usize];
        let (task, shape, data) = f.tensors.iter().find(|(t, ..)| *t == m.task).unwrap();
        assert_eq!(key, format!("op/cam0/{}", task.name()));
        assert_eq!(&m.shape, shape);
        assert_eq!(&m.data, data);
        assert_eq!(m.stamps.capture_ns, f.stamps.capture_ns);
        assert!(m.stamps.publish_ns >= m.stamps.capture_ns);
    }
    let c = l.counters();
    assert_eq!((c.received, c.dropped, c.decode_errors), (9, 0, 0));
    assert_eq!(p.counters().snapshot().sent, 9);
    assert_eq!(p.counters().snapshot().sent_unmatched, 0);
}

#[test]
fn ros2_round_trip_at_288x384_is_exact() {
    let (s_sub, s_pub) = pair();
    let names = Ros2Names::new(3, "/perception", "overparam");
    let mut l = Listener::new(&s_sub, ListenConfig::ros2(&names)).unwrap();
    let mut cfg = PublishConfig::native("op", "cam0");
    cfg.ros2 = Some(names.clone());
    cfg.status = false;
    let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
    // The node and publisher liveliness tokens are visible to other sessions.
    let t0 = Instant::now();
    let tokens = loop {
        let replies = s_sub
            .liveliness()
            .get("@ros2_lv/3/**")
            .timeout(Duration::from_secs(2))
            .wait()
            .unwrap();
        let mut keys = vec![];
        while let Ok(r) = replies.recv() {
            if let Ok(s) = r.result() {
                keys.push(s.key_expr().to_string());
            }
        }
        if keys.len() >= 4 || t0.elapsed() > WAIT {
            break keys;
        }
    };
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert!(
        tokens
            .iter()
            .any(|k| k.contains("/NN/%/%perception/overparam"))
    );
    assert!(p.wait_for_subscribers(WAIT).unwrap());
    let frames: Vec<FrameOutputs> = (0..2).map(frame).collect();
    for f in &frames {
        p.publish(f).unwrap();
    }
    let got = collect(&mut l, 6);
    assert_eq!(got.len(), 6);
    for (key, m) in got {
        assert!(key.starts_with("3/perception/cam0/"), "{key}");
        assert!(key.ends_with(overparam_bridge::ros2::IMAGE_TYPE_HASH));
        let f = &frames[m.frame_id as usize];
        let (_, shape, data) = f.tensors.iter().find(|(t, ..)| *t == m.task).unwrap();
        assert_eq!(&m.shape, shape);
        assert_eq!(&m.data, data);
        assert_eq!(m.stamps.capture_ns, f.stamps.capture_ns);
    }
    assert_eq!(l.counters().decode_errors, 0);
}

/// Both listener modes (tensors copied out, or validated in place) count bad payloads alike.
#[test]
fn garbage_truncated_and_wrong_version_are_counted() {
    for payloads in [true, false] {
        garbage_counted(payloads);
    }
}

fn garbage_counted(payloads: bool) {
    let (s_sub, s_pub) = pair();
    let mut cfg = ListenConfig::native("op");
    cfg.payloads = payloads;
    let mut l = Listener::new(&s_sub, cfg).unwrap();
    let mut cfg = PublishConfig::native("op", "cam0");
    cfg.status = false;
    let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
    assert!(p.wait_for_subscribers(WAIT).unwrap());
    let good = {
        let f = frame(0);
        let (task, shape, data) = f.tensors[1].clone();
        overparam_bridge::wire::encode(&overparam_bridge::wire::TensorMsg {
            stream_id: 1,
            frame_id: 0,
            task,
            stamps: f.stamps,
            shape,
            data,
        })
        .unwrap()
    };
    let mut wrong_version = good.clone();
    wrong_version[4] = 9;
    let bad: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        vec![],
        good[..good.len() / 2].to_vec(),
        wrong_version,
    ];
    let raw = s_pub
        .declare_publisher("op/cam0/depth")
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()
        .unwrap();
    for b in &bad {
        raw.put(b.clone()).wait().unwrap();
    }
    raw.put(good).wait().unwrap();
    let t0 = Instant::now();
    let mut invalid = vec![];
    let mut ok = 0;
    while invalid.len() + ok < bad.len() + 1 && t0.elapsed() < WAIT {
        match l.recv(Duration::from_millis(200)).unwrap() {
            Some(Event::Invalid { error, .. }) => invalid.push(error.to_string()),
            Some(Event::Message { msg, .. }) => {
                assert!(payloads);
                assert_eq!(msg.frame_id, 0);
                ok += 1
            }
            Some(Event::Header { header, .. }) => {
                assert!(!payloads);
                assert_eq!((header.stream_id, header.frame_id), (1, 0));
                ok += 1
            }
            _ => {}
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(invalid.len(), 4, "{invalid:?}");
    assert!(
        invalid.iter().any(|e| e.contains("version 9")),
        "{invalid:?}"
    );
    assert_eq!(l.counters().decode_errors, 4);
    assert_eq!(l.counters().received, 1);
}

/// Natively, the health windows go out as JSON on `<prefix>/<camera>/health` every period, the
/// status message carries the latest, and a window without frames is stale.
#[test]
fn native_health_reports_follow_the_frames() {
    use overparam_bridge::health::{HealthReport, Level, ModelInfo};
    let (s_sub, s_pub) = pair();
    let health = s_sub.declare_subscriber("op/cam0/health").wait().unwrap();
    let status = s_sub.declare_subscriber("op/cam0/status").wait().unwrap();
    // The outputs need a subscriber too, for the publisher's wait below.
    let _outputs = s_sub
        .declare_subscriber("op/cam0/*")
        .callback(|_| {})
        .wait()
        .unwrap();
    // `bridge listen` on the same prefix takes the health JSON as a side topic, not as a
    // broken tensor.
    let mut listener = Listener::new(&s_sub, ListenConfig::native("op")).unwrap();
    let mut cfg = PublishConfig::native("op", "cam0");
    cfg.health = Some(ModelInfo {
        model: "m.onnx".into(),
        precision: "fp32".into(),
        runtime: "test".into(),
    });
    cfg.health_period = Duration::from_millis(50);
    let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
    assert!(p.wait_for_subscribers(WAIT).unwrap());
    let json = |s: zenoh::sample::Sample| -> serde_json::Value {
        serde_json::from_slice(&s.payload().to_bytes()).unwrap()
    };
    // Frames until a window with them has come back.
    let t0 = Instant::now();
    let mut id = 0;
    let seen = loop {
        assert!(t0.elapsed() < WAIT, "no health report with frames");
        p.publish(&frame(id)).unwrap();
        id += 1;
        if let Ok(Some(s)) = health.recv_timeout(Duration::from_millis(20)) {
            let r: HealthReport = serde_json::from_value(json(s)).unwrap();
            if r.level == Level::Ok {
                break r;
            }
        }
    };
    assert!(
        seen.output_hz > 0.0 && seen.input_hz == seen.output_hz,
        "{seen:?}"
    );
    let (p50, max) = (
        seen.processing_time_ms_p50.unwrap(),
        seen.pipeline_latency_ms_max.unwrap(),
    );
    assert!(p50 > 0.0 && max >= p50, "{seen:?}");
    assert_eq!(seen.info.precision, "fp32");
    // The status of a frame published after that window carries a report.
    p.publish(&frame(id)).unwrap();
    let mut with_health = None;
    while with_health.is_none() && t0.elapsed() < WAIT {
        if let Ok(Some(s)) = status.recv_timeout(Duration::from_millis(50)) {
            let v = json(s);
            if v["health"]["level"].is_string() {
                with_health = Some(v);
            }
        }
    }
    let v = with_health.expect("no status with a health report");
    assert_eq!(v["health"]["model"], "m.onnx");
    // No frames: the next windows are stale.
    let stale = loop {
        assert!(t0.elapsed() < WAIT, "no stale report");
        if let Ok(Some(s)) = health.recv_timeout(Duration::from_millis(100)) {
            let r: HealthReport = serde_json::from_value(json(s)).unwrap();
            if r.level == Level::Stale {
                break r;
            }
        }
    };
    assert_eq!((stale.output_hz, stale.processing_time_ms_max), (0.0, None));
    let mut health_seen = 0;
    while let Some(e) = listener.recv(Duration::from_millis(100)).unwrap() {
        match e {
            Event::Status { key, .. } if key == "op/cam0/health" => health_seen += 1,
            Event::Invalid { key, error } => panic!("{key}: {error}"),
            _ => {}
        }
    }
    assert!(health_seen > 0);
    assert_eq!(listener.counters().decode_errors, 0);
}

/// The classes output: JSON natively, `vision_msgs/Classification` in ROS 2 on the key its
/// type hash names, each with the frame's stamp and the top classes best first.
#[test]
fn classes_go_out_as_json_natively_and_classification_in_ros2() {
    use overparam_bridge::msgs::{self, Classification};
    let (s_sub, s_pub) = pair();
    let native = s_sub.declare_subscriber("op/cam0/classes").wait().unwrap();
    let names = Ros2Names::new(3, "/perception", "overparam");
    let t = overparam_bridge::ros2::task_type(Task::Classes);
    let key = names.typed_key(&names.output_topic("cam0", "classes"), &t.dds_name, &t.hash);
    assert!(
        key.starts_with(
            "3/perception/cam0/classes/vision_msgs::msg::dds_::Classification_/RIHS01_"
        ),
        "{key}"
    );
    let ros = s_sub.declare_subscriber(key).wait().unwrap();
    let frame = |id: u64| FrameOutputs {
        frame_id: id,
        header: None,
        camera_info: None,
        stamps: Stamps {
            capture_ns: 1_700_000_000_123_456_789,
            ..Stamps::default()
        },
        tensors: vec![(
            Task::Classes,
            vec![2, 2],
            TensorData::F32(vec![7.0, 0.75, 2.0, 0.25]),
        )],
    };
    for ros2 in [false, true] {
        let mut cfg = PublishConfig::native("op", "cam0");
        cfg.status = false;
        cfg.qos = [(Task::Classes, Default::default())].into();
        if ros2 {
            cfg.ros2 = Some(names.clone());
        }
        let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
        assert!(p.wait_for_subscribers(WAIT).unwrap());
        p.publish(&frame(4)).unwrap();
        if ros2 {
            let s = ros.recv_timeout(WAIT).unwrap().expect("no Classification");
            assert!(s.attachment().is_some());
            let c: Classification = msgs::from_cdr(&s.payload().to_bytes()).unwrap();
            assert_eq!(c.header.stamp.to_ns(), 1_700_000_000_123_456_789);
            assert_eq!(c.header.frame_id, "cam0");
            let got: Vec<(&str, f64)> = c
                .results
                .iter()
                .map(|h| (h.class_id.as_str(), h.score))
                .collect();
            assert_eq!(got, [("7", 0.75), ("2", 0.25)]);
        } else {
            let s = native.recv_timeout(WAIT).unwrap().expect("no classes JSON");
            let v: serde_json::Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
            assert_eq!(v["frame_id"], 4);
            assert_eq!(v["capture_ns"], 1_700_000_000_123_456_789i64);
            assert_eq!(
                v["classes"][0],
                serde_json::json!({"class_id": 7, "score": 0.75})
            );
            assert_eq!(v["classes"][1]["class_id"], 2);
        }
    }
}

/// Natively, a raw output arrives exactly on `raw/<output name as a token>` with its NCHW
/// shape, and the class names (JSON with each class's colour-map colour) reach a subscriber
/// that joins after they were published: zenoh-ext's history, from the publisher's cache.
#[test]
fn raw_tensors_and_class_names_for_a_late_subscriber() {
    use zenoh_ext::{AdvancedSubscriberBuilderExt, HistoryConfig};
    let (s_sub, s_pub) = pair();
    let mut l = Listener::new(&s_sub, ListenConfig::native("op")).unwrap();
    let mut cfg = PublishConfig::native("op", "cam0");
    cfg.status = false;
    cfg.qos = [Task::Raw(0), Task::Depth]
        .into_iter()
        .map(|t| (t, Default::default()))
        .collect();
    cfg.raw = vec!["heads.aux/0".into()];
    cfg.labels = Some(vec!["wall".into(), "floor".into(), "chair".into()]);
    let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
    assert!(p.wait_for_subscribers(WAIT).unwrap());
    let aux: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.25 - 1.0).collect();
    let mut f = frame(0);
    f.tensors = vec![
        (Task::Depth, vec![3, 4], TensorData::F32(vec![1.5; 12])),
        (Task::Raw(0), vec![1, 2, 3, 4], TensorData::F32(aux.clone())),
    ];
    p.publish(&f).unwrap();
    let got = collect(&mut l, 2);
    let (key, m) = got
        .iter()
        .find(|(_, m)| m.task == Task::Raw(0))
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(key, "op/cam0/raw/heads_aux_0");
    assert_eq!(
        (&m.shape[..], &m.data),
        (&[1, 2, 3, 4][..], &TensorData::F32(aux))
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let _late = s_sub
        .declare_subscriber("op/cam0/labels")
        .history(HistoryConfig::default().detect_late_publishers())
        .callback(move |s| {
            let _ = tx.send(s.payload().to_bytes().to_vec());
        })
        .wait()
        .unwrap();
    let b = rx
        .recv_timeout(WAIT)
        .expect("no class names from the publisher's cache");
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let classes = v["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 3, "{v}");
    assert_eq!(classes[2]["id"], 2);
    assert_eq!(classes[2]["name"], "chair");
    let p2 = overparam_data::png::PALETTE[2];
    assert_eq!(classes[2]["color"], serde_json::json!(p2));
}
