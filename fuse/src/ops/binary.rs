//! Add, Sub, Mul, Div: two feature maps, or a feature map and a constant (stored as the
//! node's `value` tensor), with NumPy broadcasting (squeeze-excite's N×C×1×1 gate, scalars,
//! per-channel constants).

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape, dims};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::layout::{ParamKind, ParamSpec};
use crate::spec::{ActShape, DeployConv, Op};
use crate::tensor::{Real, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryKind {
    pub fn apply<F: Real>(self, a: F, b: F) -> F {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
        }
    }
    /// The ONNX operator.
    pub fn onnx(self) -> &'static str {
        match self {
            BinaryKind::Add => "Add",
            BinaryKind::Sub => "Sub",
            BinaryKind::Mul => "Mul",
            BinaryKind::Div => "Div",
        }
    }
}

/// A constant operand: its per-image shape (broadcast against the feature map) and whether it
/// is the left operand (`c − x`, `c / x`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstOperand {
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
}

/// The config every elementwise op shares: two inputs, or one and a constant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<ConstOperand>,
}

/// NumPy broadcasting of two shapes (right-aligned; a dimension of 1 stretches).
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        let off = n - s.len();
        if i < off { 1 } else { s[i - off] }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// `f(a, b)` elementwise on whole tensors (batch included) with NumPy broadcasting: the
/// reference kernel.
pub fn apply_broadcast<F: Real>(a: &Tensor<F>, b: &Tensor<F>, f: BinaryKind) -> Tensor<F> {
    if a.shape == b.shape {
        let data = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| f.apply(*x, *y))
            .collect();
        return Tensor::new(a.shape.clone(), data);
    }
    let shape = broadcast(&a.shape, &b.shape).expect("broadcastable (checked by the shape rule)");
    let n = shape.len();
    // Strides of each operand over the output's index space (0 where it is broadcast).
    let strides = |s: &[usize]| {
        let off = n - s.len();
        let mut st = vec![0usize; n];
        let mut acc = 1;
        for i in (0..s.len()).rev() {
            st[off + i] = if s[i] == 1 { 0 } else { acc };
            acc *= s[i];
        }
        st
    };
    let (sa, sb) = (strides(&a.shape), strides(&b.shape));
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut idx = vec![0usize; n];
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..total {
        data.push(f.apply(a.data[ia], b.data[ib]));
        // Odometer increment, keeping the two input offsets in step.
        for d in (0..n).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < shape[d] {
                break;
            }
            ia -= sa[d] * shape[d];
            ib -= sb[d] * shape[d];
            idx[d] = 0;
        }
    }
    Tensor::new(shape, data)
}

impl Binary {
    fn arity(&self) -> (usize, usize) {
        if self.constant.is_some() {
            (1, 1)
        } else {
            (2, 2)
        }
    }
    fn infer(&self, kind: &str, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        let other: &[usize] = match &self.constant {
            Some(c) => &c.shape,
            None => ins[1],
        };
        let out = broadcast(ins[0], other).ok_or_else(|| {
            Error::Spec(format!(
                "{kind} `{node}`: shapes {} and {} do not broadcast",
                dims(ins[0]),
                dims(other)
            ))
        })?;
        // The batch stays N: an operand may broadcast into the feature map, never widen it
        // beyond one image's rank.
        if out.len()
            > ins[0].len().max(if self.constant.is_some() {
                0
            } else {
                ins[1].len()
            })
        {
            return Err(Error::Spec(format!(
                "{kind} `{node}`: a constant of shape {} has more dimensions than the feature map {}",
                dims(other),
                dims(ins[0])
            )));
        }
        Ok(out)
    }
    fn params(&self, prefix: &str) -> Vec<ParamSpec> {
        match &self.constant {
            Some(c) => vec![ParamSpec::new(
                format!("{prefix}.value"),
                c.shape.clone(),
                ParamKind::Constant,
            )],
            None => vec![],
        }
    }
    fn forward<B: Backend>(
        &self,
        kind: BinaryKind,
        b: &mut B,
        cx: &NodeCx,
        ins: &[&B::T],
    ) -> Result<B::T, B::Error> {
        match &self.constant {
            None => b.binary(cx, ins[0], ins[1], kind),
            Some(c) => {
                let v = b.param(cx, "value")?;
                if c.left {
                    b.binary(cx, &v, ins[0], kind)
                } else {
                    b.binary(cx, ins[0], &v, kind)
                }
            }
        }
    }
}

macro_rules! binary_op {
    ($(#[$m:meta])* $ty:ident, $kind:ident, $tag:literal, $nonneg:expr) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(pub Binary);
        impl OpShape for $ty {
            fn arity(&self) -> (usize, usize) {
                self.0.arity()
            }
            fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
                self.0.infer($tag, node, ins)
            }
            fn params(&self, prefix: &str, _ins: &[&[usize]]) -> Vec<ParamSpec> {
                self.0.params(prefix)
            }
            fn nonnegative(&self, ins: &[bool]) -> bool {
                // A constant's sign is not known from the spec.
                let f: fn(&[bool]) -> bool = $nonneg;
                self.0.constant.is_none() && f(ins)
            }
            fn detail(&self) -> String {
                match &self.0.constant {
                    Some(c) => format!("constant {}", dims(&c.shape)),
                    None => String::new(),
                }
            }
        }
        impl Forward for $ty {
            fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
                self.0.forward(BinaryKind::$kind, b, cx, ins)
            }
        }
    };
}

binary_op!(Add, Add, "add", |ins| ins.iter().all(|&x| x));
binary_op!(Sub, Sub, "sub", |_| false);
binary_op!(Mul, Mul, "mul", |ins| ins.iter().all(|&x| x));
binary_op!(Div, Div, "div", |ins| ins.iter().all(|&x| x));

/// `Add|Sub|Mul|Div(A, B)`: both feature maps, or one a constant (a leading batch dimension
/// of 1 on the constant is dropped: it broadcasts over the batch either way).
pub(crate) fn import(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let wrap = |b: Binary| -> Op<DeployConv> {
        match n.op_type.as_str() {
            "Add" => Op::Add(Add(b)),
            "Sub" => Op::Sub(Sub(b)),
            "Mul" => Op::Mul(Mul(b)),
            _ => Op::Div(Div(b)),
        }
    };
    let consts = [cx.is_const(n, 0), cx.is_const(n, 1)];
    match consts {
        [false, false] => {
            let (a, _) = cx.act(n, 0)?;
            let (b, _) = cx.act(n, 1)?;
            cx.push(n, wrap(Binary::default()), &[&a, &b], None, vec![])
        }
        [left, _] => {
            let (ci, xi) = if left { (0, 1) } else { (1, 0) };
            let (x, shape) = cx.act(n, xi)?;
            let c = cx.weight(n, ci)?;
            let mut cshape = c.dims.clone();
            if cshape.len() == shape.len() + 1 && cshape[0] == 1 {
                cshape.remove(0);
            }
            let op = wrap(Binary {
                constant: Some(ConstOperand {
                    shape: cshape.clone(),
                    left,
                }),
            });
            cx.push(
                n,
                op,
                &[&x],
                None,
                vec![("value", Tensor::new(cshape, c.data))],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_is_numpy_s() {
        assert_eq!(broadcast(&[4, 3, 5], &[4, 1, 1]), Some(vec![4, 3, 5]));
        assert_eq!(broadcast(&[4, 3, 5], &[]), Some(vec![4, 3, 5]));
        assert_eq!(broadcast(&[2, 4, 3, 5], &[4, 1, 5]), Some(vec![2, 4, 3, 5]));
        assert_eq!(broadcast(&[4, 3, 5], &[2, 1, 1]), None);
        // A per-channel gate N×C×1×1 times N×C×H×W, against a plain loop.
        let x = Tensor::new(vec![2, 3, 2, 2], (0..24).map(|v| v as f64).collect());
        let g = Tensor::new(vec![2, 3, 1, 1], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = apply_broadcast(&x, &g, BinaryKind::Mul);
        assert_eq!(y.shape, vec![2, 3, 2, 2]);
        for (i, v) in y.data.iter().enumerate() {
            assert_eq!(*v, i as f64 * g.data[i / 4], "{i}");
        }
        let c = Tensor::new(vec![3, 1, 1], vec![10.0, 20.0, 30.0]);
        let y = apply_broadcast(&c, &x, BinaryKind::Sub);
        for (i, v) in y.data.iter().enumerate() {
            assert_eq!(*v, c.data[(i / 4) % 3] - i as f64, "{i}");
        }
    }
}
