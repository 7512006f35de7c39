//! The bridge under faults, on loopback and bounded in time: a publisher at 30 frames/s whose
//! subscriber is killed (SIGKILL) and restarted, and which is itself killed and restarted. With
//! reliable + Block every frame published while both sides were up arrives exactly once; with
//! best-effort + Drop every loss is counted; the publisher's memory stays flat.
//! Short form here; `OVERPARAM_SOAK=1` runs the long form (several minutes, more restarts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overparam"))
}

fn long() -> bool {
    std::env::var_os("OVERPARAM_SOAK").is_some()
}

fn deploy_mtl(dir: &Path) -> PathBuf {
    let op = dir.join("m.op.safetensors");
    let d = dir.join("m.deploy.safetensors");
    for args in [
        vec![
            "init",
            "--model",
            "mtl",
            "--method",
            "plain",
            "--width",
            "0.125",
            "--image-size",
            "48",
            "-o",
            op.to_str().unwrap(),
        ],
        vec!["fuse", op.to_str().unwrap(), "-o", d.to_str().unwrap()],
    ] {
        let o = bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    d
}

fn port() -> u16 {
    overparam_bridge::session::free_port().unwrap()
}

fn publisher(model: &Path, port: u16, qos: &str, frames: Option<u64>) -> Child {
    let mut c = bin();
    c.args([
        "bridge",
        "run",
        "--model",
        model.to_str().unwrap(),
        "--source",
        "synthetic",
        "--fps",
        "30",
    ])
    .args([
        "--listen",
        &format!("tcp/127.0.0.1:{port}"),
        "--no-multicast-scouting",
        "--qos",
        qos,
    ])
    .args(["--threads", "1"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(n) = frames {
        c.args(["--frames", &n.to_string(), "--wait-subscribers", "20"]);
    }
    c.spawn().unwrap()
}

fn subscriber(port: u16, record: &Path, extra: &[&str]) -> Child {
    bin()
        .args([
            "bridge",
            "listen",
            "--connect",
            &format!("tcp/127.0.0.1:{port}"),
            "--no-multicast-scouting",
        ])
        .args(["--record", record.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Per (topic, stream): the frame ids one subscriber incarnation received, in order.
type Record = BTreeMap<(String, String), Vec<u64>>;

fn read_record(p: &Path) -> Record {
    let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for l in std::fs::read_to_string(p).unwrap_or_default().lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 {
            m.entry((f[0].into(), f[1].into()))
                .or_default()
                .push(f[2].parse().unwrap());
        }
    }
    m
}

fn kill(c: &mut Child) {
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
}

#[test]
fn reliable_block_survives_subscriber_and_publisher_restarts() {
    let d = tempfile::tempdir().unwrap();
    let model = deploy_mtl(d.path());
    let p = port();
    let (phase, cycles) = if long() {
        (Duration::from_secs(20), 8)
    } else {
        (Duration::from_secs(3), 2)
    };
    let mut pubr = publisher(&model, p, "reliable,block", None);
    let mut records = vec![];
    let mut rss = vec![];
    let t_end_pub_restart = cycles / 2;
    // Each phase lasts at least `phase` and until the subscriber has really received frames
    // (on a busy machine start-up and matching take longer than any fixed time).
    let wait = |rec: &Path, pid: u32, rss: &mut Vec<u64>, done: &dyn Fn(&Record) -> bool| {
        let t0 = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            if let Some(r) = rss_kib(pid) {
                rss.push(r);
            }
            let m = read_record(rec);
            if t0.elapsed() >= phase && done(&m) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "{}: the condition did not hold within 180 s ({} messages so far)",
                rec.display(),
                m.values().map(Vec::len).sum::<usize>()
            );
        }
    };
    let messages = |m: &Record, n: usize| m.values().map(Vec::len).sum::<usize>() >= n;
    for k in 0..cycles {
        let rec = d.path().join(format!("sub{k}.txt"));
        let mut sub = subscriber(p, &rec, &[]);
        wait(&rec, pubr.id(), &mut rss, &|m| messages(m, 30));
        if k == t_end_pub_restart {
            // The publisher dies while a subscriber is up, and comes back on the same port;
            // the phase ends once the subscriber has frames of the new stream.
            kill(&mut pubr);
            std::thread::sleep(Duration::from_millis(500));
            pubr = publisher(&model, p, "reliable,block", None);
            let streams = |m: &Record| {
                m.keys()
                    .map(|(_, s)| s.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            };
            wait(&rec, pubr.id(), &mut rss, &|m| {
                streams(m) >= 2 && messages(m, 60)
            });
        }
        kill(&mut sub);
        records.push(rec);
        std::thread::sleep(Duration::from_millis(300));
    }
    kill(&mut pubr);
    let mut streams = std::collections::BTreeSet::new();
    let mut total = 0;
    for rec in &records {
        let m = read_record(rec);
        assert!(!m.is_empty(), "{} received nothing", rec.display());
        for ((topic, stream), ids) in &m {
            streams.insert(stream.clone());
            // From the first frame an incarnation saw until it was killed: no gap, no repeat.
            for w in ids.windows(2) {
                assert_eq!(
                    w[1],
                    w[0] + 1,
                    "{topic} stream {stream} in {}: {} then {}",
                    rec.display(),
                    w[0],
                    w[1]
                );
            }
            total += ids.len();
        }
    }
    assert_eq!(
        streams.len(),
        2,
        "one stream before the publisher restart and one after"
    );
    assert!(total > 100, "only {total} messages");
    // Memory flat: after warm-up, the publisher's RSS does not grow.
    if rss.len() > 8 {
        let warm = rss[rss.len() / 4];
        let last = *rss.last().unwrap();
        assert!(
            last <= warm + warm / 5 + 8 * 1024,
            "RSS grew from {warm} KiB to {last} KiB"
        );
    }
}

#[test]
fn best_effort_drop_counts_every_loss() {
    let d = tempfile::tempdir().unwrap();
    let model = deploy_mtl(d.path());
    let p = port();
    let frames: u64 = if long() { 3000 } else { 90 };
    let rec = d.path().join("sub.txt");
    let sub = subscriber(p, &rec, &["--duration", &(frames / 30 + 60).to_string()]);
    let mut pubr = publisher(&model, p, "best-effort,drop", Some(frames));
    let t0 = Instant::now();
    loop {
        if let Some(s) = pubr.try_wait().unwrap() {
            assert!(s.success());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(frames / 30 + 60),
            "publisher did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once every frame is out, whatever has not arrived is lost: stop the listener.
    std::thread::sleep(Duration::from_secs(2));
    let mut sub = sub;
    kill(&mut sub);
    let m = read_record(&rec);
    assert_eq!(
        m.len(),
        4,
        "four topics (the class map, its colour map, depth, normals), one stream: {:?}",
        m.keys().collect::<Vec<_>>()
    );
    for ((topic, _), ids) in &m {
        // Received + counted gaps cover every frame from the first received to the last.
        let (first, last) = (ids[0], *ids.last().unwrap());
        let gaps: u64 = ids.windows(2).map(|w| w[1] - w[0] - 1).sum();
        assert_eq!(ids.len() as u64 + gaps, last - first + 1, "{topic}");
        assert_eq!(first, 0, "{topic}: the publisher waited for the subscriber");
        assert!(last < frames);
    }
}
