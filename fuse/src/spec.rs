//! The model spec: an ordered graph of named nodes, generic over the conv op, so the
//! train-time graph ([`TrainSpec`]) and the deploy-time graph ([`DeploySpec`]) are
//! different types. Only a deploy spec has no BatchNorm and no method, and only a deploy
//! spec can reach export.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::method::Method;

/// Shape of a square-kernel 2-D convolution (dilation 1, zero padding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    /// Whether the conv itself carries a bias (before any BatchNorm).
    pub bias: bool,
}

impl ConvShape {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
            groups: 1,
            bias: false,
        }
    }
    /// Weight shape `[O, I/g, k, k]` (PyTorch layout).
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel,
            self.kernel,
        ]
    }
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let f = |x: usize| (x + 2 * self.padding - self.kernel) / self.stride + 1;
        (f(h), f(w))
    }
    pub fn validate(&self, node: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Spec(format!("conv `{node}`: {m}")));
        if self.in_channels == 0 || self.out_channels == 0 || self.kernel == 0 || self.stride == 0 {
            return bad("channels, kernel and stride must be positive".into());
        }
        // Bounds first: every later size computation then fits in usize.
        if self.in_channels > MAX_DIM
            || self.out_channels > MAX_DIM
            || self.kernel > MAX_WINDOW
            || self.stride > MAX_WINDOW
            || self.padding > MAX_WINDOW
        {
            return bad(format!(
                "channels must be ≤ {MAX_DIM} and kernel, stride, padding ≤ {MAX_WINDOW}"
            ));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return bad(format!(
                "groups {} must divide in {} and out {} channels",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        Ok(())
    }
}

/// A BatchNorm that directly follows a conv, with its own (PyTorch) name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub name: String,
    pub eps: f64,
}

/// Train-time conv: a conv, the BatchNorm that follows it (if any), and how the conv is
/// overparameterised. BN is attached to its conv rather than being a free node because
/// every fold is local to that pair; the BN keeps its own PyTorch name (`bn1`, `downsample.1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConv {
    pub shape: ConvShape,
    pub bn: Option<BatchNorm>,
    pub method: Method,
}

/// Deploy-time conv: always with bias, never with BN or a method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployConv {
    pub shape: ConvShape,
}

pub trait ConvLike {
    fn conv_shape(&self) -> &ConvShape;
}
impl ConvLike for TrainConv {
    fn conv_shape(&self) -> &ConvShape {
        &self.shape
    }
}
impl ConvLike for DeployConv {
    fn conv_shape(&self) -> &ConvShape {
        &self.shape
    }
}

/// Operations. Everything except `Conv` is shared by the train and deploy graphs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op<C> {
    Conv(C),
    Relu,
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    GlobalAvgPool,
    Add,
    Flatten,
    Linear {
        in_features: usize,
        out_features: usize,
    },
    /// Upsampling to an explicit size (TensorRT's ONNX parser has no MaxUnpool, so decoders
    /// resize). `nearest` is PyTorch's (source index ⌊dst·in/out⌋; ONNX `asymmetric` + `floor`);
    /// `bilinear` uses half-pixel centres (PyTorch `align_corners=False`).
    Resize {
        height: usize,
        width: usize,
        mode: ResizeMode,
    },
    /// Per-pixel L2 normalisation over channels, `x / max(‖x‖, 1e-12)` (`F.normalize`).
    L2Norm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    Nearest,
    Bilinear,
}

impl<C> Op<C> {
    /// The same op with its conv config replaced (every other op carries over).
    pub fn try_map_conv<D>(&self, f: impl FnOnce(&C) -> Result<D>) -> Result<Op<D>> {
        Ok(match self {
            Op::Conv(c) => Op::Conv(f(c)?),
            Op::Relu => Op::Relu,
            Op::MaxPool {
                kernel,
                stride,
                padding,
            } => Op::MaxPool {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            },
            Op::GlobalAvgPool => Op::GlobalAvgPool,
            Op::Add => Op::Add,
            Op::Flatten => Op::Flatten,
            Op::Resize {
                height,
                width,
                mode,
            } => Op::Resize {
                height: *height,
                width: *width,
                mode: *mode,
            },
            Op::L2Norm => Op::L2Norm,
            Op::Linear {
                in_features,
                out_features,
            } => Op::Linear {
                in_features: *in_features,
                out_features: *out_features,
            },
        })
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(_) => "conv",
            Op::Relu => "relu",
            Op::MaxPool { .. } => "max_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Add => "add",
            Op::Flatten => "flatten",
            Op::Resize { .. } => "resize",
            Op::L2Norm => "l2_norm",
            Op::Linear { .. } => "linear",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node<C> {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub op: Op<C>,
}

/// The network input: one NCHW image tensor named [`INPUT`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The per-channel normalisation the model was trained with (`(x/255 − mean)/std`), so
    /// evaluation and deployment preprocess exactly as training did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalization>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// A named model output (one per task) and the node producing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub node: String,
}

/// The name by which nodes refer to the network input.
pub const INPUT: &str = "input";
/// Largest channel count, height or width a spec may declare (specs come from files).
pub const MAX_DIM: usize = 1 << 16;
/// Largest kernel, stride or padding.
pub const MAX_WINDOW: usize = 1 << 10;
/// Largest flattened feature count (linear layers).
pub const MAX_FEATURES: usize = 1 << 24;
/// Largest activation tensor of one image (input included), in elements: 2^28 f32 are 1 GiB.
/// Every dimension within [`MAX_DIM`] still multiplies out to far more than a run (or the
/// reference executor) can allocate, so specs are refused here, before anything is allocated.
pub const MAX_ACTIVATION: usize = 1 << 28;

/// Refuses an activation shape with more than [`MAX_ACTIVATION`] elements.
fn check_activation(what: &str, shape: &[usize]) -> Result<()> {
    let n = shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
    if n > MAX_ACTIVATION {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        return Err(Error::Spec(format!(
            "{what}: activation {} has {n} elements per image, more than {MAX_ACTIVATION} (1 GiB of f32); use a smaller input",
            dims.join("×")
        )));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph<C> {
    /// Builder name, e.g. `resnet50_cifar`.
    pub model: String,
    pub input: InputSpec,
    pub nodes: Vec<Node<C>>,
    pub outputs: Vec<OutputSpec>,
}

pub type TrainSpec = Graph<TrainConv>;
pub type DeploySpec = Graph<DeployConv>;
pub type TrainOp = Op<TrainConv>;
pub type DeployOp = Op<DeployConv>;

/// What a checkpoint's metadata holds: one of the two graph kinds, tagged by stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", content = "graph", rename_all = "snake_case")]
pub enum AnySpec {
    Train(TrainSpec),
    Deploy(DeploySpec),
}

impl AnySpec {
    pub fn stage(&self) -> &'static str {
        match self {
            AnySpec::Train(_) => "train",
            AnySpec::Deploy(_) => "deploy",
        }
    }
}

/// Per-node activation shape: `[C, H, W]` for feature maps, `[F]` after flatten/linear.
pub type ActShape = Vec<usize>;

/// Cost of one node at the spec's input size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeCost {
    pub params: usize,
    pub macs: usize,
}

impl<C> Graph<C> {
    /// The same graph with every conv config replaced (train ↔ deploy).
    pub fn try_map_convs<D>(&self, mut f: impl FnMut(&C) -> Result<D>) -> Result<Graph<D>> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                Ok(Node {
                    name: n.name.clone(),
                    inputs: n.inputs.clone(),
                    op: n.op.try_map_conv(&mut f)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Graph {
            model: self.model.clone(),
            input: self.input.clone(),
            nodes,
            outputs: self.outputs.clone(),
        })
    }

    /// A classifier's class count: the width of the linear layer behind its first output
    /// (none if that output is not a linear layer).
    pub fn classifier_classes(&self) -> Option<usize> {
        let first = self.outputs.first()?;
        match self.nodes.iter().find(|n| n.name == first.node)?.op {
            Op::Linear { out_features, .. } => Some(out_features),
            _ => None,
        }
    }
}

impl<C: ConvLike> Graph<C> {
    pub fn node(&self, name: &str) -> Option<&Node<C>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Checks names, wiring and shapes; returns the activation shape of every node.
    ///
    /// Long on purpose: one arm per op of one `match`, each a few lines of shape rules.
    pub fn infer_shapes(&self) -> Result<HashMap<String, ActShape>> {
        let err = |m: String| Err(Error::Spec(m));
        let mut shapes: HashMap<String, ActShape> = HashMap::new();
        let i = &self.input;
        if [i.channels, i.height, i.width]
            .iter()
            .any(|&d| d == 0 || d > MAX_DIM)
        {
            return err(format!(
                "input {}×{}×{}: every dimension must be in 1..={MAX_DIM}",
                i.channels, i.height, i.width
            ));
        }
        let input = vec![i.channels, i.height, i.width];
        check_activation("input", &input)?;
        shapes.insert(INPUT.to_string(), input);
        for n in &self.nodes {
            if shapes.contains_key(&n.name) {
                return err(format!("node name `{}` is used twice", n.name));
            }
            let mut ins = Vec::with_capacity(n.inputs.len());
            for i in &n.inputs {
                match shapes.get(i) {
                    Some(s) => ins.push(s.clone()),
                    None => {
                        return err(format!(
                            "node `{}` reads `{i}`, which is not defined before it",
                            n.name
                        ));
                    }
                }
            }
            let arity = if matches!(n.op, Op::Add) { 2 } else { 1 };
            if ins.len() != arity {
                return err(format!(
                    "node `{}` ({}) takes {arity} input(s), got {}",
                    n.name,
                    n.op.kind(),
                    ins.len()
                ));
            }
            let x = &ins[0];
            let spatial = |what: &str| -> Result<(usize, usize, usize)> {
                if x.len() == 3 {
                    Ok((x[0], x[1], x[2]))
                } else {
                    Err(Error::Spec(format!(
                        "node `{}` ({what}) needs a C×H×W input, got {x:?}",
                        n.name
                    )))
                }
            };
            let out = match &n.op {
                Op::Conv(c) => {
                    let s = c.conv_shape();
                    s.validate(&n.name)?;
                    let (ch, h, w) = spatial("conv")?;
                    if ch != s.in_channels {
                        return err(format!(
                            "conv `{}` expects {} input channels, its input `{}` has {ch}",
                            n.name, s.in_channels, n.inputs[0]
                        ));
                    }
                    if h + 2 * s.padding < s.kernel || w + 2 * s.padding < s.kernel {
                        return err(format!(
                            "conv `{}`: input {h}×{w} smaller than kernel",
                            n.name
                        ));
                    }
                    let (ho, wo) = s.out_size(h, w);
                    vec![s.out_channels, ho, wo]
                }
                Op::Relu => x.clone(),
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let (ch, h, w) = spatial("max_pool")?;
                    if *kernel == 0
                        || *stride == 0
                        || [*kernel, *stride, *padding].iter().any(|&v| v > MAX_WINDOW)
                        || h + 2 * padding < *kernel
                    {
                        return err(format!("max_pool `{}`: bad window", n.name));
                    }
                    let f = |v: usize| (v + 2 * padding - kernel) / stride + 1;
                    vec![ch, f(h), f(w)]
                }
                Op::GlobalAvgPool => {
                    let (ch, _, _) = spatial("global_avg_pool")?;
                    vec![ch, 1, 1]
                }
                Op::Add => {
                    if ins[0] != ins[1] {
                        return err(format!(
                            "add `{}`: input shapes differ: {:?} vs {:?}",
                            n.name, ins[0], ins[1]
                        ));
                    }
                    x.clone()
                }
                Op::Flatten => {
                    let f: usize = x.iter().product();
                    if f > MAX_FEATURES {
                        return err(format!(
                            "flatten `{}`: {f} features (more than {MAX_FEATURES})",
                            n.name
                        ));
                    }
                    vec![f]
                }
                Op::Resize { height, width, .. } => {
                    let (ch, _, _) = spatial("resize")?;
                    if *height == 0 || *width == 0 || *height > MAX_DIM || *width > MAX_DIM {
                        return err(format!(
                            "resize `{}`: output size must be in 1..={MAX_DIM}",
                            n.name
                        ));
                    }
                    vec![ch, *height, *width]
                }
                Op::L2Norm => {
                    spatial("l2_norm")?;
                    x.clone()
                }
                Op::Linear {
                    in_features,
                    out_features,
                } => {
                    if *out_features == 0 || *out_features > MAX_FEATURES {
                        return err(format!(
                            "linear `{}`: out_features must be in 1..={MAX_FEATURES}",
                            n.name
                        ));
                    }
                    if x.len() != 1 || x[0] != *in_features {
                        return err(format!(
                            "linear `{}` expects [{in_features}], got {x:?}",
                            n.name
                        ));
                    }
                    vec![*out_features]
                }
            };
            check_activation(&format!("node `{}`", n.name), &out)?;
            shapes.insert(n.name.clone(), out);
        }
        if self.outputs.is_empty() {
            return err("the graph has no outputs".into());
        }
        for o in &self.outputs {
            if !shapes.contains_key(&o.node) {
                return err(format!(
                    "output `{}` names unknown node `{}`",
                    o.name, o.node
                ));
            }
        }
        Ok(shapes)
    }

    /// MACs per node at the spec's input size (params are counted from the layout).
    pub fn node_macs(&self) -> Result<HashMap<String, usize>> {
        let shapes = self.infer_shapes()?;
        let mut out = HashMap::new();
        for n in &self.nodes {
            let macs = match &n.op {
                Op::Conv(c) => {
                    let s = c.conv_shape();
                    let o = &shapes[&n.name];
                    // Saturating: a report figure, and declared sizes are bounded, not small.
                    [s.in_channels / s.groups, s.kernel, s.kernel, o[1], o[2]]
                        .iter()
                        .fold(s.out_channels, |a, &b| a.saturating_mul(b))
                }
                Op::Linear {
                    in_features,
                    out_features,
                } => in_features.saturating_mul(*out_features),
                _ => 0,
            };
            out.insert(n.name.clone(), macs);
        }
        Ok(out)
    }

    pub fn total_macs(&self) -> Result<usize> {
        Ok(self.node_macs()?.values().sum())
    }
}

impl DeploySpec {
    pub fn validate(&self) -> Result<()> {
        for n in &self.nodes {
            if let Op::Conv(c) = &n.op
                && !c.shape.bias
            {
                return Err(Error::Spec(format!(
                    "deploy conv `{}` must carry a bias",
                    n.name
                )));
            }
        }
        self.infer_shapes().map(|_| ())
    }
}

impl TrainSpec {
    pub fn validate(&self) -> Result<()> {
        self.infer_shapes()?;
        for n in &self.nodes {
            if let Op::Conv(c) = &n.op {
                crate::method::check_applicable(&n.name, c)?;
            }
        }
        crate::method::check_share_groups(self)?;
        crate::layout::train_layout(self).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ClassifierOptions, ModelKind, build};
    use crate::{MethodConfig, MethodKind};

    #[test]
    fn huge_inputs_are_refused_before_anything_is_allocated() {
        let mut t = build(
            ModelKind::Resnet18Cifar,
            &ClassifierOptions {
                width: 0.125,
                num_classes: 10,
                ..ClassifierOptions::new(MethodConfig::new(MethodKind::Plain))
            },
        )
        .unwrap();
        t.validate().unwrap();
        // Every dimension is within MAX_DIM, but one image would be 48 GiB of f32.
        t.input.height = MAX_DIM;
        t.input.width = MAX_DIM;
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("input") && e.contains("3×65536×65536"), "{e}");
        assert!(e.contains(&MAX_ACTIVATION.to_string()), "{e}");
        // An input that fits, whose first activation does not: the node is named.
        t.input.height = 8192;
        t.input.width = 8192;
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("node `"), "{e}");
    }
}
