//! Pointwise activations: Relu, LeakyRelu, Clip (ReLU6), Sigmoid, HardSigmoid, HardSwish.
//! SiLU needs no op of its own: exporters write it as `x·Sigmoid(x)`, a Sigmoid and a Mul.

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape};
use crate::error::Result;
use crate::import::{ImportCx, OnnxNode};
use crate::spec::{ActShape, Op};
use crate::tensor::Real;

/// One pointwise function, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Relu,
    /// `x ≥ 0 ? x : α·x`.
    LeakyRelu {
        alpha: f32,
    },
    /// `min(max(x, lo), hi)`.
    Clip {
        min: f32,
        max: f32,
    },
    Sigmoid,
    /// `max(0, min(1, α·x + β))` (ONNX; PyTorch's `hardsigmoid` is α = 1/6, β = 1/2).
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x·max(0, min(1, x/6 + 1/2))` (ONNX HardSwish, PyTorch `hardswish`).
    HardSwish,
}

impl Unary {
    /// The function in f64 or f32: the reference executor's definition of the op.
    pub fn apply<F: Real>(self, x: F) -> F {
        let (zero, one) = (F::zero(), F::one());
        let hard = |alpha: f64, beta: f64, x: F| {
            (F::from_f64(alpha) * x + F::from_f64(beta))
                .min(one)
                .max(zero)
        };
        match self {
            Unary::Relu => x.max(zero),
            Unary::LeakyRelu { alpha } => {
                if x >= zero {
                    x
                } else {
                    F::from_f64(alpha as f64) * x
                }
            }
            Unary::Clip { min, max } => x.max(F::from_f64(min as f64)).min(F::from_f64(max as f64)),
            Unary::Sigmoid => one / (one + (-x).exp()),
            Unary::HardSigmoid { alpha, beta } => hard(alpha as f64, beta as f64, x),
            Unary::HardSwish => x * hard(1.0 / 6.0, 0.5, x),
        }
    }
    /// Never negative whatever the input (Relu, Sigmoid, HardSigmoid, Clip with lo ≥ 0).
    fn nonnegative(self) -> bool {
        match self {
            Unary::Relu | Unary::Sigmoid | Unary::HardSigmoid { .. } => true,
            Unary::Clip { min, .. } => min >= 0.0,
            Unary::LeakyRelu { .. } | Unary::HardSwish => false,
        }
    }
}

macro_rules! activation {
    ($(#[$m:meta])* $ty:ident { $($field:ident: $fty:ty),* } => $unary:expr, $detail:expr) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $ty {
            $(pub $field: $fty,)*
        }
        impl $ty {
            pub fn unary(&self) -> Unary {
                let f: fn(&$ty) -> Unary = $unary;
                f(self)
            }
        }
        impl OpShape for $ty {
            fn infer(&self, _node: &str, ins: &[&[usize]]) -> Result<ActShape> {
                Ok(ins[0].to_vec())
            }
            fn nonnegative(&self, _ins: &[bool]) -> bool {
                self.unary().nonnegative()
            }
            fn detail(&self) -> String {
                let f: fn(&$ty) -> String = $detail;
                f(self)
            }
        }
        impl Forward for $ty {
            fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
                b.unary(cx, ins[0], self.unary())
            }
        }
    };
}

activation!(Relu {} => |_| Unary::Relu, |_| String::new());
activation!(LeakyRelu { alpha: f32 } => |o| Unary::LeakyRelu { alpha: o.alpha }, |o| format!("α={}", o.alpha));
activation!(
    /// ReLU6 is `Clip(0, 6)`.
    Clip { min: f32, max: f32 } => |o| Unary::Clip { min: o.min, max: o.max },
    |o| format!("[{}, {}]", o.min, o.max)
);
activation!(Sigmoid {} => |_| Unary::Sigmoid, |_| String::new());
activation!(
    HardSigmoid { alpha: f32, beta: f32 } => |o| Unary::HardSigmoid { alpha: o.alpha, beta: o.beta },
    |o| format!("α={} β={}", o.alpha, o.beta)
);
activation!(HardSwish {} => |_| Unary::HardSwish, |_| String::new());

fn push(n: &OnnxNode, cx: &mut ImportCx, op: Op<crate::spec::DeployConv>) -> Result<()> {
    let (x, _) = cx.act(n, 0)?;
    cx.push(n, op, &[&x], None, vec![])
}

pub(crate) fn import_relu(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    push(n, cx, Op::Relu(Relu {}))
}

pub(crate) fn import_leaky_relu(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let alpha = n.float("alpha", 0.01)?;
    push(n, cx, Op::LeakyRelu(LeakyRelu { alpha }))
}

/// Clip takes its bounds as inputs since opset 11 (and as attributes before).
pub(crate) fn import_clip(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let bound = |cx: &ImportCx, i: usize, attr: &str, default: f32| -> Result<f32> {
        match n.inputs.get(i).filter(|s| !s.is_empty()) {
            Some(_) => cx.scalar(n, i),
            None => n.float(attr, default),
        }
    };
    let min = bound(cx, 1, "min", f32::NEG_INFINITY)?;
    let max = bound(cx, 2, "max", f32::INFINITY)?;
    if min > max {
        return Err(cx.bad(n, format!("min {min} > max {max}")));
    }
    push(n, cx, Op::Clip(Clip { min, max }))
}

pub(crate) fn import_sigmoid(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    push(n, cx, Op::Sigmoid(Sigmoid {}))
}

pub(crate) fn import_hard_sigmoid(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let alpha = n.float("alpha", 0.2)?;
    let beta = n.float("beta", 0.5)?;
    push(n, cx, Op::HardSigmoid(HardSigmoid { alpha, beta }))
}

pub(crate) fn import_hard_swish(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    push(n, cx, Op::HardSwish(HardSwish {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_are_onnx_s() {
        let hs = Unary::HardSigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        };
        for (x, relu6, hsig, hswish) in [
            (-4.0f64, 0.0, 0.0, 0.0),
            (1.5, 1.5, 0.75, 1.125),
            (7.0, 6.0, 1.0, 7.0),
        ] {
            let clip = Unary::Clip { min: 0.0, max: 6.0 };
            assert_eq!(clip.apply(x), relu6);
            assert!((hs.apply(x) - hsig).abs() < 1e-7, "{x}");
            assert!((Unary::HardSwish.apply(x) - hswish).abs() < 1e-12, "{x}");
        }
        assert_eq!(Unary::LeakyRelu { alpha: 0.5 }.apply(-2.0f64), -1.0);
        assert!((Unary::Sigmoid.apply(0.0f64) - 0.5).abs() < 1e-15);
        assert!(Unary::Clip { min: 0.0, max: 6.0 }.nonnegative());
        assert!(
            !Unary::Clip {
                min: -1.0,
                max: 1.0
            }
            .nonnegative()
        );
        assert!(!Unary::HardSwish.nonnegative());
    }
}
