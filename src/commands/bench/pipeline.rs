//! `overparam bench pipeline`: ros2_benchmark's method on the whole path, camera → zenoh →
//! `overparam bridge run` → outputs: fixed-rate runs, then optionally the peak rate.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use overparam_bridge::bench::{self, PipelineBench};
use overparam_bridge::ros2::Ros2Names;

#[derive(clap::Args)]
pub struct PipelineArgs {
    /// The model the bridge runs: a deploy checkpoint or an ONNX model (as `bridge run
    /// --model`).
    #[arg(long)]
    model: PathBuf,
    /// Fixed camera rates, Hz, comma-separated; each runs --warmup then --duration
    /// [default: 10,30,60; none with --camera-key].
    #[arg(long, value_delimiter = ',', value_parser = crate::args::rate)]
    rates: Option<Vec<f64>>,
    /// Measure an external camera instead of the bench's own: its native key (camera frames
    /// in the tensor format) or, with --ros2, its sensor_msgs/Image topic. One run at the
    /// camera's own rate, as measured; latency from each frame's stamp, so the camera's clock
    /// must be this host's.
    #[arg(long, value_name = "KEY|TOPIC")]
    camera_key: Option<String>,
    /// With --camera-key: zenoh endpoints that reach the camera (repeatable), given to the
    /// bench and to the bridge.
    #[arg(
        long = "camera-connect",
        value_name = "ENDPOINT",
        requires = "camera_key"
    )]
    camera_connect: Vec<String>,
    /// Seconds measured at each rate.
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::positive)]
    duration: f64,
    /// Seconds of frames before each measured window, not counted (the first inferences).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::seconds)]
    warmup: f64,
    /// Camera frames, HxW (rgb8); the bridge resizes them to the model's input.
    #[arg(long, default_value = "480x640", value_parser = camera_size)]
    camera_size: (usize, usize),
    /// After the fixed rates, search for the highest rate with at most --max-loss-pct loss:
    /// doubling until a rate fails, then bisecting.
    #[arg(long)]
    peak: bool,
    /// The peak search's ceiling, Hz.
    #[arg(long, default_value_t = 480.0, value_parser = crate::args::rate)]
    peak_max: f64,
    /// Bisection steps of the peak search.
    #[arg(long, default_value_t = 4, value_parser = crate::args::count::<usize>)]
    peak_steps: usize,
    /// Loss a held rate may have, percent of the frames sent (ros2_benchmark: 5).
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::non_negative)]
    max_loss_pct: f64,
    /// Seconds the bridge may take to load the model and subscribe.
    #[arg(long, default_value_t = 60.0, value_parser = crate::args::positive)]
    startup_timeout: f64,
    /// ONNX Runtime intra-op threads of the bridge (default: all cores).
    #[arg(long, value_parser = crate::args::count::<usize>)]
    threads: Option<usize>,
    /// ROS 2 mode: the camera is a sensor_msgs/Image topic and the outputs ROS 2 Images,
    /// through rmw_zenoh's keys, in this domain.
    #[arg(long)]
    ros2: bool,
    /// ROS_DOMAIN_ID of the ROS 2 mode (0–232).
    #[arg(long, default_value_t = 0, value_parser = super::super::bridge::domain_id)]
    domain_id: u32,
    /// Write pipeline_bench.json, .md and .png (latency over time and a histogram) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `HxW`, each at least 1.
fn camera_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: want HxW, e.g. 480x640"))?;
    Ok((crate::args::count(h)?, crate::args::count(w)?))
}

pub fn run(a: &PipelineArgs) -> Result<ExitCode> {
    let external = a.camera_key.as_ref().map(|k| bench::ExternalCamera {
        key: k.clone(),
        connect: a.camera_connect.clone(),
    });
    let rates = match (&a.rates, &external) {
        (Some(r), _) => r.clone(),
        (None, None) => vec![10.0, 30.0, 60.0],
        (None, Some(_)) => vec![],
    };
    let b = PipelineBench {
        rates,
        external,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        camera: a.camera_size,
        ros2: a
            .ros2
            .then(|| Ros2Names::new(a.domain_id, "/overparam_bench", "overparam")),
        peak: a.peak,
        peak_max: a.peak_max,
        peak_steps: a.peak_steps,
        max_loss: a.max_loss_pct / 100.0,
        startup: Duration::from_secs_f64(a.startup_timeout),
    };
    b.check()?;
    anyhow::ensure!(
        a.model.is_file(),
        "--model {}: no such file",
        a.model.display()
    );
    let exe = std::env::current_exe().context("finding this program to start the bridge")?;
    let launch = |extra: &[String]| {
        let mut c = Command::new(&exe);
        c.args(["bridge", "run", "--model"]).arg(&a.model);
        if let Some(t) = a.threads {
            c.args(["--threads", &t.to_string()]);
        }
        c.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let ort = overparam_engine::runtime::version().unwrap_or_else(|e| format!("unknown ({e})"));
    let bars = crate::progress::Bars::stderr();
    let report = b.run(&a.model.display().to_string(), &ort, &launch, &bars)?;
    drop(bars);
    if let Some(dir) = &a.out {
        report.write(dir)?;
        eprintln!(
            "wrote {}, {} and {} in {}",
            bench::REPORT_JSON,
            bench::REPORT_MD,
            bench::REPORT_PNG,
            dir.display()
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(ExitCode::SUCCESS)
}
