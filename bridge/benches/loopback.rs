//! Bridge throughput and latency on loopback against raw zenoh put/subscribe of the same bytes,
//! measured in the same run (this machine is noisy; the ratio is the number to read).
//!
//! `cargo bench -p overparam-bridge --bench loopback` (FRAMES=N frames per run, ROUNDS=N runs per
//! mode; lost counts are summed over rounds).
//! Frames: 288×384 segmentation (u8), depth (f32) and normals (f32×3), 1.88 MB per frame.

use std::thread;
use std::time::{Duration, Instant};

use overparam_bridge::listener::{Event, ListenConfig, Listener, percentile};
use overparam_bridge::publisher::{FrameOutputs, PerceptionPublisher, PublishConfig};
use overparam_bridge::session::{ZenohOptions, free_port, now_ns};
use overparam_bridge::wire::{Stamps, Task, TensorData};
use zenoh::Wait;
use zenoh::qos::CongestionControl;

const H: usize = 288;
const W: usize = 384;

fn frame(id: u64) -> FrameOutputs {
    let mut rng = overparam_base::Rng::new(id);
    FrameOutputs {
        frame_id: id,
        header: None,
        camera_info: None,
        stamps: Stamps {
            capture_ns: now_ns(),
            ..Stamps::default()
        },
        tensors: vec![
            (
                Task::Segmentation,
                vec![H, W],
                TensorData::U8((0..H * W).map(|_| (rng.next_u64() % 13) as u8).collect()),
            ),
            (
                Task::Depth,
                vec![H, W],
                TensorData::F32((0..H * W).map(|_| rng.uniform() as f32).collect()),
            ),
            (
                Task::Normals,
                vec![H, W, 3],
                TensorData::F32((0..H * W * 3).map(|_| rng.uniform() as f32).collect()),
            ),
        ],
    }
}

struct Result_ {
    fps: f64,
    p50: f64,
    p99: f64,
    lost: u64,
}

/// The bridge: encode + put on 3 topics per frame; the listener validates every message and,
/// with `payloads`, copies each tensor out (what a consumer of the data pays).
fn bridge(frames: u64, fps: Option<f64>, templates: &[FrameOutputs], payloads: bool) -> Result_ {
    let port = free_port().unwrap();
    let s_sub = ZenohOptions::loopback(Some(port), None).open().unwrap();
    let s_pub = ZenohOptions::loopback(None, Some(port)).open().unwrap();
    let mut lc = ListenConfig::native("bench");
    lc.payloads = payloads;
    let mut l = Listener::new(&s_sub, lc).unwrap();
    let mut cfg = PublishConfig::native("bench", "cam0");
    cfg.status = false;
    let p = PerceptionPublisher::new(&s_pub, cfg).unwrap();
    assert!(p.wait_for_subscribers(Duration::from_secs(10)).unwrap());
    // Per message, over all three topics as for raw zenoh: publish (after encoding) → decoded
    // and validated at the subscriber.
    let rx = thread::spawn(move || {
        let mut lat = vec![];
        let t0 = Instant::now();
        while (lat.len() as u64) < 3 * frames && t0.elapsed() < Duration::from_secs(120) {
            let sent = match l.recv(Duration::from_millis(500)).unwrap() {
                Some(Event::Message { msg, .. }) => msg.stamps.publish_ns,
                Some(Event::Header { header, .. }) => header.stamps.publish_ns,
                _ => continue,
            };
            lat.push((now_ns() - sent) as f64 / 1e6);
        }
        (l, lat)
    });
    let t0 = Instant::now();
    for i in 0..frames {
        let mut f = templates[(i % templates.len() as u64) as usize].clone();
        f.frame_id = i;
        f.stamps.capture_ns = now_ns();
        p.publish_owned(f).unwrap();
        if let Some(r) = fps {
            let due = Duration::from_secs_f64((i + 1) as f64 / r);
            if let Some(w) = due.checked_sub(t0.elapsed()) {
                thread::sleep(w);
            }
        }
    }
    let (l, lat) = rx.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let c = l.counters();
    Result_ {
        fps: frames as f64 / secs,
        p50,
        p99,
        lost: 3 * frames - c.received,
    }
}

/// Raw zenoh: the same encoded bytes put on 3 keys with Block; the subscriber only reads the
/// send timestamp from the first 8 bytes.
fn raw(frames: u64, fps: Option<f64>, payloads: &[Vec<Vec<u8>>]) -> Result_ {
    let port = free_port().unwrap();
    let s_sub = ZenohOptions::loopback(Some(port), None).open().unwrap();
    let s_pub = ZenohOptions::loopback(None, Some(port)).open().unwrap();
    let sub = s_sub
        .declare_subscriber("raw/**")
        .with(zenoh::handlers::FifoChannel::new(256))
        .wait()
        .unwrap();
    let pubs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|k| {
            s_pub
                .declare_publisher(format!("raw/{k}"))
                .congestion_control(CongestionControl::Block)
                .priority(zenoh::qos::Priority::DataHigh)
                .wait()
                .unwrap()
        })
        .collect();
    let t_wait = Instant::now();
    while !pubs
        .iter()
        .all(|p| p.matching_status().wait().unwrap().matching())
    {
        assert!(t_wait.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(5));
    }
    let rx = thread::spawn(move || {
        let mut lat = vec![];
        let t0 = Instant::now();
        while (lat.len() as u64) < 3 * frames && t0.elapsed() < Duration::from_secs(120) {
            if let Some(s) = sub.recv_timeout(Duration::from_millis(500)).unwrap() {
                let b = s.payload().to_bytes();
                let sent = i64::from_le_bytes(b[..8].try_into().unwrap());
                lat.push((now_ns() - sent) as f64 / 1e6);
            }
        }
        lat
    });
    let t0 = Instant::now();
    for i in 0..frames {
        for (p, bytes) in pubs
            .iter()
            .zip(&payloads[(i % payloads.len() as u64) as usize])
        {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&now_ns().to_le_bytes());
            p.put(b).wait().unwrap();
        }
        if let Some(r) = fps {
            let due = Duration::from_secs_f64((i + 1) as f64 / r);
            if let Some(w) = due.checked_sub(t0.elapsed()) {
                thread::sleep(w);
            }
        }
    }
    let lat = rx.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    Result_ {
        fps: frames as f64 / secs,
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        lost: 3 * frames - lat.len() as u64,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let frames: u64 = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let templates: Vec<FrameOutputs> = (0..4).map(frame).collect();
    let payloads: Vec<Vec<Vec<u8>>> = templates
        .iter()
        .map(|f| {
            f.tensors
                .iter()
                .map(|(task, shape, data)| {
                    overparam_bridge::wire::encode(&overparam_bridge::wire::TensorMsg {
                        stream_id: 0,
                        frame_id: 0,
                        task: *task,
                        stamps: f.stamps,
                        shape: shape.clone(),
                        data: data.clone(),
                    })
                    .unwrap()
                })
                .collect()
        })
        .collect();
    let mb = payloads[0].iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    println!(
        "bridge loopback bench: {frames} frames of 288x384 seg+depth+normals ({mb:.2} MB/frame), reliable + Block"
    );
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!("{rounds} rounds per mode, the three modes in a rotating order; medians over rounds");
    for (label, fps) in [("max rate", None), ("paced 100 fps", Some(100.0))] {
        // Rotating the order spreads machine-state drift over all modes; a median over rounds
        // is what this noisy machine supports (one round's p50 moves by ±15%).
        let mut runs: [Vec<Result_>; 3] = [vec![], vec![], vec![]];
        for k in 0..rounds {
            for m in (0..3).map(|i| (i + k) % 3) {
                runs[m].push(match m {
                    0 => raw(frames, fps, &payloads),
                    1 => bridge(frames, fps, &templates, false),
                    _ => bridge(frames, fps, &templates, true),
                });
            }
        }
        let med = |v: &[Result_], f: fn(&Result_) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let summary = |v: &[Result_]| Result_ {
            fps: med(v, |r| r.fps),
            p50: med(v, |r| r.p50),
            p99: med(v, |r| r.p99),
            lost: v.iter().map(|r| r.lost).sum(),
        };
        let r = summary(&runs[0]);
        println!(
            "{label:>14}: raw zenoh {:.1} frames/s, one-way p50 {:.2} ms p99 {:.2} ms, lost {}",
            r.fps, r.p50, r.p99, r.lost
        );
        for (name, x) in [
            ("validated", summary(&runs[1])),
            ("decoded", summary(&runs[2])),
        ] {
            println!(
                "{:>14}  bridge {name:<9} {:.1} frames/s, p50 {:.2} ms p99 {:.2} ms, lost {} | bridge/raw: rate {:.2}x, p50 latency {:.2}x, p99 {:.2}x",
                "",
                x.fps,
                x.p50,
                x.p99,
                x.lost,
                x.fps / r.fps,
                x.p50 / r.p50,
                x.p99 / r.p99
            );
        }
    }
}
