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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Calibrator {
    /// The largest |x| seen.
    Max,
    /// The 99.99th percentile of |x|.
    Percentile,
    /// Minimum KL divergence between the clipped and the quantised distribution (TensorRT's
    /// entropy calibrator, after Migacz, "8-bit Inference with TensorRT", GTC 2017).
    Entropy,
    /// Minimum expected squared quantisation error.
    Mse,
}

impl std::str::FromStr for Calibrator {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Self::Max),
            "percentile" => Ok(Self::Percentile),
            "entropy" => Ok(Self::Entropy),
            "mse" => Ok(Self::Mse),
            _ => Err(Error::Calibration(format!(
                "unknown calibrator `{s}` (max, percentile, entropy, mse)"
            ))),
        }
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
    pub fn threshold(&self, c: Calibrator) -> f32 {
        if self.amax <= 0.0 {
            return 0.0;
        }
        let w = self.width();
        let total: u64 = self.bins.iter().sum();
        let t = match c {
            Calibrator::Max => return self.amax,
            Calibrator::Percentile => {
                let want = (total as f64 * 0.9999).ceil() as u64;
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
            Calibrator::Entropy => (self.best_kl_bin() as f64 + 0.5) * w,
            Calibrator::Mse => {
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
    let n = n.min(set.len()) / batch * batch;
    if n == 0 {
        return Err(Error::Calibration(format!(
            "fewer than {batch} images to calibrate on"
        )));
    }
    Ok(idx[..n]
        .chunks(batch)
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

/// Turns histograms into a quantisation plan with the chosen calibrator.
pub fn plan(
    hists: &BTreeMap<String, Histogram>,
    c: Calibrator,
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

/// The whole calibration: a seeded set of `images` from `set`, histograms through the FP32
/// model (a bar on `progress`), and the plan of calibrator `c`.
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    spec: &DeploySpec,
    w: &Weights<f32>,
    set: &ImageSet,
    norm: &Normalize,
    images: usize,
    batch: usize,
    c: Calibrator,
    encoding: ActivationEncoding,
    progress: &dyn Progress,
) -> Result<(QuantPlan, BTreeMap<String, Histogram>, usize)> {
    let i = &spec.input;
    crate::accuracy::check_input([i.channels, i.height, i.width], set, norm)?;
    let batches = calibration_batches(set, norm, images, batch, 0)?;
    let used = batches.len() * batch;
    if used < images {
        // Clamped on purpose (a smaller set, whole batches), but said: the user asked for more.
        progress.event(&format!(
            "calibration: {images} images asked, {used} used (the set has {}, in whole batches of {batch})",
            set.len()
        ));
    }
    let hists = collect(spec, w, &batches, progress)?;
    Ok((plan(&hists, c, encoding), hists, used))
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
        assert_eq!(h.threshold(Calibrator::Max), 50.0);
        for c in [Calibrator::Percentile, Calibrator::Entropy] {
            let t = h.threshold(c);
            // A sensible clip for N(0,1) lies within a few standard deviations.
            assert!((2.0..6.0).contains(&t), "{c:?}: {t}");
        }
        // MSE weighs the outlier's squared error too: it clips, but less.
        let t = h.threshold(Calibrator::Mse);
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
        let t = Histogram { amax, bins }.threshold(Calibrator::Entropy);
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
        let t = Histogram { amax, bins }.threshold(Calibrator::Mse);
        assert!(t > 2.0 && t < amax, "{t} vs max {amax}");
    }
}
