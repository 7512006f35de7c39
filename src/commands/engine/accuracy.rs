//! `overparam engine accuracy`: FP32 / FP16 / INT8 exports evaluated through ONNX Runtime on a
//! dataset, weight ranges, and optionally the per-layer INT8 sensitivity scan with a
//! partial-INT8 model within a budget.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use overparam_engine::accuracy::{Int8Study, evaluate, weight_ranges};
use overparam_engine::calib::Calibrator;
use overparam_engine::export::{ActivationEncoding, KeptPrecision, Precision, QuantPlan};
use overparam_fuse::{DeploySpec, Weights};
use overparam_lab::deploy::{
    classifier_splits, export_bytes, int8_against_fp32, load_deploy, write_model_and_calib,
};

use crate::args::Encoding;

#[derive(clap::Args)]
pub struct Args {
    /// A deploy checkpoint made by `overparam train`.
    deploy: PathBuf,
    /// Dataset directory (CIFAR binary, IDX, or NYUv2 for the multi-task net): the test split
    /// is evaluated, the train split calibrates.
    #[arg(long)]
    data: PathBuf,
    /// INT8 calibrator: entropy (TensorRT's default), max, mse or percentile.
    #[arg(long, default_value = "entropy")]
    calibrator: Calibrator,
    /// INT8 activation encoding: `cpu` (uint8, what ONNX Runtime runs fast) or `trt`
    /// (int8 with zero point 0, TensorRT's).
    #[arg(long, value_enum, default_value_t = Encoding::Cpu)]
    encoding: Encoding,
    /// Images (scenes) of the train split that calibrate INT8.
    #[arg(long, default_value_t = 512, value_parser = crate::args::count::<usize>)]
    calib_images: usize,
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
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(out) = &a.partial_output {
        for out in [out.clone(), overparam_lab::deploy::calib_path(out)] {
            overparam_base::check_output(&out, &[&a.deploy, &a.data])?;
        }
    }
    let (spec, w) = load_deploy(&a.deploy)?;
    let enc = ActivationEncoding::from(a.encoding);
    let progress = crate::progress::Bars::stderr();
    if spec.has_dense_outputs() {
        return dense(&a, &spec, &w, enc, &progress);
    }
    let (train, test) = classifier_splits(&spec, &a.data)?;
    let r = int8_against_fp32(
        &spec,
        &w,
        &train,
        &test,
        a.calibrator,
        enc,
        a.calib_images,
        a.batch,
        &progress,
    )?;
    let fp16 = export_bytes(&spec, &w, Precision::Fp16, a.batch, None)?;
    let fp16 = evaluate(&fp16, &test, &r.norm)?.top1_error();
    let (fp32, int8) = (r.fp32.top1_error(), r.int8.top1_error());
    println!(
        "{} on {} test images ({:?} calibration, {} images):",
        a.deploy.display(),
        test.len(),
        a.calibrator,
        r.calib_used
    );
    println!("  precision   top-1 err   drop vs fp32");
    println!("  fp32        {fp32:>8.2}%   {:>+9.2}", 0.0);
    println!("  fp16        {fp16:>8.2}%   {:>+9.2}", fp16 - fp32);
    println!("  int8        {int8:>8.2}%   {:>+9.2}", int8 - fp32);
    println!(
        "weight ranges (max |w| / 99.9th percentile; large = outliers that stretch the INT8 grid):"
    );
    for r in weight_ranges(&spec, &w).iter().take(5) {
        println!(
            "  {:<24} max {:>9.4}  p99.9 {:>9.4}  ratio {:>6.2}",
            r.layer, r.max_abs, r.p999, r.outlier_ratio
        );
    }
    if !a.sensitivity {
        return Ok(ExitCode::SUCCESS);
    }
    let study = Int8Study {
        spec: &spec,
        weights: &w,
        hists: &r.hists,
        calibrator: a.calibrator,
        encoding: enc,
        kept: a.kept_precision.unwrap_or(KeptPrecision::for_encoding(enc)),
        set: &test,
        norm: &r.norm,
        batch: a.batch,
        fp32_top1_err: fp32,
    };
    let s = study.sensitivity()?;
    println!("INT8 sensitivity (only this layer quantised), worst first:");
    for x in s.iter().take(8) {
        println!("  {:<24} {:>+7.2} points", x.layer, x.drop);
    }
    let (p, err, kept) = study.partial_int8(&s, a.budget)?;
    println!(
        "partial INT8 within {} points: top-1 err {err:.2}% ({:+.2}) with {} layer(s) kept in {}: {}",
        a.budget,
        err - fp32,
        kept.len(),
        study.kept.as_str().to_uppercase(),
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join(", ")
        }
    );
    if let Some(out) = &a.partial_output {
        write_partial(out, &spec, &w, p, &kept, a.calibrator)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The partial-INT8 model at batch 1 and its calibration record, written as a pair.
fn write_partial(
    out: &Path,
    spec: &DeploySpec,
    w: &Weights,
    p: QuantPlan,
    kept: &[String],
    calibrator: Calibrator,
) -> Result<()> {
    let json = serde_json::json!({
        "calibrator": calibrator,
        "encoding": p.encoding,
        "kept_layers": kept,
        "kept_precision": p.kept.as_str(),
        "thresholds": p.thresholds,
    });
    let bytes = export_bytes(spec, w, Precision::Int8, 1, Some(p))?;
    let calib = write_model_and_calib(out, &bytes, &json)?;
    println!("wrote {} and {}", out.display(), calib.display());
    Ok(())
}

/// The multi-task network: the nine NYUv2 metrics per precision on the `val` split, INT8
/// calibrated on `train`.
fn dense(
    a: &Args,
    spec: &DeploySpec,
    w: &Weights,
    enc: ActivationEncoding,
    progress: &crate::progress::Bars,
) -> Result<ExitCode> {
    use overparam_data::nyuv2::NyuSplit;
    use overparam_engine::dense::{METRICS, precision_table};
    let train = NyuSplit::open(&a.data, "train")?;
    let val = NyuSplit::open(&a.data, "val")?;
    let (rows, _, _) = precision_table(
        spec,
        w,
        &train,
        &val,
        a.calib_images,
        a.calibrator,
        enc,
        progress,
    )?;
    println!(
        "{} on {} val scenes ({:?} calibration on up to {} train scenes):",
        a.deploy.display(),
        val.len(),
        a.calibrator,
        a.calib_images
    );
    print!("  {:<18}", "metric");
    for r in &rows {
        print!(" {:>10}", r.precision.as_str());
    }
    println!(" {:>12}", "int8 − fp32");
    for (k, name) in METRICS.iter().enumerate() {
        print!("  {name:<18}");
        for r in &rows {
            print!(" {:>10.3}", r.metrics[k]);
        }
        println!(" {:>+12.3}", rows[2].metrics[k] - rows[0].metrics[k]);
    }
    Ok(ExitCode::SUCCESS)
}
