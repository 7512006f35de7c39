//! `overparam bridge run`: a deploy model on frames from a source, one topic per task.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use overparam_bridge::listener::fmt_value;
use overparam_bridge::publisher::{PerceptionPublisher, PublishConfig, TopicQos};
use overparam_bridge::ros2::Ros2Names;
use overparam_bridge::run::{Model, RunOptions, run_until};
use overparam_bridge::source::{self, SourceSpec};

use crate::stop;

#[derive(clap::Args)]
pub struct Args {
    /// A deploy checkpoint (exported to FP32 ONNX in memory), an ONNX model, or an
    /// `overparam pipeline` output directory (its published model, or with --max-drop the
    /// fastest of its models within that floor).
    #[arg(long)]
    model: PathBuf,
    /// The role an output is published by, over the one its name implies (repeatable):
    /// class_logits (top-5 classes: JSON natively, vision_msgs/Classification in ROS 2),
    /// segmentation_logits (mono8 class map plus an rgb8 colour map on .../segmentation/color),
    /// depth (32FC1 metres, NaN where invalid), normals (32FC3) or raw (the tensor as it is
    /// on .../raw/<name>: the native format, std_msgs/Float32MultiArray in ROS 2). Outputs
    /// whose name implies no role are raw.
    #[arg(long = "output", value_name = "NAME=ROLE", value_parser = crate::args::output_role)]
    outputs: Vec<(String, overparam_base::Role)>,
    /// Class names, one per line in class-id order (as many as the class or segmentation
    /// output has classes), published once for late subscribers: vision_msgs/LabelInfo on
    /// .../label_info in ROS 2, JSON with each class's colour-map colour on .../labels
    /// natively [default: class_<id>].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// With a pipeline directory: publish the fastest of its models that loses at most this
    /// many top-1 error points against fp32 on the evaluation split (as `pipeline --max-drop`;
    /// the drops are the pipeline's measurements) [default: the pipeline's choice].
    #[arg(long, value_parser = crate::args::non_negative)]
    max_drop: Option<f64>,
    /// With a pipeline directory: the same floor for dense models, as the percentage each
    /// dense metric may lose relative to fp32 [default 1 when --max-drop is given].
    #[arg(long, value_parser = crate::args::non_negative)]
    max_drop_dense_pct: Option<f64>,
    /// synthetic[:SEED], nyuv2:DIR, images:DIR (PNG/JPEG), zenoh:KEY (native camera
    /// frames) or ros2:TOPIC (a sensor_msgs/Image topic through rmw_zenoh, in --domain-id;
    /// a relative TOPIC is under --namespace; rgb8, bgr8, rgba8, bgra8 or mono8 at any
    /// size; the newest frame is kept when the model is slower than the camera, the others
    /// counted as skipped; outputs carry the frame's header.stamp and frame_id).
    #[arg(long, default_value = "synthetic")]
    source: String,
    /// Seconds a camera source (zenoh:, ros2:) waits for a frame before the run ends; 0 waits
    /// forever (Ctrl-C still stops it).
    #[arg(long, default_value_t = 10.0, value_parser = crate::args::seconds)]
    source_timeout: f64,
    /// Pace publishing to this rate, at least 0.01 (default: as fast as inference allows).
    #[arg(long, value_parser = crate::args::rate)]
    fps: Option<f64>,
    /// Stop after this many frames (at least 1; default: until the source ends or Ctrl-C).
    #[arg(long, value_parser = crate::args::count::<u64>)]
    frames: Option<u64>,
    /// Camera name: topics are <prefix>/<camera>/<task>.
    #[arg(long, default_value = "cam0", value_parser = super::key)]
    camera: String,
    /// Native key prefix.
    #[arg(long, default_value = "overparam", value_parser = super::key)]
    prefix: String,
    /// QoS of every output topic: comma-separated reliable|best-effort, block|drop,
    /// express, priority=realtime|interactive-high|...|data-high|data|data-low|background.
    /// [default: reliable,block,priority=data-high, or --ros2-qos's profile]
    #[arg(long)]
    qos: Option<String>,
    /// ROS 2 QoS profile of every output topic, under --qos and --topic-qos: `default`
    /// (reliable, keep last 10) or `sensor-data` (SensorDataQoS, what camera topics use:
    /// best effort, keep last 5, frames dropped rather than waited for).
    #[arg(long, value_enum, default_value_t = Ros2Qos::Default, requires = "ros2")]
    ros2_qos: Ros2Qos,
    /// Per-topic QoS on top of --qos, e.g. `segmentation=drop,express` (repeatable).
    #[arg(long = "topic-qos", value_name = "TASK=ITEMS")]
    topic_qos: Vec<String>,
    /// Wait up to this many seconds for subscribers on every topic before the first frame.
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::seconds)]
    wait_subscribers: f64,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long, value_parser = crate::args::count::<usize>)]
    threads: Option<usize>,
    #[command(flatten)]
    runtime: crate::args::OrtRuntimeArgs,
    #[command(flatten)]
    ros: super::Ros2Args,
    #[command(flatten)]
    zenoh: super::ZenohArgs,
}

/// The model file to run: `model` itself, or the one a pipeline directory publishes under the
/// floor given (`--max-drop`), said on stderr with why it was chosen.
fn published_model(model: PathBuf, top1: Option<f64>, dense_pct: Option<f64>) -> Result<PathBuf> {
    use overparam_lab::pipeline::{MaxDrop, published};
    let floor = (top1.is_some() || dense_pct.is_some()).then(|| {
        let d = MaxDrop::default();
        MaxDrop {
            top1_points: top1.unwrap_or(d.top1_points),
            dense_relative: dense_pct.map_or(d.dense_relative, |p| p / 100.0),
        }
    });
    if !model.is_dir() {
        if floor.is_some() {
            bail!(
                "--model {}: --max-drop chooses among the models of an `overparam pipeline` output directory; this is one model",
                model.display()
            );
        }
        return Ok(model);
    }
    let p = published(&model, floor)?;
    eprintln!(
        "bridge: {} publishes {} ({}): {}",
        model.display(),
        p.label,
        p.path.display(),
        p.why
    );
    Ok(p.path)
}

/// `--ros2-qos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Ros2Qos {
    Default,
    SensorData,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Args {
        model,
        outputs,
        labels,
        max_drop,
        max_drop_dense_pct,
        source,
        source_timeout,
        fps,
        frames,
        camera,
        prefix,
        qos,
        ros2_qos,
        topic_qos,
        wait_subscribers,
        threads,
        runtime,
        ros,
        zenoh,
    } = a;
    let opts = RunOptions { frames, fps };
    opts.check()?;
    let spec: SourceSpec = source.parse()?;
    let model = published_model(model, max_drop, max_drop_dense_pct)?;
    stop::install()?;
    let mut m = Model::load_with_roles(&model, threads, &runtime.provider(), &outputs)
        .with_context(|| format!("loading {}", model.display()))?;
    let raw = m.raw_outputs();
    if !raw.is_empty() {
        eprintln!(
            "bridge: publishing {} as raw tensors (name a role with --output NAME=ROLE)",
            raw.join(", ")
        );
    }
    let zopts = zenoh.options();
    if let Some(pool) = zopts.shm_pool_bytes()?
        && let Some(w) = overparam_bridge::session::shm_warning(pool, m.frame_bytes)
    {
        eprintln!("warning: {w}");
    }
    let session = zopts.open().context("opening the zenoh session")?;
    // A ros2: source is resolved in the same domain and namespace as ROS 2 outputs.
    let names = Ros2Names::new(ros.domain_id, &ros.namespace, &ros.node);
    // Refused camera samples are reported above the frame bar.
    use overparam_base::Progress;
    let bars = std::sync::Arc::new(crate::progress::Bars::stderr());
    let wait = source::Wait {
        timeout: (source_timeout > 0.0).then(|| Duration::from_secs_f64(source_timeout)),
        stop: stop::stop_requested,
    };
    let mut src = source::open_with(&spec, m.size, Some(&session), &names, bars.clone(), wait)?;
    let mut cfg = PublishConfig::native(&prefix, &camera);
    if ros.ros2 {
        cfg.ros2 = Some(names.clone());
        // A ROS 2 camera's calibration follows its frames out, scaled.
        cfg.camera_info = matches!(spec, SourceSpec::Ros2(_));
    }
    cfg.health = Some(overparam_bridge::health::ModelInfo {
        model: model.display().to_string(),
        precision: m.precision.into(),
        runtime: m.runtime.clone(),
    });
    let profile = match ros2_qos {
        Ros2Qos::Default => TopicQos::default(),
        Ros2Qos::SensorData => TopicQos::sensor_data(),
    };
    let base = profile.apply(qos.as_deref().unwrap_or(""))?;
    m.configure(&mut cfg, base);
    cfg.labels = m.class_names(labels.as_deref())?;
    for tq in &topic_qos {
        let (task, items) = tq
            .split_once('=')
            .with_context(|| format!("--topic-qos {tq}: want TASK=ITEMS"))?;
        // By topic: a task's name, or raw/<output>.
        let t = cfg
            .qos
            .keys()
            .copied()
            .find(|&t| cfg.leaf(t) == task)
            .with_context(|| {
                let have: Vec<String> = cfg.qos.keys().map(|&t| cfg.leaf(t)).collect();
                format!(
                    "--topic-qos {tq}: the model has no output {task} (its topics: {})",
                    have.join(", ")
                )
            })?;
        let q = cfg.qos[&t].apply(items)?;
        cfg.qos.insert(t, q);
    }
    let health_key = cfg.health_key()?;
    let labels_key = cfg.labels.as_ref().map(|_| cfg.labels_key()).transpose()?;
    let publisher = PerceptionPublisher::new(&session, cfg)?;
    eprintln!("bridge: health every second on {health_key}");
    if let Some(k) = labels_key {
        eprintln!("bridge: class names (kept for late subscribers) on {k}");
    }
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
        stop::stop_requested,
        |_| bars.inc(1),
    )?;
    bars.finish();
    if let Some(sig) = stop::requested() {
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
