//! Fine-tuning a trained network (`model.from`): the deploy checkpoint is expanded exactly
//! with the config's method ([`overparam_fuse::expand`], checked in f64 at 1e-9), and
//! training starts from the expansion instead of a fresh initialisation. Before the first
//! step the expanded model is evaluated next to the imported one on the test split and both
//! are written to `start.json`: the R3 transition check, for any network.

use std::path::{Path, PathBuf};

use overparam_base::Role;
use overparam_config::TrainConfig;
use overparam_fuse::expand::expand;
use overparam_fuse::verify::verify_expansion;
use overparam_fuse::{DeploySpec, MethodConfig, TrainSpec, Weights};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The start file of a fine-tuning run: the imported and the expanded model before any step.
pub const START_FILE: &str = "start.json";

/// A trained deploy network to fine-tune.
#[derive(Clone, Debug)]
pub struct Pretrained {
    pub path: PathBuf,
    pub spec: DeploySpec,
    pub weights: Weights<f32>,
}

impl Pretrained {
    /// `model.from` of a config, if it names one.
    pub fn of(cfg: &TrainConfig) -> Result<Option<Self>> {
        let Some(path) = &cfg.model.from else {
            return Ok(None);
        };
        let (spec, weights) = overparam_fuse::checkpoint::load_deploy(path).map_err(|e| match e {
            overparam_fuse::Error::WrongStage { .. } => Error::Config(format!(
                "model.from = {}: a train-time checkpoint; fine-tuning starts from a deploy checkpoint (fold it with overparam fuse, or import one with overparam import)",
                path.display()
            )),
            e => e.into(),
        })?;
        Ok(Some(Self {
            path: path.clone(),
            spec,
            weights,
        }))
    }

    /// Whether it has dense outputs (segmentation, depth, normals): the multi-task trainer
    /// takes it; with class logits, the classification trainer.
    pub fn is_dense(&self) -> Result<bool> {
        let dense = self.spec.outputs.iter().any(|o| o.role.task().is_some());
        let classes = self
            .spec
            .outputs
            .iter()
            .any(|o| o.role == Role::ClassLogits);
        match (dense, classes) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            (true, true) => Err(Error::Config(format!(
                "model.from = {}: it has both class logits and dense outputs; fine-tuning trains one kind (set the others' roles to raw with overparam import --output NAME=raw)",
                self.path.display()
            ))),
            (false, false) => {
                let outs: Vec<String> = self
                    .spec
                    .outputs
                    .iter()
                    .map(|o| format!("{} ({})", o.name, o.role.name()))
                    .collect();
                Err(Error::Config(format!(
                    "model.from = {}: no output has a role training can use ({}); import it with --output NAME=class_logits or a dense role",
                    self.path.display(),
                    outs.join(", ")
                )))
            }
        }
    }

    /// The normalisation the network was trained with, which fine-tuning must feed it.
    pub fn normalization(&self) -> Result<overparam_fuse::spec::Normalization> {
        self.spec.input.normalize.clone().ok_or_else(|| {
            Error::Config(format!(
                "model.from = {} records no input normalisation, and fine-tuning must preprocess as the network was trained; import it with overparam import --mean M1,M2,… --std S1,S2,… (the (x/255 − mean)/std it was trained with)",
                self.path.display()
            ))
        })
    }

    /// The exact expansion with `method`, refused unless the f64 verdict passes.
    pub fn expand(&self, method: &MethodConfig, seed: u64) -> Result<(TrainSpec, Weights<f32>)> {
        let e = expand(&self.spec, &self.weights, method, seed)?;
        let v = verify_expansion(&self.spec, &self.weights, &e.spec, &e.weights, 2, seed)?;
        if !v.passed() {
            return Err(Error::Config(format!(
                "model.from = {}: the expansion with {} is not exact in f64 (worst output rel {:e})",
                self.path.display(),
                method.kind.as_str(),
                v.worst_output().map_or(f64::NAN, |d| d.rel)
            )));
        }
        Ok((e.spec, e.weights))
    }
}

/// The imported and the expanded model on the test split before the first step.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Start {
    pub from: PathBuf,
    /// What was measured: `test top-1 error %`, or the nine NYUv2 metrics.
    pub metric: String,
    pub imported: Vec<f64>,
    pub expanded: Vec<f64>,
    /// Predictions (argmax per image or pixel) that differ between the two.
    pub prediction_mismatches: usize,
    /// Largest relative difference of the outputs (max|Δ|/max|y|).
    pub max_output_rel_diff: f64,
}

/// The transition tolerance of R3, for any network: fp32 rounding, not a change of function.
pub const START_TOLERANCE: f64 = 1e-4;

/// Writes `start.json`, refusing a start whose outputs moved beyond [`START_TOLERANCE`].
pub fn record_start(dir: &Path, s: &Start) -> Result<String> {
    let json = serde_json::to_string_pretty(s).expect("json");
    overparam_base::write_file_atomic(&dir.join(START_FILE), json.as_bytes()).map_err(|e| {
        Error::Io {
            path: dir.join(START_FILE),
            source: e,
        }
    })?;
    if s.max_output_rel_diff.is_nan() || s.max_output_rel_diff > START_TOLERANCE {
        return Err(Error::Run {
            dir: dir.into(),
            message: format!(
                "the expanded model's outputs differ from the imported model's by {:e} before the first step (tolerance {START_TOLERANCE:e}); see {START_FILE}",
                s.max_output_rel_diff
            ),
        });
    }
    Ok(format!(
        "start: {} expanded exactly; before the first step, {} imported {:?} = expanded {:?} ({} predictions differ, outputs rel {:.1e})",
        s.from.display(),
        s.metric,
        s.imported,
        s.expanded,
        s.prediction_mismatches,
        s.max_output_rel_diff
    ))
}
