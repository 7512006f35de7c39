//! Accuracy per precision through the CPU runtime, weight-range reports, per-layer INT8
//! sensitivity and partial INT8 under an accuracy budget (classification).

use std::collections::BTreeSet;

use overparam_data::cifar::ImageSet;
use overparam_data::loader::{Normalize, prepare};
use overparam_data::metrics::TopK;
use overparam_fuse::Weights;
use overparam_fuse::spec::{DeploySpec, Op};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::export::{
    ExportOptions, KeptPrecision, Precision, QuantPlan, export, quantizable_layers, to_bytes,
};
use crate::runtime::OrtRuntime;

/// Refuses a data set whose images are not the model's input (e.g. CIFAR's 3×32×32 for a
/// Fashion-MNIST model's 1×28×28) or whose normalisation has another channel count.
pub fn check_input(input: [usize; 3], set: &ImageSet, norm: &Normalize) -> Result<()> {
    let s = set.shape;
    if [s.channels, s.height, s.width] != input {
        return Err(Error::Export(format!(
            "the data's images are {}×{}×{} but the model takes {}×{}×{} (channels×height×width): evaluate it on the data set it was trained on",
            s.channels, s.height, s.width, input[0], input[1], input[2]
        )));
    }
    if norm.mean.len() != s.channels || norm.std.len() != s.channels {
        return Err(Error::Export(format!(
            "normalisation for {} channels, images with {}",
            norm.mean.len(),
            s.channels
        )));
    }
    Ok(())
}

/// Top-1/top-5 of an ONNX classifier over a whole set (the model's batch size; a last partial
/// batch is padded and the padding ignored).
pub fn evaluate(model: &[u8], set: &ImageSet, norm: &Normalize) -> Result<TopK> {
    Ok(evaluate_logits(model, set, norm)?.0)
}

/// [`evaluate`], with the logits of every image in the set's order.
pub fn evaluate_logits(model: &[u8], set: &ImageSet, norm: &Normalize) -> Result<(TopK, Vec<f32>)> {
    let mut rt = OrtRuntime::new(model, None)?;
    let shape = rt.input_shape();
    if shape.len() != 4 {
        return Err(Error::Export(format!(
            "the ONNX classifier's input has shape {shape:?}, expected N×C×H×W"
        )));
    }
    check_input([shape[1], shape[2], shape[3]], set, norm)?;
    let batch = shape[0].max(1);
    let px = set.shape.pixels();
    let mut top = TopK::default();
    let mut logits = vec![];
    let mut buf = vec![0f32; batch * px];
    for start in (0..set.len()).step_by(batch) {
        let n = batch.min(set.len() - start);
        buf.iter_mut().for_each(|v| *v = 0.0);
        for k in 0..n {
            prepare(
                set.image(start + k),
                set.shape,
                norm,
                None,
                &mut buf[k * px..(k + 1) * px],
            );
        }
        let out = rt.run(&buf)?.remove(0);
        let classes = out.1[1];
        let labels: Vec<i64> = (start..start + n).map(|i| set.labels[i] as i64).collect();
        top.add(&out.2[..n * classes], classes, &labels);
        logits.extend_from_slice(&out.2[..n * classes]);
    }
    Ok((top, logits))
}

#[derive(Clone, Debug, Serialize)]
pub struct WeightRange {
    pub layer: String,
    pub max_abs: f32,
    /// 99.9th percentile of |w|.
    pub p999: f32,
    /// max / p99.9: large values are outliers that stretch the INT8 grid.
    pub outlier_ratio: f32,
}

/// Per-layer weight ranges of a deploy model, worst outlier ratio first.
pub fn weight_ranges(spec: &DeploySpec, w: &Weights<f32>) -> Vec<WeightRange> {
    let mut out: Vec<WeightRange> = spec
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_) | Op::Linear { .. }))
        .filter_map(|n| {
            let t = w.get(&format!("{}.weight", n.name))?;
            let mut a: Vec<f32> = t.data.iter().map(|v| v.abs()).collect();
            a.sort_by(f32::total_cmp);
            let max_abs = *a.last()?;
            let p999 = a[((a.len() as f64 * 0.999) as usize).min(a.len() - 1)];
            Some(WeightRange {
                layer: n.name.clone(),
                max_abs,
                p999,
                outlier_ratio: if p999 > 0.0 { max_abs / p999 } else { 1.0 },
            })
        })
        .collect();
    out.sort_by(|a, b| b.outlier_ratio.total_cmp(&a.outlier_ratio));
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    pub layer: String,
    pub top1_err: f64,
    /// Top-1 error points added by quantising only this layer.
    pub drop: f64,
}

/// What the INT8 accuracy tools hold fixed: the model, its calibration, and the data.
pub struct Int8Study<'a> {
    pub spec: &'a DeploySpec,
    pub weights: &'a Weights<f32>,
    /// The full INT8 plan (every layer quantised) whose thresholds every variant keeps.
    pub plan: &'a QuantPlan,
    /// Precision of the layers a partial plan leaves out of INT8.
    pub kept: KeptPrecision,
    pub set: &'a ImageSet,
    pub norm: &'a Normalize,
    pub batch: usize,
    /// The FP32 model's top-1 error on `set`, the reference for every drop.
    pub fp32_top1_err: f64,
}

impl Int8Study<'_> {
    /// The plan quantising exactly `layers`.
    fn plan(&self, layers: BTreeSet<String>) -> QuantPlan {
        let mut p = self.plan.clone();
        p.layers = Some(layers);
        p.kept = self.kept;
        p
    }

    /// Top-1 error of the INT8 export under `p`.
    fn top1_err(&self, p: QuantPlan) -> Result<f64> {
        let mut o = ExportOptions::new(Precision::Int8);
        o.batch = self.batch;
        o.quant = Some(p);
        Ok(evaluate(
            &to_bytes(&export(self.spec, self.weights, &o)?),
            self.set,
            self.norm,
        )?
        .top1_error())
    }

    /// Quantises one layer at a time and measures the accuracy drop against FP32, worst first.
    pub fn sensitivity(&self) -> Result<Vec<Sensitivity>> {
        let mut out = vec![];
        for (layer, _) in quantizable_layers(self.spec) {
            let e = self.top1_err(self.plan(BTreeSet::from([layer.clone()])))?;
            out.push(Sensitivity {
                layer,
                top1_err: e,
                drop: e - self.fp32_top1_err,
            });
        }
        out.sort_by(|a, b| b.drop.total_cmp(&a.drop));
        Ok(out)
    }

    /// Keeps the most sensitive layers out of INT8 (in `kept`), one more at a time, until the INT8 model is
    /// within `budget` top-1 points of FP32. Returns the plan, its error and the layers kept.
    pub fn partial_int8(
        &self,
        ranked: &[Sensitivity],
        budget: f64,
    ) -> Result<(QuantPlan, f64, Vec<String>)> {
        let all: Vec<String> = quantizable_layers(self.spec)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        for k in 0..=ranked.len() {
            let kept: Vec<String> = ranked[..k].iter().map(|s| s.layer.clone()).collect();
            let p = self.plan(all.iter().filter(|l| !kept.contains(l)).cloned().collect());
            let e = self.top1_err(p.clone())?;
            if e - self.fp32_top1_err <= budget {
                return Ok((p, e, kept));
            }
        }
        Err(Error::Export(
            "no partial INT8 model meets the budget".into(),
        ))
    }
}
