//! Deploy-side steps that `export`, `engine accuracy` and `bench` share: loading a deploy
//! checkpoint, the calibration images, partial-INT8 plans, an in-memory export of a
//! checkpoint, and writing an INT8 model with its calibration record as a pair.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use overparam_base::Progress;
use overparam_data::cifar::ImageSet;
use overparam_data::metrics::TopK;
use overparam_engine::export::{KeptPrecision, QuantPlan, quantizable_layers};
use overparam_fuse::{DeploySpec, Weights};

use crate::{Error, Result};

/// A deploy checkpoint; a train-time one is refused with the command that folds it.
pub fn load_deploy(path: &Path) -> Result<(DeploySpec, Weights)> {
    overparam_fuse::checkpoint::load_deploy(path).map_err(|e| match e {
        overparam_fuse::Error::WrongStage { .. } => Error::file(
            path,
            format!(
                "a train-time checkpoint cannot be exported; fold it first: overparam fuse {} -o DEPLOY.safetensors",
                path.display()
            ),
        ),
        e => e.into(),
    })
}

/// The class count of a classifier (10 if the spec has no linear output: an IDX file does not
/// record its class count, and the MNIST family has 10).
fn classes_or_ten(spec: &DeploySpec) -> usize {
    spec.classifier_classes().unwrap_or(10)
}

/// The calibration images: the given directory's train split (CIFAR binary or IDX), or seeded
/// synthetic data of the model's input shape (reported as an event: fine for checking an
/// export, not for accuracy claims).
pub fn calibration_set(
    dir: Option<&Path>,
    spec: &DeploySpec,
    progress: &dyn Progress,
) -> Result<ImageSet> {
    use overparam_data::cifar::Split;
    let i = &spec.input;
    Ok(match dir {
        Some(d) => overparam_data::dataset::load(d, Split::Train, None, classes_or_ten(spec))?,
        None if i.channels == 1 => {
            progress.event(
                "calibration: no --calib given; using 1000 synthetic 1-channel images (fine for checking an export, not for accuracy claims)",
            );
            if i.width != i.height {
                return Err(Error::Run(format!(
                    "calibration: no --calib given and the input is {}×{}: synthetic 1-channel images are square; pass --calib DIR",
                    i.height, i.width
                )));
            }
            overparam_data::idx::synthetic_set(1000, i.height, 10, 12345, "train")
        }
        None => {
            progress.event(
                "calibration: no --calib given; using 1000 synthetic CIFAR-100 images (fine for checking an export, not for accuracy claims)",
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
        return Err(Error::Run(format!(
            "--keep: `{bad}` is not a conv or linear layer of this model (layers: {})",
            layers.join(", ")
        )));
    }
    if let Some(k) = precision {
        p.kept = k;
    }
    if !keep.is_empty() {
        p.layers = Some(layers.into_iter().filter(|l| !keep.contains(l)).collect());
    }
    Ok((p, keep.into_iter().collect()))
}

/// A deploy checkpoint exported in memory at `precision` and static `batch`, for timing. INT8
/// is calibrated on 256 images of `calib` (default: synthetic) with the entropy calibrator and
/// the uint8 encoding ONNX Runtime runs fastest; a model without recorded normalisation uses
/// mean 0.5, std 0.25.
pub fn export_for_timing(
    path: &Path,
    precision: overparam_engine::export::Precision,
    batch: usize,
    calib: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Vec<u8>> {
    use overparam_engine::calib::{Calibrator, calibration_batches, collect, plan};
    use overparam_engine::export::{
        ActivationEncoding, ExportOptions, Precision, export, to_bytes,
    };
    let file = path.display();
    let (spec, w) = load_deploy(path)?;
    let mut o = ExportOptions::new(precision);
    o.batch = batch;
    if precision == Precision::Int8 {
        let set = calibration_set(calib, &spec, progress)?;
        let c = spec.input.channels;
        let norm = overparam_engine::accuracy::normalization(&spec).unwrap_or(
            overparam_data::loader::Normalize {
                mean: vec![0.5; c],
                std: vec![0.25; c],
            },
        );
        let calibrating =
            |e: overparam_engine::Error| Error::from(e).context(format!("calibrating {file}"));
        let batches = calibration_batches(&set, &norm, 256, o.batch, 0).map_err(calibrating)?;
        let hists = collect(&spec, &w, &batches, &overparam_base::Silent).map_err(calibrating)?;
        o.quant = Some(plan(
            &hists,
            Calibrator::Entropy,
            ActivationEncoding::UnsignedOffset,
        ));
    }
    let g =
        export(&spec, &w, &o).map_err(|e| Error::from(e).context(format!("exporting {file}")))?;
    Ok(to_bytes(&g))
}

/// An INT8 model against its FP32 export on a test set, INT8 calibrated on a training set;
/// the normalisation and histograms come back for a sensitivity study.
pub struct Int8Eval {
    pub norm: overparam_data::loader::Normalize,
    pub fp32: TopK,
    pub int8: TopK,
    pub hists: std::collections::BTreeMap<String, overparam_engine::calib::Histogram>,
    /// Calibration images used.
    pub calib_used: usize,
}

/// The ONNX bytes of a deploy model at `precision`, static `batch`, with an INT8 plan.
pub fn export_bytes(
    spec: &DeploySpec,
    w: &Weights,
    precision: overparam_engine::export::Precision,
    batch: usize,
    quant: Option<QuantPlan>,
) -> Result<Vec<u8>> {
    use overparam_engine::export::{ExportOptions, export, to_bytes};
    let mut o = ExportOptions::new(precision);
    o.batch = batch;
    o.quant = quant;
    Ok(to_bytes(&export(spec, w, &o)?))
}

/// [`Int8Eval`] of a classifier: both exports at static `batch`, evaluated through ONNX
/// Runtime on the CPU. `engine accuracy` and each grid cell's INT8 drop use it.
#[allow(clippy::too_many_arguments)]
pub fn int8_against_fp32(
    spec: &DeploySpec,
    w: &Weights,
    train: &ImageSet,
    test: &ImageSet,
    calibrator: overparam_engine::calib::Calibrator,
    encoding: overparam_engine::export::ActivationEncoding,
    calib_images: usize,
    batch: usize,
    progress: &dyn Progress,
) -> Result<Int8Eval> {
    use overparam_engine::accuracy::{evaluate, normalization};
    use overparam_engine::export::Precision;
    let norm = normalization(spec)?;
    let fp32 = evaluate(
        &export_bytes(spec, w, Precision::Fp32, batch, None)?,
        test,
        &norm,
    )?;
    let (plan, hists, calib_used) = overparam_engine::calib::calibrate(
        spec,
        w,
        train,
        &norm,
        calib_images,
        batch,
        calibrator,
        encoding,
        progress,
    )?;
    let int8 = evaluate(
        &export_bytes(spec, w, Precision::Int8, batch, Some(plan))?,
        test,
        &norm,
    )?;
    Ok(Int8Eval {
        norm,
        fp32,
        int8,
        hists,
        calib_used,
    })
}

/// A dataset directory's train and test splits for a classifier.
pub fn classifier_splits(spec: &DeploySpec, data: &Path) -> Result<(ImageSet, ImageSet)> {
    use overparam_data::cifar::Split;
    let load = |split| overparam_data::dataset::load(data, split, None, classes_or_ten(spec));
    Ok((load(Split::Train)?, load(Split::Test)?))
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
        overparam_base::fs::temp_sibling(p, overparam_base::fs::TMP).map_err(Error::io(p))
    };
    let write = |tmp: &Path, data: &[u8], dest: &Path| -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp).map_err(Error::io(dest))?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(Error::io(dest))
    };
    let (model_tmp, calib_tmp) = (temp_of(model)?, temp_of(&calib)?);
    let written = write(&model_tmp, bytes, model)
        .and_then(|_| write(&calib_tmp, text.as_bytes(), &calib))
        // Both are complete: replace the old pair. A rename within one directory does not fail
        // once its file could be created there.
        .and_then(|_| std::fs::rename(&model_tmp, model).map_err(Error::io(model)))
        .and_then(|_| std::fs::rename(&calib_tmp, &calib).map_err(Error::io(&calib)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pair_write_names_the_file_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m.onnx");
        let j = serde_json::json!({"thresholds": {}});
        let calib = write_model_and_calib(&model, b"one", &j).unwrap();
        assert_eq!(calib, d.path().join("m.calib.json"));
        assert_eq!(std::fs::read(&model).unwrap(), b"one");
        // The record's name is taken by a non-empty directory: its rename fails.
        std::fs::remove_file(&calib).unwrap();
        std::fs::create_dir(&calib).unwrap();
        std::fs::write(calib.join("x"), b"").unwrap();
        let e = write_model_and_calib(&model, b"two", &j)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.calib.json"), "{e}");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}
