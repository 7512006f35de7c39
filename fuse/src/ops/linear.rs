//! Linear `y = x·Wᵀ + b` on flat features (`weight` `[O, F]`, `bias` `[O]`, PyTorch's layout):
//! ONNX Gemm, and MatMul followed by Add.

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape, dims};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::layout::{ParamKind, ParamSpec};
use crate::spec::{ActShape, MAX_FEATURES, Op};
use crate::tensor::{Real, Tensor};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
}

impl OpShape for Linear {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        if self.out_features == 0 || self.out_features > MAX_FEATURES {
            return Err(Error::Spec(format!(
                "linear `{node}`: out_features must be in 1..={MAX_FEATURES}"
            )));
        }
        if ins[0] != [self.in_features] {
            return Err(Error::Spec(format!(
                "linear `{node}` expects [{}], got {:?}",
                self.in_features, ins[0]
            )));
        }
        Ok(vec![self.out_features])
    }
    fn params(&self, prefix: &str, _ins: &[&[usize]]) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                format!("{prefix}.weight"),
                vec![self.out_features, self.in_features],
                ParamKind::LinearWeight,
            ),
            ParamSpec::new(
                format!("{prefix}.bias"),
                vec![self.out_features],
                ParamKind::Bias,
            ),
        ]
    }
    fn macs(&self, _ins: &[&[usize]], _out: &[usize]) -> usize {
        self.in_features.saturating_mul(self.out_features)
    }
    fn detail(&self) -> String {
        format!("{}→{}", self.in_features, self.out_features)
    }
}

impl Forward for Linear {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.linear(cx, ins[0])
    }
}

/// The reference kernel: `x` `[N, F]`.
pub fn linear<F: Real>(x: &Tensor<F>, w: &Tensor<F>, b: &[F]) -> Tensor<F> {
    let (n, fi) = (x.shape[0], x.shape[1]);
    let o = w.shape[0];
    let mut y = vec![F::zero(); n * o];
    for i in 0..n {
        let xi = &x.data[i * fi..][..fi];
        for oo in 0..o {
            let row = &w.data[oo * fi..][..fi];
            y[i * o + oo] = row.iter().zip(xi).map(|(a, b)| *a * *b).sum::<F>() + b[oo];
        }
    }
    Tensor::new(vec![n, o], y)
}

fn transpose(rows: usize, cols: usize, a: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// A linear layer's tensors as imported: weight `[O, F]` (row-major) and bias `[O]`.
struct Imported {
    weight: Vec<f32>,
    o: usize,
    f: usize,
    bias: Vec<f32>,
}

fn push_linear(
    n: &OnnxNode,
    cx: &mut ImportCx,
    x: &str,
    l: Imported,
    prefix: Option<String>,
) -> Result<()> {
    let Imported { weight, o, f, bias } = l;
    cx.push(
        n,
        Op::Linear(Linear {
            in_features: f,
            out_features: o,
        }),
        &[x],
        prefix,
        vec![
            ("weight", Tensor::new(vec![o, f], weight)),
            ("bias", Tensor::new(vec![o], bias)),
        ],
    )
}

fn flat_input(n: &OnnxNode, cx: &ImportCx) -> Result<(String, usize)> {
    let (x, s) = cx.act(n, 0)?;
    if s.len() != 1 {
        return Err(cx.bad(
            n,
            format!(
                "input is {} per image; {} takes N×F features (flatten first)",
                dims(&s),
                n.op_type
            ),
        ));
    }
    Ok((x, s[0]))
}

/// `Gemm(A, B[, C])` = α·A·B(ᵀ) + β·C with A the features; transA must be 0.
pub(crate) fn import_gemm(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, f) = flat_input(n, cx)?;
    if n.int("transA", 0)? != 0 {
        return Err(cx.bad(
            n,
            "transA = 1 is not supported (the features must be the left operand)".into(),
        ));
    }
    let (alpha, beta) = (n.float("alpha", 1.0)?, n.float("beta", 1.0)?);
    let b = cx.weight(n, 1)?;
    if b.dims.len() != 2 {
        return Err(cx.bad(n, format!("B is {}-D, expected a matrix", b.dims.len())));
    }
    // PyTorch's Linear exports transB = 1 with B = W `[O, F]`.
    let (o, w) = if n.int("transB", 0)? != 0 {
        (b.dims[0], b.data)
    } else {
        (b.dims[1], transpose(b.dims[0], b.dims[1], &b.data))
    };
    if w.len() != o * f {
        return Err(cx.bad(n, format!("B is {:?}, the input has {f} features", b.dims)));
    }
    let w: Vec<f32> = w.iter().map(|v| v * alpha).collect();
    let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
        Some(_) => {
            let c = cx.weight(n, 2)?;
            let vals = match c.data.len() {
                1 => vec![c.data[0]; o],
                l if l == o => c.data,
                l => return Err(cx.bad(n, format!("C has {l} values for {o} outputs"))),
            };
            vals.iter().map(|v| v * beta).collect()
        }
        None => vec![0.0; o],
    };
    let prefix = cx.prefix_from_weight(n, 1);
    push_linear(
        n,
        cx,
        &x,
        Imported {
            weight: w,
            o,
            f,
            bias,
        },
        prefix,
    )
}

/// `MatMul(A, W)` with A the N×F features and W a constant `[F, O]`; an `Add` of a constant
/// `[O]` that alone reads its output becomes the bias.
pub(crate) fn import_matmul(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, f) = flat_input(n, cx)?;
    let w = cx.weight(n, 1)?;
    if w.dims.len() != 2 || w.dims[0] != f {
        return Err(cx.bad(n, format!("weight is {:?}, expected [{f}, O]", w.dims)));
    }
    let o = w.dims[1];
    let weight = transpose(f, o, &w.data);
    let prefix = cx.prefix_from_weight(n, 1);
    let bias = cx.absorb_bias_add(n, o)?;
    let (bias, out_of) = match bias {
        Some((b, add)) => (b, Some(add)),
        None => (vec![0.0; o], None),
    };
    push_linear(n, cx, &x, Imported { weight, o, f, bias }, prefix)?;
    if let Some(add) = out_of {
        cx.alias_output(&add, n);
    }
    Ok(())
}
