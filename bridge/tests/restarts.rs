//! A subscriber started late, a subscriber restarted and a publisher restarted: the stream
//! resumes, and with reliable + Block nothing published while both sides were up is lost.
//! The publisher listens on a fixed loopback port; subscribers connect to it.

use std::time::{Duration, Instant};

use overparam_bridge::listener::{Event, ListenConfig, Listener};
use overparam_bridge::publisher::{FrameOutputs, PerceptionPublisher, PublishConfig};
use overparam_bridge::session::{ZenohOptions, free_port};
use overparam_bridge::wire::{Stamps, Task, TensorData};

const WAIT: Duration = Duration::from_secs(15);
const K: u64 = 20;

fn frame(id: u64) -> FrameOutputs {
    let (h, w) = (48, 64);
    FrameOutputs {
        frame_id: id,
        header: None,
        camera_info: None,
        stamps: Stamps {
            capture_ns: 1 + id as i64,
            ..Stamps::default()
        },
        tensors: vec![
            (
                Task::Segmentation,
                vec![h, w],
                TensorData::U8(vec![id as u8; h * w]),
            ),
            (
                Task::Depth,
                vec![h, w],
                TensorData::F32(vec![id as f32; h * w]),
            ),
            (
                Task::Normals,
                vec![h, w, 3],
                TensorData::F32(vec![0.5; h * w * 3]),
            ),
        ],
    }
}

fn publisher(port: u16) -> (zenoh::Session, PerceptionPublisher) {
    let s = ZenohOptions::loopback(Some(port), None).open().unwrap();
    let mut cfg = PublishConfig::native("op", "cam0");
    cfg.status = false;
    let p = PerceptionPublisher::new(&s, cfg).unwrap();
    (s, p)
}

fn subscriber(port: u16) -> (zenoh::Session, Listener) {
    let s = ZenohOptions::loopback(None, Some(port)).open().unwrap();
    let l = Listener::new(&s, ListenConfig::native("op")).unwrap();
    (s, l)
}

/// Publishes frames `from..from+K` once every topic matched, and checks all 3·K arrive with
/// their frame ids in order per topic.
fn publish_and_receive_all(p: &PerceptionPublisher, l: &mut Listener, from: u64) {
    assert!(
        p.wait_for_subscribers(WAIT).unwrap(),
        "no subscriber matched"
    );
    for i in from..from + K {
        p.publish(&frame(i)).unwrap();
    }
    let mut ids: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let t0 = Instant::now();
    let mut n = 0;
    while n < 3 * K && t0.elapsed() < WAIT {
        if let Some(Event::Message { key, msg }) = l.recv(Duration::from_millis(100)).unwrap() {
            ids.entry(key).or_default().push(msg.frame_id);
            n += 1;
        }
    }
    assert_eq!(n, 3 * K, "lost messages: {ids:?}");
    for v in ids.values() {
        assert_eq!(v, &(from..from + K).collect::<Vec<_>>());
    }
}

#[test]
fn late_and_restarted_subscribers_and_a_restarted_publisher() {
    let port = free_port().unwrap();
    let (s_pub, p) = publisher(port);
    // Nobody listens yet: these go nowhere and are counted as unmatched.
    for i in 0..K {
        p.publish(&frame(i)).unwrap();
    }
    assert_eq!(p.counters().snapshot().sent_unmatched, 3 * K);

    // A late subscriber gets everything from the moment it matched.
    let (s1, mut l1) = subscriber(port);
    publish_and_receive_all(&p, &mut l1, K);
    assert_eq!(l1.counters().dropped, 0);

    // The subscriber goes away; frames published meanwhile are unmatched, not lost in transit.
    drop(l1);
    s1.close().wait_close();
    let t0 = Instant::now();
    while p.all_matched().unwrap() && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!p.all_matched().unwrap());
    for i in 2 * K..3 * K {
        p.publish(&frame(i)).unwrap();
    }
    let (_s2, mut l2) = subscriber(port);
    publish_and_receive_all(&p, &mut l2, 3 * K);

    // The publisher restarts on the same port; the subscriber reconnects and sees a new stream.
    drop(p);
    s_pub.close().wait_close();
    let (_s_pub2, p2) = publisher(port);
    publish_and_receive_all(&p2, &mut l2, 0);
    let c = l2.counters();
    assert_eq!(c.received, 6 * K);
    assert_eq!(c.dropped, 0);
    assert_eq!(c.stream_restarts, 3, "one per topic");
    assert_eq!(p2.counters().snapshot().sent_unmatched, 0);
}

trait CloseWait {
    fn wait_close(self);
}
impl<T: zenoh::Wait<To = zenoh::Result<()>>> CloseWait for T {
    fn wait_close(self) {
        self.wait().unwrap();
    }
}
