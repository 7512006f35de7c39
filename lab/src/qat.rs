//! `overparam qat`: quantisation-aware fine-tuning of a finished training run, through the
//! fold. The run's model is folded and calibrated (the recipe's calibrator, auto by default),
//! fine-tuned with every conv's deploy kernel fake-quantised on the export's grids
//! ([`overparam_train::qat`]), folded again, and exported INT8 with the learned thresholds
//! written as they are (no recalibration). Its pair, an FP32 fine-tune of the same length
//! through the same folded forward, gives the equal-compute FP32 side of the INT8 drop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use overparam_base::Progress;
use overparam_config::TrainConfig;
use overparam_config::files::MODEL_FILE;
use overparam_engine::accuracy::{evaluate, evaluate_logits};
use overparam_engine::export::{ActivationEncoding, Precision, QuantPlan, nonnegative_tensors};
use overparam_engine::quant::{QatRecord, Quantization, calibrate, model_sha256};
use overparam_fuse::fold;
use overparam_train::qat::{FineTune, FineTuned, QatPlan, fine_tune};
use serde::Serialize;

use crate::deploy::{calib_path, export_bytes, write_model_and_calib};
use crate::error::{Error, Result};

/// What `overparam qat` does.
#[derive(Clone, Debug)]
pub struct QatRequest {
    /// A finished training run: `config.toml` and the train checkpoint.
    pub run: PathBuf,
    pub epochs: usize,
    /// Peak learning rate; `None`: 1% of the run's `optim.lr`.
    pub lr: Option<f64>,
    /// The calibration QAT starts from, and the encoding it trains for.
    pub quant: Quantization,
    /// Static batch of the exports.
    pub batch: usize,
    /// Also the equal-compute FP32 fine-tune.
    pub pair: bool,
    /// Where the INT8 model goes (default `<run>/model.qat.int8.onnx`).
    pub output: Option<PathBuf>,
}

/// One fine-tune's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Tuned {
    /// Top-1 error (%) of the model as it trained (fake-quantised for QAT), in libtorch.
    pub model_top1_err: f64,
    /// Its export's top-1 error (%) in ONNX Runtime: INT8 for QAT, FP32 for the pair.
    pub onnx_top1_err: f64,
    pub steps: usize,
    pub step_seconds: f64,
}

/// How the exported INT8 model reproduces the QAT model on the test split.
#[derive(Clone, Debug, Serialize)]
pub struct Reproduction {
    /// Share of test images whose top-1 class agrees.
    pub top1_agreement: f64,
    /// The largest logit difference in output steps (max|logit|/127 over the test split).
    pub max_steps: f64,
    /// Share of logits within 2 steps.
    pub within_2_steps: f64,
    /// Images whose QAT top-1 leads its runner-up by more than 4 steps: there, logits within
    /// 2 steps cannot change the class, so disagreement is a real error and not a near-tie
    /// settled by a machine's rounding (an untrained model's logits are all near-ties).
    pub decided_images: usize,
    /// Share of those whose top-1 agrees (1 when there are none).
    pub decided_top1_agreement: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QatReport {
    pub test_images: usize,
    pub encoding: ActivationEncoding,
    /// Before fine-tuning, in ONNX Runtime: FP32 and the calibrated INT8 (PTQ).
    pub fp32_top1_err: f64,
    pub ptq_int8_top1_err: f64,
    pub calibration: String,
    pub qat: Tuned,
    pub reproduction: Reproduction,
    pub pair: Option<Tuned>,
    /// The INT8 drop against the equal-compute FP32 fine-tune, points.
    pub int8_drop: Option<f64>,
    /// How many thresholds QAT moved from their calibrated values.
    pub thresholds_moved: usize,
    pub model: PathBuf,
    pub calib: PathBuf,
}

/// Runs [`QatRequest`]: calibrate, fine-tune (and the pair), export, evaluate.
pub fn run(r: &QatRequest, progress: &dyn Progress) -> Result<QatReport> {
    r.quant.check()?;
    let model_path = r.output.clone().unwrap_or_else(|| default_output(&r.run));
    let checkpoint = r.run.join(MODEL_FILE);
    let config = r.run.join("config.toml");
    for out in [&model_path, &calib_path(&model_path)] {
        overparam_base::check_output(out, &[&checkpoint, &config])
            .map_err(|e| Error::Run(e.to_string()))?;
    }
    let cfg = TrainConfig::load(&config, &[])
        .map_err(|e| Error::file(&config, format!("not a finished run's config: {e}")))?;
    let (spec, w) = overparam_fuse::checkpoint::load_train(&checkpoint)?;
    let (deploy, dw) = fold(&spec, &w)?;
    if deploy.has_dense_outputs() {
        return Err(Error::file(
            &checkpoint,
            "QAT fine-tunes classifiers; this model has dense outputs",
        ));
    }
    // Where the results go exists before the work starts, not after it.
    if let Some(dir) = model_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    if let Some(t) = cfg.run.threads {
        overparam_train::set_threads(t);
    }
    let device = overparam_train::state::device(cfg.run.device)?;
    let (train, test) = overparam_train::trainer::load_data_with(&cfg, progress)?;
    let norm = r.quant.normalization(&deploy)?;
    let fp32 = export_bytes(&deploy, &dw, Precision::Fp32, r.batch, None)?;
    let fp32_top1_err = evaluate(&fp32, &test, &norm)?.top1_error();
    let calibration = calibrate(&deploy, &dw, &train, &r.quant, r.batch, progress)?;
    let ptq = export_bytes(
        &deploy,
        &dw,
        Precision::Int8,
        r.batch,
        Some(calibration.plan.clone()),
    )?;
    let ptq_int8_top1_err = evaluate(&ptq, &test, &norm)?.top1_error();

    let (train, test) = (Arc::new(train), Arc::new(test));
    let plan = &calibration.plan;
    let lr = r.lr.unwrap_or(cfg.optim.lr / 100.0);
    let tune = |fake_quant: bool| -> Result<FineTuned> {
        let ft = FineTune {
            cfg: &cfg,
            spec: &spec,
            weights: &w,
            plan: QatPlan {
                thresholds: plan.thresholds.clone(),
                layers: plan.layers.clone(),
                unsigned: plan.encoding == ActivationEncoding::UnsignedOffset,
                nonneg: nonnegative_tensors(&deploy),
            },
            fake_quant,
            epochs: r.epochs,
            lr,
        };
        Ok(fine_tune(&ft, &train, &test, &norm, device, progress)?)
    };
    let q = tune(true)?;
    let (qdeploy, qdw) = fold(&spec, &q.weights)?;
    let mut thresholds = plan.thresholds.clone();
    thresholds.extend(q.thresholds.clone());
    let qplan = QuantPlan {
        thresholds: thresholds.clone(),
        ..plan.clone()
    };
    let int8 = export_bytes(&qdeploy, &qdw, Precision::Int8, r.batch, Some(qplan))?;
    let (top, logits) = evaluate_logits(&int8, &test, &norm)?;
    let reproduction = reproduction(&q.logits, &logits, test.num_classes);
    let qat = Tuned {
        model_top1_err: q.top1_err,
        onnx_top1_err: top.top1_error(),
        steps: q.steps,
        step_seconds: q.step_seconds,
    };
    let pair = if r.pair {
        let p = tune(false)?;
        let (pd, pw) = fold(&spec, &p.weights)?;
        let bytes = export_bytes(&pd, &pw, Precision::Fp32, r.batch, None)?;
        Some(Tuned {
            model_top1_err: p.top1_err,
            onnx_top1_err: evaluate(&bytes, &test, &norm)?.top1_error(),
            steps: p.steps,
            step_seconds: p.step_seconds,
        })
    } else {
        None
    };
    let thresholds_moved = q
        .thresholds
        .iter()
        .filter(|(k, v)| plan.thresholds.get(*k) != Some(*v))
        .count();
    let mut record = calibration.record.clone();
    record.model_sha256 = model_sha256(&qdeploy, &qdw);
    record.thresholds = thresholds;
    record.qat = Some(QatRecord {
        epochs: r.epochs,
        steps: q.steps,
        lr,
        start: plan.thresholds.clone(),
    });
    let calib = write_model_and_calib(&model_path, &int8, &record)?;
    // The fine-tuned deploy checkpoint beside it, so the INT8 model's record can be checked
    // against the model it was made from (`model_sha256`).
    let deploy_out = model_path.with_extension("deploy.safetensors");
    overparam_fuse::checkpoint::save(&deploy_out, &overparam_fuse::AnySpec::Deploy(qdeploy), &qdw)?;
    Ok(QatReport {
        test_images: test.len(),
        encoding: plan.encoding,
        fp32_top1_err,
        ptq_int8_top1_err,
        calibration: calibration.record.summary(),
        int8_drop: pair.as_ref().map(|p| qat.onnx_top1_err - p.onnx_top1_err),
        qat,
        reproduction,
        pair,
        thresholds_moved,
        model: model_path,
        calib,
    })
}

/// How closely `got` (ONNX Runtime's logits) follows `want` (the QAT model's).
pub fn reproduction(want: &[f32], got: &[f32], classes: usize) -> Reproduction {
    let step = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE) as f64
        / 127.0;
    let steps: Vec<f64> = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs() as f64 / step)
        .collect();
    let top1 = |v: &[f32]| -> Vec<usize> {
        v.chunks(classes.max(1))
            .map(|c| {
                (0..c.len())
                    .max_by(|&i, &j| c[i].total_cmp(&c[j]))
                    .unwrap_or(0)
            })
            .collect()
    };
    let (a, b) = (top1(want), top1(got));
    let n = a.len().max(1) as f64;
    let decided: Vec<usize> = want
        .chunks(classes.max(1))
        .enumerate()
        .filter(|(_, c)| {
            let mut v: Vec<f32> = c.to_vec();
            v.sort_by(|x, y| y.total_cmp(x));
            v.len() < 2 || (v[0] - v[1]) as f64 > 4.0 * step
        })
        .map(|(i, _)| i)
        .collect();
    let decided_same = decided.iter().filter(|&&i| a[i] == b[i]).count();
    Reproduction {
        decided_images: decided.len(),
        decided_top1_agreement: if decided.is_empty() {
            1.0
        } else {
            decided_same as f64 / decided.len() as f64
        },
        top1_agreement: a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / n,
        max_steps: steps.iter().fold(0.0, |m: f64, v| m.max(*v)),
        within_2_steps: steps.iter().filter(|v| **v <= 2.0).count() as f64
            / steps.len().max(1) as f64,
    }
}

/// `[quant] qat_epochs` of a finished classification run: [`run`] on its directory, with
/// the config's encoding and learning rate and the default calibration. `None` when the
/// config asks for no QAT.
pub fn after_training(
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: &dyn Progress,
) -> Result<Option<QatReport>> {
    let q = &cfg.quant;
    if q.qat_epochs == 0 {
        return Ok(None);
    }
    let encoding = match q.encoding {
        overparam_config::QuantEncoding::Trt => ActivationEncoding::SignedSymmetric,
        overparam_config::QuantEncoding::Cpu => ActivationEncoding::UnsignedOffset,
    };
    let req = QatRequest {
        run: run_dir.to_path_buf(),
        epochs: q.qat_epochs,
        lr: q.qat_lr,
        quant: Quantization {
            encoding,
            ..Default::default()
        },
        batch: 50,
        pair: false,
        output: None,
    };
    run(&req, progress).map(Some)
}

/// Where `run` puts its INT8 model by default.
pub fn default_output(run: &Path) -> PathBuf {
    run.join("model.qat.int8.onnx")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_ties_are_told_from_decided_images() {
        // Step = 10/127. Image 0 leads by 10 (decided, agrees); image 1 by 0.01 (a near-tie,
        // flipped by 0.02, under one step).
        let want = [10.0, 0.0, 0.0, 1.0, 0.99, 0.0];
        let got = [10.0, 0.1, 0.0, 0.98, 0.99, 0.0];
        let r = reproduction(&want, &got, 3);
        assert_eq!(r.top1_agreement, 0.5);
        assert_eq!((r.decided_images, r.decided_top1_agreement), (1, 1.0));
        assert_eq!(r.within_2_steps, 1.0);
        // A decided image that flips is counted.
        let r = reproduction(&want, &[0.0, 10.0, 0.0, 1.0, 0.99, 0.0], 3);
        assert_eq!(r.decided_top1_agreement, 0.0);
    }
}
