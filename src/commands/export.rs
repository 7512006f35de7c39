//! `overparam export`: a deploy checkpoint as ONNX at fp32, fp16 or int8 (calibrated, in
//! TensorRT's or the CPU encoding, optionally with layers kept out of INT8).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use overparam_engine::export::{ActivationEncoding, KeptPrecision, Precision};
use overparam_lab::deploy::{ExportRequest, export};

use crate::args::{CalibArgs, Encoding, NormArgs};

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
    #[command(flatten)]
    calibration: CalibArgs,
    #[command(flatten)]
    norm: NormArgs,
    /// INT8 with the thresholds of this calibration record (a `.calib.json` of the same model)
    /// instead of calibrating again, e.g. at another batch. The record's kept layers stay
    /// unless --keep replaces them; the encoding is --encoding's; the calibration flags do not
    /// apply.
    #[arg(long, value_name = "FILE.calib.json", conflicts_with = "calib")]
    calib_record: Option<PathBuf>,
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
    let mut quant =
        a.calibration
            .recipe(512, ActivationEncoding::from(a.encoding), a.norm.source()?);
    quant.keep = a.keep;
    quant.kept_precision = a.kept_precision;
    let req = ExportRequest {
        input: a.input,
        output: a.output,
        precision: a.precision,
        batch: a.batch,
        calib: a.calib,
        quant,
        record: a.calib_record,
    };
    let done = export(&req, &crate::progress::Bars::stderr())?;
    if let Some((path, r)) = &done.record {
        println!(
            "wrote {} ({} activation thresholds; {})",
            path.display(),
            r.thresholds.len(),
            r.summary()
        );
    }
    println!(
        "wrote {} ({}, opset {}, batch {}, {:.1} MB)",
        req.output.display(),
        req.precision.as_str(),
        overparam_engine::onnx::OPSET,
        req.batch,
        done.bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
