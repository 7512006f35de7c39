//! `overparam engine accuracy`: FP32 / FP16 / INT8 exports evaluated through ONNX Runtime on a
//! dataset, weight ranges, and optionally the per-layer INT8 sensitivity scan with a
//! partial-INT8 model within a budget.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use overparam_engine::export::{ActivationEncoding, KeptPrecision};
use overparam_lab::deploy::{AccuracyReport, AccuracyRequest, SensitivityRequest, accuracy};

use crate::args::{CalibArgs, Encoding, NormArgs};

#[derive(clap::Args)]
pub struct Args {
    /// A deploy checkpoint made by `overparam train`.
    deploy: PathBuf,
    /// Dataset directory (CIFAR binary, IDX, or NYUv2 for the multi-task net): the test split
    /// is evaluated, the train split calibrates.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    calibration: CalibArgs,
    #[command(flatten)]
    norm: NormArgs,
    /// INT8 activation encoding: `cpu` (uint8, what ONNX Runtime runs fast) or `trt`
    /// (int8 with zero point 0, TensorRT's).
    #[arg(long, value_enum, default_value_t = Encoding::Cpu)]
    encoding: Encoding,
    /// Static batch of the exported classifiers.
    #[arg(long, default_value_t = 50, value_parser = crate::args::count::<usize>)]
    batch: usize,
    /// Run the per-layer sensitivity scan and search a partial-INT8 model.
    #[arg(long)]
    sensitivity: bool,
    /// Allowed top-1 drop (points) for the partial-INT8 search.
    #[arg(long, default_value_t = 0.5, value_parser = crate::args::non_negative)]
    budget: f64,
    /// Precision of the layers the partial-INT8 search keeps out of INT8 (default: fp16
    /// with `--encoding trt`, fp32 with `--encoding cpu`).
    #[arg(long)]
    kept_precision: Option<KeptPrecision>,
    /// Write the partial-INT8 model found by `--sensitivity` here (ONNX, batch 1), with its
    /// `.calib.json`; deploy it with `overparam engine build`.
    #[arg(long, requires = "sensitivity")]
    partial_output: Option<PathBuf>,
    /// Print the measurements as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut quant =
        a.calibration
            .recipe(512, ActivationEncoding::from(a.encoding), a.norm.source()?);
    quant.kept_precision = a.kept_precision;
    let req = AccuracyRequest {
        deploy: a.deploy.clone(),
        data: a.data,
        quant,
        batch: a.batch,
        sensitivity: a.sensitivity.then_some(SensitivityRequest {
            budget: a.budget,
            output: a.partial_output,
        }),
    };
    let report = accuracy(&req, &crate::progress::Bars::stderr())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json(&report))?);
        return Ok(ExitCode::SUCCESS);
    }
    let file = a.deploy.display();
    match &report {
        AccuracyReport::Dense {
            val_scenes,
            rows,
            record,
        } => {
            use overparam_engine::dense::METRICS;
            println!(
                "{file} on {val_scenes} val scenes ({} on {} train scenes):",
                record.summary(),
                record.images
            );
            print!("  {:<18}", "metric");
            for r in rows {
                print!(" {:>10}", r.precision.as_str());
            }
            println!(" {:>12}", "int8 − fp32");
            for (k, name) in METRICS.iter().enumerate() {
                print!("  {name:<18}");
                for r in rows {
                    print!(" {:>10.3}", r.metrics[k]);
                }
                println!(" {:>+12.3}", rows[2].metrics[k] - rows[0].metrics[k]);
            }
        }
        AccuracyReport::Classification {
            test_images,
            fp32,
            fp16,
            int8,
            record,
            weight_ranges,
            sensitivity,
        } => {
            println!(
                "{file} on {test_images} test images ({}, {} calibration images):",
                record.summary(),
                record.images
            );
            println!("  precision   top-1 err   drop vs fp32");
            println!("  fp32        {fp32:>8.2}%   {:>+9.2}", 0.0);
            println!("  fp16        {fp16:>8.2}%   {:>+9.2}", fp16 - fp32);
            println!("  int8        {int8:>8.2}%   {:>+9.2}", int8 - fp32);
            if let Some(auto) = &record.auto {
                println!("auto: held-out output error of each rule applied to every tensor:");
                for (c, e) in &auto.uniform {
                    println!("  {:<10} {e:.4e}", c.to_string());
                }
                println!(
                    "  chosen     {:.4e} (from {}, {} tensor(s) moved: {})",
                    auto.error,
                    auto.start,
                    auto.changed.len(),
                    if auto.changed.is_empty() {
                        "none".to_string()
                    } else {
                        auto.changed
                            .iter()
                            .map(|t| format!("{t}={}", record.choice[t]))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
            println!(
                "weight ranges (max |w| / 99.9th percentile; large = outliers that stretch the INT8 grid):"
            );
            for r in weight_ranges.iter().take(5) {
                println!(
                    "  {:<24} max {:>9.4}  p99.9 {:>9.4}  ratio {:>6.2}",
                    r.layer, r.max_abs, r.p999, r.outlier_ratio
                );
            }
            if let Some(s) = sensitivity {
                println!("INT8 sensitivity (only this layer quantised), worst first:");
                for x in s.ranked.iter().take(8) {
                    println!("  {:<24} {:>+7.2} points", x.layer, x.drop);
                }
                println!(
                    "partial INT8 within {} points: top-1 err {:.2}% ({:+.2}) with {} layer(s) kept in {}: {}",
                    s.budget,
                    s.partial_top1_err,
                    s.partial_top1_err - fp32,
                    s.kept.len(),
                    s.kept_precision.as_str().to_uppercase(),
                    if s.kept.is_empty() {
                        "none".to_string()
                    } else {
                        s.kept.join(", ")
                    }
                );
                if let Some((m, c)) = &s.written {
                    println!("wrote {} and {}", m.display(), c.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as JSON (for scripts such as `scripts/int8_study.py`).
fn json(r: &AccuracyReport) -> serde_json::Value {
    match r {
        AccuracyReport::Dense {
            val_scenes,
            rows,
            record,
        } => serde_json::json!({
            "val_scenes": val_scenes, "rows": rows, "calibration": record,
        }),
        AccuracyReport::Classification {
            test_images,
            fp32,
            fp16,
            int8,
            record,
            sensitivity,
            ..
        } => serde_json::json!({
            "test_images": test_images,
            "top1_err": {"fp32": fp32, "fp16": fp16, "int8": int8},
            "int8_drop": int8 - fp32,
            "calibration": record,
            "sensitivity": sensitivity.as_ref().map(|s| serde_json::json!({
                "ranked": s.ranked, "budget": s.budget, "partial_top1_err": s.partial_top1_err,
                "kept": s.kept,
            })),
        }),
    }
}
