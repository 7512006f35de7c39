//! `overparam bench train`: training-step time and peak memory per method, as ratios to
//! `plain` measured in the same run. Each method runs in its own worker process, so peak
//! memory is its own.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use overparam_fuse::MethodKind;
use overparam_fuse::models::ModelKind;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model builder: resnet18_cifar, resnet50_cifar, vgg_small or mtl.
    #[arg(long, default_value = "resnet18_cifar")]
    model: ModelKind,
    /// Width multiplier on every channel count.
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::positive)]
    width: f64,
    /// Methods to compare (default: all); `plain` is always measured as the baseline.
    #[arg(long, value_delimiter = ',')]
    method: Vec<MethodKind>,
    /// Images per training step.
    #[arg(long, default_value_t = 64, value_parser = crate::args::count::<usize>)]
    batch: usize,
    /// Timed steps per method (after 2 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = crate::args::count::<usize>)]
    steps: usize,
    /// A classifier's input channels and side (1 and 28 for the MNIST family; default 3×32,
    /// the multi-task net 3×96×128).
    #[arg(long, value_parser = crate::args::count::<usize>)]
    in_channels: Option<usize>,
    /// A classifier's input side (square), with `--in-channels`.
    #[arg(long, value_parser = crate::args::count::<usize>)]
    image_size: Option<usize>,
    /// libtorch intra-op threads.
    #[arg(long, value_parser = crate::args::count::<usize>)]
    threads: Option<usize>,
    /// Where the steps run: cpu or cuda (as a config's `run.device`).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Also the QAT step of each method (deploy kernels fake-quantised, `overparam qat`),
    /// timed interleaved with its FP32 step, and their ratio.
    #[arg(long)]
    qat: bool,
    /// Internal: run one method and print its numbers as JSON (the parent starts these).
    #[arg(long, hide = true)]
    worker: bool,
}

/// `bench train --device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

pub fn run(t: &TrainArgs) -> Result<ExitCode> {
    if t.worker { worker(t) } else { parent(t) }
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
    use overparam_config::DeviceChoice;
    if let Some(n) = t.threads {
        overparam_train::set_threads(n);
    }
    let device = overparam_train::trainer::device(match t.device {
        Device::Cuda => DeviceChoice::Cuda,
        Device::Cpu => DeviceChoice::Cpu,
    })?;
    let s = overparam_train::bench::train_step_time(&overparam_train::bench::StepBench {
        steps: t.steps,
        input: train_input(t),
        device,
        qat: t.qat,
        ..overparam_train::bench::StepBench::new(t.model, t.width, t.method[0], t.batch)
    })?;
    println!(
        "{}",
        serde_json::json!({
            "median_ms": s.median_ms,
            "min_ms": s.min_ms,
            "qat_median_ms": s.qat.map(|q| q.0),
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
        t.device.as_str(),
        t.threads.map_or("default".to_string(), |n| n.to_string()),
        t.steps
    );
    print!(
        "{:<9} {:>12} {:>10} {:>8} {:>14} {:>8}",
        "method", "train params", "step ms", "× plain", "peak RSS MiB", "× plain"
    );
    if t.qat {
        print!(" {:>10} {:>8}", "qat ms", "× fp32");
    }
    println!();
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
        .args(["--device", t.device.as_str()]);
        if t.qat {
            cmd.arg("--qat");
        }
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
        print!(
            "{:<9} {:>12} {:>10.1} {:>7.2}× {:>14.0} {:>7.2}×",
            m.as_str(),
            v["train_params"].as_u64().unwrap_or(0),
            ms,
            ms / bms,
            rss,
            rss / brss
        );
        match v["qat_median_ms"].as_f64() {
            Some(q) => println!(" {q:>10.1} {:>7.2}×", q / ms),
            None => println!(),
        }
    }
    Ok(ExitCode::SUCCESS)
}
