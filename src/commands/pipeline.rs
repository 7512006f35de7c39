//! `overparam pipeline`: the main job end to end — data, training, fold and verification,
//! FP32/FP16/INT8 export with calibration, accuracy per precision, latency against a budget,
//! publishing over zenoh to an in-process listener — and `runs/<name>/report.md` with plots.
//! The stages live in `overparam_lab::pipeline`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Training config (TOML); default: the embedded configs/demo.toml (multi-task, SFO, R1,
    /// synthetic NYUv2-layout scenes). A classification config runs the CIFAR-100 variant.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A real dataset instead of synthetic data: NYUv2 (MTAN layout) for the multi-task
    /// config, CIFAR-100 binary for a classification config.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override a config value, as `train --set` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Per-frame latency budget (p99, ms) for the CPU runtime here.
    #[arg(long, default_value_t = 50.0, value_parser = crate::args::budget)]
    budget_ms: f64,
    /// Timed inference iterations per precision (after 20 warm-up runs).
    #[arg(long, default_value_t = 200, value_parser = crate::args::count::<usize>)]
    iters: usize,
    /// Frames published over zenoh (loopback, in-process listener).
    #[arg(long, default_value_t = 300, value_parser = crate::args::count::<u64>)]
    frames: u64,
    #[command(flatten)]
    calibration: crate::args::CalibArgs,
    /// The accuracy floor of the published model: the most top-1 error points a classifier
    /// may lose against fp32 on the evaluation split; the fastest model within it is
    /// published (fp32 always is).
    #[arg(long, default_value_t = 0.3, value_parser = crate::args::non_negative)]
    max_drop: f64,
    /// The same floor for dense metrics, as a percentage each of them may lose relative to
    /// fp32.
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::non_negative)]
    max_drop_dense_pct: f64,
    /// Start from your own trained network: this ONNX (from torch.onnx.export) is imported,
    /// expanded exactly with --method, fine-tuned, folded, exported, measured and (with dense
    /// outputs) published. Default config: the embedded configs/finetune.toml.
    #[arg(long, value_name = "MODEL.onnx")]
    from: Option<PathBuf>,
    /// The method to fine-tune --from's network with (else the config's).
    #[arg(long, requires = "from")]
    method: Option<overparam_fuse::MethodKind>,
    /// Per-channel mean --from's network was trained with, (x/255 − mean)/std (with --std).
    #[arg(long, value_delimiter = ',', requires_all = ["from", "std"], value_parser = crate::args::finite)]
    mean: Vec<f32>,
    /// Per-channel std (with --mean).
    #[arg(long, value_delimiter = ',', requires = "mean", value_parser = crate::args::positive_f32)]
    std: Vec<f32>,
}

#[cfg(not(feature = "train"))]
pub fn run(_: Args) -> Result<ExitCode> {
    anyhow::bail!(
        "the pipeline trains a model and needs the `train` feature (libtorch); rebuild with default features"
    )
}

#[cfg(feature = "train")]
pub fn run(a: Args) -> Result<ExitCode> {
    let o = overparam_lab::pipeline::Options {
        config: a.config,
        data: a.data,
        overrides: a.overrides,
        budget_ms: a.budget_ms,
        max_drop: overparam_lab::pipeline::MaxDrop {
            top1_points: a.max_drop,
            dense_relative: a.max_drop_dense_pct / 100.0,
        },
        iters: a.iters,
        frames: a.frames,
        quant: a.calibration.recipe(
            64,
            overparam_engine::export::ActivationEncoding::SignedSymmetric,
            overparam_engine::quant::NormSource::Model,
        ),
        from: a.from,
        method: a.method,
        normalize: if a.mean.is_empty() {
            None
        } else {
            Some(overparam_fuse::spec::Normalization {
                mean: a.mean,
                std: a.std,
            })
        },
    };
    let out = overparam_lab::pipeline::run(&o, &crate::progress::Bars::stderr())?;
    println!("{}", out.markdown);
    eprintln!("report: {}", out.report.display());
    Ok(ExitCode::SUCCESS)
}
