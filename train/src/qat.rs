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

use std::sync::Arc;
use std::time::Instant;

use overparam_base::Progress;
use overparam_config::TrainConfig;
use overparam_data::cifar::ImageSet;
use overparam_data::loader::{Loader, Normalize};
use overparam_fuse::Weights;
use overparam_fuse::spec::{Op, TrainSpec};
use tch::{Device, Tensor};

use crate::OpModel;
use crate::error::{Error, Result};
use crate::optim::learning_rate;

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

impl QatPlan {
    /// A threshold of 1 for every tensor of `spec`: for timing, and for the folded forward
    /// without fake quantisation, where the values do not matter.
    pub fn unit(spec: &TrainSpec) -> Self {
        let mut thresholds: BTreeMap<String, f32> =
            spec.nodes.iter().map(|n| (n.name.clone(), 1.0)).collect();
        thresholds.insert(overparam_fuse::spec::INPUT.to_string(), 1.0);
        Self {
            thresholds,
            ..Default::default()
        }
    }
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
    /// Fake quantisation of a layer's deploy weight on the export's grid: 127 levels each
    /// side in TensorRT's encoding, 63 in the CPU encoding (engine's
    /// `ActivationEncoding::weight_qmax`: 7-bit weights, so ONNX Runtime's uint8 × int8
    /// kernels cannot saturate on machines without VNNI).
    pub(crate) fn weight(&self, w: &Tensor) -> Result<Tensor> {
        fake_weight(w, if self.unsigned { 63.0 } else { 127.0 })
    }

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
        // LSQ's gradient scale g = 1/√(N·Qp), N the elements per image, times div² because
        // the parameter is the threshold (amax = div·s): its steps then move s as LSQ's do.
        let per = (x.numel() / x.size()[0].max(1) as usize).max(1) as f64;
        let g = div * div / (per * hi).sqrt();
        // ATen's fused LSQ kernel: round half to even as QuantizeLinear, the gradient
        // straight through inside the range, LSQ's step-size gradient. It multiplies by
        // 1/s where QuantizeLinear divides by s: the two differ only where x/s lies within
        // an ulp of a rounding tie, far rarer than the flips libtorch's and ONNX Runtime's
        // differing conv summation orders already cause (tests/qat.rs measures both).
        let zero = Tensor::f_zeros([1], (tch::Kind::Float, x.device()))?;
        Ok(x.f_internal_fake_quantize_learnable_per_tensor_affine(
            &s.f_reshape([1])?,
            &zero,
            lo as i64,
            hi as i64,
            g,
        )?)
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
/// `engine::export::quantize_weight`, `s_c = max|W_c|/qmax` (1 for an all-zero channel; qmax
/// the encoding's, `ActivationEncoding::weight_qmax`), with the gradient straight through.
pub(crate) fn fake_weight(w: &Tensor, qmax: f64) -> Result<Tensor> {
    let o = w.size()[0];
    let wd = w.f_detach()?;
    let mut view = vec![o];
    view.extend(std::iter::repeat_n(1, w.dim() - 1));
    let amax = wd
        .f_abs()?
        .f_reshape([o, -1])?
        .f_amax([1i64].as_slice(), false)?;
    let s = amax.f_div_scalar(qmax)?;
    let s = s
        .f_where_self(&amax.f_gt(0.0)?, &s.f_ones_like()?)?
        .f_reshape(&view)?;
    let q = round_away(&wd.f_div(&s)?)?.f_clamp(-qmax, qmax)?;
    Ok(q.f_mul(&s)?.f_add(&w.f_sub(&wd)?)?)
}

/// A fine-tune of a trained classifier through the fold: with fake quantisation (QAT), or
/// without it, the equal-compute FP32 pair (the same folded forward, BN frozen, same steps).
pub struct FineTune<'a> {
    /// The run's config: optimiser (momentum, weight decay, batch size), augmentation, seed.
    pub cfg: &'a TrainConfig,
    pub spec: &'a TrainSpec,
    pub weights: &'a Weights<f32>,
    pub plan: QatPlan,
    pub fake_quant: bool,
    pub epochs: usize,
    /// The peak learning rate, decayed by a cosine to zero over the fine-tune.
    pub lr: f64,
}

/// What a fine-tune gives back.
#[derive(Debug)]
pub struct FineTuned {
    pub weights: Weights<f32>,
    /// The learned thresholds (the plan's, unchanged, without fake quantisation).
    pub thresholds: BTreeMap<String, f32>,
    /// The fine-tuned model's top-1 error (%) on the test set, as it trained (fake-quantised
    /// when QAT), and its logits there.
    pub top1_err: f64,
    pub logits: Vec<f32>,
    pub steps: usize,
    /// Seconds per optimisation step (loader included).
    pub step_seconds: f64,
}

/// The fine-tune's start: `w` in the deploy net's units, computing the same function. Every
/// BatchNorm that scales a kernel tensor of its own (a plain conv's, RepVGG's k×k and 1×1
/// branches', QARepVGG's k×k branch's) has its scale `t = γ/√(σ²+ε)` moved into that kernel
/// (`W ← t·W`, `γ ← 1`), and RepVGG's identity BN into its γ (`γ ← t`); each of these BNs then
/// has unit statistics (mean 0, variance 1−ε) and takes the centring into β (`β ← β + t·(b −
/// μ)`, the conv's bias moved with it): `fuse::fold::fold_bn`, computed in f64.
///
/// Why: with BN frozen, a kernel `W` under scale `t` moves at `t²` times the learning rate in
/// the deploy kernel, and training with BN in train mode leaves small-norm branches behind
/// (weight decay on scale-invariant kernels): RepVGG's first 1×1 branch on Fashion-MNIST has
/// ‖W‖ ≈ 0.08 and `t` up to 29, and its frozen-BN fine-tune at lr 0.001 diverged (25.5 % and
/// 52.2 % top-1 error from 7.7 %). In these units each kernel moves at the rate it is given.
/// A BN after a composed kernel (FNL, SFO) or a sum (QARepVGG's) is left as it is: no tensor
/// of its own can take its scale.
pub fn in_deploy_units(spec: &TrainSpec, w: &Weights<f32>) -> Result<Weights<f32>> {
    use overparam_fuse::Tensor as FTensor;
    use overparam_fuse::fold::{Bn, fold_bn};
    use overparam_fuse::method::{Method, has_identity};
    let w64: Weights<f64> = w.iter().map(|(k, t)| (k.clone(), t.cast())).collect();
    let tensor = |n: &str| {
        w64.get(n)
            .ok_or_else(|| Error::Model(format!("`{n}` is missing from the checkpoint")))
    };
    let mut out = w.clone();
    let mut move_bn = |bn: &str, eps: f64, kernel: Option<&str>, bias: Option<&str>| {
        let stats = Bn::from_weights(&w64, bn, eps)?;
        let o = stats.gamma.len();
        let filled = |v: f64| FTensor::new(vec![o], vec![v; o]);
        // With no kernel of its own, the "kernel" is γ's place: t·1 = t.
        let ones = filled(1.0);
        let k = kernel.map(tensor).transpose()?.unwrap_or(&ones);
        let b = bias.map(tensor).transpose()?.map(|b| b.data.as_slice());
        let (scaled, shift) = fold_bn(k, b, &stats);
        let mut put = |n: String, t: FTensor<f64>| {
            out.insert(n, t.cast());
        };
        put(format!("{bn}.bias"), FTensor::new(vec![o], shift));
        put(format!("{bn}.running_mean"), filled(0.0));
        put(format!("{bn}.running_var"), filled(1.0 - eps));
        if let Some(b) = bias {
            put(b.to_string(), filled(0.0));
        }
        match kernel {
            Some(k) => {
                put(k.to_string(), scaled);
                put(format!("{bn}.weight"), ones);
            }
            None => put(format!("{bn}.weight"), scaled),
        }
        Ok::<_, Error>(())
    };
    for n in &spec.nodes {
        let Op::Conv(c) = &n.op else { continue };
        let p = n.prefix();
        let eps = c.bn.as_ref().map_or(1e-5, |b| b.eps);
        match (&c.method, &c.bn) {
            (Method::Plain, Some(bn)) => {
                let bias = c.shape.bias.then(|| format!("{p}.bias"));
                let kernel = format!("{p}.weight");
                move_bn(&bn.name, bn.eps, Some(&kernel), bias.as_deref())?
            }
            (Method::Repvgg | Method::Qarepvgg, _) => {
                let mut branches = vec!["rbr_dense"];
                let repvgg = matches!(c.method, Method::Repvgg);
                if repvgg && !c.shape.is_1x1() {
                    branches.push("rbr_1x1");
                }
                for b in branches {
                    let kernel = format!("{p}.{b}.conv.weight");
                    move_bn(&format!("{p}.{b}.bn"), eps, Some(&kernel), None)?;
                }
                if repvgg && has_identity(&c.shape) {
                    move_bn(&format!("{p}.rbr_identity"), eps, None, None)?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Fine-tunes `ft.spec` from `ft.weights` for `ft.epochs` on `train`, evaluates on `test`.
pub fn fine_tune(
    ft: &FineTune,
    train: &Arc<ImageSet>,
    test: &Arc<ImageSet>,
    norm: &Normalize,
    device: Device,
    progress: &dyn Progress,
) -> Result<FineTuned> {
    if ft.epochs == 0 {
        return Err(Error::Config(
            "a QAT fine-tune needs at least one epoch".into(),
        ));
    }
    if !(ft.lr.is_finite() && ft.lr > 0.0) {
        return Err(Error::Config(format!(
            "QAT learning rate {} must be positive",
            ft.lr
        )));
    }
    let cfg = ft.cfg;
    let qat = Qat::new(ft.spec, ft.plan.clone(), device, ft.fake_quant)?;
    let vs = tch::nn::VarStore::new(device);
    let mut model = OpModel::new(&vs.root(), ft.spec, &in_deploy_units(ft.spec, ft.weights)?)?;
    let extra: Vec<(String, Tensor)> = qat
        .params()
        .into_iter()
        .filter(|_| ft.fake_quant)
        .map(|(n, t)| (n, t.shallow_clone()))
        .collect();
    model.set_qat(Some(qat));
    let refs: Vec<(&str, &Tensor)> = extra.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // One group: R2's alternation is a routine of training from scratch, not of a fine-tune.
    let mut opts = crate::fit::grouped_optimisers(cfg, &model, |_, _| false, &refs);
    let mut optim = cfg.optim.clone();
    optim.lr = ft.lr;
    optim.warmup_epochs = 0;
    optim.schedule = overparam_config::Schedule::Cosine;
    let (loader, steps) = crate::trainer::train_loader(cfg, norm, train.len())?;
    let what = if ft.fake_quant { "qat" } else { "fp32 pair" };
    let t0 = Instant::now();
    let mut step_no = 0;
    for epoch in 0..ft.epochs {
        progress.start(
            &format!("{what} epoch {}/{}", epoch + 1, ft.epochs),
            steps as u64,
        );
        // Epochs past the run's own, so the fine-tune sees new augmentations.
        let loader = Loader::spawn(train.clone(), loader.clone(), cfg.optim.epochs + epoch, 0);
        for (index, b) in loader.enumerate() {
            let x = crate::trainer::batch_tensor(&b.images, b.size, train.shape, device)?;
            let t = Tensor::f_from_slice(&b.labels)?.f_to_device(device)?;
            let lr = learning_rate(
                &optim,
                epoch as f64 + index as f64 / steps as f64,
                ft.epochs,
            );
            let (mut ys, frob) = model.forward_with_frobenius(&x)?;
            let ce = ys.remove(0).f_cross_entropy_loss::<Tensor>(
                &t,
                None,
                tch::Reduction::Mean,
                -100,
                cfg.optim.label_smoothing,
            )?;
            let loss = ce.f_double_value(&[])?;
            if !loss.is_finite() {
                return Err(Error::Model(format!(
                    "{what}: the loss is {loss} at epoch {}, step {index}",
                    epoch + 1
                )));
            }
            crate::fit::step(cfg, &mut opts, &ce, frob, lr, step_no)?;
            if let Some(q) = model.qat() {
                q.clamp()?;
            }
            step_no += 1;
            progress.inc(1);
            progress.message(&format!("loss {loss:.4}"));
        }
        progress.finish();
    }
    let step_seconds = t0.elapsed().as_secs_f64() / step_no.max(1) as f64;
    let (_, top, logits) = crate::trainer::evaluate(&model, test, norm, device)?;
    let thresholds = model.qat().expect("set above").thresholds()?;
    Ok(FineTuned {
        weights: model.weights()?,
        thresholds,
        top1_err: top.top1_error(),
        logits,
        steps: step_no,
        step_seconds,
    })
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
            vec(&fake_weight(&w, 127.0).unwrap()),
            [3.0, -3.0, 127.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn weight_gradient_goes_straight_through() {
        let w = t(&[0.3, -1.7, 0.9, 2.0])
            .reshape([2, 2, 1, 1])
            .set_requires_grad(true);
        fake_weight(&w, 127.0).unwrap().sum(Kind::Float).backward();
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
        let x = t(&[200.0, 10.3]).reshape([1, 2]).set_requires_grad(true);
        q.activation(&x, "x").unwrap().sum(Kind::Float).backward();
        // Straight through inside the range, nothing outside it.
        assert_eq!(vec(&x.grad()), [0.0, 1.0]);
        let g = q.amax["x"].grad().double_value(&[]);
        let lsq_g = 1.0 / (2.0f64 * 127.0).sqrt();
        // ∂x̂/∂s summed (126.7), LSQ-scaled, through amax = 127·s with the div² factor.
        let want = (127.0 + (10.0 - 10.3)) * lsq_g * 127.0;
        assert!((g - want).abs() < 1e-5 * want, "{g} vs {want}");
    }
}
