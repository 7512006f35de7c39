//! `overparam bench pipeline`: ros2_benchmark's method (NVIDIA, for ROS 2 graphs) applied to
//! the bridge, camera → zenoh → model → outputs.
//!
//! For each rate, a camera here publishes frames at that fixed rate for a warm-up and then the
//! measured `duration`; a bridge process (`overparam bridge run`, started by the caller's
//! launcher, so what runs is the deployed binary and its CPU time is its own) subscribes to the
//! camera on loopback, runs the model and publishes its outputs, which a listener here receives.
//! A frame counts as delivered when every output topic has carried its capture stamp; of the
//! frames captured in the measured window:
//! - **missed** = sent − delivered, and **loss** their share;
//! - **achieved rate** = delivered / duration;
//! - **latency** = the last output's arrival − capture (p50/p90/p99/max);
//! - **jitter** = |inter-arrival − 1/rate| of consecutive deliveries, mean and max (Isaac ROS
//!   NITROS statistics define it so), and the inter-arrival standard deviation;
//! - **CPU** = the bridge process's user + system time over the window, % of one core.
//!
//! The peak is the highest rate with at most `max_loss` (5%) loss: from the fixed rates, the
//! rate doubles until one fails (up to `peak_max`), then bisects between the best held and
//! the lowest failed.
//!
//! The camera publishes best effort with Drop, as camera drivers do (SensorDataQoS): a frame
//! the pipeline cannot take is lost and counted, never waited for.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zenoh::Wait as _;
use zenoh::qos::{CongestionControl, Reliability};

use crate::error::{Error, Result};
use crate::platform::Platform;
use crate::ros2::{self, Ros2Names};
use crate::session::{ZenohOptions, free_port, now_ns};
use crate::wire::{self, Stamps, Task, TensorData, TensorMsg};

/// Native key prefix and camera name the bridge under test publishes with.
pub const PREFIX: &str = "overparam_bench";
pub const CAMERA: &str = "cam0";
/// The camera topic (ROS 2) and key (native) the bench publishes on.
pub const ROS2_CAMERA_TOPIC: &str = "/overparam_bench/image_raw";
pub const NATIVE_CAMERA_KEY: &str = "overparam_bench/camera/image";

#[derive(Clone, Debug)]
pub struct PipelineBench {
    /// Fixed rates, Hz, each > 0.
    pub rates: Vec<f64>,
    /// The measured window of each run.
    pub duration: Duration,
    /// Frames before the window (the bridge's first inferences), not counted.
    pub warmup: Duration,
    /// Camera frames, (H, W), rgb8; the bridge resizes them to the model's input.
    pub camera: (usize, usize),
    /// ROS 2 mode: the camera is a `sensor_msgs/Image` topic and the outputs are ROS 2.
    pub ros2: Option<Ros2Names>,
    /// Search for the peak rate after the fixed ones.
    pub peak: bool,
    /// The search's ceiling, Hz.
    pub peak_max: f64,
    /// Bisection steps of the search.
    pub peak_steps: usize,
    /// Loss a held rate may have (ros2_benchmark: 5%).
    pub max_loss: f64,
    /// How long the bridge may take to subscribe (loading the model) before the run fails.
    pub startup: Duration,
    /// A camera the bench does not drive: one run at whatever rate it publishes.
    pub external: Option<ExternalCamera>,
}

/// A camera already publishing, not paced by the bench: its native key (camera frames in the
/// tensor format) or, in ROS 2 mode, its `sensor_msgs/Image` topic, and the zenoh endpoints
/// that reach it (given to the bench's session and to the bridge). Latency is measured from
/// each frame's own stamp (capture_ns, or header.stamp), so the camera's clock must be this
/// host's (the same host, or PTP-synchronised).
#[derive(Clone, Debug)]
pub struct ExternalCamera {
    pub key: String,
    pub connect: Vec<String>,
}

impl PipelineBench {
    /// Refuses rates that are not positive finite numbers, an empty rate list, a zero or
    /// negative duration, and a loss outside [0, 1).
    pub fn check(&self) -> Result<()> {
        if let Some(e) = &self.external {
            if !self.rates.is_empty() || self.peak {
                return Err(Error::InvalidOption(format!(
                    "--camera-key {}: an external camera sets its own rate; --rates and --peak drive the bench's own camera",
                    e.key
                )));
            }
            if self.duration.is_zero() {
                return Err(Error::InvalidOption(
                    "--duration: the measured window must be longer than 0 s".into(),
                ));
            }
            return Ok(());
        }
        if self.rates.is_empty() && !self.peak {
            return Err(Error::InvalidOption(
                "--rates: no rate to run (and no --peak search)".into(),
            ));
        }
        for &r in &self.rates {
            if !(r.is_finite() && r >= crate::run::MIN_FPS) {
                return Err(Error::InvalidOption(format!(
                    "--rates {r}: a rate is a finite number of frames per second, at least {}",
                    crate::run::MIN_FPS
                )));
            }
        }
        if self.duration.is_zero() {
            return Err(Error::InvalidOption(
                "--duration: the measured window must be longer than 0 s".into(),
            ));
        }
        if !(self.peak_max.is_finite() && self.peak_max > 0.0) {
            return Err(Error::InvalidOption(format!(
                "--peak-max {}: want a rate above 0",
                self.peak_max
            )));
        }
        if !(0.0..1.0).contains(&self.max_loss) {
            return Err(Error::InvalidOption(format!(
                "--max-loss {}: a share in [0, 1)",
                self.max_loss
            )));
        }
        if self.camera.0 == 0 || self.camera.1 == 0 {
            return Err(Error::InvalidOption(
                "--camera-size: both sides must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Latency percentiles, ms (NaN with no delivered frame).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// One fixed-rate run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateRun {
    pub target_hz: f64,
    /// Frames the camera sent in the measured window.
    pub sent: u64,
    pub delivered: u64,
    pub missed: u64,
    /// missed / sent.
    pub loss: f64,
    pub achieved_hz: f64,
    pub latency_ms: LatencyMs,
    pub jitter_ms_mean_abs: f64,
    pub jitter_ms_max_abs: f64,
    pub inter_arrival_ms_std: f64,
    /// The bridge process's CPU over the window, % of one core (`None`: not Linux).
    pub cpu_percent: Option<f64>,
    /// The output topics seen (a delivered frame carried all of them).
    pub outputs: Vec<String>,
    /// `(seconds into the window, latency ms)` of each delivered frame, for the plot.
    pub samples: Vec<(f64, f64)>,
}

impl RateRun {
    pub fn held(&self, max_loss: f64) -> bool {
        self.sent > 0 && self.loss <= max_loss
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// The highest rate held (0 when none was).
    pub rate_hz: f64,
    /// The search reached `peak_max` with every probe held: the peak is at least this.
    pub at_ceiling: bool,
    /// Every probe of the search: (rate, loss).
    pub probes: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    pub model: String,
    /// `native` or `ros2`.
    pub mode: String,
    pub camera: [usize; 2],
    pub duration_s: f64,
    pub warmup_s: f64,
    pub max_loss: f64,
    pub runs: Vec<RateRun>,
    pub peak: Option<Peak>,
    pub platform: Platform,
    /// An external camera's key or topic ([`ExternalCamera`]); `camera` is then unknown
    /// (0×0) and the one run's rate is the camera's, as measured.
    #[serde(default)]
    pub camera_key: Option<String>,
}

/// Starts the bridge under test with these extra arguments (source, endpoint, names), its
/// stdout and stderr piped.
pub type Launcher<'a> = dyn Fn(&[String]) -> std::io::Result<Child> + 'a;

/// The bridge's user + system time, seconds (Linux's `/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// Collects `child`'s stream in a thread.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

struct Bridge {
    child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl Bridge {
    fn start(launch: &Launcher<'_>, args: &[String]) -> Result<Self> {
        let mut child =
            launch(args).map_err(|e| Error::Source(format!("starting the bridge: {e}")))?;
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        Ok(Bridge { child, out, err })
    }
    /// Whether it exited successfully within `within` (it is killed after), and its stderr.
    fn finish(mut self, within: Duration) -> (bool, String) {
        let t0 = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if t0.elapsed() < within => std::thread::sleep(Duration::from_millis(20)),
                _ => break None,
            }
        };
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = self.out.take().map(|h| h.join());
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.is_some_and(|s| s.success()), err)
    }
    /// Polls `ready` until it holds; the bridge exiting first, or `within` passing, is an
    /// error with its stderr (`what`: what was awaited; `hint`: what to check on a timeout).
    fn wait_for(
        mut self,
        mut ready: impl FnMut() -> Result<bool>,
        within: Duration,
        what: &str,
        hint: &str,
    ) -> Result<Self> {
        let t0 = Instant::now();
        while !ready()? {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Err(self.failed(&format!("the bridge exited before {what}")));
            }
            if t0.elapsed() > within {
                return Err(self.failed(&format!(
                    "no sign of {what} within {:.0} s: {hint}",
                    within.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(self)
    }

    fn failed(mut self, why: &str) -> Error {
        let _ = self.child.kill();
        let (_, err) = self.finish(Duration::from_secs(5));
        Error::Source(format!("{why}; the bridge said:\n{}", err.trim()))
    }
}

/// Output arrivals: (key, capture ns, receive ns).
type Arrivals = Arc<Mutex<Vec<(String, i64, i64)>>>;

/// The bench's subscription to the bridge's outputs ([`PipelineBench::listen`]).
struct Listening {
    thread: std::thread::JoinHandle<Result<()>>,
    arrivals: Arrivals,
    stop: Arc<AtomicBool>,
    last_arrival: Arc<Mutex<Instant>>,
}

impl Listening {
    /// Whether an output arrival so far satisfies `pred` ((key, capture ns, receive ns)).
    fn arrived(&self, pred: impl Fn(&(String, i64, i64)) -> bool) -> bool {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(pred)
    }

    /// Waits until nothing has arrived for 200 ms (at most 5 s), stops, and returns the
    /// arrivals.
    fn finish(self) -> Result<Vec<(String, i64, i64)>> {
        let t_end = Instant::now();
        while self
            .last_arrival
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < Duration::from_millis(200)
            && t_end.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| Error::Source("the bench's listener panicked".into()))??;
        Ok(std::mem::take(
            &mut *self.arrivals.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

impl PipelineBench {
    /// Every output topic of the bridge under test, whatever its type.
    fn listen_key(&self) -> String {
        match &self.ros2 {
            None => format!("{PREFIX}/{CAMERA}/**"),
            Some(n) => format!(
                "{}/{}",
                n.domain_id,
                n.output_topic(CAMERA, "**").trim_start_matches('/')
            ),
        }
    }

    fn bridge_args(&self, ep: &str, source_timeout: f64) -> Vec<String> {
        let source = match &self.ros2 {
            None => NATIVE_CAMERA_KEY,
            Some(_) => ROS2_CAMERA_TOPIC,
        };
        self.bridge_args_for(ep, source_timeout, source)
    }

    /// The bridge's arguments with its camera on `source` (a native key, or a ROS 2 topic).
    fn bridge_args_for(&self, ep: &str, source_timeout: f64, source: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--connect",
            ep,
            "--no-multicast-scouting",
            "--camera",
            CAMERA,
            "--prefix",
            PREFIX,
            "--source-timeout",
            &format!("{source_timeout:.3}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match &self.ros2 {
            None => a.extend(["--source".into(), format!("zenoh:{source}")]),
            Some(n) => a.extend([
                "--source".into(),
                format!("ros2:{source}"),
                "--ros2".into(),
                "--domain-id".into(),
                n.domain_id.to_string(),
                "--namespace".into(),
                format!("/{}", n.namespace),
            ]),
        }
        a
    }

    /// Everything of one camera frame stamped `capture_ns` before its pixels (`frame` is
    /// them, H×W×3 u8), as the mode's camera would send it, and its rmw_zenoh attachment:
    /// the pixels follow as a second slice, so the timed loop copies nothing large.
    fn frame_prefix(
        &self,
        frame: &TensorData,
        capture_ns: i64,
        seq: i64,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let shape = [self.camera.0, self.camera.1, 3];
        Ok(match &self.ros2 {
            None => {
                let head = TensorMsg {
                    stream_id: 1,
                    frame_id: seq as u64,
                    task: Task::Camera,
                    stamps: Stamps {
                        capture_ns,
                        publish_ns: capture_ns,
                        ..Stamps::default()
                    },
                    shape: vec![],
                    data: TensorData::U8(vec![]),
                };
                (wire::encode_header(&head, &shape, frame)?, None)
            }
            Some(_) => {
                let header = ros2::Header {
                    stamp: ros2::Time::from_ns(capture_ns),
                    frame_id: "bench_camera".into(),
                };
                (
                    ros2::image_prefix_with_header(Task::Camera, &shape, frame, header)?,
                    Some(ros2::attachment(seq, now_ns(), &[0xbe; 16]).to_vec()),
                )
            }
        })
    }

    /// Subscribes to every output of the bridge under test, recording each arrival.
    fn listen(&self, session: &zenoh::Session) -> Result<Listening> {
        let arrivals: Arrivals = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let last_arrival = Arc::new(Mutex::new(Instant::now()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (session, arrivals, stop, last) = (
                session.clone(),
                arrivals.clone(),
                stop.clone(),
                last_arrival.clone(),
            );
            let key = self.listen_key();
            let ros2 = self.ros2.is_some();
            std::thread::spawn(move || -> Result<()> {
                let sub = session
                    .declare_subscriber(key)
                    .with(zenoh::handlers::FifoChannel::new(4096))
                    .wait()?;
                let _ = ready_tx.send(());
                while !stop.load(Ordering::Relaxed) {
                    let Some(sample) = sub.recv_timeout(Duration::from_millis(50))? else {
                        continue;
                    };
                    let recv = now_ns();
                    let key = sample.key_expr().as_str().to_string();
                    let Some(capture) = capture_stamp(&key, &sample.payload().to_bytes(), ros2)
                    else {
                        continue;
                    };
                    arrivals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((key, capture, recv));
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                }
                Ok(())
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::Source("the bench's listener did not start".into()))?;
        Ok(Listening {
            thread,
            arrivals,
            stop,
            last_arrival,
        })
    }

    /// One run on an external camera ([`PipelineBench::external`]): the bench subscribes to
    /// the camera itself to know what was sent (each frame's stamp), starts the bridge on it,
    /// waits for its first output, then measures `warmup` later for `duration`; the rate is
    /// the camera's, as measured. The bridge is stopped at the end of the window.
    pub fn run_external(&self, cam: &ExternalCamera, launch: &Launcher<'_>) -> Result<RateRun> {
        let port = free_port()?;
        let session = ZenohOptions {
            connect: cam.connect.clone(),
            ..ZenohOptions::loopback(Some(port), None)
        }
        .open()?;
        let ep = format!("tcp/127.0.0.1:{port}");
        let listening = self.listen(&session)?;
        let ros2 = self.ros2.is_some();
        let key = match &self.ros2 {
            None => cam.key.clone(),
            Some(n) => n.topic_key(&n.resolve_topic(&cam.key)?),
        };
        // (capture stamp, when it arrived here) of every camera frame.
        let frames: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let _camera = {
            let frames = frames.clone();
            let key = key.clone();
            session
                .declare_subscriber(key.clone())
                .callback(move |sample| {
                    let now = Instant::now();
                    if let Some(c) = capture_stamp(&key, &sample.payload().to_bytes(), ros2) {
                        frames
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((c, now));
                    }
                })
                .wait()?
        };
        let mut args = self.bridge_args_for(&ep, 0.0, &cam.key);
        for c in &cam.connect {
            args.extend(["--connect".into(), c.clone()]);
        }
        let mut bridge = Bridge::start(launch, &args)?.wait_for(
            || Ok(listening.arrived(|_| true)),
            self.startup,
            "its first output",
            &format!("is the camera publishing on {key}?"),
        )?;
        let start = Instant::now() + self.warmup;
        let end = start + self.duration;
        let pid = bridge.child.id();
        sleep_until(start);
        let cpu0 = cpu_seconds(pid);
        sleep_until(end);
        let cpu1 = cpu_seconds(pid);
        if matches!(bridge.child.try_wait(), Ok(Some(_))) {
            return Err(bridge.failed("the bridge exited during the measured window"));
        }
        let sent: Vec<i64> = frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| (start..end).contains(at))
            .map(|(c, _)| *c)
            .collect();
        // The window's frames are done once an output of a later frame arrived (the camera
        // goes on; the bridge keeps the newest frame), or after 5 s.
        let last = sent.last().copied().unwrap_or(i64::MAX);
        let t_done = Instant::now();
        while t_done.elapsed() < Duration::from_secs(5) && !listening.arrived(|a| a.1 > last) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = bridge.child.kill();
        let _ = bridge.finish(Duration::from_secs(10));
        let arrivals = listening.finish()?;
        if sent.is_empty() {
            return Err(Error::Source(format!(
                "the camera on {key} sent no frame in the {:.1} s window",
                self.duration.as_secs_f64()
            )));
        }
        let rate = sent.len() as f64 / self.duration.as_secs_f64();
        Ok(self.score(rate, &sent, &arrivals, (cpu0, cpu1)))
    }

    /// [`score`] over this bench's window, the bridge's CPU from its CPU seconds at either
    /// end (% of one core).
    fn score(
        &self,
        rate: f64,
        sent: &[i64],
        arrivals: &[(String, i64, i64)],
        cpu: (Option<f64>, Option<f64>),
    ) -> RateRun {
        let window = self.duration.as_secs_f64();
        let cpu_percent = match cpu {
            (Some(a), Some(b)) => Some((b - a) / window * 100.0),
            _ => None,
        };
        score(rate, sent, arrivals, window, cpu_percent)
    }

    /// One fixed-rate run at `rate` Hz.
    pub fn run_rate(&self, rate: f64, launch: &Launcher<'_>) -> Result<RateRun> {
        let port = free_port()?;
        let session = ZenohOptions::loopback(Some(port), None).open()?;
        let ep = format!("tcp/127.0.0.1:{port}");
        let period = Duration::from_secs_f64(1.0 / rate);
        // The bridge's source ends this long after the camera's last frame.
        let source_timeout = (3.0 / rate).max(1.0);

        // The listener first, so no output goes unheard.
        let listening = self.listen(&session)?;

        let key = match &self.ros2 {
            None => NATIVE_CAMERA_KEY.to_string(),
            Some(n) => n.topic_key(ROS2_CAMERA_TOPIC),
        };
        let camera = session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Drop)
            .reliability(Reliability::BestEffort)
            .wait()?;
        // The bridge has subscribed once the camera matches; a bridge that exits is a failure.
        let bridge = Bridge::start(launch, &self.bridge_args(&ep, source_timeout))?.wait_for(
            || Ok(camera.matching_status().wait()?.matching()),
            self.startup,
            "its subscription to the camera",
            "is the model slow to load (--startup-timeout)?",
        )?;

        let (h, w) = self.camera;
        let mut rng = overparam_base::Rng::new(7);
        let pixels: Vec<u8> = (0..h * w * 3).map(|_| rng.next_u64() as u8).collect();
        let shared = bytes::Bytes::from(pixels.clone());
        let frame = TensorData::U8(pixels);
        let start = Instant::now() + Duration::from_millis(50);
        let window = (start + self.warmup, start + self.warmup + self.duration);
        let pid = bridge.child.id();
        // Captures of the frames due in the window.
        let mut sent = vec![];
        let mut cpu = (None, None);
        let mut seq = 0i64;
        loop {
            let due = start + period.mul_f64(seq as f64);
            if due >= window.1 {
                break;
            }
            if cpu.0.is_none() && due >= window.0 {
                cpu.0 = cpu_seconds(pid);
            }
            sleep_until(due);
            let capture = now_ns();
            let (prefix, att) = self.frame_prefix(&frame, capture, seq)?;
            let mut payload = zenoh::bytes::ZBytes::writer();
            payload.append(zenoh::bytes::ZBytes::from(prefix));
            payload.append(zenoh::bytes::ZBytes::from(shared.clone()));
            let put = camera.put(payload.finish());
            match att {
                Some(a) => put.attachment(a).wait()?,
                None => put.wait()?,
            }
            if due >= window.0 {
                sent.push(capture);
            }
            seq += 1;
        }
        sleep_until(window.1);
        cpu.1 = cpu_seconds(pid);
        let (ok, err) = bridge.finish(Duration::from_secs_f64(source_timeout + 30.0));
        let arrivals = listening.finish()?;
        if !ok {
            return Err(Error::Source(format!(
                "the bridge failed at {rate} Hz:\n{}",
                err.trim()
            )));
        }
        if arrivals.is_empty() {
            return Err(Error::Source(format!(
                "the bridge published nothing at {rate} Hz:\n{}",
                err.trim()
            )));
        }
        Ok(self.score(rate, &sent, &arrivals, cpu))
    }

    /// Every fixed rate, then the peak search when asked; `on_run` sees each run.
    pub fn run(
        &self,
        model: &str,
        onnxruntime: &str,
        launch: &Launcher<'_>,
        progress: &dyn overparam_base::Progress,
    ) -> Result<PipelineReport> {
        self.check()?;
        let mut runs = vec![];
        if let Some(cam) = &self.external {
            progress.outer(&format!("external camera {}", cam.key), 0, 1);
            let run = self.run_external(cam, launch)?;
            progress.event(&line(&run));
            runs.push(run);
        }
        for (i, &r) in self.rates.iter().enumerate() {
            progress.outer(&format!("{r} Hz"), i as u64, self.rates.len() as u64);
            let run = self.run_rate(r, launch)?;
            progress.event(&line(&run));
            runs.push(run);
        }
        progress.outer("rates", self.rates.len() as u64, self.rates.len() as u64);
        let peak = if self.peak {
            Some(self.peak_search(&runs, launch, progress)?)
        } else {
            None
        };
        Ok(PipelineReport {
            model: model.into(),
            mode: if self.ros2.is_some() {
                "ros2"
            } else {
                "native"
            }
            .into(),
            camera: match self.external {
                Some(_) => [0, 0],
                None => [self.camera.0, self.camera.1],
            },
            camera_key: self.external.as_ref().map(|e| e.key.clone()),
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            max_loss: self.max_loss,
            runs,
            peak,
            platform: Platform::detect(onnxruntime),
        })
    }

    fn peak_search(
        &self,
        runs: &[RateRun],
        launch: &Launcher<'_>,
        progress: &dyn overparam_base::Progress,
    ) -> Result<Peak> {
        let mut probes = vec![];
        let mut lo = runs
            .iter()
            .filter(|r| r.held(self.max_loss))
            .map(|r| r.target_hz)
            .fold(0.0, f64::max);
        let mut hi = runs
            .iter()
            .filter(|r| !r.held(self.max_loss) && r.target_hz > lo)
            .map(|r| r.target_hz)
            .fold(f64::INFINITY, f64::min);
        let probe = |r: f64, probes: &mut Vec<(f64, f64)>| -> Result<bool> {
            let run = self.run_rate(r, launch)?;
            progress.event(&format!("peak search: {}", line(&run)));
            probes.push((r, run.loss));
            Ok(run.held(self.max_loss))
        };
        let mut at_ceiling = false;
        while hi.is_infinite() {
            let r = if lo > 0.0 { lo * 2.0 } else { 1.0 }.min(self.peak_max);
            if probe(r, &mut probes)? {
                lo = r;
                if r >= self.peak_max {
                    at_ceiling = true;
                    break;
                }
            } else {
                hi = r;
            }
        }
        if !at_ceiling {
            for _ in 0..self.peak_steps {
                let mid = (lo + hi) / 2.0;
                if probe(mid, &mut probes)? {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
        Ok(Peak {
            rate_hz: lo,
            at_ceiling,
            probes,
        })
    }
}

/// The files [`PipelineReport::write`] puts in its directory.
pub const REPORT_JSON: &str = "pipeline_bench.json";
pub const REPORT_MD: &str = "pipeline_bench.md";
pub const REPORT_PNG: &str = "pipeline_bench.png";

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

impl PipelineReport {
    /// The markdown report: the platform, one row per rate, the peak.
    pub fn markdown(&self) -> String {
        let camera = match &self.camera_key {
            Some(k) => format!("The external camera on `{k}` (its own rate, measured)"),
            None => format!("Camera {}×{} rgb8", self.camera[0], self.camera[1]),
        };
        let mut s = format!(
            "# Pipeline benchmark: {}\n\n{camera} → zenoh ({}) → `overparam bridge run` → outputs, on loopback. Each rate: {:.1} s warm-up, then {:.1} s measured. A frame is delivered when every output topic carried its stamp; a rate is held with at most {:.0}% loss.\n\n",
            self.model,
            self.mode,
            self.warmup_s,
            self.duration_s,
            self.max_loss * 100.0
        );
        s += "| rate Hz | achieved Hz | sent | missed | loss % | latency p50 ms | p90 | p99 | max | jitter mean ms | jitter max ms | CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.runs {
            s += &format!(
                "| {} | {:.1} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
                if r.target_hz.fract() == 0.0 {
                    r.target_hz.to_string()
                } else {
                    format!("{:.1}", r.target_hz)
                },
                r.achieved_hz,
                r.sent,
                r.missed,
                r.loss * 100.0,
                ms(r.latency_ms.p50),
                ms(r.latency_ms.p90),
                ms(r.latency_ms.p99),
                ms(r.latency_ms.max),
                ms(r.jitter_ms_mean_abs),
                ms(r.jitter_ms_max_abs),
                r.cpu_percent
                    .map_or_else(|| "unknown".into(), |c| format!("{c:.0}")),
            );
        }
        if let Some(p) = &self.peak {
            s += &format!(
                "\n**Peak throughput:** {}{:.1} Hz (at most {:.0}% loss; probes: {}).\n",
                if p.at_ceiling { "at least " } else { "" },
                p.rate_hz,
                self.max_loss * 100.0,
                p.probes
                    .iter()
                    .map(|(r, l)| format!("{r:.1} Hz {:.1}%", l * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s += &format!("\n![latency]({REPORT_PNG})\n\n## Platform\n\n| | |\n|---|---|\n");
        for (k, v) in self.platform.lines() {
            s += &format!("| {k} | {v} |\n");
        }
        s
    }

    /// Latency over the window per rate, above a histogram of every delivered frame's.
    pub fn plot(&self) -> overparam_data::plot::Canvas {
        use overparam_data::plot::{Series, histogram, line_chart, stack};
        let series: Vec<Series> = self
            .runs
            .iter()
            .map(|r| Series {
                label: format!("{} Hz", r.target_hz),
                points: r.samples.clone(),
            })
            .collect();
        let over_time = line_chart(
            "end-to-end latency over the measured window",
            "seconds",
            "ms",
            &series,
        );
        let all: Vec<f64> = self
            .runs
            .iter()
            .flat_map(|r| r.samples.iter().map(|s| s.1))
            .collect();
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        let p = |q| overparam_base::stats::percentile(&sorted, q);
        let hist = histogram(
            "latency, every rate",
            "ms",
            &all,
            40,
            &[("p50", p(50.0)), ("p99", p(99.0))],
        );
        stack(&[over_time, hist])
    }

    /// `pipeline_bench.json`, `.md` and `.png` in `dir` (created), each written whole or not
    /// at all.
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        let io = |path: std::path::PathBuf| {
            move |e: std::io::Error| Error::File {
                path: path.clone(),
                message: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir.into()))?;
        let json =
            serde_json::to_string_pretty(self).map_err(|e| Error::Malformed(e.to_string()))?;
        let p = dir.join(REPORT_JSON);
        overparam_base::write_file_atomic(&p, json.as_bytes()).map_err(io(p.clone()))?;
        let p = dir.join(REPORT_MD);
        overparam_base::write_file_atomic(&p, self.markdown().as_bytes()).map_err(io(p.clone()))?;
        self.plot().save(&dir.join(REPORT_PNG))?;
        Ok(())
    }
}

/// The capture stamp an output carries, ns: natively from the tensor header or the classes
/// JSON (status and health are not outputs); in ROS 2 from the header every output type
/// starts with (`std_msgs/Header`: stamp.sec, stamp.nanosec after the CDR encapsulation).
fn capture_stamp(key: &str, b: &[u8], ros2: bool) -> Option<i64> {
    // Float32MultiArray has no header; LabelInfo is sent once, not per frame.
    if ros2 && (key.contains("/raw/") || key.contains("/label_info/")) {
        return None;
    }
    if ros2 {
        let sec = i32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
        let nanosec = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
        return Some(ros2::Time { sec, nanosec }.to_ns());
    }
    if key.ends_with("/status") || key.ends_with("/health") || key.ends_with("/labels") {
        return None;
    }
    if key.ends_with("/classes") {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        return v["capture_ns"].as_i64();
    }
    wire::decode_header(b).ok().map(|h| h.stamps.capture_ns)
}

/// One run as a log line.
pub fn line(r: &RateRun) -> String {
    format!(
        "{:.1} Hz: achieved {:.1} Hz, missed {}/{} ({:.1}%), latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms, jitter {:.2} ms mean {:.2} ms max, CPU {}",
        r.target_hz,
        r.achieved_hz,
        r.missed,
        r.sent,
        r.loss * 100.0,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.max,
        r.jitter_ms_mean_abs,
        r.jitter_ms_max_abs,
        r.cpu_percent
            .map_or_else(|| "unknown".to_string(), |c| format!("{c:.0}%"))
    )
}

/// The run's statistics from what was sent and what arrived (see the module doc).
fn score(
    rate: f64,
    sent: &[i64],
    arrivals: &[(String, i64, i64)],
    duration_s: f64,
    cpu_percent: Option<f64>,
) -> RateRun {
    let outputs: BTreeSet<&str> = arrivals.iter().map(|(k, ..)| k.as_str()).collect();
    let mut by_frame: BTreeMap<i64, (BTreeSet<&str>, i64)> = BTreeMap::new();
    for (k, c, r) in arrivals {
        let e = by_frame.entry(*c).or_insert((BTreeSet::new(), 0));
        e.0.insert(k.as_str());
        e.1 = e.1.max(*r);
    }
    let w0 = sent.first().copied().unwrap_or(0);
    // (capture, last output's arrival, latency ms) of each delivered frame.
    let mut done: Vec<(i64, i64, f64)> = sent
        .iter()
        .filter_map(|c| {
            let (keys, last) = by_frame.get(c)?;
            (keys.len() == outputs.len()).then(|| (*c, *last, (*last - *c) as f64 / 1e6))
        })
        .collect();
    let samples = done
        .iter()
        .map(|&(c, _, l)| ((c - w0) as f64 / 1e9, l))
        .collect();
    done.sort_by_key(|d| d.1);
    let mut lat: Vec<f64> = done.iter().map(|d| d.2).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p| overparam_base::stats::percentile(&lat, p);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    let gaps: Vec<f64> = done
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) as f64 / 1e6)
        .collect();
    let expected = 1e3 / rate;
    let dev: Vec<f64> = gaps.iter().map(|g| (g - expected).abs()).collect();
    let gmean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let std =
        (gaps.iter().map(|g| (g - gmean).powi(2)).sum::<f64>() / gaps.len().max(1) as f64).sqrt();
    let nan_if_empty = |v: f64| if gaps.is_empty() { f64::NAN } else { v };
    let delivered = done.len() as u64;
    let n = sent.len() as u64;
    RateRun {
        target_hz: rate,
        sent: n,
        delivered,
        missed: n - delivered,
        loss: if n > 0 {
            (n - delivered) as f64 / n as f64
        } else {
            1.0
        },
        achieved_hz: delivered as f64 / duration_s,
        latency_ms: LatencyMs {
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: lat.last().copied().unwrap_or(f64::NAN),
            mean: if lat.is_empty() { f64::NAN } else { mean },
        },
        jitter_ms_mean_abs: nan_if_empty(dev.iter().sum::<f64>() / dev.len().max(1) as f64),
        jitter_ms_max_abs: nan_if_empty(dev.iter().copied().fold(0.0, f64::max)),
        inter_arrival_ms_std: nan_if_empty(std),
        cpu_percent,
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_counts_only_complete_frames_in_the_window() {
        let ms = 1_000_000i64;
        // 10 Hz; sent in the window: 1000, 1100, 1200, 1300 ms (900 was in the warm-up).
        let caps = [1000 * ms, 1100 * ms, 1200 * ms, 1300 * ms];
        let a = |k: &str, c: i64, r: i64| (k.to_string(), c * ms, r * ms);
        let arrivals = vec![
            a("seg", 900, 905),
            a("depth", 900, 906),
            a("seg", 1000, 1010),
            a("depth", 1000, 1012),
            a("seg", 1100, 1105),
            a("depth", 1100, 1125),
            // 1200: only one of two outputs arrived (missed); 1300: nothing (missed).
            a("seg", 1200, 1204),
        ];
        let r = score(10.0, &caps, &arrivals, 1.0, Some(50.0));
        assert_eq!((r.sent, r.delivered, r.missed), (4, 2, 2));
        assert_eq!(r.loss, 0.5);
        assert_eq!(r.achieved_hz, 2.0);
        assert_eq!(r.latency_ms.max, 25.0);
        assert_eq!(r.latency_ms.p50, 12.0);
        // One inter-arrival, 1125 − 1012 = 113 ms against 100 expected.
        assert!((r.jitter_ms_mean_abs - 13.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.inter_arrival_ms_std, 0.0);
        assert_eq!(r.samples, vec![(0.0, 12.0), (0.1, 25.0)]);
        assert!(!r.held(0.05) && r.held(0.5));
        assert_eq!(r.outputs, ["depth", "seg"]);
    }

    fn bench() -> PipelineBench {
        PipelineBench {
            rates: vec![10.0],
            duration: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            camera: (4, 4),
            ros2: None,
            peak: false,
            peak_max: 100.0,
            peak_steps: 3,
            max_loss: 0.05,
            startup: Duration::from_secs(1),
            external: None,
        }
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        assert!(bench().check().is_ok());
        let e = |b: PipelineBench| b.check().unwrap_err().to_string();
        for r in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let msg = e(PipelineBench {
                rates: vec![30.0, r],
                ..bench()
            });
            assert!(msg.contains("--rates"), "{msg}");
        }
        assert!(
            e(PipelineBench {
                rates: vec![],
                ..bench()
            })
            .contains("no rate")
        );
        assert!(
            e(PipelineBench {
                duration: Duration::ZERO,
                ..bench()
            })
            .contains("--duration")
        );
        assert!(
            e(PipelineBench {
                max_loss: 1.0,
                ..bench()
            })
            .contains("--max-loss")
        );
        assert!(
            e(PipelineBench {
                camera: (0, 4),
                ..bench()
            })
            .contains("--camera-size")
        );
        // An external camera sets its own rate: no fixed rates, no peak search.
        let ext = Some(ExternalCamera {
            key: "car/front/image".into(),
            connect: vec![],
        });
        let own = PipelineBench {
            rates: vec![],
            external: ext.clone(),
            ..bench()
        };
        assert!(own.check().is_ok());
        for b in [
            PipelineBench {
                rates: vec![10.0],
                ..own.clone()
            },
            PipelineBench {
                peak: true,
                ..own.clone()
            },
        ] {
            let msg = e(b);
            assert!(
                msg.contains("--camera-key car/front/image") && msg.contains("--rates"),
                "{msg}"
            );
        }
    }
}
