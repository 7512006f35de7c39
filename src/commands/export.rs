use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use overparam_engine::calib::{Calibrator, calibrate};
use std::collections::BTreeSet;

use overparam_engine::export::{
    ActivationEncoding, ExportOptions, KeptPrecision, Precision, QuantPlan, export,
    quantizable_layers, to_bytes,
};
use overparam_fuse::checkpoint::{self, Checkpoint};
use overparam_fuse::{AnySpec, DeploySpec, Weights};

#[derive(clap::Args)]
pub struct Args {
    /// A deploy checkpoint (fold a train checkpoint with `overparam fuse` first).
    input: PathBuf,
    /// fp32, fp16 or int8.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// CIFAR directory whose train split calibrates INT8 (default: synthetic data, for checking
    /// an export only, not for accuracy claims).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// max, percentile, entropy or mse.
    #[arg(long, default_value = "entropy")]
    calibrator: Calibrator,
    /// Images in the (seeded) calibration set.
    #[arg(long, default_value_t = 512)]
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
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(short, long)]
    output: PathBuf,
}

pub fn load_deploy(path: &Path) -> Result<(DeploySpec, Weights)> {
    let Checkpoint { spec, weights } = checkpoint::load(path)?;
    match spec {
        AnySpec::Deploy(d) => Ok((d, weights)),
        AnySpec::Train(_) => bail!(
            "{}: a train-time checkpoint cannot be exported; fold it first: overparam fuse {} -o DEPLOY.safetensors",
            path.display(),
            path.display()
        ),
    }
}

/// `--encoding` as users name it: by where the INT8 model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// TensorRT's: int8 activations with zero point 0 (symmetric Q/DQ).
    Trt,
    /// ONNX Runtime's fast CPU path: the same grid as uint8 with zero point 128.
    Cpu,
}

impl From<Encoding> for ActivationEncoding {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Trt => ActivationEncoding::SignedSymmetric,
            Encoding::Cpu => ActivationEncoding::UnsignedOffset,
        }
    }
}

/// The class count of a classifier: the width of the linear layer behind its first output
/// (10 if the spec has none; an IDX file does not record its class count).
pub fn classifier_classes<C>(spec: &overparam_fuse::spec::Graph<C>) -> usize {
    spec.outputs
        .first()
        .and_then(|o| spec.nodes.iter().find(|n| n.name == o.node))
        .and_then(|n| match n.op {
            overparam_fuse::spec::Op::Linear { out_features, .. } => Some(out_features),
            _ => None,
        })
        .unwrap_or(10)
}

/// The calibration images: the given directory's train split (CIFAR binary or IDX), or seeded
/// synthetic data of the model's input shape.
pub fn calibration_set(
    dir: Option<&Path>,
    spec: &DeploySpec,
) -> Result<overparam_data::cifar::ImageSet> {
    use overparam_data::cifar::Split;
    let i = &spec.input;
    Ok(match dir {
        Some(d) => overparam_data::dataset::load(d, Split::Train, None, classifier_classes(spec))?,
        None if i.channels == 1 => {
            eprintln!(
                "calibration: no --calib given; using 1000 synthetic 1-channel images (fine for checking an export, not for accuracy claims)"
            );
            if i.width != i.height {
                bail!(
                    "calibration: no --calib given and the input is {}×{}: synthetic 1-channel images are square; pass --calib DIR",
                    i.height,
                    i.width
                );
            }
            overparam_data::idx::synthetic_set(1000, i.height, 10, 12345, "train")
        }
        None => {
            eprintln!(
                "calibration: no --calib given; using 1000 synthetic CIFAR-100 images (fine for checking an export, not for accuracy claims)"
            );
            overparam_data::synth::image_set(1000, 12345, "train")
        }
    })
}

/// Leaves `keep` out of INT8 in `precision` (default: the encoding's); every name must be a
/// conv or linear layer of the model. Returns the plan and the kept layers, sorted.
pub fn partial_plan(
    spec: &DeploySpec,
    mut p: QuantPlan,
    keep: &[String],
    precision: Option<KeptPrecision>,
) -> Result<(QuantPlan, Vec<String>)> {
    let layers: Vec<String> = quantizable_layers(spec).into_iter().map(|l| l.0).collect();
    let keep: BTreeSet<String> = keep.iter().cloned().collect();
    if let Some(bad) = keep.iter().find(|k| !layers.contains(k)) {
        bail!(
            "--keep: `{bad}` is not a conv or linear layer of this model (layers: {})",
            layers.join(", ")
        );
    }
    if let Some(k) = precision {
        p.kept = k;
    }
    if !keep.is_empty() {
        p.layers = Some(layers.into_iter().filter(|l| !keep.contains(l)).collect());
    }
    Ok((p, keep.into_iter().collect()))
}

/// Where an INT8 model's calibration record lives: beside it, as `<model>.calib.json`.
pub fn calib_path(model: &Path) -> PathBuf {
    model.with_extension("calib.json")
}

/// Writes an INT8 model and its calibration record (`<model>.calib.json`) as a pair: both go
/// to temporary files first and are renamed over the old ones only when both are written, so
/// a failure leaves an earlier pair as it was. Returns the record's path.
pub fn write_model_and_calib(
    model: &Path,
    bytes: &[u8],
    json: &serde_json::Value,
) -> Result<PathBuf> {
    let calib = calib_path(model);
    let text = serde_json::to_string_pretty(json)?;
    let temp_of = |p: &Path| -> Result<PathBuf> {
        let name = p
            .file_name()
            .with_context(|| format!("{}: not a file path", p.display()))?;
        Ok(p.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        )))
    };
    let write = |tmp: &Path, data: &[u8], dest: &Path| -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp).with_context(|| dest.display().to_string())?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .with_context(|| dest.display().to_string())
    };
    let (model_tmp, calib_tmp) = (temp_of(model)?, temp_of(&calib)?);
    let written = write(&model_tmp, bytes, model)
        .and_then(|_| write(&calib_tmp, text.as_bytes(), &calib))
        // Both are complete: replace the old pair. A rename within one directory does not fail
        // once its file could be created there.
        .and_then(|_| {
            std::fs::rename(&model_tmp, model).with_context(|| model.display().to_string())
        })
        .and_then(|_| {
            std::fs::rename(&calib_tmp, &calib).with_context(|| calib.display().to_string())
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&model_tmp);
        let _ = std::fs::remove_file(&calib_tmp);
    }
    written?;
    if let Some(dir) = model.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(calib)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let (spec, w) = load_deploy(&a.input)?;
    let mut o = ExportOptions::new(a.precision);
    o.batch = a.batch;
    let enc = ActivationEncoding::from(a.encoding);
    if a.precision != Precision::Int8 && !a.keep.is_empty() {
        bail!("--keep selects layers to keep out of INT8; it needs --precision int8");
    }
    let mut calib = None;
    if a.precision == Precision::Int8 {
        let set = calibration_set(a.calib.as_deref(), &spec)?;
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
            &crate::progress::Bars::stderr(),
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
        None => checkpoint::write_file_atomic(&a.output, &bytes)
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
