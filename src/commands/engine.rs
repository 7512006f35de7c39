use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use overparam_engine::accuracy::{Int8Study, evaluate, normalization, weight_ranges};
use overparam_engine::calib::{Calibrator, calibrate};
use overparam_engine::export::{ExportOptions, KeptPrecision, Precision, export, to_bytes};
use overparam_engine::trt::{BuildOptions, build, find_trtexec};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: EngineCommand,
}

#[derive(clap::Subcommand)]
enum EngineCommand {
    /// Build a TensorRT plan from an ONNX model with trtexec, plus its manifest.
    Build {
        onnx: PathBuf,
        /// The precision the ONNX was exported in (recorded; decides flags on TensorRT < 10).
        #[arg(long, default_value = "fp32")]
        precision: Precision,
        /// Deep-learning accelerator core (Jetson), with GPU fallback.
        #[arg(long)]
        dla: Option<u32>,
        /// Builder workspace in MiB.
        #[arg(long, default_value_t = 2048)]
        workspace: usize,
        /// Build with the native TensorRT library (cargo feature `tensorrt`) instead of trtexec.
        #[arg(long)]
        native: bool,
        /// CUDA device for --native.
        #[arg(long, default_value_t = 0)]
        device: usize,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Accuracy of FP32 / FP16 / INT8 exports through the CPU runtime against the fused model,
    /// with a weight-range report, and optionally a per-layer INT8 sensitivity scan and a
    /// partial-INT8 plan that meets `--budget`.
    Accuracy {
        /// A deploy checkpoint made by `overparam train`.
        deploy: PathBuf,
        /// CIFAR directory: the test split is evaluated, the train split calibrates.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "entropy")]
        calibrator: Calibrator,
        /// INT8 activation encoding: `cpu` (uint8, what ONNX Runtime runs fast) or `trt`
        /// (int8 with zero point 0, TensorRT's).
        #[arg(long, value_enum, default_value_t = super::export::Encoding::Cpu)]
        encoding: super::export::Encoding,
        #[arg(long, default_value_t = 512)]
        calib_images: usize,
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Run the per-layer sensitivity scan and search a partial-INT8 model.
        #[arg(long)]
        sensitivity: bool,
        /// Allowed top-1 drop (points) for the partial-INT8 search.
        #[arg(long, default_value_t = 0.5)]
        budget: f64,
        /// Precision of the layers the partial-INT8 search keeps out of INT8 (default: fp16
        /// with `--encoding trt`, fp32 with `--encoding cpu`).
        #[arg(long)]
        kept_precision: Option<KeptPrecision>,
        /// Write the partial-INT8 model found by `--sensitivity` here (ONNX, batch 1), with its
        /// `.calib.json`; deploy it with `overparam engine build`.
        #[arg(long, requires = "sensitivity")]
        partial_output: Option<PathBuf>,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        EngineCommand::Build {
            onnx,
            precision,
            dla,
            workspace,
            native,
            device,
            output,
        } => {
            let (m, builder) = if native {
                let m = build_native(&onnx, &output, precision, workspace, dla, device)?;
                (m, "native builder")
            } else {
                let t = find_trtexec()?;
                eprintln!(
                    "engine: trtexec {} (TensorRT {})",
                    t.path.display(),
                    t.version
                );
                let o = BuildOptions {
                    precision,
                    dla_core: dla,
                    workspace_mib: workspace,
                };
                (build(&t, &onnx, &output, &o)?, "trtexec")
            };
            println!(
                "wrote {} for {} (SM {}), TensorRT {} ({builder}), {}",
                output.display(),
                m.gpu.as_deref().unwrap_or("unknown GPU"),
                m.compute_capability.as_deref().unwrap_or("?"),
                m.tensorrt,
                m.precision.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        EngineCommand::Accuracy {
            deploy,
            data,
            calibrator,
            encoding,
            calib_images,
            batch,
            sensitivity: scan,
            budget,
            kept_precision,
            partial_output,
        } => {
            use overparam_data::cifar::Split;
            let (spec, w) = super::export::load_deploy(&deploy)?;
            let enc = overparam_engine::export::ActivationEncoding::from(encoding);
            if spec.model == overparam_fuse::models::ModelKind::Mtl.as_str() {
                return dense_accuracy(&deploy, &spec, &w, &data, calibrator, enc, calib_images);
            }
            let norm = normalization(&spec)?;
            let classes = super::export::classifier_classes(&spec);
            let load = |split| overparam_data::dataset::load(&data, split, None, classes);
            let test = load(Split::Test)?;
            let train = load(Split::Train)?;
            let model = |p: Precision, q| -> Result<Vec<u8>> {
                let mut o = ExportOptions::new(p);
                o.batch = batch;
                o.quant = q;
                Ok(to_bytes(&export(&spec, &w, &o)?))
            };
            let fp32 = evaluate(&model(Precision::Fp32, None)?, &test, &norm)?.top1_error();
            let fp16 = evaluate(&model(Precision::Fp16, None)?, &test, &norm)?.top1_error();
            let (int8_plan, hists, used) = calibrate(
                &spec,
                &w,
                &train,
                &norm,
                calib_images,
                batch,
                calibrator,
                enc,
                &crate::progress::Bars::stderr(),
            )?;
            let int8 =
                evaluate(&model(Precision::Int8, Some(int8_plan))?, &test, &norm)?.top1_error();
            println!(
                "{} on {} test images ({:?} calibration, {} images):",
                deploy.display(),
                test.len(),
                calibrator,
                used
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
            if scan {
                let study = Int8Study {
                    spec: &spec,
                    weights: &w,
                    hists: &hists,
                    calibrator,
                    encoding: enc,
                    kept: kept_precision.unwrap_or(KeptPrecision::for_encoding(enc)),
                    set: &test,
                    norm: &norm,
                    batch,
                    fp32_top1_err: fp32,
                };
                let s = study.sensitivity()?;
                println!("INT8 sensitivity (only this layer quantised), worst first:");
                for x in s.iter().take(8) {
                    println!("  {:<24} {:>+7.2} points", x.layer, x.drop);
                }
                let (p, err, kept) = study.partial_int8(&s, budget)?;
                println!(
                    "partial INT8 within {budget} points: top-1 err {err:.2}% ({:+.2}) with {} layer(s) kept in {}: {}",
                    err - fp32,
                    kept.len(),
                    study.kept.as_str().to_uppercase(),
                    if kept.is_empty() {
                        "none".to_string()
                    } else {
                        kept.join(", ")
                    }
                );
                if let Some(out) = partial_output {
                    write_partial(&out, &spec, &w, p, &kept, calibrator)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `engine build --native`: the native builder where the `tensorrt` feature is compiled in.
fn build_native(
    onnx: &std::path::Path,
    out: &std::path::Path,
    precision: Precision,
    workspace: usize,
    dla: Option<u32>,
    device: usize,
) -> Result<overparam_engine::trt::Manifest> {
    #[cfg(feature = "tensorrt")]
    return Ok(overparam_engine::trt_native::build(
        onnx, out, precision, workspace, dla, device,
    )?);
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = (onnx, out, precision, workspace, dla, device);
        anyhow::bail!("{NATIVE_MISSING}")
    }
}

/// Why `--native` / `--runtime trt-native` cannot run in this build.
#[cfg(not(feature = "tensorrt"))]
pub const NATIVE_MISSING: &str = "this overparam was built without the `tensorrt` cargo feature: rebuild with `cargo build --release --features tensorrt` where TensorRT >= 10 is installed (set TENSORRT_ROOT for tarball installs), or use trtexec (`engine build` without --native, `bench --runtime trt`)";

/// The partial-INT8 model at batch 1 and its calibration record, written as a pair.
fn write_partial(
    out: &std::path::Path,
    spec: &overparam_fuse::DeploySpec,
    w: &overparam_fuse::Weights,
    p: overparam_engine::export::QuantPlan,
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
    let mut o = ExportOptions::new(Precision::Int8);
    o.quant = Some(p);
    let bytes = to_bytes(&export(spec, w, &o)?);
    let calib = super::export::write_model_and_calib(out, &bytes, &json)?;
    println!("wrote {} and {}", out.display(), calib.display());
    Ok(())
}

/// `engine accuracy` for the multi-task network: the nine NYUv2 metrics per precision on the
/// `val` split, INT8 calibrated on `train`.
fn dense_accuracy(
    deploy: &std::path::Path,
    spec: &overparam_fuse::DeploySpec,
    w: &overparam_fuse::Weights,
    data: &std::path::Path,
    calibrator: Calibrator,
    enc: overparam_engine::export::ActivationEncoding,
    calib_images: usize,
) -> Result<ExitCode> {
    use overparam_data::nyuv2::NyuSplit;
    use overparam_engine::dense::{METRICS, precision_table};
    let train = NyuSplit::open(data, "train")?;
    let val = NyuSplit::open(data, "val")?;
    let progress = crate::progress::Bars::stderr();
    let (rows, _, _) = precision_table(
        spec,
        w,
        &train,
        &val,
        calib_images,
        calibrator,
        enc,
        &progress,
    )?;
    println!(
        "{} on {} val scenes ({calibrator:?} calibration on up to {calib_images} train scenes):",
        deploy.display(),
        val.len()
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
