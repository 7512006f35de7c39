//! A per-channel affine `x·scale[c] + shift[c]`: a BatchNormalization with no conv before it
//! to fold into (eval mode: scale = γ/√(σ²+ε), shift = β − μ·scale), stored as the node's
//! `weight` (scale) and `bias` (shift).

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape, dims};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::layout::{ParamKind, ParamSpec};
use crate::spec::{ActShape, Op};
use crate::tensor::{Real, Tensor};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affine {
    pub channels: usize,
}

impl OpShape for Affine {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        if ins[0].first() != Some(&self.channels) {
            return Err(Error::Spec(format!(
                "affine `{node}` has {} channels, its input is {}",
                self.channels,
                dims(ins[0])
            )));
        }
        Ok(ins[0].to_vec())
    }
    fn params(&self, prefix: &str, _ins: &[&[usize]]) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                format!("{prefix}.weight"),
                vec![self.channels],
                ParamKind::BnWeight,
            ),
            ParamSpec::new(
                format!("{prefix}.bias"),
                vec![self.channels],
                ParamKind::BnBias,
            ),
        ]
    }
    fn macs(&self, _ins: &[&[usize]], out: &[usize]) -> usize {
        out.iter().product()
    }
}

impl Forward for Affine {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.affine(cx, ins[0])
    }
}

/// The reference kernel: channel axis 1 of an N×C×… tensor.
pub fn affine<F: Real>(x: &Tensor<F>, scale: &[F], shift: &[F]) -> Tensor<F> {
    let (n, c) = (x.shape[0], x.shape[1]);
    let plane = x.numel() / (n * c).max(1);
    let mut out = x.clone();
    for (i, chunk) in out.data.chunks_mut(plane.max(1)).enumerate() {
        let ch = i % c;
        chunk
            .iter_mut()
            .for_each(|v| *v = *v * scale[ch] + shift[ch]);
    }
    out
}

/// Eval-mode BatchNormalization's per-channel scale and shift, in f64.
pub(crate) fn bn_scale_shift(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let scale: Vec<f64> = gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| g as f64 / (v as f64 + eps).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b as f64 - m as f64 * s)
        .collect();
    (scale, shift)
}

/// `BatchNormalization(X, γ, β, μ, σ²)` in eval mode: folded into the conv before it when that
/// conv's output feeds nothing else, otherwise a per-channel affine.
pub(crate) fn import_batch_norm(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    if n.int("training_mode", 0)? != 0 {
        return Err(cx.bad(
            n,
            "training_mode = 1: export the model in eval mode (model.eval())".into(),
        ));
    }
    let eps = n.float("epsilon", 1e-5)? as f64;
    let (x, shape) = cx.act(n, 0)?;
    let c = *shape.first().unwrap_or(&0);
    let p: Vec<Vec<f32>> = (1..5)
        .map(|i| {
            let t = cx.weight(n, i)?;
            if t.data.len() != c {
                return Err(cx.bad(
                    n,
                    format!("parameter {i} has {} values for {c} channels", t.data.len()),
                ));
            }
            Ok(t.data)
        })
        .collect::<Result<_>>()?;
    let (scale, shift) = bn_scale_shift(&p[0], &p[1], &p[2], &p[3], eps);
    if cx.fold_into_conv(n, &x, &scale, &shift)? {
        return Ok(());
    }
    let prefix = cx.prefix_from_weight(n, 1);
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    cx.push(
        n,
        Op::Affine(Affine { channels: c }),
        &[&x],
        prefix,
        vec![
            ("weight", Tensor::new(vec![c], f32s(&scale))),
            ("bias", Tensor::new(vec![c], f32s(&shift))),
        ],
    )
}
