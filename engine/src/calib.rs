//! INT8 calibration in Rust: histograms of |activation| at every conv/linear input, collected
//! by running the FP32 model (with those tensors exposed as outputs) through the CPU runtime on
//! a fixed, seeded calibration set; then one of four calibrators picks each tensor's clipping
//! range `amax`, and the symmetric scale is `amax / 127`.

use std::collections::BTreeMap;

use overparam_base::Progress;
use overparam_data::cifar::ImageSet;
use overparam_data::loader::{Normalize, prepare};
use overparam_fuse::spec::DeploySpec;
use overparam_fuse::{Rng, Weights};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::export::{
    ActivationEncoding, ExportOptions, KeptPrecision, Precision, QuantPlan, export,
    quantizable_layers, to_bytes,
};
use crate::runtime::OrtRuntime;

pub const BINS: usize = 2048;
/// Quantisation levels on one side of zero for the entropy calibrator (TensorRT uses 128).
const LEVELS: usize = 128;

/// What `--calibrator` asks for: one rule for every tensor, or [`Calibrator::Auto`], which
/// tries each of [`AUTO_CANDIDATES`] and keeps, per tensor, the one whose INT8 model's outputs
/// are closest to FP32 on held-out calibration images ([`choose`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Calibrator {
    /// The largest |x| seen.
    Max,
    /// A percentile of |x| (`--percentile`, default 99.99).
    Percentile,
    /// Minimum KL divergence between the clipped and the quantised distribution (TensorRT's
    /// entropy calibrator, after Migacz, "8-bit Inference with TensorRT", GTC 2017).
    Entropy,
    /// Minimum expected squared quantisation error.
    Mse,
    /// The candidate per tensor that minimises the output error on held-out images.
    #[default]
    Auto,
}

impl Calibrator {
    pub const NAMES: &str = "auto, max, percentile, entropy, mse";

    pub fn as_str(self) -> &'static str {
        match self {
            Calibrator::Max => "max",
            Calibrator::Percentile => "percentile",
            Calibrator::Entropy => "entropy",
            Calibrator::Mse => "mse",
            Calibrator::Auto => "auto",
        }
    }

    /// The single rule this calibrator applies to every tensor (`None` for auto).
    pub fn candidate(self, percentile: f64) -> Option<Candidate> {
        Some(match self {
            Calibrator::Max => Candidate::Max,
            Calibrator::Percentile => Candidate::Percentile(percentile),
            Calibrator::Entropy => Candidate::Entropy,
            Calibrator::Mse => Candidate::Mse,
            Calibrator::Auto => return None,
        })
    }
}

impl std::fmt::Display for Calibrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Calibrator {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Self::Max),
            "percentile" => Ok(Self::Percentile),
            "entropy" => Ok(Self::Entropy),
            "mse" => Ok(Self::Mse),
            "auto" => Ok(Self::Auto),
            _ => Err(Error::Calibration(format!(
                "unknown calibrator `{s}` ({})",
                Self::NAMES
            ))),
        }
    }
}

/// One rule that turns a tensor's histogram into its clipping threshold. Written as `max`,
/// `entropy`, `mse` or `p99.99` (a percentile of |x|).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Candidate {
    Max,
    /// The given percentile of |x|, in (0, 100].
    Percentile(f64),
    Entropy,
    Mse,
}

/// What auto tries. Wu et al. 2020 ("Integer Quantization for Deep Learning Inference", §4)
/// compare max, entropy and 99.9–99.9999 percentile calibration, find none best on every
/// network, and recommend keeping the best on validation data. MSE is added because it
/// lost least on the Fashion-MNIST grid (docs/results/fashion-mnist/int8_study.md).
pub const AUTO_CANDIDATES: [Candidate; 6] = [
    Candidate::Max,
    Candidate::Percentile(99.9),
    Candidate::Percentile(99.99),
    Candidate::Percentile(99.999),
    Candidate::Entropy,
    Candidate::Mse,
];

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::Max => f.write_str("max"),
            Candidate::Percentile(p) => write!(f, "p{p}"),
            Candidate::Entropy => f.write_str("entropy"),
            Candidate::Mse => f.write_str("mse"),
        }
    }
}

impl std::str::FromStr for Candidate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Self::Max),
            "entropy" => Ok(Self::Entropy),
            "mse" => Ok(Self::Mse),
            _ => s
                .strip_prefix('p')
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| *p > 0.0 && *p <= 100.0)
                .map(Self::Percentile)
                .ok_or_else(|| {
                    Error::Calibration(format!(
                        "unknown calibration rule `{s}` (max, entropy, mse, or pNN.NN for a percentile in (0, 100])"
                    ))
                }),
        }
    }
}

impl Serialize for Candidate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Candidate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Histogram of |x| over [0, amax] in [`BINS`] bins.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub amax: f32,
    pub bins: Vec<u64>,
}

impl Histogram {
    fn width(&self) -> f64 {
        self.amax as f64 / BINS as f64
    }

    /// The clipping threshold this calibrator chooses.
    pub fn threshold(&self, c: Candidate) -> f32 {
        if self.amax <= 0.0 {
            return 0.0;
        }
        let w = self.width();
        let total: u64 = self.bins.iter().sum();
        let t = match c {
            Candidate::Max => return self.amax,
            Candidate::Percentile(p) => {
                let want = (total as f64 * p / 100.0).ceil() as u64;
                let mut acc = 0;
                let mut edge = BINS;
                for (i, &n) in self.bins.iter().enumerate() {
                    acc += n;
                    if acc >= want {
                        edge = i + 1;
                        break;
                    }
                }
                edge as f64 * w
            }
            Candidate::Entropy => (self.best_kl_bin() as f64 + 0.5) * w,
            Candidate::Mse => {
                let mut best = (f64::INFINITY, BINS);
                for i in (16..=BINS).step_by(16) {
                    let s = i as f64 * w / 127.0;
                    let err: f64 = self
                        .bins
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(b, &n)| {
                            let x = (b as f64 + 0.5) * w;
                            let q = (x / s).round().min(127.0) * s;
                            n as f64 * (x - q).powi(2)
                        })
                        .sum();
                    if err < best.0 {
                        best = (err, i);
                    }
                }
                best.1 as f64 * w
            }
        };
        (t as f32).min(self.amax).max(f32::MIN_POSITIVE)
    }

    /// The bin count i ∈ [128, 2048] minimising KL(P‖Q), where P is the histogram clipped at
    /// bin i (outliers folded into the last kept bin) and Q is P squeezed into 128 levels and
    /// expanded back over the non-empty bins.
    fn best_kl_bin(&self) -> usize {
        // The exact zeros of a ReLU output pile up in bin 0 and would dominate the divergence
        // (every candidate smears that spike); like NVIDIA's pytorch-quantization, give bin 0
        // the count of bin 1 for the search.
        let mut bins = self.bins.clone();
        bins[0] = bins[1];
        let mut best = (f64::INFINITY, BINS);
        for i in LEVELS..=BINS {
            let sliced = &bins[..i];
            let mut p: Vec<f64> = sliced.iter().map(|&n| n as f64).collect();
            p[i - 1] += bins[i..].iter().sum::<u64>() as f64;
            if p.iter().all(|&v| v == 0.0) {
                continue;
            }
            // Merge the i bins into 128 levels (the last level takes the remainder), then
            // spread each level's mass evenly over the bins where P is non-zero.
            let merged = i / LEVELS;
            let mut q = vec![0f64; i];
            for j in 0..LEVELS {
                let lo = j * merged;
                let hi = if j == LEVELS - 1 { i } else { lo + merged };
                let mass: f64 = sliced[lo..hi].iter().map(|&n| n as f64).sum();
                let nonzero = p[lo..hi].iter().filter(|&&v| v > 0.0).count();
                if nonzero > 0 {
                    for k in lo..hi {
                        if p[k] > 0.0 {
                            q[k] = mass / nonzero as f64;
                        }
                    }
                }
            }
            let kl = kl_divergence(&smooth(&p), &smooth(&q));
            if kl < best.0 {
                best = (kl, i);
            }
        }
        best.1
    }
}

/// Moves a little mass onto empty bins so KL stays finite (as MXNet's calibration does).
fn smooth(d: &[f64]) -> Vec<f64> {
    const EPS: f64 = 1e-4;
    let zeros = d.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = d.len() - zeros;
    let total: f64 = d.iter().sum();
    if nonzeros == 0 || total == 0.0 {
        return d.to_vec();
    }
    let take = EPS * zeros as f64 / nonzeros as f64;
    d.iter()
        .map(|&v| if v == 0.0 { EPS } else { v / total - take })
        .collect()
}

fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (tp, tq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| {
            let (a, b) = (a / tp, (b / tq).max(1e-300));
            a * (a / b).ln()
        })
        .sum()
}

/// A fixed, seeded calibration set: `n` images drawn without replacement, normalised, in
/// batches of `batch` (the last batch is dropped if partial, the ONNX input shape is static).
pub fn calibration_batches(
    set: &ImageSet,
    norm: &Normalize,
    n: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let n = n.min(set.len()) / batch.max(1) * batch;
    if n == 0 && !set.is_empty() && batch > 0 {
        return Err(Error::Calibration(format!(
            "fewer than {batch} images to calibrate on"
        )));
    }
    seeded_batches(set, norm, 0..n, batch, seed)
}

/// The images at positions `range` of the seeded permutation of `set`, in batches of `batch`
/// (`range` holds whole batches). Disjoint ranges give disjoint images: the calibration set is
/// `0..n`, auto's held-out images follow it.
pub fn seeded_batches(
    set: &ImageSet,
    norm: &Normalize,
    range: std::ops::Range<usize>,
    batch: usize,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    if set.is_empty() || batch == 0 {
        return Err(Error::Calibration("empty calibration set".into()));
    }
    if norm.mean.len() != set.shape.channels || norm.std.len() != set.shape.channels {
        return Err(Error::Calibration(format!(
            "normalisation for {} channels, calibration images with {}",
            norm.mean.len(),
            set.shape.channels
        )));
    }
    let px = set.shape.pixels();
    let mut idx: Vec<usize> = (0..set.len()).collect();
    let mut rng = Rng::derive(seed, "calibration");
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    let end = range.end.min(set.len());
    let start = range.start.min(end);
    Ok(idx[start..end]
        .chunks_exact(batch)
        .map(|ids| {
            let mut out = vec![0f32; ids.len() * px];
            for (k, &i) in ids.iter().enumerate() {
                prepare(
                    set.image(i),
                    set.shape,
                    norm,
                    None,
                    &mut out[k * px..(k + 1) * px],
                );
            }
            out
        })
        .collect())
}

/// How many calibration and held-out images a set of `len` can give, in whole batches:
/// `(calibration, held-out)`. The held-out images come after the calibration ones, so when
/// the set is too small for both, the held-out part shrinks first, to a quarter of the set
/// (at least one batch), and calibration takes the rest.
pub fn split_sizes(len: usize, images: usize, heldout: usize, batch: usize) -> (usize, usize) {
    let whole = |n: usize| n / batch * batch;
    let calib = whole(images.min(len));
    if heldout == 0 {
        return (calib, 0);
    }
    // At least one batch held out, even when fewer images are asked than a batch holds.
    let want = whole(heldout.max(batch));
    if calib + want <= len {
        return (calib, want);
    }
    // What is left beside the calibration images, but no less than a quarter of the set (at
    // least one batch), which calibration then gives up.
    let left = whole(len - calib);
    let h = left.max(whole((len / 4).max(batch)).min(want));
    (whole(calib.min(len.saturating_sub(h))), h)
}

/// Histograms of |x| for every conv/linear input tensor of the model.
pub fn collect(
    spec: &DeploySpec,
    w: &Weights<f32>,
    batches: &[Vec<f32>],
    progress: &dyn Progress,
) -> Result<BTreeMap<String, Histogram>> {
    let tensors: Vec<String> = {
        // Inputs of every conv/linear layer, and their outputs (conv outputs are quantised too
        // in the CPU encoding).
        let mut t: Vec<String> = quantizable_layers(spec)
            .into_iter()
            .flat_map(|(l, x)| [l, x])
            .collect();
        t.sort();
        t.dedup();
        t
    };
    let per = (spec.input.channels * spec.input.height * spec.input.width).max(1);
    let batch = batches.first().map_or(1, |b| b.len() / per);
    if let Some(b) = batches.iter().find(|b| b.len() != batch * per) {
        return Err(Error::Calibration(format!(
            "calibration batch of {} values does not match the model input {}×{}×{}×{}",
            b.len(),
            batch,
            spec.input.channels,
            spec.input.height,
            spec.input.width
        )));
    }
    let mut opts = ExportOptions::new(Precision::Fp32);
    opts.batch = batch;
    opts.extra_outputs = tensors
        .iter()
        .filter(|t| t.as_str() != overparam_fuse::spec::INPUT)
        .cloned()
        .collect();
    let mut rt = OrtRuntime::new(&to_bytes(&export(spec, w, &opts)?), None)?;
    progress.start("calibrating (batches, 2 passes)", 2 * batches.len() as u64);
    // Pass 1: the range of each tensor; pass 2: histograms over that range.
    let mut hists: BTreeMap<String, Histogram> = tensors
        .iter()
        .map(|t| {
            (
                t.clone(),
                Histogram {
                    amax: 0.0,
                    bins: vec![0; BINS],
                },
            )
        })
        .collect();
    for pass in 0..2 {
        for b in batches {
            let outs = rt.run(b)?;
            let mut values: Vec<(&str, &[f32])> = outs
                .iter()
                .map(|(n, _, d)| (n.as_str(), d.as_slice()))
                .collect();
            values.push((overparam_fuse::spec::INPUT, b.as_slice()));
            for (name, data) in values {
                let Some(h) = hists.get_mut(name) else {
                    continue;
                };
                if pass == 0 {
                    h.amax = data.iter().fold(h.amax, |m, v| m.max(v.abs()));
                } else if h.amax > 0.0 {
                    let scale = BINS as f32 / h.amax;
                    for v in data {
                        h.bins[((v.abs() * scale) as usize).min(BINS - 1)] += 1;
                    }
                }
            }
            progress.inc(1);
        }
    }
    progress.finish();
    Ok(hists)
}

/// The plan that applies candidate `c` to every tensor.
pub fn plan(
    hists: &BTreeMap<String, Histogram>,
    c: Candidate,
    encoding: ActivationEncoding,
) -> QuantPlan {
    QuantPlan {
        thresholds: hists
            .iter()
            .map(|(k, h)| (k.clone(), h.threshold(c).max(f32::MIN_POSITIVE)))
            .collect(),
        layers: None,
        encoding,
        kept: KeptPrecision::for_encoding(encoding),
    }
}

/// `template` (its encoding, quantised layers and kept precision) with each tensor's
/// threshold from its own candidate; a tensor without one is an error.
pub fn plan_with(
    hists: &BTreeMap<String, Histogram>,
    choice: &BTreeMap<String, Candidate>,
    template: &QuantPlan,
) -> Result<QuantPlan> {
    let thresholds = hists
        .iter()
        .map(|(k, h)| {
            let c = choice.get(k).ok_or_else(|| {
                Error::Calibration(format!("no calibration rule for tensor `{k}`"))
            })?;
            Ok((k.clone(), h.threshold(*c).max(f32::MIN_POSITIVE)))
        })
        .collect::<Result<_>>()?;
    Ok(QuantPlan {
        thresholds,
        ..template.clone()
    })
}

/// What auto measured: the held-out output error of every candidate applied to all tensors,
/// and of the per-tensor choice it kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoReport {
    /// `(candidate, error)` for each of [`AUTO_CANDIDATES`] applied to every tensor.
    pub uniform: Vec<(Candidate, f64)>,
    /// The best uniform candidate, where the per-tensor search started.
    pub start: Candidate,
    /// The error of the chosen plan (at most the best uniform error).
    pub error: f64,
    /// Held-out images the error was measured on.
    pub heldout_images: usize,
    /// INT8 models built and run on the held-out images.
    pub evaluations: usize,
    /// Tensors whose candidate differs from `start`.
    pub changed: Vec<String>,
}

/// A relative improvement smaller than this does not move a tensor off its candidate: the
/// held-out set is small, and a change that buys nothing measurable is noise fitted.
const MIN_GAIN: f64 = 1e-3;

/// The error auto minimises: for each model output, the squared INT8 − FP32 difference summed
/// over the held-out images, divided by the FP32 output's own spread (its sum of squared
/// deviations from its mean); summed over outputs. Scale-free, so logits, depth in metres and
/// unit normals weigh alike, and 1.0 means an output as far off as a constant at its mean.
struct OutputError {
    reference: Vec<Vec<crate::runtime::Output>>,
    spread: Vec<f64>,
    batch: usize,
}

impl OutputError {
    fn new(fp32: &[u8], heldout: &[Vec<f32>], batch: usize) -> Result<Self> {
        let mut rt = OrtRuntime::new(fp32, None)?;
        let reference: Vec<Vec<crate::runtime::Output>> =
            heldout.iter().map(|b| rt.run(b)).collect::<Result<_>>()?;
        let outputs = reference.first().map_or(0, |r| r.len());
        let spread = (0..outputs)
            .map(|o| {
                let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
                for r in &reference {
                    for &v in &r[o].2 {
                        n += 1.0;
                        sum += v as f64;
                        sq += (v as f64).powi(2);
                    }
                }
                // A relative floor: an output constant on the held-out images would otherwise
                // make every candidate's error infinite.
                (sq - sum * sum / n.max(1.0))
                    .max(1e-12 * sq)
                    .max(f64::MIN_POSITIVE)
            })
            .collect();
        Ok(Self {
            reference,
            spread,
            batch,
        })
    }

    fn of(&self, int8: &[u8], heldout: &[Vec<f32>]) -> Result<f64> {
        let mut rt = OrtRuntime::new(int8, None)?;
        let mut sq = vec![0f64; self.spread.len()];
        for (b, reference) in heldout.iter().zip(&self.reference) {
            for ((o, got), want) in rt.run(b)?.iter().enumerate().zip(reference) {
                sq[o] += got
                    .2
                    .iter()
                    .zip(&want.2)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum::<f64>();
            }
        }
        // A NaN (an overflowed scale) must never win.
        let e: f64 = sq.iter().zip(&self.spread).map(|(s, d)| s / d).sum();
        Ok(if e.is_nan() { f64::INFINITY } else { e })
    }
}

/// Auto calibration: every candidate of [`AUTO_CANDIDATES`] is applied to all tensors and the
/// INT8 model's output error ([`OutputError`]) measured on `heldout` (images never used for
/// the histograms), each model exported as `template` says (encoding, the layers quantised,
/// kept precision), so the model measured is the one exported; from the best of these, one greedy pass in graph order tries each other
/// candidate on each tensor and keeps a change that lowers the error by at least
/// [`MIN_GAIN`]. The result is never worse on the held-out images than the best single
/// calibrator. Cost: 6 INT8 models, plus one per (tensor, distinct other threshold), each
/// run over the held-out images; about 60 for the 9-layer vgg_small.
pub fn choose(
    spec: &DeploySpec,
    w: &Weights<f32>,
    hists: &BTreeMap<String, Histogram>,
    heldout: &[Vec<f32>],
    template: &QuantPlan,
    progress: &dyn Progress,
) -> Result<(BTreeMap<String, Candidate>, AutoReport)> {
    let per = (spec.input.channels * spec.input.height * spec.input.width).max(1);
    let batch = heldout.first().map_or(0, |b| b.len() / per);
    if batch == 0 {
        return Err(Error::Calibration(
            "auto calibration needs held-out images (none are left beside the calibration set)"
                .into(),
        ));
    }
    let export_at = |plan: Option<QuantPlan>| -> Result<Vec<u8>> {
        let mut o = ExportOptions::new(if plan.is_some() {
            Precision::Int8
        } else {
            Precision::Fp32
        });
        o.batch = batch;
        o.quant = plan;
        Ok(to_bytes(&export(spec, w, &o)?))
    };
    let error = OutputError::new(&export_at(None)?, heldout, batch)?;
    // Tensors in graph order: the input of each layer, then its output.
    let mut order: Vec<String> = vec![];
    for (layer, input) in quantizable_layers(spec) {
        for t in [input, layer] {
            if hists.contains_key(&t) && !order.contains(&t) {
                order.push(t);
            }
        }
    }
    progress.start(
        "auto calibration (INT8 models tried on held-out images)",
        (AUTO_CANDIDATES.len() * (1 + order.len())) as u64,
    );
    let mut evaluations = 0;
    let mut uniform = vec![];
    // Keyed by the model's SHA-256: tensors whose threshold the encoding does not use (or
    // layers kept out of INT8) give identical models, measured once.
    let mut seen: BTreeMap<[u8; 32], f64> = BTreeMap::new();
    let mut try_plan = |choice: &BTreeMap<String, Candidate>| -> Result<f64> {
        use sha2::Digest;
        progress.inc(1);
        let bytes = export_at(Some(plan_with(hists, choice, template)?))?;
        let key: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if let Some(e) = seen.get(&key) {
            return Ok(*e);
        }
        evaluations += 1;
        // A candidate ONNX Runtime cannot run loses; it does not end the search.
        let e = error.of(&bytes, heldout).unwrap_or(f64::INFINITY);
        seen.insert(key, e);
        Ok(e)
    };
    let all = |c: Candidate| -> BTreeMap<String, Candidate> {
        hists.keys().map(|k| (k.clone(), c)).collect()
    };
    for c in AUTO_CANDIDATES {
        uniform.push((c, try_plan(&all(c))?));
    }
    let (start, mut best) = uniform
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("six candidates");
    let mut choice = all(start);
    for t in &order {
        let h = &hists[t];
        let mut tried = vec![h.threshold(choice[t])];
        for c in AUTO_CANDIDATES {
            let th = h.threshold(c);
            if tried
                .iter()
                .any(|x| (x - th).abs() <= 1e-6 * x.abs().max(th.abs()))
            {
                continue;
            }
            tried.push(th);
            let mut next = choice.clone();
            next.insert(t.clone(), c);
            let e = try_plan(&next)?;
            if e < best * (1.0 - MIN_GAIN) {
                best = e;
                choice = next;
            }
        }
    }
    progress.finish();
    let changed = choice
        .iter()
        .filter(|(_, c)| **c != start)
        .map(|(k, _)| k.clone())
        .collect();
    Ok((
        choice,
        AutoReport {
            uniform,
            start,
            error: best,
            heldout_images: heldout.len() * error.batch,
            evaluations,
            changed,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_with_outlier() -> Histogram {
        // |x| of N(0,1) samples plus one far outlier at 50.
        let mut rng = Rng::new(3);
        let mut xs: Vec<f32> = (0..200_000).map(|_| rng.normal().abs() as f32).collect();
        xs.push(50.0);
        let amax = 50.0;
        let mut bins = vec![0u64; BINS];
        for x in xs {
            bins[((x / amax * BINS as f32) as usize).min(BINS - 1)] += 1;
        }
        Histogram { amax, bins }
    }

    #[test]
    fn calibrators_clip_outliers_except_max() {
        let h = gaussian_with_outlier();
        assert_eq!(h.threshold(Candidate::Max), 50.0);
        for c in [Candidate::Percentile(99.99), Candidate::Entropy] {
            let t = h.threshold(c);
            // A sensible clip for N(0,1) lies within a few standard deviations.
            assert!((2.0..6.0).contains(&t), "{c:?}: {t}");
        }
        // MSE weighs the outlier's squared error too: it clips, but less.
        let t = h.threshold(Candidate::Mse);
        assert!(t > 2.0 && t < 40.0, "mse {t}");
    }

    /// A ReLU output: 60% exact zeros and a half-normal tail. The zero spike must not drag the
    /// entropy threshold down to a sliver of the range (it did before bin 0 was flattened,
    /// costing a trained proxy model 70 top-1 points).
    #[test]
    fn entropy_ignores_the_relu_zero_spike() {
        let mut rng = Rng::new(5);
        let xs: Vec<f32> = (0..200_000)
            .map(|i| {
                if i % 5 < 3 {
                    0.0
                } else {
                    rng.normal().abs() as f32
                }
            })
            .collect();
        let amax = xs.iter().fold(0f32, |m, v| m.max(*v));
        let mut bins = vec![0u64; BINS];
        for x in &xs {
            bins[((x / amax * BINS as f32) as usize).min(BINS - 1)] += 1;
        }
        let t = Histogram { amax, bins }.threshold(Candidate::Entropy);
        assert!(t > 2.0 && t <= amax, "{t} vs max {amax}");
    }

    #[test]
    fn mse_clips_a_gaussian_tail() {
        let mut rng = Rng::new(4);
        let xs: Vec<f32> = (0..200_000).map(|_| rng.normal().abs() as f32).collect();
        let amax = xs.iter().fold(0f32, |m, v| m.max(*v));
        let mut bins = vec![0u64; BINS];
        for x in &xs {
            bins[((x / amax * BINS as f32) as usize).min(BINS - 1)] += 1;
        }
        let t = Histogram { amax, bins }.threshold(Candidate::Mse);
        assert!(t > 2.0 && t < amax, "{t} vs max {amax}");
    }
}
