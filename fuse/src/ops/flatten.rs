//! Flatten a C×H×W feature map to C·H·W features (ONNX Flatten with axis 1, and a Reshape
//! to N×F).

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::spec::{ActShape, MAX_FEATURES, Op};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flatten {}

impl OpShape for Flatten {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        let f: usize = ins[0].iter().product();
        if f > MAX_FEATURES {
            return Err(Error::Spec(format!(
                "flatten `{node}`: {f} features (more than {MAX_FEATURES})"
            )));
        }
        Ok(vec![f])
    }
    fn nonnegative(&self, ins: &[bool]) -> bool {
        ins[0]
    }
}

impl Forward for Flatten {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.flatten(cx, ins[0])
    }
}

/// `Flatten(axis=1)`.
pub(crate) fn import(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, _) = cx.act(n, 0)?;
    if n.int("axis", 1)? != 1 {
        return Err(cx.bad(
            n,
            "only axis 1 (keep the batch, flatten the rest) is supported".into(),
        ));
    }
    cx.push(n, Op::Flatten(Flatten {}), &[&x], None, vec![])
}

/// `Reshape(X, shape)` to N×F with a constant shape (`[N, −1]`, `[−1, F]`, `[0, F]`, …);
/// a flat input reshaped to its own N×F is passed through.
pub(crate) fn import_reshape(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    let target = cx.ints(n, 1)?;
    let f: usize = shape.iter().product();
    let batch_ok = |d: i64| d == -1 || d == 0 || d == cx.batch() as i64;
    let flat = target.len() == 2
        && batch_ok(target[0])
        && (target[1] == -1 || target[1] == f as i64)
        && !(target[0] == -1 && target[1] == -1);
    if !flat {
        return Err(cx.bad(n, format!(
            "reshape of a {} feature map to {target:?}: only a reshape to N×F (flattening) is supported",
            super::dims(&shape)
        )));
    }
    if shape.len() == 1 {
        cx.alias(n, 0);
        return Ok(());
    }
    cx.push(n, Op::Flatten(Flatten {}), &[&x], None, vec![])
}
