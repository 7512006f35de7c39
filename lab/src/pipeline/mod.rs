//! The main job end to end: data, training, fold and verification, FP32/FP16/INT8 export with
//! calibration, accuracy per precision, latency against a budget, publishing over zenoh to an
//! in-process listener, and `runs/<name>/report.md` with plots.
//!
//! Each stage is a function that returns data; [`report`] renders them. [`run`] chains them.
#![cfg_attr(not(feature = "train"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use overparam_base::Progress;
use overparam_config::TrainConfig;
use overparam_engine::export::{
    ActivationEncoding, ExportOptions, KeptPrecision, Precision, QuantPlan, export, to_bytes,
};
use overparam_engine::latency::{LatencyReport, measure_ort};
use overparam_engine::quant::{CalibRecord, Quantization};
use overparam_engine::runtime::Provider;
use overparam_fuse::{DeploySpec, Weights};

use crate::{Error, Result};

pub mod report;

/// The embedded default run (multi-task SFO on synthetic scenes).
pub const DEMO: &str = include_str!("../../../configs/demo.toml");
/// The embedded default of `--from` (fine-tuning an imported network).
pub const FINETUNE: &str = include_str!("../../../configs/finetune.toml");
/// Where `--from` writes the imported checkpoint, in the run directory.
pub const IMPORTED_FILE: &str = "imported.deploy.safetensors";
pub const STAGES: usize = 8;
pub const REPORT_FILE: &str = "report.md";
/// Warm-up runs before the timed ones, per model.
pub const WARMUP_RUNS: usize = 20;

/// What the pipeline runs, beside the training config.
#[derive(Clone, Debug)]
pub struct Options {
    /// Training config; `None`: [`DEMO`].
    pub config: Option<PathBuf>,
    /// A real dataset directory instead of synthetic data.
    pub data: Option<PathBuf>,
    /// `key=value` overrides, as `train --set`.
    pub overrides: Vec<String>,
    /// p99 latency budget, ms.
    pub budget_ms: f64,
    /// Timed inference runs per precision.
    pub iters: usize,
    /// Frames published over zenoh.
    pub frames: u64,
    /// The INT8 recipe (its encoding is ignored: the pipeline writes both encodings from one
    /// calibration in TensorRT's).
    pub quant: Quantization,
    /// The accuracy a published model may lose against fp32.
    pub max_drop: MaxDrop,
    /// Start from a trained network: this ONNX, imported, expanded exactly and fine-tuned.
    pub from: Option<PathBuf>,
    /// The method of `--from`'s fine-tuning (else the config's).
    pub method: Option<overparam_fuse::MethodKind>,
    /// The input normalisation `--from`'s network was trained with.
    pub normalize: Option<overparam_fuse::spec::Normalization>,
}

/// The run config: the file or the embedded demo, with `--data` and the overrides applied.
pub fn resolve(o: &Options) -> Result<TrainConfig> {
    let mut overrides = o.overrides.clone();
    if let Some(d) = &o.data {
        if !d.is_dir() {
            return Err(Error::Run(format!(
                "--data {}: not a directory",
                d.display()
            )));
        }
        overrides.push(format!("data.dir=\"{}\"", d.display()));
    }
    if let Some(m) = o.method {
        overrides.push(format!("model.method.kind={}", m.as_str()));
    }
    if o.from.is_some() {
        // Set for real by `import_from` once the run directory is known.
        overrides.push("model.from=\"(the imported network)\"".into());
    }
    Ok(match (&o.config, &o.from) {
        (Some(p), _) => TrainConfig::load(p, &overrides)?,
        (None, Some(_)) => {
            TrainConfig::parse(FINETUNE, Path::new("configs/finetune.toml"), &overrides)?
        }
        (None, None) => TrainConfig::parse(DEMO, Path::new("configs/demo.toml"), &overrides)?,
    })
}

/// Stage 1 of `--from`: the ONNX imported (and checked against the original in ONNX Runtime)
/// into the run directory, which `model.from` then names; a dense network's synthetic scenes
/// take its input size.
pub fn import_from(
    o: &Options,
    onnx: &Path,
    cfg: &mut TrainConfig,
    progress: &dyn Progress,
) -> Result<crate::import::Report> {
    let dir = cfg.run_dir();
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let req = crate::import::Request {
        model: onnx.to_path_buf(),
        output: dir.join(IMPORTED_FILE),
        options: overparam_fuse::import::ImportOptions {
            normalize: o.normalize.clone(),
            ..Default::default()
        },
        seed: 0,
        check: true,
    };
    let report = crate::import::run(&req, progress)?;
    cfg.model.from = Some(req.output.clone());
    cfg.model.kind = None;
    let (spec, _) = overparam_fuse::checkpoint::load_deploy(&req.output)?;
    if spec.has_dense_outputs() && cfg.data.dir.is_none() {
        cfg.data.synthetic_height = spec.input.height;
        cfg.data.synthetic_width = spec.input.width;
    }
    cfg.validate()?;
    Ok(report)
}

fn stage(p: &dyn Progress, k: usize, what: &str) {
    p.outer(what, (k - 1) as u64, STAGES as u64);
    p.event(&format!("== [{k}/{STAGES}] {what}"));
}

/// Stage 2: the training, unless the run directory already has a deploy model.
#[derive(Clone, Debug)]
pub struct Trained {
    /// An earlier run's model was reused.
    pub reused: bool,
    pub seconds: f64,
}

#[cfg(feature = "train")]
pub fn train(cfg: &TrainConfig, mtl: bool, progress: &dyn Progress) -> Result<Trained> {
    use overparam_config::files::{DEPLOY_FILE, STATE_FILE};
    let dir = cfg.run_dir();
    let t = Instant::now();
    let deploy = dir.join(DEPLOY_FILE);
    let reused = deploy.exists();
    if reused {
        progress.event(&format!(
            "train: {} exists; reusing the trained model (delete the run directory to retrain)",
            deploy.display()
        ));
    } else {
        let resume = dir.join(STATE_FILE).exists();
        if mtl {
            overparam_train::mtl_trainer::train_mtl(cfg, resume, progress, None)?;
        } else {
            overparam_train::trainer::train(cfg, resume, progress, None)?;
        }
    }
    Ok(Trained {
        reused,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Stage 3: the trained model folded and verified with the pure-Rust executor (independent of
/// libtorch), and both models' sizes.
pub struct Fold {
    pub folded: overparam_fuse::verify::Folded,
    pub train: overparam_fuse::inspect::Summary,
    pub deploy: overparam_fuse::inspect::Summary,
}

pub fn fold(dir: &Path) -> Result<Fold> {
    use overparam_fuse::AnySpec;
    let path = dir.join(overparam_config::files::MODEL_FILE);
    let op = overparam_fuse::checkpoint::load(&path)?;
    let AnySpec::Train(train_spec) = &op.spec else {
        return Err(Error::file(&path, "holds a deploy spec"));
    };
    let opts = overparam_fuse::verify::VerifyOptions {
        batch: 1,
        seed: 0,
        measure: overparam_fuse::verify::Precision::ALL.to_vec(),
    };
    let folded = overparam_fuse::verify::fold_verified(train_spec, &op.weights, &opts)?;
    Ok(Fold {
        train: overparam_fuse::inspect::summarize(&op.spec)?,
        deploy: overparam_fuse::inspect::summarize(&AnySpec::Deploy(folded.spec.clone()))?,
        folded,
    })
}

/// One exported model: what the report calls it, where it is written, and its bytes.
#[derive(Clone, Debug)]
pub struct Variant {
    pub label: &'static str,
    pub file: &'static str,
    pub precision: Precision,
    pub bytes: Vec<u8>,
}

impl Variant {
    /// FP32, FP16, or INT8 in TensorRT's encoding (the engine's default export).
    pub fn new(precision: Precision, bytes: Vec<u8>) -> Self {
        let (label, file) = match precision {
            Precision::Fp32 => ("fp32", "model.onnx"),
            Precision::Fp16 => ("fp16", "model.fp16.onnx"),
            Precision::Int8 => ("int8 trt", "model.int8.onnx"),
        };
        Self {
            label,
            file,
            precision,
            bytes,
        }
    }

    /// The INT8 model in the CPU encoding, from the same thresholds as TensorRT's: the same
    /// grid as uint8 with zero point 128, conv outputs quantised too, so ONNX Runtime's CPU
    /// provider runs fused int8 QLinearConv kernels instead of dequantising around FP32 ones.
    pub fn int8_cpu(spec: &DeploySpec, w: &Weights, trt: &QuantPlan) -> Result<Self> {
        let enc = ActivationEncoding::UnsignedOffset;
        let mut o = ExportOptions::new(Precision::Int8);
        o.quant = Some(QuantPlan {
            encoding: enc,
            kept: KeptPrecision::for_encoding(enc),
            ..trt.clone()
        });
        Ok(Self {
            label: "int8 cpu",
            file: "model.int8.cpu.onnx",
            precision: Precision::Int8,
            bytes: to_bytes(&export(spec, w, &o)?),
        })
    }
}

/// Stages 4–5: the exports and their accuracy through ONNX Runtime.
pub struct Accuracy {
    /// fp32, fp16, int8 trt, int8 cpu.
    pub models: Vec<Variant>,
    /// The INT8 thresholds both INT8 models share.
    pub plan: QuantPlan,
    /// How they were made (`calib.json`).
    pub record: CalibRecord,
    pub table: AccuracyTable,
}

/// The accuracy per model, in `models`' order.
pub enum AccuracyTable {
    /// The nine NYUv2 metrics per model.
    Dense {
        scenes: usize,
        calib_scenes: usize,
        metrics: Vec<[f64; 9]>,
    },
    /// Top-1 and top-5 error (%) per model.
    Classification {
        images: usize,
        calib_images: usize,
        errors: Vec<(f64, f64)>,
    },
}

/// Calibrates INT8 on the training split (TensorRT's encoding), exports every precision and
/// evaluates each on the test split.
#[cfg(feature = "train")]
pub fn accuracy(
    cfg: &TrainConfig,
    spec: &DeploySpec,
    w: &Weights,
    o: &Options,
    mtl: bool,
    progress: &dyn Progress,
) -> Result<Accuracy> {
    use overparam_engine::{accuracy, dense};
    let q = Quantization {
        encoding: ActivationEncoding::SignedSymmetric,
        ..o.quant.clone()
    };
    if mtl {
        let (train, val) = overparam_train::mtl_trainer::load_splits(cfg)?;
        let (rows, models, cal) = dense::precision_table(spec, w, &train, &val, &q, progress)?;
        let plan = cal.plan;
        let mut models: Vec<Variant> = models
            .into_iter()
            .map(|(p, b)| Variant::new(p, b))
            .collect();
        let cpu = Variant::int8_cpu(spec, w, &plan)?;
        let mut metrics: Vec<[f64; 9]> = rows.into_iter().map(|r| r.metrics).collect();
        metrics.push(dense::evaluate(&cpu.bytes, &val, &dense::heads(spec))?);
        models.push(cpu);
        return Ok(Accuracy {
            models,
            plan,
            table: AccuracyTable::Dense {
                scenes: val.len(),
                calib_scenes: cal.record.images,
                metrics,
            },
            record: cal.record,
        });
    }
    let (train, test) = overparam_train::trainer::load_data(cfg)?;
    let norm = q.normalization(spec)?;
    let cal = overparam_engine::quant::calibrate(spec, w, &train, &q, 1, progress)?;
    let (plan, used) = (cal.plan, cal.record.images);
    let mut models = vec![];
    for p in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
        let mut eo = ExportOptions::new(p);
        if p == Precision::Int8 {
            eo.quant = Some(plan.clone());
        }
        models.push(Variant::new(p, to_bytes(&export(spec, w, &eo)?)));
    }
    models.push(Variant::int8_cpu(spec, w, &plan)?);
    let mut errors = vec![];
    for v in &models {
        let t = accuracy::evaluate(&v.bytes, &test, &norm)?;
        errors.push((t.top1_error(), t.top5_error()));
    }
    Ok(Accuracy {
        models,
        plan,
        record: cal.record,
        table: AccuracyTable::Classification {
            images: test.len(),
            calib_images: used,
            errors,
        },
    })
}

/// Writes the exports and `calib.json` into the run directory.
pub fn write_exports(dir: &Path, a: &Accuracy) -> Result<()> {
    for v in &a.models {
        crate::write(&dir.join(v.file), &v.bytes)?;
    }
    let mut record = a.record.clone();
    record.models = [
        ("model.int8.onnx", ActivationEncoding::SignedSymmetric),
        ("model.int8.cpu.onnx", ActivationEncoding::UnsignedOffset),
    ]
    .into_iter()
    .map(|(f, e)| (f.to_string(), e))
    .collect();
    crate::write(&dir.join("calib.json"), record.to_json()?.as_bytes())
}

/// The accuracy floor of what gets published (`--max-drop`): a model is published only if it
/// loses at most this much against fp32 on the evaluation split.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
pub struct MaxDrop {
    /// Top-1 error points a classifier may add.
    pub top1_points: f64,
    /// The fraction of its fp32 value each dense metric may lose (0.01: 1%).
    pub dense_relative: f64,
}

impl Default for MaxDrop {
    fn default() -> Self {
        Self {
            top1_points: 0.3,
            dense_relative: 0.01,
        }
    }
}

impl MaxDrop {
    /// Each model's loss against fp32 (the first model), in the floor's unit: top-1 error
    /// points, or the worst relative loss over the dense metrics (a metric the model has no
    /// output for, NaN, is skipped; a gain counts as no loss).
    pub fn drops(&self, table: &AccuracyTable) -> Vec<f64> {
        match table {
            AccuracyTable::Classification { errors, .. } => {
                errors.iter().map(|e| e.0 - errors[0].0).collect()
            }
            AccuracyTable::Dense { metrics, .. } => metrics
                .iter()
                .map(|m| {
                    overparam_base::task::NYU_METRICS
                        .iter()
                        .enumerate()
                        // A metric fp32 has no value for (no such output) is skipped; one the
                        // model lost (NaN where fp32 has a number) is an infinite loss.
                        .filter(|(k, _)| metrics[0][*k].is_finite())
                        .map(|(k, info)| {
                            let (v, base) = (m[k], metrics[0][k]);
                            if !v.is_finite() {
                                return f64::INFINITY;
                            }
                            let loss = if info.higher_is_better {
                                base - v
                            } else {
                                v - base
                            };
                            (loss / base.abs().max(f64::MIN_POSITIVE)).max(0.0)
                        })
                        .fold(0.0, f64::max)
                })
                .collect(),
        }
    }

    /// The limit in the unit of [`MaxDrop::drops`].
    pub fn limit(&self, table: &AccuracyTable) -> f64 {
        self.limit_in(matches!(table, AccuracyTable::Dense { .. }))
    }

    /// The limit for relative dense losses (`dense`), else for top-1 error points.
    pub fn limit_in(&self, dense: bool) -> f64 {
        if dense {
            self.dense_relative
        } else {
            self.top1_points
        }
    }
}

/// Stage 6: every model's latency on the CPU runtime, and which one is published.
pub struct Latency {
    pub reports: Vec<LatencyReport>,
    /// Each model's loss against fp32 ([`MaxDrop::drops`]) and whether it is within the floor.
    pub drops: Vec<f64>,
    pub within: Vec<bool>,
    /// The drops are relative dense losses (else top-1 points).
    pub dense: bool,
    /// Index of the lowest p50 among the models within the floor (fp32 always is).
    pub chosen: usize,
    /// Index of the lowest p50 of all.
    pub fastest: usize,
}

pub fn latency(
    models: &[Variant],
    acc: &AccuracyTable,
    threads: Option<usize>,
    o: &Options,
) -> Result<Latency> {
    let mut reports = vec![];
    for v in models {
        reports.push(measure_ort(
            &v.bytes,
            threads,
            &Provider::Cpu,
            WARMUP_RUNS,
            o.iters,
            Some(o.budget_ms),
        )?);
    }
    let p50: Vec<f64> = reports.iter().map(|r| r.p50_ms).collect();
    let drops = o.max_drop.drops(acc);
    let limit = o.max_drop.limit(acc);
    let within: Vec<bool> = drops.iter().map(|d| *d <= limit).collect();
    let none = || Error::Run("no latency was measured".into());
    let fastest_all = fastest(&p50).ok_or_else(none)?;
    let chosen = fastest_within(&p50, &within).ok_or_else(none)?;
    Ok(Latency {
        reports,
        drops,
        within,
        dense: matches!(acc, AccuracyTable::Dense { .. }),
        chosen,
        fastest: fastest_all,
    })
}

/// Writes `latency.json` and the published model's latency histogram.
pub fn write_latency(
    dir: &Path,
    models: &[Variant],
    l: &Latency,
    budget_ms: f64,
    max_drop: &MaxDrop,
) -> Result<()> {
    let (chosen, cr) = (&models[l.chosen], &l.reports[l.chosen]);
    crate::write(
        &dir.join("latency.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "runtime": l.reports[0].runtime,
            "device": l.reports[0].device,
            "budget_ms": budget_ms,
            "published": chosen.file,
            "max_drop": {"top1_points": max_drop.top1_points, "dense_relative": max_drop.dense_relative},
            "drop_unit": if l.dense { "dense_relative" } else { "top1_points" },
            "models": models.iter().zip(&l.reports).enumerate().map(|(i, (v, r))| serde_json::json!({
                "label": v.label, "file": v.file, "precision": v.precision,
                "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms,
                "within_budget": r.within_budget,
                "drop": l.drops[i], "within_max_drop": l.within[i],
            })).collect::<Vec<_>>(),
        }))?
        .as_bytes(),
    )?;
    overparam_data::plot::histogram(
        &format!(
            "{} latency per frame (onnx runtime, cpu)",
            chosen.label.to_uppercase()
        ),
        "milliseconds",
        &cr.samples_ms,
        40,
        &[
            ("p50", cr.p50_ms),
            ("p99", cr.p99_ms),
            ("budget", budget_ms),
        ],
    )
    .save(&dir.join("latency_hist.png"))?;
    Ok(())
}

/// The model a pipeline directory publishes: the fastest (p50) within an accuracy floor, read
/// from the `latency.json` the pipeline wrote (its drops were measured on the evaluation split).
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub path: PathBuf,
    pub label: String,
    /// Its drop against fp32, in the unit of [`MaxDrop::drops`].
    pub drop: f64,
    /// Why it is the one published, in a sentence.
    pub why: String,
}

/// The model of pipeline directory `dir` to publish under `max_drop` (the pipeline's own
/// floor when `None`). fp32 has no drop, so a model is always found.
pub fn published(dir: &Path, max_drop: Option<MaxDrop>) -> Result<Published> {
    #[derive(serde::Deserialize)]
    struct Model {
        label: String,
        file: String,
        p50_ms: f64,
        /// JSON has no NaN or infinity: null is a model that lost a metric.
        drop: Option<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Table {
        published: String,
        max_drop: MaxDrop,
        drop_unit: Option<String>,
        models: Vec<Model>,
    }
    let path = dir.join("latency.json");
    let bytes = std::fs::read(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    let bad = |m: String| Error::File {
        path: path.clone(),
        message: m,
    };
    let t: Table = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a pipeline latency table: {e}")))?;
    if t.models.is_empty() {
        return Err(bad("no models".into()));
    }
    let Some(floor) = max_drop else {
        let m = t
            .models
            .iter()
            .find(|m| m.file == t.published)
            .ok_or_else(|| {
                bad(format!(
                    "the published model {} is not in the table",
                    t.published
                ))
            })?;
        return Ok(Published {
            path: dir.join(&m.file),
            label: m.label.clone(),
            drop: m.drop.unwrap_or(f64::INFINITY),
            why: format!(
                "the pipeline's choice (fastest within its floor: {} top-1 points, {}% dense)",
                t.max_drop.top1_points,
                t.max_drop.dense_relative * 100.0
            ),
        });
    };
    let (dense, unit) = match t.drop_unit.as_deref() {
        Some("top1_points") => (false, "top-1 error points"),
        Some("dense_relative") => (true, "relative dense loss"),
        Some(u) => return Err(bad(format!("unknown drop_unit {u}"))),
        None => {
            return Err(bad(
                "written by an older overparam pipeline without drop_unit; rerun `overparam pipeline` to choose under another --max-drop".into(),
            ));
        }
    };
    let limit = floor.limit_in(dense);
    let p50: Vec<f64> = t.models.iter().map(|m| m.p50_ms).collect();
    let within: Vec<bool> = t
        .models
        .iter()
        .map(|m| m.drop.is_some_and(|d| d <= limit))
        .collect();
    let i = fastest_within(&p50, &within).ok_or_else(|| {
        bad(format!(
            "no model within {limit} {unit} (fp32 has no drop, so the table is damaged)"
        ))
    })?;
    let m = &t.models[i];
    let drop = m.drop.unwrap_or(f64::INFINITY);
    let why = match fastest(&p50) {
        Some(f) if f != i => format!(
            "the fastest within {limit} {unit} (drop {drop:.3}); {} is faster but loses {:.3}",
            t.models[f].label,
            t.models[f].drop.unwrap_or(f64::INFINITY)
        ),
        _ => format!("the fastest, and within {limit} {unit} (drop {drop:.3})"),
    };
    Ok(Published {
        path: dir.join(&m.file),
        label: m.label.clone(),
        drop,
        why,
    })
}

/// Index of the lowest p50 among the models `within` the floor.
fn fastest_within(p50_ms: &[f64], within: &[bool]) -> Option<usize> {
    let masked: Vec<f64> = p50_ms
        .iter()
        .zip(within)
        .map(|(p, ok)| if *ok { *p } else { f64::NAN })
        .collect();
    fastest(&masked)
}

/// Index of the lowest p50 (the first on a tie; NaN never wins).
pub fn fastest(p50_ms: &[f64]) -> Option<usize> {
    p50_ms
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// Stage 7: what the in-process listener received from the published model.
pub struct Bridged {
    pub run: overparam_bridge::run::RunSummary,
    pub received: u64,
    pub expected: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    pub size: (usize, usize),
    pub topics: usize,
    pub per_topic: Vec<overparam_bridge::listener::TopicReport>,
}

/// Runs the published model on synthetic frames, publishes every output over zenoh on
/// loopback and counts what an in-process listener received.
pub fn bridge(
    model: &Variant,
    frames: u64,
    threads: Option<usize>,
    progress: &dyn Progress,
) -> Result<Bridged> {
    use overparam_bridge::listener::{Event, ListenConfig, Listener};
    use overparam_bridge::publisher::{PerceptionPublisher, PublishConfig};
    use overparam_bridge::run::{Model, RunOptions, run};
    use overparam_bridge::session::{ZenohOptions, free_port};
    use overparam_bridge::source::{SourceSpec, open};
    let port = free_port()?;
    let s_sub = ZenohOptions::loopback(Some(port), None).open()?;
    let s_pub = ZenohOptions::loopback(None, Some(port)).open()?;
    let mut cfg = ListenConfig::native("overparam");
    cfg.payloads = false; // counted and timed, not looked at
    let mut l = Listener::new(&s_sub, cfg)?;
    let mut m = Model::from_onnx(&model.bytes, threads, &Provider::Cpu)?;
    // One topic per task the model has.
    let mut pc = PublishConfig::native("overparam", "cam0");
    m.configure(&mut pc, Default::default());
    let publisher = PerceptionPublisher::new(&s_pub, pc)?;
    if !publisher.wait_for_subscribers(Duration::from_secs(20))? {
        return Err(Error::Run(
            "bridge: the in-process listener never matched the publisher".into(),
        ));
    }
    let expected = frames * m.tasks.len() as u64;
    let rx = std::thread::spawn(move || -> Result<Listener> {
        let t0 = Instant::now();
        let mut n = 0;
        while n < expected && t0.elapsed() < Duration::from_secs(120) {
            if let Some(Event::Header { .. }) = l.recv(Duration::from_millis(200))? {
                n += 1;
            }
        }
        Ok(l)
    });
    let mut src = open(&SourceSpec::Synthetic { seed: 7 }, m.size, None)?;
    progress.start("publishing", frames);
    let s = run(
        &mut m,
        src.as_mut(),
        &publisher,
        &RunOptions {
            frames: Some(frames),
            fps: None,
        },
        |_| progress.inc(1),
    );
    progress.finish();
    let s = s?;
    let l = rx
        .join()
        .map_err(|_| Error::Run("bridge: the listener thread panicked".into()))??;
    let c = l.counters();
    let b = Bridged {
        run: s,
        received: c.received,
        expected,
        dropped: c.dropped,
        decode_errors: c.decode_errors,
        size: m.size,
        topics: m.tasks.len(),
        per_topic: l.report(),
    };
    Ok(b)
}

/// What [`run`] produced: the report's text and where it was written.
pub struct Outcome {
    pub markdown: String,
    pub report: PathBuf,
}

/// Every stage in order, writing the artefacts and the report into the run directory. A fold
/// that is not exact writes the report so far and fails; so does a bridge that lost messages.
#[cfg(feature = "train")]
pub fn run(o: &Options, progress: &dyn Progress) -> Result<Outcome> {
    let t_all = Instant::now();
    let mut cfg = resolve(o)?;
    let imported = match &o.from {
        Some(onnx) => {
            stage(
                progress,
                1,
                "import: the trained network from ONNX, checked against the original",
            );
            Some(import_from(o, onnx, &mut cfg, progress)?)
        }
        None => None,
    };
    let mtl = overparam_train::mtl_trainer::is_mtl(&cfg)?;
    let dir = cfg.run_dir();
    let report_path = dir.join(REPORT_FILE);
    let mut md = report::header(&cfg, mtl);
    if let Some(r) = &imported {
        md += &report::import(r);
    }

    stage(
        progress,
        1,
        if cfg.data.dir.is_some() || cfg.data.dataset.is_some() {
            "data: the dataset"
        } else {
            "data: synthetic data (generated once and reused)"
        },
    );
    stage(
        progress,
        2,
        &format!(
            "train: {} into {}",
            cfg.model.method.kind.as_str(),
            dir.display()
        ),
    );
    let trained = train(&cfg, mtl, progress)?;
    md += &report::training(&cfg, &trained, &dir, mtl)?;

    stage(
        progress,
        3,
        "fuse: fold the trained model and verify it against the unfolded one (eval mode)",
    );
    let f = fold(&dir)?;
    md += &report::fold(&cfg, &f);
    let r = &f.folded.report;
    if !r.passed() {
        crate::write(&report_path, md.as_bytes())?;
        let v = &r.exact;
        return Err(Error::Run(format!(
            "the fold is not exact in f64 (worst block {:e}, output {:e}); see {}",
            v.worst_block().map_or(0.0, |d| d.rel),
            v.worst_output().map_or(0.0, |d| d.rel),
            report_path.display()
        )));
    }
    let (spec, w) = (&f.folded.spec, &f.folded.weights);

    stage(
        progress,
        4,
        "export: FP32, FP16 and INT8 (calibrated; TensorRT's Q/DQ and the CPU encoding) ONNX",
    );
    stage(progress, 5, "accuracy per precision through ONNX Runtime");
    let acc = accuracy(&cfg, spec, w, o, mtl, progress)?;
    md += &report::accuracy(&acc);
    write_exports(&dir, &acc)?;

    stage(
        progress,
        6,
        &format!(
            "latency: {} timed runs per precision against a {} ms p99 budget",
            o.iters, o.budget_ms
        ),
    );
    let threads = cfg.run.threads;
    let lat = latency(&acc.models, &acc.table, threads, o)?;
    md += &report::latency(&acc.models, &lat, threads, o);
    write_latency(&dir, &acc.models, &lat, o.budget_ms, &o.max_drop)?;

    stage(
        progress,
        7,
        &format!(
            "bridge: publish {} frames over zenoh (loopback) to an in-process listener",
            o.frames
        ),
    );
    let chosen = &acc.models[lat.chosen];
    if mtl {
        let b = bridge(chosen, o.frames, threads, progress)?;
        md += &report::bridge(chosen, &b);
        if b.received != b.expected {
            return Err(Error::Run(format!(
                "bridge: received {} of {} messages",
                b.received, b.expected
            )));
        }
    } else {
        md += report::BRIDGE_SKIPPED;
    }

    stage(progress, 8, "report");
    md += &report::footer(t_all.elapsed().as_secs_f64(), o);
    crate::write(&report_path, md.as_bytes())?;
    progress.outer("", STAGES as u64, STAGES as u64);
    Ok(Outcome {
        markdown: md,
        report: report_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bridge run --model DIR --max-drop`: the fastest model within the floor given, in the
    /// table's unit; a lost metric (null drop) is never within; the pipeline's own choice
    /// without a floor; an old table without a unit and a damaged one are refused by name.
    #[test]
    fn published_is_the_fastest_within_the_floor_given() {
        let d = tempfile::tempdir().unwrap();
        let write = |unit: Option<&str>, published: &str| {
            let mut t = serde_json::json!({
                "published": published,
                "max_drop": {"top1_points": 0.3, "dense_relative": 0.01},
                "models": [
                    {"label": "fp32", "file": "model.onnx", "p50_ms": 4.0, "drop": 0.0},
                    {"label": "fp16", "file": "model.fp16.onnx", "p50_ms": 3.0, "drop": 0.2},
                    {"label": "int8 trt", "file": "model.int8.onnx", "p50_ms": 1.0, "drop": null},
                    {"label": "int8 cpu", "file": "model.int8.cpu.onnx", "p50_ms": 2.0, "drop": 0.5},
                ],
            });
            if let Some(u) = unit {
                t["drop_unit"] = u.into();
            }
            std::fs::write(d.path().join("latency.json"), t.to_string()).unwrap();
        };
        let floor = |top1, dense| {
            Some(MaxDrop {
                top1_points: top1,
                dense_relative: dense,
            })
        };
        write(Some("top1_points"), "model.fp16.onnx");
        let p = published(d.path(), None).unwrap();
        assert_eq!(p.path, d.path().join("model.fp16.onnx"));
        let pick = |f| published(d.path(), f).unwrap().label;
        assert_eq!(pick(floor(0.6, 0.0)), "int8 cpu");
        assert_eq!(pick(floor(0.3, 9.0)), "fp16");
        assert_eq!(pick(floor(0.0, 9.0)), "fp32");
        let p = published(d.path(), floor(0.6, 0.0)).unwrap();
        assert!(p.why.contains("int8 trt is faster"), "{}", p.why);
        write(Some("dense_relative"), "model.onnx");
        assert_eq!(pick(floor(0.0, 0.3)), "fp16");
        write(None, "model.onnx");
        let e = published(d.path(), floor(1.0, 1.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("latency.json") && e.contains("rerun"), "{e}");
        write(Some("top1_points"), "gone.onnx");
        let e = published(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("gone.onnx"), "{e}");
        std::fs::write(d.path().join("latency.json"), "{").unwrap();
        let e = published(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("not a pipeline latency table"), "{e}");
    }

    /// The floor: top-1 points for a classifier; for dense metrics the worst relative loss,
    /// whichever way each metric points, with gains counting as none.
    #[test]
    fn drops_are_measured_in_the_floor_units() {
        let m = MaxDrop::default();
        let t = AccuracyTable::Classification {
            images: 1,
            calib_images: 1,
            errors: vec![(8.0, 1.0), (8.1, 1.0), (8.5, 1.0), (7.0, 1.0)],
        };
        let d = m.drops(&t);
        assert!((d[1] - 0.1).abs() < 1e-9 && (d[2] - 0.5).abs() < 1e-9 && d[3] < 0.0);
        assert_eq!(m.limit(&t), 0.3);
        // mIoU (higher is better) loses 2%; depth abs error (lower is better) grows 0.5%.
        let mut base = [1.0f64; 9];
        base[0] = 0.5;
        let mut worse = base;
        worse[0] = 0.49;
        let k_depth = overparam_base::task::NYU_METRICS
            .iter()
            .position(|x| !x.higher_is_better)
            .unwrap();
        worse[k_depth] = base[k_depth] * 1.005;
        let mut better = base;
        better[k_depth] = 0.5;
        let mut lost = base;
        lost[0] = f64::NAN;
        let t = AccuracyTable::Dense {
            scenes: 1,
            calib_scenes: 1,
            metrics: vec![base, worse, better, lost],
        };
        let d = m.drops(&t);
        assert!((d[1] - 0.02).abs() < 1e-9, "{d:?}");
        assert_eq!(d[2], 0.0);
        assert_eq!(d[3], f64::INFINITY, "a NaN metric never passes the floor");
    }

    #[test]
    fn fastest_is_the_lowest_p50_and_ignores_nan() {
        assert_eq!(fastest(&[10.0, 12.0, 21.0, 6.5]), Some(3));
        assert_eq!(fastest(&[f64::NAN, 12.0, 11.0]), Some(2));
        assert_eq!(fastest(&[5.0, 5.0]), Some(0));
        assert_eq!(fastest(&[]), None);
    }

    #[test]
    fn the_embedded_demo_resolves_and_data_must_be_a_directory() {
        let mut o = Options {
            config: None,
            data: None,
            overrides: vec!["optim.epochs=2".into()],
            budget_ms: 50.0,
            iters: 1,
            frames: 1,
            quant: Quantization::default(),
            max_drop: MaxDrop::default(),
            from: None,
            method: None,
            normalize: None,
        };
        assert_eq!(resolve(&o).unwrap().optim.epochs, 2);
        o.data = Some(PathBuf::from("/nonexistent/overparam"));
        let e = resolve(&o).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/overparam") && e.contains("not a directory"),
            "{e}"
        );
    }
}
