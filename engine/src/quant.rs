//! One quantisation recipe, [`Quantization`]: built once from the flags (or a config) and
//! passed whole to every path that calibrates; and the record a calibration leaves,
//! [`CalibRecord`] (`calib.json`), written and read only here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use overparam_base::Progress;
use overparam_base::number;
use overparam_data::cifar::ImageSet;
use overparam_data::loader::Normalize;
use overparam_fuse::Weights;
use overparam_fuse::spec::DeploySpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calib::{
    AutoReport, Calibrator, Candidate, Histogram, choose, collect, plan_with, seeded_batches,
    split_sizes,
};
use crate::error::{Error, Result};
use crate::export::{ActivationEncoding, KeptPrecision, QuantPlan, quantizable_layers};

/// Where the input normalisation comes from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum NormSource {
    /// Recorded in the checkpoint's spec (by training or `overparam import --mean --std`).
    #[default]
    Model,
    /// Given on the command line (`--mean`, `--std`).
    Given(Normalize),
}

/// Everything that decides an INT8 model's scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantization {
    pub calibrator: Calibrator,
    /// The percentile of `Calibrator::Percentile`, in (0, 100].
    pub percentile: f64,
    /// Calibration images (the histograms').
    pub images: usize,
    /// Held-out images auto chooses on, drawn after the calibration images.
    pub heldout: usize,
    /// Seed of the draw.
    pub seed: u64,
    pub encoding: ActivationEncoding,
    /// Conv/linear layers kept out of INT8 (partial INT8).
    pub keep: Vec<String>,
    /// Their precision (default: the encoding's, [`KeptPrecision::for_encoding`]).
    pub kept_precision: Option<KeptPrecision>,
    pub normalization: NormSource,
}

impl Default for Quantization {
    fn default() -> Self {
        Self {
            calibrator: Calibrator::Auto,
            percentile: 99.99,
            images: 512,
            heldout: 256,
            seed: 0,
            encoding: ActivationEncoding::SignedSymmetric,
            keep: vec![],
            kept_precision: None,
            normalization: NormSource::Model,
        }
    }
}

/// The flag that supplies a missing normalisation, named by every path that needs one.
pub const NORM_FLAGS: &str = "--mean and --std";

impl Quantization {
    /// Refuses numbers no calibration can use.
    pub fn check(&self) -> Result<()> {
        let bad = |e: overparam_base::number::NumberError| Error::Calibration(e.to_string());
        number::PERCENTILE
            .check("percentile", self.percentile)
            .map_err(bad)?;
        number::COUNT
            .check("calibration images", self.images)
            .map_err(bad)?;
        if self.calibrator == Calibrator::Auto {
            number::COUNT
                .check("held-out images (auto calibration)", self.heldout)
                .map_err(bad)?;
        }
        Ok(())
    }

    /// The precision of kept layers.
    pub fn kept(&self) -> KeptPrecision {
        self.kept_precision
            .unwrap_or(KeptPrecision::for_encoding(self.encoding))
    }

    /// The input normalisation: the model's or the given one. A model that records none is
    /// refused, naming the flags that supply it; guessing (the calibration set's statistics,
    /// or 0.5/0.25) would calibrate a network on inputs it never saw.
    pub fn normalization(&self, spec: &DeploySpec) -> Result<Normalize> {
        let c = spec.input.channels;
        let n = match &self.normalization {
            NormSource::Given(n) => n.clone(),
            NormSource::Model => match &spec.input.normalize {
                Some(n) => Normalize {
                    mean: n.mean.clone(),
                    std: n.std.clone(),
                },
                None => {
                    return Err(Error::Calibration(format!(
                        "the model records no input normalisation: pass {NORM_FLAGS} (one value per channel, {c} here, on the 0..1 scale the network was trained with), or record them with `overparam import --mean --std`"
                    )));
                }
            },
        };
        if n.mean.len() != c || n.std.len() != c {
            return Err(Error::Calibration(format!(
                "the normalisation has {} means and {} stds for a {c}-channel input",
                n.mean.len(),
                n.std.len()
            )));
        }
        if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || n.mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::Calibration(
                "the normalisation needs finite means and positive stds".into(),
            ));
        }
        Ok(n)
    }

    /// How many of `len` samples (`what`: images, scenes) calibrate and how many are held out,
    /// in whole batches ([`split_sizes`]); a shortfall against the recipe is reported as an
    /// event, and a set too small for one batch of each is refused.
    pub fn draw(
        &self,
        len: usize,
        batch: usize,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<(usize, usize)> {
        let auto = self.calibrator == Calibrator::Auto;
        let heldout = if auto { self.heldout } else { 0 };
        let (n, h) = split_sizes(len, self.images, heldout, batch);
        if n == 0 || (auto && h == 0) {
            return Err(Error::Calibration(if auto {
                format!(
                    "{len} {what} cannot make a calibration batch and a held-out batch of {batch} for auto calibration: use more {what}, a smaller --batch, or a single rule (--calibrator mse)"
                )
            } else {
                format!("{len} {what} cannot make one batch of {batch}")
            }));
        }
        if n < self.images || h < heldout {
            progress.event(&format!(
                "calibration: {} {what} and {heldout} held-out asked, {n} and {h} used (the set has {len}, in whole batches of {batch})",
                self.images
            ));
        }
        Ok((n, h))
    }

    /// The candidate a single-rule calibrator applies everywhere (`None`: auto).
    fn single(&self) -> Option<Candidate> {
        self.calibrator.candidate(self.percentile)
    }
}

/// A calibration's result: the plan export takes, the histograms (for sensitivity studies) and
/// the record that goes beside the model.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub plan: QuantPlan,
    pub hists: BTreeMap<String, Histogram>,
    pub record: CalibRecord,
}

/// Calibrates a classifier-shaped input (`set`'s images, normalised) at static `batch`: a
/// seeded draw of `q.images` images for the histograms and, for auto, the next `q.heldout`
/// to choose on. When the set is too small for both, the held-out part shrinks first
/// ([`split_sizes`]), and the shortfall is reported as an event.
pub fn calibrate(
    spec: &DeploySpec,
    w: &Weights<f32>,
    set: &ImageSet,
    q: &Quantization,
    batch: usize,
    progress: &dyn Progress,
) -> Result<Calibration> {
    q.check()?;
    let norm = q.normalization(spec)?;
    let i = &spec.input;
    crate::accuracy::check_input([i.channels, i.height, i.width], set, &norm)?;
    let (n, h) = q.draw(set.len(), batch, "images", progress)?;
    let calib = seeded_batches(set, &norm, 0..n, batch, q.seed)?;
    let heldout = seeded_batches(set, &norm, n..n + h, batch, q.seed)?;
    calibrate_inputs(spec, w, &calib, &heldout, q, Some(&norm), progress)
}

/// The calibration of already prepared inputs: histograms from `calib`, the rule per tensor
/// (auto: chosen on `heldout`), the kept layers, and the record.
pub fn calibrate_inputs(
    spec: &DeploySpec,
    w: &Weights<f32>,
    calib: &[Vec<f32>],
    heldout: &[Vec<f32>],
    q: &Quantization,
    norm: Option<&Normalize>,
    progress: &dyn Progress,
) -> Result<Calibration> {
    q.check()?;
    let per = (spec.input.channels * spec.input.height * spec.input.width).max(1);
    let hists = collect(spec, w, calib, progress)?;
    // The kept layers first: auto measures the model that is exported.
    let mut template = QuantPlan {
        thresholds: BTreeMap::new(),
        layers: None,
        encoding: q.encoding,
        kept: q.kept(),
    };
    let kept = apply_keep(spec, &mut template, &q.keep, q.kept())?;
    let (choice, auto) = match q.single() {
        Some(c) => (hists.keys().map(|k| (k.clone(), c)).collect(), None),
        None => {
            let (choice, r) = choose(spec, w, &hists, heldout, &template, progress)?;
            (choice, Some(r))
        }
    };
    let plan = plan_with(&hists, &choice, &template)?;
    let record = CalibRecord {
        version: CALIB_VERSION,
        model_sha256: model_sha256(spec, w),
        calibrator: q.calibrator,
        percentile: (q.calibrator == Calibrator::Percentile).then_some(q.percentile),
        images: calib.iter().map(|b| b.len() / per).sum(),
        heldout_images: if auto.is_some() {
            heldout.iter().map(|b| b.len() / per).sum()
        } else {
            0
        },
        seed: q.seed,
        encoding: q.encoding,
        kept_layers: kept,
        kept_precision: plan.kept,
        normalization: norm.map(|n| RecordedNorm {
            mean: n.mean.clone(),
            std: n.std.clone(),
            source: match q.normalization {
                NormSource::Model => "model".into(),
                NormSource::Given(_) => "flags".into(),
            },
        }),
        thresholds: plan.thresholds.clone(),
        amax: hists.iter().map(|(k, h)| (k.clone(), h.amax)).collect(),
        choice,
        auto,
        models: BTreeMap::new(),
        qat: None,
    };
    Ok(Calibration {
        plan,
        hists,
        record,
    })
}

/// Leaves `keep` out of INT8 in `precision`; every name must be a conv or linear layer of the
/// model. Returns the kept layers, sorted.
pub fn apply_keep(
    spec: &DeploySpec,
    p: &mut QuantPlan,
    keep: &[String],
    precision: KeptPrecision,
) -> Result<Vec<String>> {
    let layers: Vec<String> = quantizable_layers(spec).into_iter().map(|l| l.0).collect();
    let keep: BTreeSet<String> = keep.iter().cloned().collect();
    if let Some(bad) = keep.iter().find(|k| !layers.contains(k)) {
        return Err(Error::Calibration(format!(
            "--keep: `{bad}` is not a conv or linear layer of this model (layers: {})",
            layers.join(", ")
        )));
    }
    p.kept = precision;
    p.layers = if keep.is_empty() {
        None
    } else {
        Some(layers.into_iter().filter(|l| !keep.contains(l)).collect())
    };
    Ok(keep.into_iter().collect())
}

/// The version of `calib.json` this build writes and reads. 2: typed, with the model's hash,
/// the rule per tensor and auto's measurements (1 was the untyped record before).
pub const CALIB_VERSION: u32 = 2;

/// The normalisation a calibration used, and where it came from (`model` or `flags`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub source: String,
}

/// `calib.json`: what an INT8 model's scales were made from, beside the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibRecord {
    pub version: u32,
    /// [`model_sha256`] of the deploy model calibrated; a record is refused for another.
    pub model_sha256: String,
    pub calibrator: Calibrator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Calibration images used (whole batches).
    pub images: usize,
    /// Held-out images auto chose on (0 for a single rule).
    pub heldout_images: usize,
    pub seed: u64,
    pub encoding: ActivationEncoding,
    pub kept_layers: Vec<String>,
    pub kept_precision: KeptPrecision,
    /// `None` for inputs taken as they are (the multi-task network's scenes).
    pub normalization: Option<RecordedNorm>,
    /// The clipping threshold per tensor (scale = threshold / 127).
    pub thresholds: BTreeMap<String, f32>,
    /// The largest |x| seen per tensor.
    pub amax: BTreeMap<String, f32>,
    /// The rule each tensor's threshold came from.
    pub choice: BTreeMap<String, Candidate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoReport>,
    /// Files made from these thresholds and the encoding each uses, where one calibration
    /// serves several (the pipeline's `model.int8.onnx` and `model.int8.cpu.onnx`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ActivationEncoding>,
    /// Set when the thresholds were learned by QAT (`overparam qat`), starting from the
    /// calibration the rest of the record describes; `model_sha256` is then the fine-tuned
    /// model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qat: Option<QatRecord>,
}

/// How QAT learned a record's thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatRecord {
    pub epochs: usize,
    pub steps: usize,
    /// Peak learning rate (cosine to zero).
    pub lr: f64,
    /// The calibrated thresholds QAT started from.
    pub start: BTreeMap<String, f32>,
}

impl CalibRecord {
    /// How the thresholds were chosen, in a phrase: the calibrator, and for auto the rule it
    /// started from, the tensors it moved and the held-out images it chose on.
    pub fn summary(&self) -> String {
        let calibration = self.calibration_summary();
        match &self.qat {
            Some(q) => format!(
                "QAT: thresholds learned over {} epoch(s), {} steps, from {calibration}",
                q.epochs, q.steps
            ),
            None => calibration,
        }
    }

    fn calibration_summary(&self) -> String {
        match &self.auto {
            Some(a) => format!(
                "auto calibration (best single rule on {} held-out images: {}; {} of {} tensors given another rule, held-out output error {:.3e})",
                a.heldout_images,
                a.start,
                a.changed.len(),
                self.choice.len(),
                a.error
            ),
            None => match self.percentile {
                Some(p) => format!("percentile {p} calibration"),
                None => format!("{} calibration", self.calibrator),
            },
        }
    }

    pub fn to_json(&self) -> Result<String> {
        let mut r = self.clone();
        // JSON has no infinity: an auto candidate whose model overflowed is written as the
        // largest finite error.
        if let Some(a) = &mut r.auto {
            for (_, e) in &mut a.uniform {
                *e = e.min(f64::MAX);
            }
            a.error = a.error.min(f64::MAX);
        }
        serde_json::to_string_pretty(&r).map_err(|e| Error::Calibration(e.to_string()))
    }

    /// Reads a record and checks it belongs to this model: another version or another model's
    /// hash is refused, naming both.
    pub fn read(path: &Path, spec: &DeploySpec, w: &Weights<f32>) -> Result<Self> {
        let file = |message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| file(format!("not a calibration record (JSON: {e})")))?;
        match v.get("version").and_then(|v| v.as_u64()) {
            Some(x) if x == CALIB_VERSION as u64 => {}
            Some(x) => {
                return Err(file(format!(
                    "calibration record version {x}; this overparam reads version {CALIB_VERSION}: calibrate again (overparam export --precision int8)"
                )));
            }
            None => {
                return Err(file(format!(
                    "calibration record without a version (written before version {CALIB_VERSION}): calibrate again (overparam export --precision int8)"
                )));
            }
        }
        let r: CalibRecord = serde_json::from_value(v)
            .map_err(|e| file(format!("not a calibration record: {e}")))?;
        let want = model_sha256(spec, w);
        if r.model_sha256 != want {
            return Err(file(format!(
                "the calibration record is of another model (sha256 {}…, this model {}…)",
                &r.model_sha256.get(..12).unwrap_or(&r.model_sha256),
                &want[..12]
            )));
        }
        if let Some(t) = r
            .thresholds
            .values()
            .find(|t| !(t.is_finite() && **t > 0.0))
        {
            return Err(file(format!(
                "a threshold of {t}: thresholds must be finite and positive"
            )));
        }
        Ok(r)
    }

    /// The plan these thresholds make, with the recorded kept layers.
    pub fn plan(&self, spec: &DeploySpec) -> Result<QuantPlan> {
        let mut p = QuantPlan {
            thresholds: self.thresholds.clone(),
            layers: None,
            encoding: self.encoding,
            kept: self.kept_precision,
        };
        apply_keep(spec, &mut p, &self.kept_layers, self.kept_precision)?;
        Ok(p)
    }
}

/// The identity of a deploy model: SHA-256 over its spec (as JSON) and every tensor's name,
/// shape and little-endian f32 values, in name order. Independent of the file it came from.
pub fn model_sha256(spec: &DeploySpec, w: &Weights<f32>) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    for (name, t) in w {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        for d in &t.shape {
            h.update((*d as u64).to_le_bytes());
        }
        for v in &t.data {
            h.update(v.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_numbers_are_refused_with_their_name() {
        let mut q = Quantization {
            percentile: 0.0,
            ..Default::default()
        };
        assert!(q.check().unwrap_err().to_string().contains("percentile"));
        q.percentile = 100.5;
        assert!(q.check().is_err());
        q.percentile = 100.0;
        q.check().unwrap();
        q.images = 0;
        assert!(
            q.check()
                .unwrap_err()
                .to_string()
                .contains("calibration images")
        );
        q.images = 1;
        q.heldout = 0;
        assert!(q.check().unwrap_err().to_string().contains("held-out"));
        q.calibrator = Calibrator::Max;
        q.check().unwrap();
    }

    #[test]
    fn split_sizes_keep_calibration_and_shrink_the_held_out_part_first() {
        assert_eq!(split_sizes(10_000, 512, 256, 50), (500, 250));
        assert_eq!(split_sizes(600, 512, 256, 1), (450, 150));
        assert_eq!(split_sizes(100, 512, 0, 10), (100, 0));
        // Too small for a held-out batch beside a calibration batch.
        assert_eq!(split_sizes(10, 512, 256, 8), (0, 8));
        // Fewer held-out images asked than a batch holds: one batch.
        assert_eq!(split_sizes(50_000, 512, 256, 300), (300, 300));
        // Whatever is left beside the calibration images is held out.
        assert_eq!(split_sizes(1000, 100, 5000, 1), (100, 900));
    }
}
