//! Per-pixel L2 normalisation over channels, `x / max(‖x‖, 1e-12)` (`F.normalize`), the
//! surface-normal head of the multi-task network. Written by our builder; not imported
//! (exporters write it as ReduceL2/Clip/Div, which imports as its parts would need ops we do
//! not take).

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape, spatial};
use crate::error::Result;
use crate::spec::ActShape;
use crate::tensor::{Real, Tensor};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Norm {}

impl OpShape for L2Norm {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        spatial(node, "l2_norm", ins[0])?;
        Ok(ins[0].to_vec())
    }
}

impl Forward for L2Norm {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.l2_norm(cx, ins[0])
    }
}

/// The reference kernel.
pub fn l2_norm<F: Real>(x: &Tensor<F>) -> Tensor<F> {
    let (n, c) = (x.shape[0], x.shape[1]);
    let plane = x.numel() / (n * c);
    let mut y = x.clone();
    let eps = F::from_f64(1e-12);
    for b in 0..n {
        for p in 0..plane {
            let idx = |ch: usize| (b * c + ch) * plane + p;
            let norm = (0..c)
                .map(|ch| x.data[idx(ch)] * x.data[idx(ch)])
                .sum::<F>()
                .sqrt()
                .max(eps);
            for ch in 0..c {
                y.data[idx(ch)] = x.data[idx(ch)] / norm;
            }
        }
    }
    y
}
