use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use overparam_fuse::MethodKind;
use overparam_fuse::models::ModelKind;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    latency: LatencyArgs,
}

/// `overparam bench MODEL`: inference latency.
#[derive(clap::Args)]
struct LatencyArgs {
    /// An ONNX model (CPU runtime), a TensorRT plan (`--runtime trt`), or a deploy checkpoint
    /// (exported in memory at `--precision`).
    model: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Deploy checkpoints only (default fp32): fp32, fp16 or int8 (INT8 calibrates on `--calib`
    /// or synthetic data, with the uint8 encoding ONNX Runtime runs fastest). An ONNX model's
    /// precision is the one it was exported at.
    #[arg(long)]
    precision: Option<overparam_engine::export::Precision>,
    /// Batch size (default 1): the static batch of a deploy checkpoint's export, or the size
    /// of an ONNX model's symbolic batch dimension.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch: Option<usize>,
    /// Deploy checkpoints at `--precision int8`: CIFAR directory whose train split calibrates
    /// (default: synthetic data), as `overparam export --calib` takes it.
    #[arg(long)]
    calib: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    iters: usize,
    /// Warm-up runs (CPU) or milliseconds (TensorRT), excluded from the statistics.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// Latency budget per frame in ms, judged on p99.
    #[arg(long, value_parser = budget)]
    budget_ms: Option<f64>,
    /// Exit non-zero (3) when p99 is over `--budget-ms`.
    #[arg(long, requires = "budget_ms")]
    enforce: bool,
    #[arg(long)]
    json: bool,
}

/// Where a model runs; shared by `bench` and `bridge run`.
#[derive(clap::Args, Clone)]
pub struct RuntimeArgs {
    /// cpu (ONNX Runtime's CPU provider), ort-trt (ONNX Runtime's TensorRT execution provider,
    /// onnxruntime-gpu builds only); `bench` also takes trt (trtexec on a plan built by
    /// `overparam engine build`) and trt-native (the same plan on the native runtime, cargo
    /// feature `tensorrt`).
    #[arg(long, default_value = "cpu")]
    pub runtime: String,
    /// ort-trt and trt-native: CUDA device.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// ort-trt: directory for TensorRT engine and timing caches (builds are slow; reuse them).
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
}

impl RuntimeArgs {
    /// The ONNX Runtime provider (`trt` is not one: it runs plans through trtexec).
    pub fn provider(&self) -> Result<overparam_engine::runtime::Provider> {
        use overparam_engine::runtime::{Provider, TrtEpOptions};
        Ok(match self.runtime.as_str() {
            "cpu" => Provider::Cpu,
            "ort-trt" => Provider::TensorRt(TrtEpOptions {
                device_id: self.device_id,
                cache_dir: self.trt_cache.clone(),
                ..Default::default()
            }),
            other => bail!("unknown ONNX Runtime provider `{other}` (cpu or ort-trt)"),
        })
    }
}

/// `--budget-ms`: a positive, finite number of milliseconds.
pub fn budget(s: &str) -> std::result::Result<f64, String> {
    let b: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    overparam_engine::latency::check_budget(Some(b))
        .map(|_| b)
        .map_err(|_| "want a positive, finite number of milliseconds".into())
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Training-step time and peak memory per method, as ratios to `plain` measured in the
    /// same run. Each method runs in its own process, so peak memory is its own.
    Train(TrainArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long, default_value = "resnet18_cifar")]
    model: ModelKind,
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Methods to compare (default: all); `plain` is always measured as the baseline.
    #[arg(long, value_delimiter = ',')]
    method: Vec<MethodKind>,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps per method (after 2 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// A classifier's input channels and side (1 and 28 for the MNIST family; default 3×32,
    /// the multi-task net 3×96×128).
    #[arg(long)]
    in_channels: Option<usize>,
    #[arg(long)]
    image_size: Option<usize>,
    /// libtorch intra-op threads.
    #[arg(long)]
    threads: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, hide = true)]
    worker: bool,
}

impl TrainArgs {
    /// Zero steps, batch or threads would reach libtorch (which panics) or time nothing.
    fn validate(&self) -> Result<()> {
        for (name, v) in [("--batch", self.batch), ("--steps", self.steps)]
            .into_iter()
            .chain(self.threads.map(|n| ("--threads", n)))
            .chain(self.in_channels.map(|n| ("--in-channels", n)))
        {
            if v == 0 {
                bail!("bench train: {name} must be at least 1 (got 0)");
            }
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            bail!(
                "bench train: --width must be a positive number (got {})",
                self.width
            );
        }
        Ok(())
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(BenchCommand::Train(t)) = &a.command {
        t.validate()?;
    }
    match a.command {
        Some(BenchCommand::Train(t)) if t.worker => worker(&t),
        Some(BenchCommand::Train(t)) => parent(&t),
        None => latency(&a.latency),
    }
}

fn latency(a: &LatencyArgs) -> Result<ExitCode> {
    use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
    use overparam_engine::latency::measure_ort_batch;
    let Some(model) = &a.model else {
        bail!(
            "give a MODEL (.onnx, .plan or deploy .safetensors), or a subcommand such as `bench train`"
        );
    };
    let file = model.display();
    let deploy = model.extension().is_some_and(|e| e == "safetensors");
    let plan = matches!(a.runtime.runtime.as_str(), "trt" | "trt-native");
    if plan {
        for (given, flag) in [
            (a.precision.is_some(), "--precision"),
            (a.batch.is_some(), "--batch"),
            (a.calib.is_some(), "--calib"),
        ] {
            if given {
                bail!(
                    "{file}: {flag} does not apply to a TensorRT plan, whose precision and shapes are fixed when it is built (overparam engine build)"
                );
            }
        }
    } else if !deploy && a.precision.is_some() {
        bail!(
            "{file}: --precision applies to deploy checkpoints only; an ONNX model runs at the precision it was exported at (export another with `overparam export --precision`)"
        );
    }
    let precision = a.precision.unwrap_or(Precision::Fp32);
    if a.calib.is_some() && !(deploy && precision == Precision::Int8) {
        bail!(
            "{file}: --calib calibrates a deploy checkpoint benchmarked at --precision int8; it does nothing here"
        );
    }
    let r = match a.runtime.runtime.as_str() {
        "trt-native" => native_measure(model, a)?,
        "trt" => {
            let t = overparam_engine::trt::find_trtexec()?;
            overparam_engine::trt::measure(&t, model, a.iters, a.warmup, a.budget_ms)?
        }
        _ => {
            let provider = a.runtime.provider()?;
            let bytes = if deploy {
                let (spec, w) = super::export::load_deploy(model)?;
                let mut o = ExportOptions::new(precision);
                o.batch = a.batch.unwrap_or(1);
                if precision == Precision::Int8 {
                    use overparam_engine::calib::{Calibrator, calibration_batches, collect, plan};
                    let set = super::export::calibration_set(a.calib.as_deref(), &spec)?;
                    let c = spec.input.channels;
                    let norm = overparam_engine::accuracy::normalization(&spec).unwrap_or(
                        overparam_data::loader::Normalize {
                            mean: vec![0.5; c],
                            std: vec![0.25; c],
                        },
                    );
                    let batches = calibration_batches(&set, &norm, 256, o.batch, 0)
                        .with_context(|| format!("calibrating {file}"))?;
                    let hists = collect(&spec, &w, &batches, &overparam_base::Silent)
                        .with_context(|| format!("calibrating {file}"))?;
                    o.quant = Some(plan(
                        &hists,
                        Calibrator::Entropy,
                        overparam_engine::export::ActivationEncoding::UnsignedOffset,
                    ));
                }
                to_bytes(&export(&spec, &w, &o).with_context(|| format!("exporting {file}"))?)
            } else {
                std::fs::read(model).with_context(|| format!("reading {file}"))?
            };
            // A deploy checkpoint was exported at --batch already.
            let batch = if deploy { None } else { a.batch };
            measure_ort_batch(
                &bytes,
                a.threads,
                &provider,
                batch,
                a.warmup,
                a.iters,
                a.budget_ms,
            )
            .with_context(|| file.to_string())?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} on {}, batch {}, {} iterations after {} warm-up",
            model.display(),
            r.runtime,
            r.device,
            r.batch,
            r.iters,
            r.warmup
        );
        println!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}   throughput {:.1} img/s",
            r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.mean_ms, r.throughput
        );
        if let (Some(h), Some(c), Some(d)) = (r.h2d_ms, r.compute_ms, r.d2h_ms) {
            println!("  split ms: host→device {h:.3}  compute {c:.3}  device→host {d:.3}");
        }
        if let (Some(b), Some(ok)) = (r.budget_ms, r.within_budget) {
            println!(
                "  budget {b} ms (p99): {}",
                if ok { "WITHIN" } else { "OVER" }
            );
        }
    }
    if a.enforce && r.within_budget == Some(false) {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --runtime trt-native`: the native runtime where the `tensorrt` feature is compiled in.
fn native_measure(
    plan: &std::path::Path,
    a: &LatencyArgs,
) -> Result<overparam_engine::latency::LatencyReport> {
    #[cfg(feature = "tensorrt")]
    return Ok(overparam_engine::trt_native::measure(
        plan,
        a.runtime.device_id.max(0) as usize,
        a.warmup,
        a.iters,
        a.budget_ms,
    )?);
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = (plan, a);
        bail!("{}", super::engine::NATIVE_MISSING)
    }
}

/// The classifier input `--in-channels`/`--image-size` ask for (None: the model's default).
fn train_input(t: &TrainArgs) -> Option<(usize, usize)> {
    match (t.in_channels, t.image_size) {
        (None, None) => None,
        (c, s) => Some((c.unwrap_or(3), s.unwrap_or(32))),
    }
}

#[cfg(feature = "train")]
fn worker(t: &TrainArgs) -> Result<ExitCode> {
    use overparam_train::config::DeviceChoice;
    if let Some(n) = t.threads {
        tch::set_num_threads(n as i32);
    }
    let device = overparam_train::trainer::device(if t.device == "cuda" {
        DeviceChoice::Cuda
    } else {
        DeviceChoice::Cpu
    })?;
    let s = overparam_train::bench::train_step_time(
        t.model,
        t.width,
        t.method[0],
        t.batch,
        t.steps,
        train_input(t),
        device,
    )?;
    println!(
        "{}",
        serde_json::json!({
            "median_ms": s.median_ms,
            "min_ms": s.min_ms,
            "train_params": s.train_params,
            "peak_rss_mib": overparam_train::bench::peak_rss_mib(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "train"))]
fn worker(_: &TrainArgs) -> Result<ExitCode> {
    bail!(
        "this overparam was built without the `train` feature (no libtorch); rebuild with default features"
    )
}

fn parent(t: &TrainArgs) -> Result<ExitCode> {
    let mut methods = vec![MethodKind::Plain];
    let asked = if t.method.is_empty() {
        MethodKind::ALL.to_vec()
    } else {
        t.method.clone()
    };
    methods.extend(asked.into_iter().filter(|m| *m != MethodKind::Plain));
    let exe = std::env::current_exe().context("locating the overparam binary")?;
    println!(
        "training step, {} width {} batch {} on {} ({} threads), median of {} steps:",
        t.model.as_str(),
        t.width,
        t.batch,
        t.device,
        t.threads.map_or("default".to_string(), |n| n.to_string()),
        t.steps
    );
    println!(
        "{:<9} {:>12} {:>10} {:>8} {:>14} {:>8}",
        "method", "train params", "step ms", "× plain", "peak RSS MiB", "× plain"
    );
    let mut base: Option<(f64, f64)> = None;
    for m in methods {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "bench",
            "train",
            "--worker",
            "--model",
            t.model.as_str(),
            "--method",
            m.as_str(),
        ])
        .args([
            "--width",
            &t.width.to_string(),
            "--batch",
            &t.batch.to_string(),
            "--steps",
            &t.steps.to_string(),
        ])
        .args(["--device", &t.device]);
        if let Some(n) = t.threads {
            cmd.args(["--threads", &n.to_string()]);
        }
        if let Some((c, s)) = train_input(t) {
            cmd.args([
                "--in-channels",
                &c.to_string(),
                "--image-size",
                &s.to_string(),
            ]);
        }
        let out = cmd.output().context("running a benchmark worker")?;
        if !out.status.success() {
            bail!(
                "{} worker failed: {}",
                m.as_str(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("worker output")?;
        let ms = v["median_ms"].as_f64().unwrap_or(f64::NAN);
        let rss = v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let (bms, brss) = *base.get_or_insert((ms, rss));
        println!(
            "{:<9} {:>12} {:>10.1} {:>7.2}× {:>14.0} {:>7.2}×",
            m.as_str(),
            v["train_params"].as_u64().unwrap_or(0),
            ms,
            ms / bms,
            rss,
            rss / brss
        );
    }
    Ok(ExitCode::SUCCESS)
}
