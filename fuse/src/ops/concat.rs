//! Concat along channels (per-image axis 0: the channels of a feature map, or the features of
//! a flat tensor), as U-Net/FCN decoders join skip connections.

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape, dims};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::spec::{ActShape, Op};
use crate::tensor::{Real, Tensor};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concat {}

impl OpShape for Concat {
    fn arity(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        let first = ins[0];
        if first.is_empty() {
            return Err(Error::Spec(format!("concat `{node}`: a scalar input")));
        }
        let mut out = first.to_vec();
        for s in &ins[1..] {
            if s.len() != first.len() || s[1..] != first[1..] {
                return Err(Error::Spec(format!(
                    "concat `{node}`: inputs {} and {} differ beyond the channel axis",
                    dims(first),
                    dims(s)
                )));
            }
            out[0] += s[0];
        }
        Ok(out)
    }
    fn nonnegative(&self, ins: &[bool]) -> bool {
        ins.iter().all(|&x| x)
    }
}

impl Forward for Concat {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.concat(cx, ins)
    }
}

/// The reference kernel: along axis 1 of N×C×… tensors.
pub fn concat<F: Real>(xs: &[&Tensor<F>]) -> Tensor<F> {
    let n = xs[0].shape[0];
    let mut shape = xs[0].shape.clone();
    shape[1] = xs.iter().map(|x| x.shape[1]).sum();
    let mut data = Vec::with_capacity(shape.iter().product());
    for b in 0..n {
        for x in xs {
            let per = x.numel() / n;
            data.extend_from_slice(&x.data[b * per..(b + 1) * per]);
        }
    }
    Tensor::new(shape, data)
}

/// `Concat(…, axis=1)` (or axis −rank+1) of feature maps.
pub(crate) fn import(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let mut ins = vec![];
    let mut rank = 0;
    for i in 0..n.inputs.len() {
        let (x, s) = cx.act(n, i)?;
        rank = s.len() + 1;
        ins.push(x);
    }
    let axis = n.int("axis", 1)?;
    let axis = if axis < 0 { axis + rank as i64 } else { axis };
    if axis != 1 {
        return Err(cx.bad(
            n,
            format!("axis {axis}: only concatenation over channels (axis 1) is supported"),
        ));
    }
    let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
    cx.push(n, Op::Concat(Concat {}), &refs, None, vec![])
}
