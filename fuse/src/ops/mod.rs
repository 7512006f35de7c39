//! Ops as units. Each op is a type in one file of this module with everything that defines
//! it: its shape rule and MAC count ([`OpShape`]), its tensors ([`OpShape::params`]), its
//! computation written once against [`Backend`] ([`Forward`]), its f64 reference kernel
//! (which the reference backend, `crate::exec`, calls), and its ONNX importer. The list below
//! is the one place an op is registered; the spec JSON tag is its name there.
//!
//! Three backends run the same `forward`: the reference executor (f64/f32, `crate::exec`),
//! libtorch for training (`overparam-train`), and the ONNX writer (`overparam-engine`). A
//! backend implements the primitives once ([`Backend`]), so an op made of existing
//! primitives is one file and one entry in [`ops!`]; an op that needs a new primitive adds it
//! to the trait and the three backends as well. This follows tract's typed ops (a type per op
//! with its own shape and evaluation rules) and burn's backends (one forward, many tensors).
//!
//! `Conv` is the one op whose config differs between the train and the deploy graph (a
//! method, a BatchNorm); backends run it through [`ConvBackend`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::ParamSpec;
use crate::spec::{ActShape, ConvLike, Graph, INPUT};

pub mod activation;
pub mod affine;
pub mod binary;
pub mod concat;
pub mod conv;
pub mod conv_transpose;
pub mod examples;
pub mod flatten;
pub mod l2norm;
pub mod linear;
pub mod pool;
pub mod resize;
pub mod window;

pub use activation::{Clip, HardSigmoid, HardSwish, LeakyRelu, Relu, Sigmoid, Unary};
pub use affine::Affine;
pub use binary::{Binary, BinaryKind, ConstOperand};
pub use concat::Concat;
pub use conv_transpose::ConvTranspose;
pub use flatten::Flatten;
pub use l2norm::L2Norm;
pub use linear::Linear;
pub use pool::{AvgPool, GlobalAvgPool, MaxPool, Window};
pub use resize::{Resize, ResizeMode};

/// Where an op runs: its node's name, the prefix of its tensors, and the per-image shapes of
/// its inputs and output (static: every shape is known from the spec).
#[derive(Clone, Copy, Debug)]
pub struct NodeCx<'a> {
    pub name: &'a str,
    pub prefix: &'a str,
    /// The spec names of its inputs (nodes, or [`INPUT`]).
    pub inputs: &'a [String],
    pub ins: &'a [&'a [usize]],
    pub out: &'a [usize],
}

impl NodeCx<'_> {
    /// The full name of one of this node's tensors: `<prefix>.<leaf>`.
    pub fn param(&self, leaf: &str) -> String {
        format!("{}.{leaf}", self.prefix)
    }
}

/// An op's static rules: what it takes, what it gives, what it owns and costs. Object-safe,
/// so the graph code asks any op the same questions.
pub trait OpShape {
    /// Inputs taken: at least `.0`, at most `.1`.
    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }
    /// The output's per-image shape from the inputs'. Errors name the node.
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape>;
    /// The tensors this op owns under `prefix` (its deploy-time tensors; a train-time conv's
    /// come from its method's layout instead).
    fn params(&self, _prefix: &str, _ins: &[&[usize]]) -> Vec<ParamSpec> {
        vec![]
    }
    /// Multiply-accumulates per image.
    fn macs(&self, _ins: &[&[usize]], _out: &[usize]) -> usize {
        0
    }
    /// Whether the output is never negative, given which inputs never are (for the CPU INT8
    /// encoding, which puts non-negative tensors on an unsigned grid).
    fn nonnegative(&self, _ins: &[bool]) -> bool {
        false
    }
    /// Layer-specific detail for `inspect` (`3×3 s2`, `nearest`, `α=0.1`).
    fn detail(&self) -> String {
        String::new()
    }
}

/// An op's computation, written once against any [`Backend`].
pub trait Forward {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error>;
}

/// The tensor primitives every backend implements. Each is named after the ONNX operator it
/// becomes, and tensors are per batch (`N` leading); `cx` carries the per-image shapes.
pub trait Backend {
    type T;
    type Error: From<Error>;
    /// A constant or trained tensor of the node (`cx.param(leaf)`), as a backend tensor.
    fn param(&mut self, cx: &NodeCx, leaf: &str) -> Result<Self::T, Self::Error>;
    fn unary(&mut self, cx: &NodeCx, x: &Self::T, f: Unary) -> Result<Self::T, Self::Error>;
    /// Elementwise with NumPy broadcasting over the per-image shapes (`N` matches).
    fn binary(
        &mut self,
        cx: &NodeCx,
        a: &Self::T,
        b: &Self::T,
        f: BinaryKind,
    ) -> Result<Self::T, Self::Error>;
    /// `x·scale[c] + shift[c]` with the node's `weight` and `bias` of length C.
    fn affine(&mut self, cx: &NodeCx, x: &Self::T) -> Result<Self::T, Self::Error>;
    fn conv_transpose(
        &mut self,
        cx: &NodeCx,
        x: &Self::T,
        op: &ConvTranspose,
    ) -> Result<Self::T, Self::Error>;
    fn max_pool(&mut self, cx: &NodeCx, x: &Self::T, w: &Window) -> Result<Self::T, Self::Error>;
    fn avg_pool(&mut self, cx: &NodeCx, x: &Self::T, op: &AvgPool) -> Result<Self::T, Self::Error>;
    fn global_avg_pool(&mut self, cx: &NodeCx, x: &Self::T) -> Result<Self::T, Self::Error>;
    /// Along the per-image axis 0 (channels, or features of a flat tensor).
    fn concat(&mut self, cx: &NodeCx, xs: &[&Self::T]) -> Result<Self::T, Self::Error>;
    fn flatten(&mut self, cx: &NodeCx, x: &Self::T) -> Result<Self::T, Self::Error>;
    /// `x·Wᵀ + b` with the node's `weight` `[O, F]` and `bias` `[O]` (quantisable).
    fn linear(&mut self, cx: &NodeCx, x: &Self::T) -> Result<Self::T, Self::Error>;
    fn resize(&mut self, cx: &NodeCx, x: &Self::T, op: &Resize) -> Result<Self::T, Self::Error>;
    fn l2_norm(&mut self, cx: &NodeCx, x: &Self::T) -> Result<Self::T, Self::Error>;
    /// Called with every node's output before later nodes read it (rounding, Q/DQ, naming).
    fn finish<C>(&mut self, _cx: &NodeCx, _op: &Op<C>, y: Self::T) -> Result<Self::T, Self::Error> {
        Ok(y)
    }
}

/// How a backend runs the conv of one graph kind (train: its method and BN; deploy: a plain
/// conv with bias).
pub trait ConvBackend<C>: Backend {
    fn conv(&mut self, cx: &NodeCx, c: &C, x: &Self::T) -> Result<Self::T, Self::Error>;
}

/// Declares the op list: the enum stored in specs (tagged by the name given here) and the
/// dispatch of every per-op question. The one place an op is registered.
macro_rules! ops {
    ($($(#[$m:meta])* $variant:ident($ty:ty) = $tag:literal,)*) => {
        /// Operations. Everything except `Conv` is shared by the train and deploy graphs.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Op<C> {
            Conv(C),
            $($(#[$m])* #[serde(rename = $tag)] $variant($ty),)*
        }

        /// Every op's spec name (`conv` first).
        pub const OP_NAMES: &[&str] = &["conv", $($tag,)*];

        impl<C> Op<C> {
            pub fn kind(&self) -> &'static str {
                match self {
                    Op::Conv(_) => "conv",
                    $(Op::$variant(_) => $tag,)*
                }
            }
            /// The op's static rules; `None` for the conv, whose rules depend on its config.
            pub fn shape_rules(&self) -> Option<&dyn OpShape> {
                match self {
                    Op::Conv(_) => None,
                    $(Op::$variant(o) => Some(o),)*
                }
            }
            /// The same op with its conv config replaced (every other op carries over).
            pub fn try_map_conv<D>(&self, f: impl FnOnce(&C) -> Result<D>) -> Result<Op<D>> {
                Ok(match self {
                    Op::Conv(c) => Op::Conv(f(c)?),
                    $(Op::$variant(o) => Op::$variant(o.clone()),)*
                })
            }
            /// Runs the op on a backend.
            pub fn forward<B: ConvBackend<C>>(
                &self,
                b: &mut B,
                cx: &NodeCx,
                ins: &[&B::T],
            ) -> Result<B::T, B::Error> {
                match self {
                    Op::Conv(c) => b.conv(cx, c, ins[0]),
                    $(Op::$variant(o) => o.forward(b, cx, ins),)*
                }
            }
        }
    };
}

ops! {
    Relu(Relu) = "relu",
    LeakyRelu(LeakyRelu) = "leaky_relu",
    Clip(Clip) = "clip",
    Sigmoid(Sigmoid) = "sigmoid",
    HardSigmoid(HardSigmoid) = "hard_sigmoid",
    HardSwish(HardSwish) = "hard_swish",
    /// Add, Sub, Mul, Div: two tensors, or a tensor and a constant, with broadcasting.
    Add(binary::Add) = "add",
    Sub(binary::Sub) = "sub",
    Mul(binary::Mul) = "mul",
    Div(binary::Div) = "div",
    Affine(Affine) = "affine",
    ConvTranspose(ConvTranspose) = "conv_transpose",
    MaxPool(MaxPool) = "max_pool",
    AvgPool(AvgPool) = "avg_pool",
    GlobalAvgPool(GlobalAvgPool) = "global_avg_pool",
    Concat(Concat) = "concat",
    Flatten(Flatten) = "flatten",
    Linear(Linear) = "linear",
    Resize(Resize) = "resize",
    L2Norm(L2Norm) = "l2_norm",
}

impl<C: ConvLike> Op<C> {
    /// Inputs taken: at least `.0`, at most `.1`.
    pub fn arity(&self) -> (usize, usize) {
        self.shape_rules().map_or((1, 1), |r| r.arity())
    }
    pub fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        match self {
            Op::Conv(c) => conv::infer(node, c.conv_shape(), ins[0]),
            o => o.shape_rules().expect("not a conv").infer(node, ins),
        }
    }
    pub fn macs(&self, ins: &[&[usize]], out: &[usize]) -> usize {
        match self {
            Op::Conv(c) => conv::macs(c.conv_shape(), out),
            o => o.shape_rules().expect("not a conv").macs(ins, out),
        }
    }
    pub fn nonnegative(&self, ins: &[bool]) -> bool {
        self.shape_rules().is_some_and(|r| r.nonnegative(ins))
    }
    /// Conv and linear layers: the layers INT8 quantises and precision plans name.
    pub fn is_weighted_layer(&self) -> bool {
        matches!(self, Op::Conv(_) | Op::Linear(_))
    }
}

/// Convenience constructors for the builders.
impl<C> Op<C> {
    pub fn relu() -> Self {
        Op::Relu(Relu {})
    }
    pub fn add() -> Self {
        Op::Add(binary::Add::default())
    }
    pub fn global_avg_pool() -> Self {
        Op::GlobalAvgPool(GlobalAvgPool {})
    }
    pub fn flatten() -> Self {
        Op::Flatten(Flatten {})
    }
    pub fn l2_norm() -> Self {
        Op::L2Norm(L2Norm {})
    }
    pub fn linear(in_features: usize, out_features: usize) -> Self {
        Op::Linear(Linear {
            in_features,
            out_features,
        })
    }
    pub fn max_pool(kernel: usize, stride: usize, padding: usize) -> Self {
        Op::MaxPool(MaxPool(Window::square(kernel, stride, padding)))
    }
    pub fn resize(height: usize, width: usize, mode: ResizeMode) -> Self {
        Op::Resize(Resize {
            height,
            width,
            mode,
        })
    }
}

/// Every node's output (and the input), keyed by node name.
pub type Outputs<T> = HashMap<String, T>;

/// Runs a graph on a backend: every node in order, each through its op's [`Forward`] and the
/// backend's [`Backend::finish`]. Returns every node's output, the input included.
pub fn run_graph<C: ConvLike, B: ConvBackend<C>>(
    g: &Graph<C>,
    shapes: &HashMap<String, ActShape>,
    b: &mut B,
    input: B::T,
) -> Result<Outputs<B::T>, B::Error> {
    let mut acts: Outputs<B::T> = HashMap::with_capacity(g.nodes.len() + 1);
    acts.insert(INPUT.to_string(), input);
    for n in &g.nodes {
        let in_shapes: Vec<&[usize]> = n
            .inputs
            .iter()
            .map(|i| {
                shapes.get(i).map(Vec::as_slice).ok_or_else(|| Error::Exec {
                    node: n.name.clone(),
                    message: format!("input `{i}` has no shape"),
                })
            })
            .collect::<Result<_>>()?;
        let out = shapes.get(&n.name).ok_or_else(|| Error::Exec {
            node: n.name.clone(),
            message: "no shape (the spec changed after shape inference)".into(),
        })?;
        let cx = NodeCx {
            name: &n.name,
            prefix: n.prefix(),
            inputs: &n.inputs,
            ins: &in_shapes,
            out,
        };
        let ins: Vec<&B::T> = n
            .inputs
            .iter()
            .map(|i| {
                acts.get(i).ok_or_else(|| Error::Exec {
                    node: n.name.clone(),
                    message: format!("input `{i}` not computed"),
                })
            })
            .collect::<Result<_>>()?;
        let y = n.op.forward(b, &cx, &ins)?;
        let y = b.finish(&cx, &n.op, y)?;
        acts.insert(n.name.clone(), y);
    }
    Ok(acts)
}

/// Refuses an input that is not a C×H×W feature map.
pub(crate) fn spatial(node: &str, what: &str, x: &[usize]) -> Result<(usize, usize, usize)> {
    if x.len() == 3 {
        Ok((x[0], x[1], x[2]))
    } else {
        Err(Error::Spec(format!(
            "node `{node}` ({what}) needs a C×H×W input, got {x:?}"
        )))
    }
}

/// `a×b×c` for messages.
pub(crate) fn dims(shape: &[usize]) -> String {
    if shape.is_empty() {
        return "scalar".into();
    }
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}
