//! `overparam bench MODEL`: inference latency of an ONNX model, a TensorRT plan or a deploy
//! checkpoint (exported in memory), against a budget; `bench train` in [`train`], `bench
//! pipeline` in [`pipeline`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use overparam_engine::export::Precision;
use overparam_engine::latency::LatencyReport;
use overparam_lab::deploy::{LatencyRequest, LatencyRuntime};

use crate::args::{Runtime, RuntimeArgs};

mod pipeline;
mod train;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    latency: LatencyArgs,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Training-step time and peak memory per method, as ratios to `plain` measured in the
    /// same run. Each method runs in its own process, so peak memory is its own.
    Train(train::TrainArgs),
    /// Camera → zenoh → `bridge run` → outputs at fixed rates (ros2_benchmark's method):
    /// achieved rate, missed frames, latency percentiles, jitter, the bridge's CPU, and the
    /// peak rate with at most 5% loss (--peak); JSON, markdown and a plot with --out.
    Pipeline(Box<pipeline::PipelineArgs>),
}

/// Warm-up runs before the timed ones (CPU, ort-trt, trt-native).
const WARMUP_RUNS: usize = 20;
/// trtexec warms up for a time, not a count.
const WARMUP_MS: usize = 20;

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
    precision: Option<Precision>,
    /// Batch size (default 1): the static batch of a deploy checkpoint's export, or the size
    /// of an ONNX model's symbolic batch dimension.
    #[arg(long, value_parser = crate::args::count::<usize>)]
    batch: Option<usize>,
    /// Deploy checkpoints at `--precision int8`: CIFAR or IDX directory whose train split
    /// calibrates (default: synthetic data), as `overparam export --calib` takes it.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Deploy checkpoints at `--precision int8` (the uint8 encoding ONNX Runtime runs fastest).
    #[command(flatten)]
    calibration: crate::args::CalibArgs,
    #[command(flatten)]
    norm: crate::args::NormArgs,
    /// Timed runs.
    #[arg(long, default_value_t = 200, value_parser = crate::args::count::<usize>)]
    iters: usize,
    /// Warm-up runs before the timed ones [default: 20]; `--runtime trt` warms up by time
    /// (`--warmup-ms`) instead.
    #[arg(long, value_name = "RUNS")]
    warmup: Option<usize>,
    /// `--runtime trt` only: trtexec's warm-up time in milliseconds [default: 20].
    #[arg(long, value_name = "MS")]
    warmup_ms: Option<usize>,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long, value_parser = crate::args::count::<usize>)]
    threads: Option<usize>,
    /// Latency budget per frame in ms, judged on p99.
    #[arg(long, value_parser = crate::args::budget)]
    budget_ms: Option<f64>,
    /// Exit non-zero (3) when p99 is over `--budget-ms`.
    #[arg(long, requires = "budget_ms")]
    enforce: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        Some(BenchCommand::Train(t)) => train::run(&t),
        Some(BenchCommand::Pipeline(p)) => pipeline::run(&p),
        None => latency(&a.latency),
    }
}

/// Refuses flags that do nothing for this model and runtime, naming why.
fn check(a: &LatencyArgs, file: &str, deploy: bool, precision: Precision) -> Result<()> {
    let plan = matches!(a.runtime.runtime, Runtime::Trt | Runtime::TrtNative);
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
    if a.calib.is_some() && !(deploy && precision == Precision::Int8) {
        bail!(
            "{file}: --calib calibrates a deploy checkpoint benchmarked at --precision int8; it does nothing here"
        );
    }
    match a.runtime.runtime {
        Runtime::Trt if a.warmup.is_some() => {
            bail!("--warmup counts runs; trtexec warms up by time: use --warmup-ms")
        }
        Runtime::Trt => {}
        _ if a.warmup_ms.is_some() => {
            bail!("--warmup-ms is trtexec's (`--runtime trt`); other runtimes take --warmup RUNS")
        }
        _ => {}
    }
    Ok(())
}

fn latency(a: &LatencyArgs) -> Result<ExitCode> {
    let Some(model) = &a.model else {
        bail!(
            "give a MODEL (.onnx, .plan or deploy .safetensors), or a subcommand such as `bench train`"
        );
    };
    let file = model.display().to_string();
    let deploy = model.extension().is_some_and(|e| e == "safetensors");
    let precision = a.precision.unwrap_or(Precision::Fp32);
    check(a, &file, deploy, precision)?;
    let runtime = match a.runtime.runtime {
        Runtime::TrtNative => LatencyRuntime::Native {
            device: a.runtime.device_id as usize,
        },
        Runtime::Trt => LatencyRuntime::Trtexec {
            warmup_ms: a.warmup_ms.unwrap_or(WARMUP_MS),
        },
        Runtime::Cpu | Runtime::OrtTrt => LatencyRuntime::Ort(a.runtime.provider()?),
    };
    let r = overparam_lab::deploy::latency(
        &LatencyRequest {
            model: model.clone(),
            runtime,
            precision,
            batch: a.batch,
            calib: a.calib.clone(),
            quant: a.calibration.recipe(
                512,
                overparam_engine::export::ActivationEncoding::UnsignedOffset,
                a.norm.source()?,
            ),
            threads: a.threads,
            warmup: a.warmup.unwrap_or(WARMUP_RUNS),
            iters: a.iters,
            budget_ms: a.budget_ms,
        },
        &crate::progress::Bars::stderr(),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(model, &r);
    }
    if a.enforce && r.within_budget == Some(false) {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(model: &Path, r: &LatencyReport) {
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
