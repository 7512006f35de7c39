//! `overparam export`: a deploy checkpoint as ONNX at fp32, fp16 or int8 (calibrated, in
//! TensorRT's or the CPU encoding, optionally with layers kept out of INT8).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use overparam_engine::calib::{Calibrator, calibrate};
use overparam_engine::export::{
    ActivationEncoding, ExportOptions, KeptPrecision, Precision, export, to_bytes,
};
use overparam_lab::deploy::{calibration_set, load_deploy, partial_plan, write_model_and_calib};

use crate::args::Encoding;

#[derive(clap::Args)]
pub struct Args {
    /// A deploy checkpoint (fold a train checkpoint with `overparam fuse` first).
    input: PathBuf,
    /// fp32, fp16 or int8.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// CIFAR or IDX directory whose train split calibrates INT8 (default: synthetic data, for
    /// checking an export only, not for accuracy claims).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// INT8 calibrator: max, percentile, entropy (TensorRT's default) or mse.
    #[arg(long, default_value = "entropy")]
    calibrator: Calibrator,
    /// Images in the (seeded) calibration set.
    #[arg(long, default_value_t = 512, value_parser = crate::args::count::<usize>)]
    calib_images: usize,
    /// INT8 activation encoding: `trt` (int8, zero point 0; what TensorRT requires) or `cpu`
    /// (the same grid as uint8 with zero point 128; fast int8 kernels in ONNX Runtime).
    #[arg(long, value_enum, default_value_t = Encoding::Trt)]
    encoding: Encoding,
    /// Conv/linear layers to keep out of INT8 (partial INT8), comma-separated names as
    /// `overparam inspect` and `overparam engine accuracy --sensitivity` print them.
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Precision of the layers in `--keep`: fp16 (default with `--encoding trt`; TensorRT runs
    /// them in FP16) or fp32 (default with `--encoding cpu`).
    #[arg(long)]
    kept_precision: Option<KeptPrecision>,
    /// Static batch size of the exported model.
    #[arg(long, default_value_t = 1, value_parser = crate::args::count::<usize>)]
    batch: usize,
    /// The ONNX file to write (INT8 also writes `<output>.calib.json` beside it).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut inputs = vec![a.input.as_path()];
    inputs.extend(a.calib.as_deref());
    for out in [
        a.output.clone(),
        overparam_lab::deploy::calib_path(&a.output),
    ] {
        overparam_base::check_output(&out, &inputs)?;
    }
    let (spec, w) = load_deploy(&a.input)?;
    let mut o = ExportOptions::new(a.precision);
    o.batch = a.batch;
    let enc = ActivationEncoding::from(a.encoding);
    if a.precision != Precision::Int8 && !a.keep.is_empty() {
        bail!("--keep selects layers to keep out of INT8; it needs --precision int8");
    }
    let progress = crate::progress::Bars::stderr();
    let mut calib = None;
    if a.precision == Precision::Int8 {
        let set = calibration_set(a.calib.as_deref(), &spec, &progress)?;
        let norm = overparam_engine::accuracy::normalization(&spec).or_else(|_| -> Result<_> {
            let (mean, std) = set.channel_stats();
            eprintln!("calibration: the model records no normalisation; using the calibration set's statistics");
            Ok(overparam_data::loader::Normalize { mean, std })
        })?;
        let (p, hists, used) = calibrate(
            &spec,
            &w,
            &set,
            &norm,
            a.calib_images,
            a.batch,
            a.calibrator,
            enc,
            &progress,
        )?;
        let (p, kept) = partial_plan(&spec, p, &a.keep, a.kept_precision)?;
        let json = serde_json::json!({
            "calibrator": a.calibrator,
            "kept_layers": kept,
            "kept_precision": p.kept.as_str(),
            "images": used,
            "seed": 0,
            "encoding": p.encoding,
            "thresholds": p.thresholds,
            "amax": hists.iter().map(|(k, h)| (k.clone(), h.amax)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        calib = Some((json, p.thresholds.len()));
        o.quant = Some(p);
    }
    // Everything is computed before anything is written: a failed export leaves the old files.
    let bytes = to_bytes(
        &export(&spec, &w, &o).with_context(|| format!("exporting {}", a.input.display()))?,
    );
    match &calib {
        Some((json, thresholds)) => {
            let calib_path = write_model_and_calib(&a.output, &bytes, json)?;
            println!(
                "wrote {} ({thresholds} activation thresholds, {:?} calibrator)",
                calib_path.display(),
                a.calibrator
            );
        }
        None => overparam_base::write_file_atomic(&a.output, &bytes)
            .with_context(|| a.output.display().to_string())?,
    }
    println!(
        "wrote {} ({}, opset {}, batch {}, {:.1} MB)",
        a.output.display(),
        a.precision.as_str(),
        overparam_engine::onnx::OPSET,
        a.batch,
        bytes.len() as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
