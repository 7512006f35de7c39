use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use overparam_bridge::listener::{Event, ListenConfig, Listener, fmt_value, format_report};
use overparam_bridge::publisher::{PerceptionPublisher, PublishConfig, TopicQos};
use overparam_bridge::ros2::Ros2Names;
use overparam_bridge::run::{Model, RunOptions, run_until};
use overparam_bridge::session::ZenohOptions;
use overparam_bridge::source::{self, SourceSpec};
use overparam_bridge::wire::{Task, TensorData, TensorMsg};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BridgeCommand,
}

/// zenoh session options, as zenoh's own tools take them.
#[derive(clap::Args, Clone)]
struct ZenohArgs {
    /// zenoh JSON5 config file (the flags below override it).
    #[arg(long = "config")]
    zenoh_config: Option<PathBuf>,
    /// peer or client.
    #[arg(long, default_value = "peer")]
    mode: String,
    /// Endpoints to listen on, e.g. tcp/127.0.0.1:7447 (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Endpoints to connect to, e.g. tcp/192.168.1.10:7447 (repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// Turn multicast scouting off (use with explicit --listen/--connect).
    #[arg(long)]
    no_multicast_scouting: bool,
    /// zenoh shared memory for subscribers on this host (needs the `shm` cargo feature).
    #[arg(long)]
    shm: bool,
}

impl ZenohArgs {
    fn options(&self) -> ZenohOptions {
        ZenohOptions {
            config: self.zenoh_config.clone(),
            mode: Some(self.mode.clone()),
            listen: self.listen.clone(),
            connect: self.connect.clone(),
            no_multicast_scouting: self.no_multicast_scouting,
            shm: self.shm,
        }
    }
}

#[derive(clap::Args, Clone)]
struct Ros2Args {
    /// Publish/subscribe ROS 2 sensor_msgs/Image the way rmw_zenoh does.
    #[arg(long)]
    ros2: bool,
    /// ROS_DOMAIN_ID.
    #[arg(long, default_value_t = 0)]
    domain_id: u32,
    /// ROS namespace of the topics, e.g. /vehicle1/perception.
    #[arg(long, default_value = "/perception")]
    namespace: String,
    /// ROS node name shown in the graph.
    #[arg(long, default_value = "overparam")]
    node: String,
}

#[derive(clap::Subcommand)]
enum BridgeCommand {
    /// Run a deploy model on frames from a source and publish one topic per task.
    Run {
        /// A deploy checkpoint (exported to FP32 ONNX in memory) or an ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// synthetic[:SEED], nyuv2:DIR, images:DIR (PNG/JPEG), zenoh:KEY (native camera
        /// frames) or ros2:TOPIC (a sensor_msgs/Image topic through rmw_zenoh, in --domain-id;
        /// a relative TOPIC is under --namespace; rgb8, bgr8, rgba8, bgra8 or mono8 at any
        /// size; the newest frame is kept when the model is slower than the camera, the others
        /// counted as skipped; outputs carry the frame's header.stamp and frame_id).
        #[arg(long, default_value = "synthetic")]
        source: String,
        /// Pace publishing to this rate, at least 0.01 (default: as fast as inference allows).
        #[arg(long)]
        fps: Option<f64>,
        /// Stop after this many frames (at least 1; default: until the source ends or Ctrl-C).
        #[arg(long)]
        frames: Option<u64>,
        /// Camera name: topics are <prefix>/<camera>/<task>.
        #[arg(long, default_value = "cam0")]
        camera: String,
        /// Native key prefix.
        #[arg(long, default_value = "overparam")]
        prefix: String,
        /// QoS of every output topic: comma-separated reliable|best-effort, block|drop,
        /// express, priority=realtime|interactive-high|...|data-high|data|data-low|background.
        #[arg(long, default_value = "reliable,block,priority=data-high")]
        qos: String,
        /// Per-topic QoS on top of --qos, e.g. `segmentation=drop,express` (repeatable).
        #[arg(long = "topic-qos", value_name = "TASK=ITEMS")]
        topic_qos: Vec<String>,
        /// Wait up to this many seconds for subscribers on every topic before the first frame.
        #[arg(long, default_value_t = 0.0)]
        wait_subscribers: f64,
        /// ONNX Runtime intra-op threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        runtime: super::bench::RuntimeArgs,
        #[command(flatten)]
        ros: Ros2Args,
        #[command(flatten)]
        zenoh: ZenohArgs,
    },
    /// Subscribe to a bridge's topics: validate, count, and report rates, latency and gaps.
    Listen {
        /// Native key prefix to subscribe to (<prefix>/**).
        #[arg(long, default_value = "overparam")]
        prefix: String,
        /// Stop after this many seconds (default: until Ctrl-C or SIGTERM; either prints the
        /// report).
        #[arg(long)]
        duration: Option<f64>,
        /// Stop after this many valid messages.
        #[arg(long)]
        messages: Option<u64>,
        /// Write PNG colour maps of the last message per topic here (every --dump-every).
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Dump every N-th message of a topic.
        #[arg(long, default_value_t = 30)]
        dump_every: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Append one line per valid message, `<key> <stream id> <frame id>`, flushed as it
        /// arrives (survives a kill; used by the fault tests).
        #[arg(long)]
        record: Option<PathBuf>,
        #[command(flatten)]
        ros: Ros2Args,
        #[command(flatten)]
        zenoh: ZenohArgs,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        BridgeCommand::Run {
            model,
            source,
            fps,
            frames,
            camera,
            prefix,
            qos,
            topic_qos,
            wait_subscribers,
            threads,
            runtime,
            ros,
            zenoh,
        } => {
            let opts = RunOptions { frames, fps };
            opts.check()?;
            let spec: SourceSpec = source.parse()?;
            super::stop::install()?;
            let mut m = Model::load(&model, threads, &runtime.provider()?)
                .with_context(|| format!("loading {}", model.display()))?;
            let session = zenoh
                .options()
                .open()
                .context("opening the zenoh session")?;
            // A ros2: source is resolved in the same domain and namespace as ROS 2 outputs.
            let names = Ros2Names::new(ros.domain_id, &ros.namespace, &ros.node);
            // Refused camera samples are reported above the frame bar.
            use overparam_base::Progress;
            let bars = std::sync::Arc::new(crate::progress::Bars::stderr());
            let mut src = source::open_with(&spec, m.size, Some(&session), &names, bars.clone())?;
            let mut cfg = PublishConfig::native(&prefix, &camera);
            if ros.ros2 {
                cfg.ros2 = Some(names.clone());
            }
            let base = TopicQos::default().apply(&qos)?;
            cfg.qos = m.tasks.iter().map(|&t| (t, base)).collect();
            for tq in &topic_qos {
                let (task, items) = tq
                    .split_once('=')
                    .with_context(|| format!("--topic-qos {tq}: want TASK=ITEMS"))?;
                let t = Task::from_name(task)
                    .filter(|t| cfg.qos.contains_key(t))
                    .with_context(|| format!("--topic-qos {tq}: the model has no output {task}"))?;
                let q = cfg.qos[&t].apply(items)?;
                cfg.qos.insert(t, q);
            }
            let publisher = PerceptionPublisher::new(&session, cfg)?;
            eprintln!(
                "bridge: {} ({}×{}) from {source} → {}",
                model.display(),
                m.size.0,
                m.size.1,
                publisher.keys().join(", ")
            );
            if wait_subscribers > 0.0
                && !publisher.wait_for_subscribers(Duration::from_secs_f64(wait_subscribers))?
            {
                eprintln!(
                    "bridge: no subscriber on every topic after {wait_subscribers} s; publishing anyway"
                );
            }
            if let SourceSpec::Ros2(topic) = &spec {
                eprintln!(
                    "bridge: camera {} (domain {}) on {}",
                    names.resolve_topic(topic)?,
                    ros.domain_id,
                    names.topic_key(&names.resolve_topic(topic)?)
                );
            }
            bars.start("frames", frames.unwrap_or(0));
            let s = run_until(
                &mut m,
                src.as_mut(),
                &publisher,
                &opts,
                super::stop::stop_requested,
                |_| bars.inc(1),
            )?;
            bars.finish();
            if let Some(sig) = super::stop::requested() {
                eprintln!("bridge: stopped by {sig}");
            }
            println!(
                "published {} frames in {:.1} s ({:.1} frames/s); inference p50 {} ms p99 {} ms; sent {} messages ({} with no subscriber), {:.1} MB",
                s.frames,
                s.seconds,
                s.fps,
                fmt_value(s.inference_ms_p50, 1),
                fmt_value(s.inference_ms_p99, 1),
                s.counters.sent,
                s.counters.sent_unmatched,
                s.counters.bytes_sent as f64 / 1e6
            );
            if let SourceSpec::Ros2(_) = &spec {
                let c = &s.counters;
                println!(
                    "camera input: received {} frames, skipped {} (a newer frame replaced them before the model was free), refused {}",
                    c.input_received, c.input_skipped, c.input_invalid
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BridgeCommand::Listen {
            prefix,
            duration,
            messages,
            dump,
            dump_every,
            json,
            record,
            ros,
            zenoh,
        } => {
            if let Some(d) = duration
                && !(d.is_finite() && d > 0.0)
            {
                bail!("--duration {d}: want a positive number of seconds");
            }
            super::stop::install()?;
            let session = zenoh
                .options()
                .open()
                .context("opening the zenoh session")?;
            let mut cfg = if ros.ros2 {
                ListenConfig::ros2(&Ros2Names::new(ros.domain_id, &ros.namespace, &ros.node))
            } else {
                ListenConfig::native(&prefix)
            };
            // Tensors are only copied out when something looks at them.
            cfg.payloads = dump.is_some();
            eprintln!("listening on {}", cfg.key);
            let mut l = Listener::new(&session, cfg)?;
            if let Some(d) = &dump {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            let mut rec = match &record {
                Some(p) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .with_context(|| format!("opening {}", p.display()))?,
                ),
                None => None,
            };
            let t0 = Instant::now();
            let mut last_print = Instant::now();
            let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
            let mut valid = 0u64;
            loop {
                if duration.is_some_and(|d| t0.elapsed().as_secs_f64() >= d)
                    || messages.is_some_and(|n| valid >= n)
                {
                    break;
                }
                if let Some(sig) = super::stop::requested() {
                    eprintln!("bridge listen: stopped by {sig}");
                    break;
                }
                match l.recv(Duration::from_millis(100))? {
                    Some(Event::Message { key, msg }) => {
                        valid += 1;
                        record_line(rec.as_mut(), &key, msg.stream_id, msg.frame_id)?;
                        let n = per_key.entry(key.clone()).or_default();
                        if let Some(d) = &dump
                            && (*n).is_multiple_of(dump_every.max(1))
                        {
                            dump_png(d, &key, &msg)?;
                        }
                        *n += 1;
                    }
                    Some(Event::Header { key, header }) => {
                        valid += 1;
                        record_line(rec.as_mut(), &key, header.stream_id, header.frame_id)?;
                    }
                    Some(Event::Invalid { key, error }) => eprintln!("{key}: invalid: {error}"),
                    Some(Event::Status { .. }) | None => {}
                }
                if !json && last_print.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{}\n", format_report(&l.report(), &l.counters()));
                    last_print = Instant::now();
                }
            }
            let report = l.report();
            let c = l.counters();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"topics": report, "counters": c})
                    )?
                );
            } else {
                println!("{}", format_report(&report, &c));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--record`: one line per valid message, in one write, so a kill never leaves half a line.
fn record_line(f: Option<&mut std::fs::File>, key: &str, stream: u64, frame: u64) -> Result<()> {
    if let Some(f) = f {
        use std::io::Write;
        f.write_all(format!("{key} {stream} {frame}\n").as_bytes())?;
    }
    Ok(())
}

/// A PNG colour map of one message: class colours, grey depth (near bright), normals as RGB.
fn dump_png(dir: &Path, key: &str, m: &TensorMsg) -> Result<()> {
    use overparam_data::png::{class_colour, depth_grey, normal_colour, write_rgb};
    let (h, w) = (m.shape[0], m.shape.get(1).copied().unwrap_or(1));
    let rgb: Vec<u8> = match (&m.data, m.task) {
        (TensorData::U8(v), Task::Segmentation) => {
            v.iter().flat_map(|&c| class_colour(c as f32)).collect()
        }
        (TensorData::F32(v), Task::Depth) => {
            let dmax = v.iter().fold(1e-6f32, |a, b| a.max(*b));
            v.iter().flat_map(|&d| depth_grey(d, dmax)).collect()
        }
        (TensorData::F32(v), Task::Normals) => v.chunks_exact(3).flat_map(normal_colour).collect(),
        (TensorData::U8(v), Task::Camera) => v.clone(),
        _ => bail!("{key}: nothing to draw for {:?}", m.task),
    };
    let name = format!("{}_{:06}.png", key.replace(['/', ':'], "_"), m.frame_id);
    write_rgb(&dir.join(name), w, h, &rgb)?;
    Ok(())
}
