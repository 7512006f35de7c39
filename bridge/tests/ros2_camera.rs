//! The `ros2:` source keeps only the newest frame: a camera faster than the model never builds
//! a queue, and every replaced frame is counted. Two zenoh sessions on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use overparam_base::Recorder;
use overparam_bridge::ros2::{self, Header, Image, Ros2Names, Time};
use overparam_bridge::session::{ZenohOptions, free_port};
use overparam_bridge::source::{SourceSpec, SourceStats, open_with};
use zenoh::Wait;

fn image(sec: i32) -> Vec<u8> {
    ros2::serialize_image(
        &Image {
            header: Header {
                stamp: Time { sec, nanosec: 42 },
                frame_id: "camera_front".into(),
            },
            height: 6,
            width: 10,
            encoding: "bgr8".into(),
            is_bigendian: 0,
            step: 30,
            data: vec![sec as u8; 180],
        },
        true,
    )
    .unwrap()
}

#[test]
fn a_slow_consumer_gets_the_newest_frame_and_the_rest_are_counted_as_skipped() {
    let port = free_port().unwrap();
    let s_sub = ZenohOptions::loopback(Some(port), None).open().unwrap();
    let s_pub = ZenohOptions::loopback(None, Some(port)).open().unwrap();
    let names = Ros2Names::new(4, "/perception", "overparam");
    let spec = SourceSpec::Ros2("/camera/image_raw".into());
    let events = Arc::new(Recorder::default());
    let mut src = open_with(
        &spec,
        (4, 8),
        Some(&s_sub),
        &names,
        events.clone(),
        overparam_bridge::source::Wait::default(),
    )
    .unwrap();
    let publisher = s_pub
        .declare_publisher(names.topic_key("/camera/image_raw"))
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()
        .unwrap();
    let t0 = Instant::now();
    while !publisher.matching_status().wait().unwrap().matching() {
        assert!(t0.elapsed() < Duration::from_secs(20), "never matched");
        std::thread::sleep(Duration::from_millis(5));
    }
    let gid = [7u8; 16];
    let put = |sec: i32| {
        publisher
            .put(image(sec))
            .attachment(ros2::attachment(sec as i64, 0, &gid).to_vec())
            .wait()
            .unwrap();
    };
    let wait_received = |src: &dyn overparam_bridge::source::FrameSource, n: u64| {
        let t0 = Instant::now();
        while src.stats().received < n {
            assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", src.stats());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // Ten frames while the "model" is busy: only the tenth waits for it.
    for sec in 1..=10 {
        put(sec);
    }
    wait_received(src.as_ref(), 10);
    let f = src.next_frame().unwrap().unwrap();
    let h = f.header.as_ref().unwrap();
    assert_eq!((h.stamp.sec, h.stamp.nanosec), (10, 42));
    assert_eq!(h.frame_id, "camera_front");
    assert_eq!(f.capture_ns, 10_000_000_042);
    assert_eq!((f.height, f.width, f.rgb.len()), (4, 8, 4 * 8 * 3));
    assert!(f.rgb.iter().all(|&v| v == 10.0 / 255.0));
    assert_eq!(
        src.stats(),
        SourceStats {
            received: 10,
            skipped: 9,
            invalid: 0
        }
    );
    // A model that keeps up skips nothing.
    for sec in 11..=13 {
        put(sec);
        wait_received(src.as_ref(), sec as u64);
        let f = src.next_frame().unwrap().unwrap();
        assert_eq!(f.header.unwrap().stamp.sec, sec);
    }
    assert_eq!(src.stats().skipped, 9);
    // Only the exact topic key is subscribed: another topic, or another domain, is not seen.
    for key in [
        names.topic_key("/camera/image_rect"),
        Ros2Names::new(5, "", "x").topic_key("/camera/image_raw"),
    ] {
        s_pub
            .put(key, image(99))
            .attachment(ros2::attachment(0, 0, &gid).to_vec())
            .wait()
            .unwrap();
    }
    put(14);
    wait_received(src.as_ref(), 14);
    assert_eq!(
        src.next_frame().unwrap().unwrap().capture_ns,
        14_000_000_042
    );
    assert_eq!(src.stats().received, 14);
    // A sample without rmw_zenoh's attachment is refused: the first is reported as an event,
    // the second only counted; the valid frame after each still comes through.
    for n in 0..2u64 {
        s_pub
            .put(names.topic_key("/camera/image_raw"), image(50))
            .wait()
            .unwrap();
        wait_received(src.as_ref(), 15 + 2 * n);
        let sec = 20 + n as i32;
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                put(sec);
            });
            let f = src.next_frame().unwrap().unwrap();
            assert_eq!(f.header.unwrap().stamp.sec, sec);
        });
    }
    assert_eq!(src.stats().invalid, 2);
    let lines = events.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("attachment"), "{lines:?}");
}
