//! Publishing one frame's outputs: a topic per task, native or ROS 2, with per-topic QoS.

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use zenoh::Wait;
use zenoh::bytes::{Encoding, ZBytes};
use zenoh::pubsub::Publisher;
use zenoh::qos::{CongestionControl, Priority, Reliability};

use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::health::{Health, ModelInfo};
use crate::msgs::{self, Classification, DiagnosticArray, ObjectHypothesis, TypeKey};
use crate::ros2::{self, Ros2Names};
use crate::session::now_ns;
use crate::wire::{self, Stamps, Task, TensorData, TensorMsg};

/// Delivery settings of one topic. Perception outputs default to reliable + Block: with zenoh's
/// default Drop, large messages are lost under load without anyone being told
/// (`../shared/reference/needs.md` items 8 and 14).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopicQos {
    pub reliable: bool,
    pub block: bool,
    pub priority: Priority,
    pub express: bool,
    /// The ROS 2 history depth (keep last N) the topic advertises.
    pub depth: u32,
}

impl Default for TopicQos {
    fn default() -> Self {
        TopicQos {
            reliable: true,
            block: true,
            priority: Priority::DataHigh,
            express: false,
            depth: 10,
        }
    }
}

impl TopicQos {
    /// ROS 2's SensorDataQoS (rclcpp `rclcpp::SensorDataQoS`, `rmw_qos_profile_sensor_data`):
    /// best effort, keep last 5; a frame that cannot go out is dropped, never waited for.
    pub fn sensor_data() -> Self {
        TopicQos {
            reliable: false,
            block: false,
            depth: 5,
            ..Self::default()
        }
    }
}

pub fn parse_priority(s: &str) -> Result<Priority> {
    Ok(match s.replace('_', "-").as_str() {
        "realtime" | "real-time" => Priority::RealTime,
        "interactive-high" => Priority::InteractiveHigh,
        "interactive-low" => Priority::InteractiveLow,
        "data-high" => Priority::DataHigh,
        "data" => Priority::Data,
        "data-low" => Priority::DataLow,
        "background" => Priority::Background,
        _ => {
            return Err(Error::Malformed(format!(
                "priority {s:?}: one of realtime, interactive-high, interactive-low, data-high, data, data-low, background"
            )));
        }
    })
}

impl TopicQos {
    /// Applies `reliable|best-effort|block|drop|express|priority=P` items, comma-separated.
    pub fn apply(mut self, items: &str) -> Result<Self> {
        for it in items.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match it {
                "reliable" => self.reliable = true,
                "best-effort" => self.reliable = false,
                "block" => self.block = true,
                "drop" => self.block = false,
                "express" => self.express = true,
                "no-express" => self.express = false,
                _ => match it.strip_prefix("priority=") {
                    Some(p) => self.priority = parse_priority(p)?,
                    None => {
                        return Err(Error::Malformed(format!(
                            "QoS item {it:?}: use reliable, best-effort, block, drop, express or priority=P"
                        )));
                    }
                },
            }
        }
        Ok(self)
    }
}

#[derive(Clone, Debug)]
pub struct PublishConfig {
    /// Native key prefix: topics are `<prefix>/<camera>/<task>`.
    pub prefix: String,
    pub camera: String,
    /// ROS 2 (rmw_zenoh) mode instead of the native format.
    pub ros2: Option<Ros2Names>,
    pub qos: BTreeMap<Task, TopicQos>,
    /// Publish a small JSON status message per frame on `<prefix>/<camera>/status`.
    pub status: bool,
    /// What runs: with it, the last second's health ([`crate::health`]) is published every
    /// [`PublishConfig::health_period`], on `/diagnostics` as a `DiagnosticArray` in ROS 2
    /// mode and as JSON on `<prefix>/<camera>/health` natively, and the status message
    /// carries the latest report.
    pub health: Option<ModelInfo>,
    pub health_period: Duration,
    /// ROS 2 mode: republish each frame's camera calibration ([`FrameOutputs::camera_info`])
    /// on `/<ns>/<camera>/camera_info`, scaled to the outputs' resolution, with the frame's
    /// header.
    pub camera_info: bool,
    /// The names of the model's raw outputs, in order: [`Task::Raw`]`(i)` goes out on
    /// `.../raw/<raw[i] as a topic token>` ([`crate::names::topic_token`]).
    pub raw: Vec<String>,
    /// Class names by class id: published once, kept for late subscribers (transient local),
    /// as `vision_msgs/LabelInfo` on `/<ns>/<camera>/label_info` in ROS 2 mode and as JSON
    /// with each class's colour in the segmentation colour map on `<prefix>/<camera>/labels`.
    pub labels: Option<Vec<String>>,
}

impl PublishConfig {
    pub fn native(prefix: &str, camera: &str) -> Self {
        PublishConfig {
            prefix: prefix.trim_matches('/').to_string(),
            camera: camera.to_string(),
            ros2: None,
            qos: Task::OUTPUTS
                .iter()
                .map(|&t| (t, TopicQos::default()))
                .collect(),
            status: true,
            health: None,
            health_period: Duration::from_secs(1),
            camera_info: false,
            raw: vec![],
            labels: None,
        }
    }
    /// The topic's last part: the task's name, `raw/<output>` for a raw output.
    pub fn leaf(&self, task: Task) -> String {
        match task {
            Task::Raw(i) => format!(
                "raw/{}",
                self.raw
                    .get(i as usize)
                    .map_or_else(|| i.to_string(), |n| crate::names::topic_token(n))
            ),
            _ => task.name().to_string(),
        }
    }
    /// ROS 2 mode: an output's topic, `/<ns>/<camera>/<leaf>`.
    fn ros2_topic(&self, n: &Ros2Names, task: Task) -> String {
        n.output_topic(&self.camera, &self.leaf(task))
    }
    pub fn key(&self, task: Task) -> String {
        match &self.ros2 {
            Some(n) => {
                let t = ros2::task_type(task);
                n.typed_key(&self.ros2_topic(n, task), &t.dds_name, &t.hash)
            }
            None => format!("{}/{}/{}", self.prefix, self.camera, self.leaf(task)),
        }
    }
    pub fn status_key(&self) -> String {
        format!("{}/{}/status", self.prefix, self.camera)
    }
    /// Where the class names go: `/<ns>/<camera>/label_info` (LabelInfo) in ROS 2 mode,
    /// `<prefix>/<camera>/labels` natively.
    pub fn labels_key(&self) -> Result<String> {
        Ok(match &self.ros2 {
            Some(n) => {
                let t = TypeKey::of(msgs::LABEL_INFO)?;
                n.typed_key(
                    &n.output_topic(&self.camera, "label_info"),
                    &t.dds_name,
                    &t.hash,
                )
            }
            None => format!("{}/{}/labels", self.prefix, self.camera),
        })
    }
    /// Where the health reports go: `/diagnostics` (absolute, as diagnostic_updater publishes
    /// it) in ROS 2 mode, `<prefix>/<camera>/health` natively.
    pub fn health_key(&self) -> Result<String> {
        Ok(match &self.ros2 {
            Some(n) => {
                let t = TypeKey::of(msgs::DIAGNOSTIC_ARRAY)?;
                n.typed_key(DIAGNOSTICS_TOPIC, &t.dds_name, &t.hash)
            }
            None => format!("{}/{}/health", self.prefix, self.camera),
        })
    }
}

/// The outputs' resolution, for the camera info: that of the first image output (HWC). Raw
/// outputs are NCHW and classes 1-D, so neither can say it.
fn image_resolution(tensors: &[(Task, Vec<usize>, TensorData)]) -> Option<(usize, usize)> {
    tensors
        .iter()
        .find(|(t, s, _)| ros2::image_encoding(*t).is_some() && s.len() >= 2)
        .map(|(_, s, _)| (s[0], s[1]))
}

/// The ROS 2 topic of health reports (REP 107, diagnostic_updater).
pub const DIAGNOSTICS_TOPIC: &str = "/diagnostics";

/// The thread that closes a health window every period and publishes it; dropping it
/// publishes the last, partial window and joins the thread.
struct HealthTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HealthTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl HealthTicker {
    fn spawn(
        health: Arc<Health>,
        counters: Arc<Counters>,
        publisher: Publisher<'static>,
        // The ROS 2 publisher's GID (ROS 2 mode) for rmw_zenoh's attachment.
        ros2_gid: Option<[u8; 16]>,
        camera: String,
        period: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let name = format!("overparam_bridge: {camera}");
        let thread = std::thread::spawn(move || {
            let mut due = Instant::now() + period;
            let mut seq = 0i64;
            loop {
                // Disconnected: the publisher is dropping; this report is the last.
                let last = !matches!(
                    rx.recv_timeout(due.saturating_duration_since(Instant::now())),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                let r = health.report(Instant::now(), &counters.snapshot());
                let payload = if ros2_gid.is_some() {
                    let now = now_ns();
                    msgs::to_cdr(&DiagnosticArray {
                        header: ros2::Header {
                            stamp: ros2::Time::from_ns(now),
                            frame_id: String::new(),
                        },
                        status: vec![r.to_status(&name, &camera)],
                    })
                    .map(ZBytes::from)
                } else {
                    serde_json::to_string(&r)
                        .map(ZBytes::from)
                        .map_err(|e| Error::Malformed(e.to_string()))
                };
                // A lost report is only a lost report: the next one says as much.
                if let Ok(p) = payload {
                    let put = publisher.put(p);
                    seq += 1;
                    let _ = match &ros2_gid {
                        Some(gid) => put
                            .attachment(ros2::attachment(seq, now_ns(), gid).to_vec())
                            .wait(),
                        None => put.wait(),
                    };
                }
                if last {
                    return;
                }
                due += period;
            }
        });
        HealthTicker {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

/// One frame's outputs, channels last: segmentation H×W u8, depth H×W f32, normals H×W×3 f32.
#[derive(Clone, Debug)]
pub struct FrameOutputs {
    pub frame_id: u64,
    pub stamps: Stamps,
    /// The ROS 2 camera frame's header, when the input was one: ROS 2 outputs carry it
    /// unchanged (stamp and frame_id), native ones its stamp as the capture time (`stamps`)
    /// and the status message both. `None`: the stamp is `stamps.capture_ns` and the frame_id
    /// the camera name.
    pub header: Option<ros2::Header>,
    pub tensors: Vec<(Task, Vec<usize>, TensorData)>,
    /// The input camera's calibration at its own resolution (a `ros2:` source's
    /// `camera_info`), republished scaled when [`PublishConfig::camera_info`] is on.
    pub camera_info: Option<msgs::CameraInfo>,
}

struct Topic {
    task: Task,
    publisher: Publisher<'static>,
    gid: [u8; 16],
}

pub struct PerceptionPublisher {
    cfg: PublishConfig,
    topics: Vec<Topic>,
    status: Option<Publisher<'static>>,
    /// `/<ns>/<camera>/camera_info` and its GID (ROS 2 mode with `camera_info`).
    camera_info: Option<(Publisher<'static>, [u8; 16])>,
    /// The class names' publisher: its cache answers late subscribers while it lives.
    _labels: Option<zenoh_ext::AdvancedPublisher<'static>>,
    health: Option<Arc<Health>>,
    // Sends its last report and stops when the publisher drops.
    _ticker: Option<HealthTicker>,
    _tokens: Vec<zenoh::liveliness::LivelinessToken>,
    stream_id: u64,
    counters: Arc<Counters>,
}

impl PerceptionPublisher {
    pub fn new(session: &zenoh::Session, cfg: PublishConfig) -> Result<Self> {
        let zid = session.zid().to_string();
        let mut topics = vec![];
        let mut tokens = vec![];
        let node_id = 0;
        if let Some(n) = &cfg.ros2 {
            tokens.push(
                session
                    .liveliness()
                    .declare_token(n.node_token(&zid, node_id))
                    .wait()?,
            );
        }
        for (i, (&task, qos)) in cfg.qos.iter().enumerate() {
            let key = cfg.key(task);
            let encoding = match (cfg.ros2.is_some(), task) {
                (true, Task::Classes) => "application/cdr;vision_msgs/msg/Classification",
                (true, Task::Raw(_)) => "application/cdr;std_msgs/msg/Float32MultiArray",
                (false, Task::Classes) => "application/json",
                (true, _) => ros2::ZENOH_ENCODING,
                (false, _) => wire::ZENOH_ENCODING,
            };
            let publisher = session
                .declare_publisher(key.clone())
                .encoding(Encoding::from(encoding))
                .congestion_control(if qos.block {
                    CongestionControl::Block
                } else {
                    CongestionControl::Drop
                })
                .reliability(if qos.reliable {
                    Reliability::Reliable
                } else {
                    Reliability::BestEffort
                })
                .priority(qos.priority)
                .express(qos.express)
                .wait()?;
            if let Some(n) = &cfg.ros2 {
                let qos = ros2::qos_string(qos.reliable, qos.depth);
                let (topic, t) = (cfg.ros2_topic(n, task), ros2::task_type(task));
                let token = n.typed_publisher_token(ros2::Endpoint::typed(
                    &zid,
                    node_id,
                    i as u32 + 1,
                    &topic,
                    &t,
                    &qos,
                ));
                tokens.push(session.liveliness().declare_token(token).wait()?);
            }
            topics.push(Topic {
                task,
                publisher,
                gid: ros2::gid(&zid, &key),
            });
        }
        let status = if cfg.status {
            Some(
                session
                    .declare_publisher(cfg.status_key())
                    .encoding(Encoding::APPLICATION_JSON)
                    .congestion_control(CongestionControl::Drop)
                    .priority(Priority::Data)
                    .wait()?,
            )
        } else {
            None
        };
        // A new stream id per start lets listeners tell a restarted publisher from lost frames.
        let stream_id = {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one((now_ns(), std::process::id()))
        };
        let counters = Arc::new(Counters::default());
        let camera_info = match (&cfg.ros2, cfg.camera_info) {
            (Some(n), true) => {
                let t = TypeKey::of(msgs::CAMERA_INFO)?;
                let topic = n.output_topic(&cfg.camera, "camera_info");
                let key = n.typed_key(&topic, &t.dds_name, &t.hash);
                let p = session
                    .declare_publisher(key.clone())
                    .encoding(Encoding::from("application/cdr;sensor_msgs/msg/CameraInfo"))
                    .congestion_control(CongestionControl::Drop)
                    .wait()?;
                let qos = ros2::qos_string(true, 10);
                let token = n.typed_publisher_token(ros2::Endpoint::typed(
                    &zid,
                    node_id,
                    topics.len() as u32 + 2,
                    &topic,
                    &t,
                    &qos,
                ));
                tokens.push(session.liveliness().declare_token(token).wait()?);
                Some((p, ros2::gid(&zid, &key)))
            }
            _ => None,
        };
        let labels = match &cfg.labels {
            Some(names) => Some(declare_labels(
                session,
                &cfg,
                names,
                (&zid, node_id, topics.len() as u32 + 3),
                &mut tokens,
            )?),
            None => None,
        };
        let (health, ticker) = match &cfg.health {
            None => (None, None),
            Some(info) => {
                let health = Arc::new(Health::new(info.clone(), Instant::now()));
                let key = cfg.health_key()?;
                let p = session
                    .declare_publisher(key.clone())
                    .encoding(Encoding::from(if cfg.ros2.is_some() {
                        "application/cdr;diagnostic_msgs/msg/DiagnosticArray"
                    } else {
                        "application/json"
                    }))
                    .congestion_control(CongestionControl::Drop)
                    .priority(Priority::Data)
                    .wait()?;
                if let Some(n) = &cfg.ros2 {
                    // diagnostic_updater's publisher: reliable, keep last 1.
                    let t = TypeKey::of(msgs::DIAGNOSTIC_ARRAY)?;
                    let qos = ros2::qos_string(true, 1);
                    let token = n.typed_publisher_token(ros2::Endpoint::typed(
                        &zid,
                        node_id,
                        topics.len() as u32 + 1,
                        DIAGNOSTICS_TOPIC,
                        &t,
                        &qos,
                    ));
                    tokens.push(session.liveliness().declare_token(token).wait()?);
                }
                let ticker = HealthTicker::spawn(
                    health.clone(),
                    counters.clone(),
                    p,
                    cfg.ros2.as_ref().map(|_| ros2::gid(&zid, &key)),
                    cfg.camera.clone(),
                    cfg.health_period,
                );
                (Some(health), Some(ticker))
            }
        };
        Ok(PerceptionPublisher {
            cfg,
            topics,
            status,
            camera_info,
            _labels: labels,
            health,
            _ticker: ticker,
            _tokens: tokens,
            stream_id,
            counters,
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn keys(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| t.publisher.key_expr().to_string())
            .collect()
    }

    /// Whether every output topic has at least one matching subscriber now.
    pub fn all_matched(&self) -> Result<bool> {
        for t in &self.topics {
            if !t.publisher.matching_status().wait()?.matching() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits until every output topic has a subscriber, up to `timeout`.
    pub fn wait_for_subscribers(&self, timeout: std::time::Duration) -> Result<bool> {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < timeout {
            if self.all_matched()? {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.all_matched()
    }

    /// Publishes every output of a frame on its topic (only the tasks configured). Copies the
    /// tensors once; [`PerceptionPublisher::publish_owned`] does not.
    pub fn publish(&self, frame: &FrameOutputs) -> Result<()> {
        self.publish_owned(frame.clone())
    }

    /// [`PerceptionPublisher::publish`] taking the outputs: each message goes out as two slices,
    /// the encoded header and the tensor's own buffer, so the tensor is never copied on this
    /// side of zenoh (little-endian hosts; big-endian ones convert).
    pub fn publish_owned(&self, frame: FrameOutputs) -> Result<()> {
        let FrameOutputs {
            frame_id,
            stamps,
            header,
            tensors,
            camera_info,
        } = frame;
        let out_hw = image_resolution(&tensors);
        // ROS 2 outputs carry the camera frame's header, else one from the capture stamp.
        let ros2_header = self.cfg.ros2.as_ref().map(|_| {
            header.clone().unwrap_or_else(|| ros2::Header {
                stamp: ros2::Time::from_ns(stamps.capture_ns),
                frame_id: self.cfg.camera.clone(),
            })
        });
        let mut tensors: Vec<Option<(Task, Vec<usize>, TensorData)>> =
            tensors.into_iter().map(Some).collect();
        for topic in &self.topics {
            let Some((_, shape, data)) = tensors
                .iter_mut()
                .find(|t| t.as_ref().is_some_and(|(task, ..)| *task == topic.task))
                .and_then(Option::take)
            else {
                return Err(Error::Malformed(format!(
                    "frame {frame_id} has no {} output",
                    topic.task.name()
                )));
            };
            let head = TensorMsg {
                stream_id: self.stream_id,
                frame_id,
                task: topic.task,
                stamps,
                shape: vec![],
                data: TensorData::U8(vec![]),
            };
            let matched = topic.publisher.matching_status().wait()?.matching();
            let attachment = self
                .cfg
                .ros2
                .as_ref()
                .map(|_| ros2::attachment(frame_id as i64, now_ns(), &topic.gid).to_vec());
            let (payload, n) = if topic.task == Task::Classes {
                let b = self.classes_payload(frame_id, stamps, &shape, &data, &ros2_header)?;
                let n = b.len() as u64;
                (ZBytes::from(b), n)
            } else if matches!(topic.task, Task::Raw(_)) && ros2_header.is_some() {
                let TensorData::F32(v) = data else {
                    return Err(Error::Malformed(format!(
                        "frame {frame_id}: raw outputs are f32 tensors"
                    )));
                };
                let b = msgs::to_cdr(&msgs::Float32MultiArray::row_major(&shape, v))?;
                let n = b.len() as u64;
                (ZBytes::from(b), n)
            } else {
                let prefix = match &ros2_header {
                    Some(h) => {
                        ros2::image_prefix_with_header(topic.task, &shape, &data, h.clone())?
                    }
                    None => {
                        let mut b = wire::encode_header(&head, &shape, &data)?;
                        // Stamped last, so publish → receive measures the transport alone.
                        b[wire::PUBLISH_NS_OFFSET..wire::PUBLISH_NS_OFFSET + 8]
                            .copy_from_slice(&now_ns().to_le_bytes());
                        b
                    }
                };
                let n = (prefix.len() + data.len() * data.dtype().size()) as u64;
                let mut w = ZBytes::writer();
                w.append(ZBytes::from(prefix));
                w.append(tensor_bytes(data));
                (w.finish(), n)
            };
            let put = topic.publisher.put(payload);
            match attachment {
                Some(a) => put.attachment(a).wait()?,
                None => put.wait()?,
            }
            Counters::add(&self.counters.sent, 1);
            Counters::add(&self.counters.bytes_sent, n);
            if !matched {
                Counters::add(&self.counters.sent_unmatched, 1);
            }
        }
        if let (Some((p, gid)), Some(info), Some((h, w)), Some(hdr)) =
            (&self.camera_info, &camera_info, out_hw, &ros2_header)
            && let Some(scaled) = info.scaled(h, w, hdr.clone())
        {
            let b = msgs::to_cdr(&scaled)?;
            Counters::add(&self.counters.bytes_sent, b.len() as u64);
            p.put(b)
                .attachment(ros2::attachment(frame_id as i64, now_ns(), gid).to_vec())
                .wait()?;
            Counters::add(&self.counters.sent, 1);
        }
        if let Some(h) = &self.health {
            // capture_ns is the camera header's stamp when there is one.
            let done = now_ns();
            h.record(
                (done - stamps.infer_start_ns) as f64 / 1e6,
                (done - stamps.capture_ns) as f64 / 1e6,
            );
        }
        if let Some(s) = &self.status {
            let mut status = serde_json::json!({
                "stream_id": self.stream_id,
                "frame_id": frame_id,
                "capture_ns": stamps.capture_ns,
                "inference_ms": (stamps.infer_end_ns - stamps.infer_start_ns) as f64 / 1e6,
                "counters": self.counters.snapshot(),
            });
            // The native header has no room for the camera's frame_id: native consumers match
            // outputs to the camera frame by capture_ns (its stamp) and find the name here.
            if let Some(h) = &header {
                status["camera_header"] = serde_json::json!({
                    "sec": h.stamp.sec,
                    "nanosec": h.stamp.nanosec,
                    "frame_id": h.frame_id,
                });
            }
            if let Some(h) = &self.health {
                status["health"] = serde_json::to_value(h.latest()).unwrap_or_default();
            }
            s.put(status.to_string()).wait()?;
        }
        Ok(())
    }
}

impl PerceptionPublisher {
    /// The classes output (k × 2: class id, score; best first) as JSON natively, or, given
    /// the ROS 2 header, as a `vision_msgs/Classification` carrying it.
    fn classes_payload(
        &self,
        frame_id: u64,
        stamps: Stamps,
        shape: &[usize],
        data: &TensorData,
        ros2_header: &Option<ros2::Header>,
    ) -> Result<Vec<u8>> {
        let (TensorData::F32(v), [_, 2]) = (data, shape) else {
            return Err(Error::Malformed(format!(
                "classes want k×2 f32 (class id, score), got {shape:?} {:?}",
                data.dtype()
            )));
        };
        let top: Vec<(u32, f32)> = v.chunks_exact(2).map(|c| (c[0] as u32, c[1])).collect();
        if let Some(h) = ros2_header {
            msgs::to_cdr(&Classification {
                header: h.clone(),
                results: top
                    .iter()
                    .map(|&(id, score)| ObjectHypothesis {
                        class_id: id.to_string(),
                        score: score as f64,
                    })
                    .collect(),
            })
        } else {
            let classes: Vec<serde_json::Value> = top
                .iter()
                .map(|&(id, score)| serde_json::json!({"class_id": id, "score": score}))
                .collect();
            Ok(serde_json::json!({
                "stream_id": self.stream_id,
                "frame_id": frame_id,
                "capture_ns": stamps.capture_ns,
                "classes": classes,
            })
            .to_string()
            .into_bytes())
        }
    }
}

/// Declares the class names' publisher and publishes them once. Transient local as rmw_zenoh
/// makes it (`rmw_publisher_data.cpp`: a zenoh-ext AdvancedPublisher with a cache of `depth`
/// samples and publisher detection; its AdvancedSubscribers query the cache when they match),
/// reliable, keep last 1.
fn declare_labels(
    session: &zenoh::Session,
    cfg: &PublishConfig,
    names: &[String],
    (zid, node_id, entity_id): (&str, u32, u32),
    tokens: &mut Vec<zenoh::liveliness::LivelinessToken>,
) -> Result<zenoh_ext::AdvancedPublisher<'static>> {
    use zenoh_ext::{AdvancedPublisherBuilderExt, CacheConfig};
    let key = cfg.labels_key()?;
    let p = session
        .declare_publisher(key.clone())
        .encoding(Encoding::from(if cfg.ros2.is_some() {
            "application/cdr;vision_msgs/msg/LabelInfo"
        } else {
            "application/json"
        }))
        .reliability(Reliability::Reliable)
        .cache(CacheConfig::default().max_samples(1))
        .publisher_detection()
        .wait()?;
    let payload = match &cfg.ros2 {
        Some(n) => {
            let t = TypeKey::of(msgs::LABEL_INFO)?;
            let topic = n.output_topic(&cfg.camera, "label_info");
            let qos = ros2::qos_string_durable(true, 1, true);
            tokens.push(
                session
                    .liveliness()
                    .declare_token(n.typed_publisher_token(ros2::Endpoint::typed(
                        zid, node_id, entity_id, &topic, &t, &qos,
                    )))
                    .wait()?,
            );
            msgs::to_cdr(&msgs::LabelInfo {
                header: ros2::Header {
                    stamp: ros2::Time::from_ns(now_ns()),
                    frame_id: cfg.camera.clone(),
                },
                class_map: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| msgs::VisionClass {
                        class_id: i as u16,
                        class_name: n.clone(),
                    })
                    .collect(),
                threshold: 0.0,
            })?
        }
        None => serde_json::json!({
            "classes": names
                .iter()
                .enumerate()
                .map(|(i, n)| serde_json::json!({
                    "id": i,
                    "name": n,
                    "color": overparam_data::png::class_colour(i as f32),
                }))
                .collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes(),
    };
    let put = p.put(payload);
    match &cfg.ros2 {
        Some(_) => put
            .attachment(ros2::attachment(1, now_ns(), &ros2::gid(zid, &key)).to_vec())
            .wait()?,
        None => put.wait()?,
    }
    Ok(p)
}

/// A tensor's little-endian bytes as a zenoh payload that owns the tensor's buffer.
fn tensor_bytes(data: TensorData) -> ZBytes {
    match data {
        TensorData::U8(v) => ZBytes::from(v),
        #[cfg(target_endian = "little")]
        TensorData::F32(v) => ZBytes::from(bytes::Bytes::from_owner(F32Bytes(v))),
        #[cfg(not(target_endian = "little"))]
        d @ TensorData::F32(_) => {
            let mut b = vec![];
            d.extend_le(&mut b);
            ZBytes::from(b)
        }
    }
}

/// An f32 buffer viewed as its (little-endian) bytes, for [`bytes::Bytes::from_owner`].
#[cfg(target_endian = "little")]
struct F32Bytes(Vec<f32>);

#[cfg(target_endian = "little")]
impl AsRef<[u8]> for F32Bytes {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_info_resolution_comes_from_an_image_output_whatever_the_order() {
        let f = |n| TensorData::F32(vec![0.0; n]);
        let tensors = vec![
            (Task::Classes, vec![10], f(10)),
            (Task::Raw(0), vec![1, 8, 6, 5], f(240)),
            (Task::Depth, vec![6, 5, 1], f(30)),
        ];
        assert_eq!(image_resolution(&tensors), Some((6, 5)));
        assert_eq!(image_resolution(&tensors[..2]), None);
    }
}
