//! Deploy-side work: `overparam export` ([`export`]), `engine accuracy` ([`accuracy`]) and
//! `bench` ([`latency`]) are each one call here, and share loading a deploy
//! checkpoint, the calibration images, an in-memory export, and writing an INT8 model with its
//! calibration record as a pair. Every calibration takes its whole recipe as one
//! [`Quantization`].

use std::path::{Path, PathBuf};

use overparam_base::Progress;
use overparam_data::cifar::ImageSet;
use overparam_data::metrics::TopK;
use overparam_engine::export::{Precision, QuantPlan};
use overparam_engine::quant::{CalibRecord, Calibration, Quantization};
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

/// Where [`latency`] times a model.
#[derive(Clone, Debug)]
pub enum LatencyRuntime {
    /// ONNX Runtime with this provider, on an ONNX model or a deploy checkpoint exported in
    /// memory.
    Ort(overparam_engine::runtime::Provider),
    /// trtexec on a TensorRT plan; trtexec warms up for a time, not a count.
    Trtexec { warmup_ms: usize },
    /// The native TensorRT runtime (cargo feature `tensorrt`) on a plan, on GPU `device`.
    Native { device: usize },
}

/// What `overparam bench MODEL` times.
#[derive(Clone, Debug)]
pub struct LatencyRequest {
    /// An ONNX model, a TensorRT plan or a deploy checkpoint (`.safetensors`).
    pub model: PathBuf,
    pub runtime: LatencyRuntime,
    /// Deploy checkpoints: the precision they are exported at.
    pub precision: Precision,
    /// A deploy checkpoint's static batch (default 1), or an ONNX model's symbolic batch.
    pub batch: Option<usize>,
    /// Deploy checkpoints at INT8: the calibration images (default: synthetic).
    pub calib: Option<PathBuf>,
    /// Deploy checkpoints at INT8: the calibration recipe.
    pub quant: Quantization,
    /// ONNX Runtime intra-op threads.
    pub threads: Option<usize>,
    /// Warm-up runs (ONNX Runtime and the native runtime).
    pub warmup: usize,
    pub iters: usize,
    pub budget_ms: Option<f64>,
}

/// What a build without the `tensorrt` cargo feature says when asked for the native runtime.
pub const NATIVE_MISSING: &str = "this overparam was built without the `tensorrt` cargo feature: rebuild with `cargo build --release --features tensorrt` where TensorRT >= 10 is installed (set TENSORRT_ROOT for tarball installs), or use trtexec (`engine build` without --native, `bench --runtime trt`)";

/// `overparam bench MODEL`: the latency report of `r.model` on `r.runtime`.
pub fn latency(
    r: &LatencyRequest,
    progress: &dyn Progress,
) -> Result<overparam_engine::latency::LatencyReport> {
    let file = r.model.display().to_string();
    let in_context = |e: overparam_engine::Error| Error::from(e).context(file.clone());
    match &r.runtime {
        LatencyRuntime::Native { device } => native_latency(r, *device).map_err(in_context),
        LatencyRuntime::Trtexec { warmup_ms } => {
            let t = overparam_engine::trt::find_trtexec()?;
            Ok(overparam_engine::trt::measure(
                &t,
                &r.model,
                r.iters,
                *warmup_ms,
                r.budget_ms,
            )?)
        }
        LatencyRuntime::Ort(provider) => {
            let deploy = r.model.extension().is_some_and(|e| e == "safetensors");
            let (bytes, batch) = if deploy {
                let b = export_for_timing(
                    &r.model,
                    r.precision,
                    r.batch.unwrap_or(1),
                    r.calib.as_deref(),
                    &r.quant,
                    progress,
                )?;
                // Exported at the batch already.
                (b, None)
            } else {
                // External data is read from beside the model, whatever the working directory.
                let b = overparam_engine::onnx_file::model_bytes(&r.model)
                    .map_err(|e| Error::from(e).context(format!("reading {file}")))?;
                (b, r.batch)
            };
            overparam_engine::latency::measure_ort_batch(
                &bytes,
                r.threads,
                provider,
                batch,
                r.warmup,
                r.iters,
                r.budget_ms,
            )
            .map_err(in_context)
        }
    }
}

fn native_latency(
    r: &LatencyRequest,
    device: usize,
) -> overparam_engine::Result<overparam_engine::latency::LatencyReport> {
    #[cfg(feature = "tensorrt")]
    return overparam_engine::trt_native::measure(&r.model, device, r.warmup, r.iters, r.budget_ms);
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = (r, device);
        Err(overparam_engine::Error::TensorRt(NATIVE_MISSING.into()))
    }
}

/// A deploy checkpoint exported in memory at `precision` and static `batch`, for timing. INT8
/// is calibrated by the recipe `q` on the train split of `calib` (default: synthetic images).
fn export_for_timing(
    path: &Path,
    precision: Precision,
    batch: usize,
    calib: Option<&Path>,
    q: &Quantization,
    progress: &dyn Progress,
) -> Result<Vec<u8>> {
    let file = path.display();
    let (spec, w) = load_deploy(path)?;
    let quant = if precision == Precision::Int8 {
        let set = calibration_set(calib, &spec, progress)?;
        let c = overparam_engine::quant::calibrate(&spec, &w, &set, q, batch, progress)
            .map_err(|e| Error::from(e).context(format!("calibrating {file}")))?;
        Some(c.plan)
    } else {
        None
    };
    export_bytes(&spec, &w, precision, batch, quant)
        .map_err(|e| e.context(format!("exporting {file}")))
}

/// What `overparam export` writes.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// A deploy checkpoint.
    pub input: PathBuf,
    /// The ONNX file (INT8 also writes `<output>.calib.json`).
    pub output: PathBuf,
    pub precision: Precision,
    pub batch: usize,
    /// INT8: the dataset directory whose train split calibrates (default: synthetic images).
    pub calib: Option<PathBuf>,
    /// INT8: the recipe.
    pub quant: Quantization,
    /// INT8: the thresholds of this calibration record instead of calibrating (it must be of
    /// this model and this version).
    pub record: Option<PathBuf>,
}

/// What [`export`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    pub bytes: usize,
    /// INT8: the record's path and content.
    pub record: Option<(PathBuf, CalibRecord)>,
}

/// `overparam export`: checks the outputs against the inputs, calibrates (or reads a record),
/// exports, and writes the model (with its record, as a pair). Nothing is written until
/// everything is computed.
pub fn export(r: &ExportRequest, progress: &dyn Progress) -> Result<Exported> {
    let mut inputs = vec![r.input.as_path()];
    inputs.extend(r.calib.as_deref());
    inputs.extend(r.record.as_deref());
    for out in [r.output.clone(), calib_path(&r.output)] {
        overparam_base::check_output(&out, &inputs).map_err(|e| Error::Run(e.to_string()))?;
    }
    if r.precision != Precision::Int8 && (!r.quant.keep.is_empty() || r.record.is_some()) {
        return Err(Error::Run(
            "--keep and --calib-record describe an INT8 model; they need --precision int8".into(),
        ));
    }
    let (spec, w) = load_deploy(&r.input)?;
    let file = r.input.display();
    let record = match (r.precision, &r.record) {
        (Precision::Int8, Some(path)) => {
            // The thresholds are the record's; the encoding and kept layers are this export's
            // (one calibration serves both encodings, as the pipeline's two INT8 models show).
            let mut rec = CalibRecord::read(path, &spec, &w)?;
            // Kept layers run in the encoding's precision unless --kept-precision says
            // otherwise; the record's own holds only where the encoding is the record's.
            rec.kept_precision = match r.quant.kept_precision {
                Some(k) => k,
                None if rec.encoding == r.quant.encoding => rec.kept_precision,
                None => r.quant.kept(),
            };
            rec.encoding = r.quant.encoding;
            if !r.quant.keep.is_empty() {
                rec.kept_layers = r.quant.keep.clone();
            }
            rec.models.clear();
            Some(rec)
        }
        (Precision::Int8, None) => {
            r.quant.check()?;
            let set = calibration_set(r.calib.as_deref(), &spec, progress)?;
            let c =
                overparam_engine::quant::calibrate(&spec, &w, &set, &r.quant, r.batch, progress)
                    .map_err(|e| Error::from(e).context(format!("calibrating {file}")))?;
            Some(c.record)
        }
        _ => None,
    };
    let plan = record.as_ref().map(|c| c.plan(&spec)).transpose()?;
    let bytes = export_bytes(&spec, &w, r.precision, r.batch, plan)
        .map_err(|e| e.context(format!("exporting {file}")))?;
    let record = match record {
        Some(rec) => Some((write_model_and_calib(&r.output, &bytes, &rec)?, rec)),
        None => {
            crate::write(&r.output, &bytes)?;
            None
        }
    };
    Ok(Exported {
        bytes: bytes.len(),
        record,
    })
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

/// An INT8 model against its FP32 export on a test set, INT8 calibrated on a training set;
/// the normalisation and the calibration come back for a sensitivity study.
pub struct Int8Eval {
    pub norm: overparam_data::loader::Normalize,
    pub fp32: TopK,
    pub int8: TopK,
    pub calibration: Calibration,
}

/// [`Int8Eval`] of a classifier: both exports at static `batch`, evaluated through ONNX
/// Runtime on the CPU, INT8 calibrated on `train` by the recipe `q`. `engine accuracy` and
/// each grid cell's INT8 drop use it.
pub fn int8_against_fp32(
    spec: &DeploySpec,
    w: &Weights,
    train: &ImageSet,
    test: &ImageSet,
    q: &Quantization,
    batch: usize,
    progress: &dyn Progress,
) -> Result<Int8Eval> {
    use overparam_engine::accuracy::evaluate;
    let norm = q.normalization(spec)?;
    let fp32 = evaluate(
        &export_bytes(spec, w, Precision::Fp32, batch, None)?,
        test,
        &norm,
    )?;
    let calibration = overparam_engine::quant::calibrate(spec, w, train, q, batch, progress)?;
    let int8 = evaluate(
        &export_bytes(
            spec,
            w,
            Precision::Int8,
            batch,
            Some(calibration.plan.clone()),
        )?,
        test,
        &norm,
    )?;
    Ok(Int8Eval {
        norm,
        fp32,
        int8,
        calibration,
    })
}

/// What `overparam engine accuracy` measures.
#[derive(Clone, Debug)]
pub struct AccuracyRequest {
    pub deploy: PathBuf,
    /// The dataset: its test (`val`) split is evaluated, its train split calibrates.
    pub data: PathBuf,
    pub quant: Quantization,
    /// Static batch of the classifier exports.
    pub batch: usize,
    /// The per-layer sensitivity scan and a partial-INT8 model within a budget.
    pub sensitivity: Option<SensitivityRequest>,
}

#[derive(Clone, Debug)]
pub struct SensitivityRequest {
    /// Allowed top-1 drop, points.
    pub budget: f64,
    /// Write the partial-INT8 model here (batch 1), with its record.
    pub output: Option<PathBuf>,
}

/// [`accuracy`]'s measurements.
pub enum AccuracyReport {
    Classification {
        test_images: usize,
        /// Top-1 error, %.
        fp32: f64,
        fp16: f64,
        int8: f64,
        record: CalibRecord,
        weight_ranges: Vec<overparam_engine::accuracy::WeightRange>,
        sensitivity: Option<SensitivityReport>,
    },
    Dense {
        val_scenes: usize,
        rows: Vec<overparam_engine::dense::PrecisionRow>,
        record: CalibRecord,
    },
}

pub struct SensitivityReport {
    /// Worst first.
    pub ranked: Vec<overparam_engine::accuracy::Sensitivity>,
    pub budget: f64,
    /// The partial model's top-1 error, %.
    pub partial_top1_err: f64,
    pub kept: Vec<String>,
    pub kept_precision: overparam_engine::export::KeptPrecision,
    /// The model and record written.
    pub written: Option<(PathBuf, PathBuf)>,
}

/// `overparam engine accuracy`: FP32, FP16 and INT8 through ONNX Runtime on a dataset, and
/// optionally the per-layer sensitivity scan with a partial-INT8 model within a budget.
pub fn accuracy(r: &AccuracyRequest, progress: &dyn Progress) -> Result<AccuracyReport> {
    use overparam_engine::accuracy::{Int8Study, evaluate, weight_ranges};
    if let Some(out) = r.sensitivity.as_ref().and_then(|s| s.output.as_ref()) {
        for out in [out.clone(), calib_path(out)] {
            overparam_base::check_output(&out, &[&r.deploy, &r.data])
                .map_err(|e| Error::Run(e.to_string()))?;
        }
    }
    r.quant.check()?;
    let (spec, w) = load_deploy(&r.deploy)?;
    if spec.has_dense_outputs() {
        use overparam_data::nyuv2::NyuSplit;
        let train = NyuSplit::open(&r.data, "train")?;
        let val = NyuSplit::open(&r.data, "val")?;
        let (rows, _, cal) =
            overparam_engine::dense::precision_table(&spec, &w, &train, &val, &r.quant, progress)?;
        return Ok(AccuracyReport::Dense {
            val_scenes: val.len(),
            rows,
            record: cal.record,
        });
    }
    let (train, test) = classifier_splits(&spec, &r.data)?;
    let e = int8_against_fp32(&spec, &w, &train, &test, &r.quant, r.batch, progress)?;
    let fp16 = export_bytes(&spec, &w, Precision::Fp16, r.batch, None)?;
    let fp16 = evaluate(&fp16, &test, &e.norm)?.top1_error();
    let fp32 = e.fp32.top1_error();
    let sensitivity = match &r.sensitivity {
        None => None,
        Some(s) => {
            let mut full = e.calibration.plan.clone();
            full.layers = None;
            let study = Int8Study {
                spec: &spec,
                weights: &w,
                plan: &full,
                kept: r.quant.kept(),
                set: &test,
                norm: &e.norm,
                batch: r.batch,
                fp32_top1_err: fp32,
            };
            let ranked = study.sensitivity()?;
            let (p, err, kept) = study.partial_int8(&ranked, s.budget)?;
            let written = match &s.output {
                None => None,
                Some(out) => {
                    let mut rec = e.calibration.record.clone();
                    rec.kept_layers = kept.clone();
                    rec.kept_precision = p.kept;
                    let bytes = export_bytes(&spec, &w, Precision::Int8, 1, Some(p))?;
                    Some((out.clone(), write_model_and_calib(out, &bytes, &rec)?))
                }
            };
            Some(SensitivityReport {
                ranked,
                budget: s.budget,
                partial_top1_err: err,
                kept,
                kept_precision: study.kept,
                written,
            })
        }
    };
    Ok(AccuracyReport::Classification {
        test_images: test.len(),
        fp32,
        fp16,
        int8: e.int8.top1_error(),
        record: e.calibration.record,
        weight_ranges: weight_ranges(&spec, &w),
        sensitivity,
    })
}

/// The ONNX bytes `overparam compare` runs for a model file: an ONNX model as it is (external
/// data read beside it), or a deploy checkpoint exported in memory at FP32, batch 1. A
/// TensorRT plan is refused: no TensorRT runtime here can return its layers.
pub fn model_for_compare(path: &Path) -> Result<Vec<u8>> {
    Ok(model_and_spec_for_compare(path)?.0)
}

/// [`model_for_compare`], with the spec when the file is a deploy checkpoint (read once).
fn model_and_spec_for_compare(path: &Path) -> Result<(Vec<u8>, Option<DeploySpec>)> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "safetensors" => {
            let (spec, w) = load_deploy(path)?;
            let bytes = export_bytes(&spec, &w, Precision::Fp32, 1, None)
                .map_err(|e| e.context(format!("exporting {}", path.display())))?;
            Ok((bytes, Some(spec)))
        }
        "plan" | "engine" => Err(Error::file(
            path,
            "a TensorRT plan: compare runs ONNX models and deploy checkpoints in ONNX Runtime; compare the ONNX the plan was built from, or run `bench --runtime trt` for the plan's speed",
        )),
        _ => Ok((overparam_engine::onnx_file::model_bytes(path)?, None)),
    }
}

/// `overparam compare A B`: both models on the same seeded inputs (see
/// [`overparam_engine::compare::compare`]).
pub fn compare(
    a: &Path,
    b: &Path,
    batches: usize,
    seed: u64,
    tol: overparam_engine::compare::Tolerance,
    layerwise: bool,
) -> Result<overparam_engine::compare::Comparison> {
    let (ma, mb) = (model_for_compare(a)?, model_for_compare(b)?);
    Ok(overparam_engine::compare::compare(
        &ma, &mb, batches, seed, tol, layerwise,
    )?)
}

/// `overparam compare A B --data DIR`: the task metrics of both classifiers on the test split.
/// `compare --data`'s result: classifiers on a test split, or multi-task models on the
/// evaluation scenes.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub enum DataAgreement {
    Classifier(ClassAgreement),
    Dense(Box<overparam_engine::dense::DenseAgreement>),
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassAgreement {
    pub images: usize,
    pub a_top1_err: f64,
    pub b_top1_err: f64,
    /// A's top-1 error minus B's, points.
    pub delta_points: f64,
    /// Images where both predict the same class, percent.
    pub top1_agreement: f64,
}

/// Both classifiers on the test split of `data`, with one normalisation: the given one, else
/// the one a deploy checkpoint among A and B records (A's first). Two ONNX models without
/// `--mean/--std`, or checkpoints that record none, are refused by the normalisation rule.
/// Multi-task models (dense outputs, by the spec or, for ONNX, by their output names) go to
/// [`overparam_engine::dense::agreement`] on the `val` scenes of an NYUv2-layout `data`
/// (taken as they are, so a normalisation is refused); a classifier against a multi-task
/// model is refused.
pub fn compare_on_data(
    a: &Path,
    b: &Path,
    data: &Path,
    given: &overparam_engine::quant::NormSource,
) -> Result<DataAgreement> {
    use overparam_engine::quant::NormSource;
    let (ma, spec_a) = model_and_spec_for_compare(a)?;
    let (mb, spec_b) = model_and_spec_for_compare(b)?;
    let heads = |m: &[u8], spec: &Option<DeploySpec>, p: &Path| -> Result<_> {
        Ok(match spec {
            Some(s) => overparam_engine::dense::heads(s),
            None => overparam_engine::dense::heads_of_onnx(m)
                .map_err(|e| Error::from(e).context(format!("reading {}", p.display())))?,
        })
    };
    let (ha, hb) = (heads(&ma, &spec_a, a)?, heads(&mb, &spec_b, b)?);
    let dense = |h: &overparam_engine::dense::Heads| h.iter().any(Option::is_some);
    match (dense(&ha), dense(&hb)) {
        (false, false) => {}
        (true, true) => {
            if let NormSource::Given(_) = given {
                return Err(Error::Run(format!(
                    "compare --data: multi-task models take the NYUv2-layout scenes as they are; leave out {}",
                    overparam_engine::quant::NORM_FLAGS
                )));
            }
            let val = overparam_data::nyuv2::NyuSplit::open(data, "val")?;
            return Ok(DataAgreement::Dense(Box::new(
                overparam_engine::dense::agreement(&ma, &mb, &val, &ha, &hb)
                    .map_err(|e| Error::from(e).context("compare --data"))?,
            )));
        }
        (da, _) => {
            let (dense_one, other) = if da { (a, b) } else { (b, a) };
            return Err(Error::Run(format!(
                "compare --data: {} is a multi-task model and {} a classifier; compare models of one kind",
                dense_one.display(),
                other.display()
            )));
        }
    }
    let specs = [spec_a, spec_b];
    let norm = match (given, specs.iter().flatten().next()) {
        (NormSource::Given(n), _) => n.clone(),
        (NormSource::Model, Some(spec)) => Quantization::default().normalization(spec)?,
        (NormSource::Model, None) => {
            return Err(Error::Run(format!(
                "compare --data: two ONNX models record no input normalisation; pass {} (one value per channel, on the 0..1 scale the network was trained with)",
                overparam_engine::quant::NORM_FLAGS
            )));
        }
    };
    // The class count from A's output (IDX files do not record it).
    let classes = overparam_engine::runtime::OrtRuntime::new(&ma, None)?
        .probe()?
        .first()
        .map_or(10, |o| o.1.get(1).copied().unwrap_or(10));
    let test =
        overparam_data::dataset::load(data, overparam_data::cifar::Split::Test, None, classes)?;
    let eval = |m: &[u8], p: &Path| {
        overparam_engine::accuracy::evaluate_logits(m, &test, &norm)
            .map_err(|e| Error::from(e).context(format!("evaluating {}", p.display())))
    };
    let ((ta, la), (tb, lb)) = (eval(&ma, a)?, eval(&mb, b)?);
    if la.len() != lb.len() {
        return Err(Error::Run(format!(
            "compare --data: {} gives {} logits per image and {} gives {}",
            a.display(),
            la.len() / test.len().max(1),
            b.display(),
            lb.len() / test.len().max(1)
        )));
    }
    let c = la.len() / test.len().max(1);
    let argmax = |v: &[f32]| {
        (0..v.len())
            .max_by(|&i, &j| v[i].total_cmp(&v[j]).then(j.cmp(&i)))
            .unwrap_or(0)
    };
    let same = la
        .chunks(c)
        .zip(lb.chunks(c))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    Ok(DataAgreement::Classifier(ClassAgreement {
        images: test.len(),
        a_top1_err: ta.top1_error(),
        b_top1_err: tb.top1_error(),
        delta_points: ta.top1_error() - tb.top1_error(),
        top1_agreement: 100.0 * same as f64 / test.len().max(1) as f64,
    }))
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
pub fn write_model_and_calib(model: &Path, bytes: &[u8], record: &CalibRecord) -> Result<PathBuf> {
    let calib = calib_path(model);
    let text = record.to_json()?;
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

    fn record() -> CalibRecord {
        CalibRecord {
            version: overparam_engine::quant::CALIB_VERSION,
            model_sha256: "0".repeat(64),
            calibrator: overparam_engine::calib::Calibrator::Max,
            percentile: None,
            images: 1,
            heldout_images: 0,
            seed: 0,
            encoding: Default::default(),
            kept_layers: vec![],
            kept_precision: Default::default(),
            normalization: None,
            thresholds: Default::default(),
            amax: Default::default(),
            choice: Default::default(),
            auto: None,
            models: Default::default(),
            qat: None,
        }
    }

    #[test]
    fn a_failed_pair_write_names_the_file_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m.onnx");
        let j = record();
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
