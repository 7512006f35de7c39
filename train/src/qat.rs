//! Quantisation-aware training through the fold (RepQ, BMVC 2023, applied to every method).
//!
//! With a [`Qat`] set on an [`OpModel`], every conv computes its *deploy* kernel and bias from
//! the method's parameters, differentiably, with each BatchNorm frozen at its running
//! statistics: exactly what `fuse::fold::fold_conv` writes, in tch. The kernel of a quantised
//! layer is fake-quantised per output channel on the grid `engine::export::quantize_weight`
//! writes, and the layer's input (and, in the CPU encoding, a conv's output) per tensor on the
//! grid `export` writes for that tensor. So the INT8 ONNX of the folded, fine-tuned model
//! computes what the QAT model computed, with the learned thresholds written as they are.
//!
//! The thresholds are learned (LSQ, Esser et al. 2020, "Learned Step Size Quantization"),
//! not followed by an EMA of batch maxima: the calibration that initialises them (auto) clips
//! outliers on purpose, and an EMA of maxima would pull every threshold back towards max.
//! Gradients go straight through the rounding of weights and activations.

use std::collections::{BTreeMap, BTreeSet};

use overparam_fuse::spec::{Op, TrainSpec};
use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// What QAT starts from: the calibration's plan, in the train crate's terms (the engine's
/// `QuantPlan` and `nonnegative_tensors` give it; train does not depend on the engine).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QatPlan {
    /// Clipping threshold (amax) per activation key: a layer's input tensor, or in the CPU
    /// encoding a conv's own output.
    pub thresholds: BTreeMap<String, f32>,
    /// Quantised conv/linear layers; `None`: all of them.
    pub layers: Option<BTreeSet<String>>,
    /// The CPU encoding (uint8 activations: amax/255 on non-negative tensors, conv outputs
    /// quantised too); otherwise TensorRT's signed symmetric one.
    pub unsigned: bool,
    /// Tensors that are never negative (the deploy spec's), for the CPU encoding.
    pub nonneg: BTreeSet<String>,
}

/// The QAT state of a model: the learned thresholds and where they apply.
#[derive(Debug)]
pub struct Qat {
    amax: BTreeMap<String, Tensor>,
    layers: Option<BTreeSet<String>>,
    unsigned: bool,
    nonneg: BTreeSet<String>,
    /// Nodes that are model outputs (their conv output is never quantised, as in export).
    outputs: BTreeSet<String>,
    /// Off: the same folded forward in float (the equal-compute FP32 fine-tune).
    fake_quant: bool,
}

impl Qat {
    /// QAT of `spec` from `plan`. Refuses a model with no conv, a plan naming a layer the
    /// model lacks, and a quantised tensor without a positive threshold.
    pub fn new(spec: &TrainSpec, plan: QatPlan, device: Device, fake_quant: bool) -> Result<Self> {
        let weighted: BTreeMap<&str, &str> = spec
            .nodes
            .iter()
            .filter(|n| n.op.is_weighted_layer())
            .map(|n| (n.name.as_str(), n.inputs[0].as_str()))
            .collect();
        if !spec.nodes.iter().any(|n| matches!(n.op, Op::Conv(_))) {
            return Err(Error::Model(format!(
                "QAT needs a conv to quantise; `{}` has none",
                spec.model
            )));
        }
        if let Some(bad) = plan
            .layers
            .iter()
            .flatten()
            .find(|l| !weighted.contains_key(l.as_str()))
        {
            return Err(Error::Model(format!(
                "QAT: `{bad}` is not a conv or linear layer of `{}`",
                spec.model
            )));
        }
        let outputs: BTreeSet<String> = spec.outputs.iter().map(|o| o.node.clone()).collect();
        let quantised = |l: &str| plan.layers.as_ref().is_none_or(|s| s.contains(l));
        let mut keys = BTreeSet::new();
        for n in &spec.nodes {
            if !n.op.is_weighted_layer() || !quantised(&n.name) {
                continue;
            }
            keys.insert(n.inputs[0].clone());
            if plan.unsigned && matches!(n.op, Op::Conv(_)) && !outputs.contains(&n.name) {
                keys.insert(n.name.clone());
            }
        }
        let mut amax = BTreeMap::new();
        for k in keys {
            let v = *plan.thresholds.get(&k).ok_or_else(|| {
                Error::Model(format!("QAT: no calibrated threshold for activation `{k}`"))
            })?;
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Model(format!(
                    "QAT: the threshold of `{k}` is {v}, must be positive"
                )));
            }
            let t = Tensor::f_from_slice(&[v])?
                .f_reshape([] as [i64; 0])?
                .f_to_device(device)?
                .f_set_requires_grad(fake_quant)?;
            amax.insert(k, t);
        }
        Ok(Self {
            amax,
            layers: plan.layers,
            unsigned: plan.unsigned,
            nonneg: plan.nonneg,
            outputs,
            fake_quant,
        })
    }

    /// Whether fake quantisation is on (off: the FP32 pair).
    pub fn fake_quant(&self) -> bool {
        self.fake_quant
    }

    /// Whether `layer` is quantised.
    pub fn quantises(&self, layer: &str) -> bool {
        self.fake_quant && self.layers.as_ref().is_none_or(|l| l.contains(layer))
    }

    /// Whether conv `layer`'s output is quantised too: in the CPU encoding, unless it is a
    /// model output (export's `Builder::finish`).
    pub fn quantises_output(&self, layer: &str) -> bool {
        self.unsigned && self.quantises(layer) && !self.outputs.contains(layer)
    }

    /// The learned thresholds as f32, bit for bit what export turns into scales.
    pub fn thresholds(&self) -> Result<BTreeMap<String, f32>> {
        self.amax
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.f_double_value(&[])? as f32)))
            .collect()
    }

    /// The threshold tensors, for the optimiser (no weight decay).
    pub fn params(&self) -> Vec<(String, &Tensor)> {
        self.amax
            .iter()
            .map(|(k, t)| (format!("qat.amax.{k}"), t))
            .collect()
    }

    /// Keeps every threshold positive after an optimiser step (a step can overshoot zero,
    /// and export refuses a non-positive threshold).
    pub fn clamp(&self) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for t in self.amax.values() {
                let mut t = t.shallow_clone();
                let _ = t.f_clamp_min_(1e-8)?;
            }
            Ok(())
        })
    }

    /// Fake quantisation of activation `x` on `key`'s grid (LSQ).
    pub(crate) fn activation(&self, x: &Tensor, key: &str) -> Result<Tensor> {
        let amax = self
            .amax
            .get(key)
            .ok_or_else(|| Error::Model(format!("QAT: no threshold for activation `{key}`")))?;
        // The export's grids: uint8 with zero point 0 on non-negative tensors in the CPU
        // encoding (scale amax/255), else the signed grid (scale amax/127, levels −128..127;
        // the CPU encoding's zero point 128 gives the same levels).
        let (lo, hi, div) = if self.unsigned && self.nonneg.contains(key) {
            (0.0, 255.0, 255.0)
        } else {
            (-128.0, 127.0, 127.0)
        };
        let s = amax.f_div_scalar(div)?;
        // LSQ's gradient scale g = 1/√(N·Qp), N the elements per image; applied to the
        // gradient only, so the forward's scale stays bit-identical to the exported one.
        let per = (x.numel() / x.size()[0].max(1) as usize).max(1) as f64;
        let g = 1.0 / (per * hi).sqrt();
        let sd = s.f_detach()?;
        let s = s.f_sub(&sd)?.f_mul_scalar(g)?.f_add(&sd)?;
        let v = x.f_div(&s)?.f_clamp(lo, hi)?;
        // Forward: round(v)·s, exactly; backward: v's gradient (straight through), which
        // gives LSQ's step-size gradient through v = x/s.
        let q = v.f_round()?.f_add(&v.f_sub(&v.f_detach()?)?)?;
        Ok(q.f_mul(&s)?)
    }
}

/// Rounds half away from zero, as Rust's `f32::round` (which export's weight quantisation
/// uses); torch's round goes to even.
fn round_away(v: &Tensor) -> Result<Tensor> {
    let t = v.f_trunc()?;
    let ties = v.f_sub(&t)?.f_abs()?.f_eq(0.5)?;
    Ok(v.f_round()?
        .f_where_self(&ties.f_logical_not()?, &t.f_add(&v.f_sign()?)?)?)
}

/// Per-output-channel symmetric int8 fake quantisation of a kernel (axis 0): the grid of
/// `engine::export::quantize_weight`, `s_c = max|W_c|/127` (1 for an all-zero channel), with
/// the gradient straight through.
pub(crate) fn fake_weight(w: &Tensor) -> Result<Tensor> {
    let o = w.size()[0];
    let wd = w.f_detach()?;
    let mut view = vec![o];
    view.extend(std::iter::repeat_n(1, w.dim() - 1));
    let amax = wd
        .f_abs()?
        .f_reshape([o, -1])?
        .f_amax([1i64].as_slice(), false)?;
    let s = amax.f_div_scalar(127.0)?;
    let s = s
        .f_where_self(&amax.f_gt(0.0)?, &s.f_ones_like()?)?
        .f_reshape(&view)?;
    let q = round_away(&wd.f_div(&s)?)?.f_clamp(-127.0, 127.0)?;
    Ok(q.f_mul(&s)?.f_add(&w.f_sub(&wd)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn weights_round_half_away_from_zero_like_export() {
        // Channel 0: amax 127 → s = 1, so the ties are exact: 2.5 → 3, −2.5 → −3 (torch's
        // round would give 2 and −2). Channel 1 is all zero: scale 1, zeros.
        let w = t(&[2.5, -2.5, 127.0, 0.5, 0.0, 0.0, 0.0, 0.0]).reshape([2, 4, 1, 1]);
        assert_eq!(
            vec(&fake_weight(&w).unwrap()),
            [3.0, -3.0, 127.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn weight_gradient_goes_straight_through() {
        let w = t(&[0.3, -1.7, 0.9, 2.0])
            .reshape([2, 2, 1, 1])
            .set_requires_grad(true);
        fake_weight(&w).unwrap().sum(Kind::Float).backward();
        assert_eq!(vec(&w.grad()), [1.0; 4]);
    }

    fn qat(unsigned: bool, nonneg: bool, amax: f32) -> Qat {
        let mut a = BTreeMap::new();
        a.insert(
            "x".to_string(),
            t(&[amax]).reshape([] as [i64; 0]).set_requires_grad(true),
        );
        Qat {
            amax: a,
            layers: None,
            unsigned,
            nonneg: if nonneg {
                ["x".to_string()].into()
            } else {
                BTreeSet::new()
            },
            outputs: BTreeSet::new(),
            fake_quant: true,
        }
    }

    #[test]
    fn activations_land_on_the_exported_grid() {
        let x = t(&[-300.0, -1.5, 0.5, 2.5, 3.4, 300.0]).reshape([1, 6]);
        // Signed, amax 127: levels −128..127, half to even (as QuantizeLinear).
        let y = qat(false, false, 127.0).activation(&x, "x").unwrap();
        assert_eq!(vec(&y), [-128.0, -2.0, 0.0, 2.0, 3.0, 127.0]);
        // CPU encoding, non-negative tensor, amax 255: levels 0..255.
        let y = qat(true, true, 255.0).activation(&x, "x").unwrap();
        assert_eq!(vec(&y), [0.0, 0.0, 0.0, 2.0, 3.0, 255.0]);
        // Quantising twice with one key changes nothing (export shares one Q/DQ per tensor).
        let q = qat(true, false, 1.3);
        let once = q.activation(&x, "x").unwrap();
        assert_eq!(vec(&q.activation(&once, "x").unwrap()), vec(&once));
    }

    #[test]
    fn the_threshold_learns_lsq_gradients() {
        // One clipped element pulls amax up (∂x̂/∂s = Qp for x above the range), one inside
        // the range gives round(v) − v.
        let q = qat(false, false, 127.0);
        let x = t(&[200.0, 10.3]).reshape([1, 2]);
        q.activation(&x, "x").unwrap().sum(Kind::Float).backward();
        let g = q.amax["x"].grad().double_value(&[]);
        let lsq_g = 1.0 / (2.0f64 * 127.0).sqrt();
        let want = (127.0 + (10.0 - 10.3)) / 127.0 * lsq_g;
        assert!((g - want).abs() < 1e-6, "{g} vs {want}");
    }
}
