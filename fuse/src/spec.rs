//! The model spec: an ordered graph of named nodes, generic over the conv op, so the
//! train-time graph ([`TrainSpec`]) and the deploy-time graph ([`DeploySpec`]) are
//! different types. Only a deploy spec has no BatchNorm and no method, and only a deploy
//! spec can reach export.
//!
//! The ops themselves (shape rules, reference execution, MACs, ONNX import, and the forward
//! every backend runs) are units in [`crate::ops`]; this module holds the graph around them.

use std::collections::HashMap;

use overparam_base::Role;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::method::Method;
use crate::ops::window::{is_ones, ones, out_len, pair, quad};

pub use crate::ops::Op;
pub use crate::ops::resize::ResizeMode;

/// Shape of a 2-D convolution: any kernel h×w, stride, dilation, four-sided zero padding
/// (`[top, left, bottom, right]`, ONNX's order) and groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(with = "pair")]
    pub kernel: [usize; 2],
    #[serde(with = "pair")]
    pub stride: [usize; 2],
    #[serde(with = "quad")]
    pub padding: [usize; 4],
    pub groups: usize,
    /// Whether the conv itself carries a bias (before any BatchNorm).
    pub bias: bool,
    #[serde(default = "ones", skip_serializing_if = "is_ones", with = "pair")]
    pub dilation: [usize; 2],
}

impl ConvShape {
    /// A square k×k conv with 'same' padding k/2 on every side, dilation 1, one group.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [kernel / 2; 4],
            groups: 1,
            bias: false,
            dilation: [1, 1],
        }
    }
    /// Weight shape `[O, I/g, kh, kw]` (PyTorch layout).
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel[0],
            self.kernel[1],
        ]
    }
    /// `kh·kw`.
    pub fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
    /// Terms of one output's dot product: `I/g·kh·kw`.
    pub fn fan_in(&self) -> usize {
        self.in_channels / self.groups * self.taps()
    }
    /// Whether the kernel is 1×1.
    pub fn is_1x1(&self) -> bool {
        self.kernel == [1, 1]
    }
    /// A depthwise conv: one input channel per group (more than one group).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.in_channels == self.groups
    }
    /// Odd kernel sides with 'same' padding `d·(k−1)/2` on both ends of each axis: the kernel's
    /// centre tap sees the pixel at the output position (times the stride), so a 1×1 branch
    /// and an identity branch align with it (methods.md §1.2, transVI).
    pub fn is_centred(&self) -> bool {
        let [kh, kw] = self.kernel;
        let [dh, dw] = self.dilation;
        let [t, l, b, r] = self.padding;
        kh % 2 == 1
            && kw % 2 == 1
            && t == dh * (kh - 1) / 2
            && b == t
            && l == dw * (kw - 1) / 2
            && r == l
    }
    /// Output height and width, or `None` when the window does not fit the input.
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let [t, l, b, r] = self.padding;
        Some((
            out_len(h, self.kernel[0], self.stride[0], self.dilation[0], t, b)?,
            out_len(w, self.kernel[1], self.stride[1], self.dilation[1], l, r)?,
        ))
    }
    /// A one-line description for messages: `3×3 s2 p1 g1` (with `d2` and asymmetric pads
    /// when they are not the default).
    pub fn describe(&self) -> String {
        let side = |v: &[usize]| {
            if v.iter().all(|&x| x == v[0]) {
                v[0].to_string()
            } else {
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        let mut s = format!(
            "{}×{} s{} p{}",
            self.kernel[0],
            self.kernel[1],
            side(&self.stride),
            side(&self.padding)
        );
        if self.dilation != [1, 1] {
            s += &format!(" d{}", side(&self.dilation));
        }
        if self.groups != 1 {
            s += &format!(" g{}", self.groups);
        }
        s
    }
    pub fn validate(&self, node: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Spec(format!("conv `{node}`: {m}")));
        if self.in_channels == 0
            || self.out_channels == 0
            || self.kernel.contains(&0)
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
        {
            return bad("channels, kernel, stride and dilation must be positive".into());
        }
        // Bounds first: every later size computation then fits in usize.
        if self.in_channels > MAX_DIM
            || self.out_channels > MAX_DIM
            || self
                .kernel
                .iter()
                .chain(&self.stride)
                .chain(&self.dilation)
                .chain(&self.padding)
                .any(|&v| v > MAX_WINDOW)
        {
            return bad(format!(
                "channels must be ≤ {MAX_DIM} and kernel, stride, dilation, padding ≤ {MAX_WINDOW}"
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
    /// Runs on its running statistics in training too (γ and β still train): the BatchNorms
    /// an exact expansion inserts into a trained network, so the first training forward
    /// computes the imported function (see `init --from`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

impl BatchNorm {
    pub fn new(name: impl Into<String>, eps: f64) -> Self {
        Self {
            name: name.into(),
            eps,
            frozen: false,
        }
    }
}

/// Train-time conv: a conv, the BatchNorm that follows it (if any), and how the conv is
/// overparameterised. BN is attached to its conv rather than being a free node because
/// every fold is local to that pair; the BN keeps its own PyTorch name (`bn1`, `downsample.1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConv {
    pub shape: ConvShape,
    pub bn: Option<BatchNorm>,
    pub method: Method,
    /// Why a method asked for this conv left it plain (shown by `inspect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_plain: Option<String>,
}

impl TrainConv {
    pub fn new(shape: ConvShape, bn: Option<BatchNorm>, method: Method) -> Self {
        Self {
            shape,
            bn,
            method,
            kept_plain: None,
        }
    }
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node<C> {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub op: Op<C>,
    /// The prefix of this node's tensors when it is not the node's name: an imported node
    /// keeps its ONNX name, and its weights the PyTorch module path the exporter kept
    /// (`layer1.0.conv1` for `layer1.0.conv1.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

impl<C> Node<C> {
    pub fn new(name: impl Into<String>, inputs: &[&str], op: Op<C>) -> Self {
        Self {
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            op,
            params: None,
        }
    }
    /// The prefix of this node's tensor names (`<prefix>.weight`).
    pub fn prefix(&self) -> &str {
        self.params.as_deref().unwrap_or(&self.name)
    }
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

/// A named model output, the node producing it, and what it means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OutputRepr")]
pub struct OutputSpec {
    pub name: String,
    pub node: String,
    #[serde(serialize_with = "role_name::serialize")]
    pub role: Role,
}

impl OutputSpec {
    /// An output whose role is the one its name implies ([`Role::implied_by`]).
    pub fn new(name: impl Into<String>, node: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            role: Role::implied_by(&name),
            name,
            node: node.into(),
        }
    }
}

/// Specs written before outputs had roles: the role is the one the name implies.
#[derive(Deserialize)]
struct OutputRepr {
    name: String,
    node: String,
    #[serde(default, with = "role_name_opt")]
    role: Option<Role>,
}

impl From<OutputRepr> for OutputSpec {
    fn from(r: OutputRepr) -> Self {
        Self {
            role: r.role.unwrap_or_else(|| Role::implied_by(&r.name)),
            name: r.name,
            node: r.node,
        }
    }
}

mod role_name {
    use overparam_base::Role;
    use serde::Serializer;
    pub fn serialize<S: Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.name())
    }
}

mod role_name_opt {
    use overparam_base::Role;
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => Role::from_name(&s).map(Some).ok_or_else(|| {
                <D::Error as serde::de::Error>::custom(format!("unknown output role `{s}`"))
            }),
        }
    }
}

/// The name by which nodes refer to the network input.
pub const INPUT: &str = "input";
/// Largest channel count, height or width a spec may declare (specs come from files).
pub const MAX_DIM: usize = 1 << 16;
/// Largest kernel, stride, dilation or padding.
pub const MAX_WINDOW: usize = 1 << 10;
/// Largest flattened feature count (linear layers).
pub const MAX_FEATURES: usize = 1 << 24;
/// Largest activation tensor of one image (input included), in elements: 2^28 f32 are 1 GiB.
/// Every dimension within [`MAX_DIM`] still multiplies out to far more than a run (or the
/// reference executor) can allocate, so specs are refused here, before anything is allocated.
pub const MAX_ACTIVATION: usize = 1 << 28;
/// Most inputs one node may take (concatenation).
pub const MAX_INPUTS: usize = 1 << 10;

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
    /// Builder name, e.g. `resnet50_cifar`, or `imported:<file>` for an imported network.
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

/// Per-node activation shape of one image: `[C, H, W]` for feature maps, `[F]` after
/// flatten/linear.
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
                    params: n.params.clone(),
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

    /// A classifier's class count: the width of its class-logits output, when that is a
    /// linear layer (builders and imported classifiers alike).
    pub fn classifier_classes(&self) -> Option<usize> {
        let out = self
            .outputs
            .iter()
            .find(|o| o.role == Role::ClassLogits)
            .or_else(|| self.outputs.first())?;
        match &self.nodes.iter().find(|n| n.name == out.node)?.op {
            Op::Linear(l) => Some(l.out_features),
            _ => None,
        }
    }

    /// Whether some output is a dense task (segmentation, depth, normals): the model is
    /// evaluated and trained on the NYUv2 layout rather than as a classifier.
    pub fn has_dense_outputs(&self) -> bool {
        self.outputs.iter().any(|o| o.role.task().is_some())
    }

    /// The outputs with a role, in spec order.
    pub fn outputs_with(&self, role: Role) -> impl Iterator<Item = &OutputSpec> {
        self.outputs.iter().filter(move |o| o.role == role)
    }
}

impl<C: ConvLike> Graph<C> {
    pub fn node(&self, name: &str) -> Option<&Node<C>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Checks names, wiring and shapes; returns the activation shape of every
    /// node (each op's own shape rule, [`crate::ops::OpShape::infer`]).
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
                    Some(s) => ins.push(s.as_slice()),
                    None => {
                        return err(format!(
                            "node `{}` reads `{i}`, which is not defined before it",
                            n.name
                        ));
                    }
                }
            }
            let (lo, hi) = n.op.arity();
            if ins.len() < lo || ins.len() > hi.min(MAX_INPUTS) {
                let want = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo} or more")
                };
                return err(format!(
                    "node `{}` ({}) takes {want} input(s), got {}",
                    n.name,
                    n.op.kind(),
                    ins.len()
                ));
            }
            let out = n.op.infer(&n.name, &ins)?;
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

    /// Every output's shape fits its role (part of `validate`, after everything else).
    pub fn check_roles(&self) -> Result<()> {
        let shapes = self.infer_shapes()?;
        for o in &self.outputs {
            o.role
                .check_shape(&shapes[&o.node])
                .map_err(|m| Error::Spec(format!("output `{}`: {m}", o.name)))?;
        }
        Ok(())
    }

    /// MACs per node at the spec's input size (params are counted from the layout).
    pub fn node_macs(&self) -> Result<HashMap<String, usize>> {
        let shapes = self.infer_shapes()?;
        let mut out = HashMap::new();
        for n in &self.nodes {
            let ins: Vec<&[usize]> = n.inputs.iter().map(|i| shapes[i].as_slice()).collect();
            out.insert(n.name.clone(), n.op.macs(&ins, &shapes[&n.name]));
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
        self.infer_shapes()?;
        self.check_roles()
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
        crate::layout::train_layout(self)?;
        self.check_roles()
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

    #[test]
    fn specs_without_roles_or_windows_as_pairs_still_load() {
        // A conv and an output as written before roles, dilation and non-square windows.
        let conv = r#"{"in_channels":3,"out_channels":8,"kernel":3,"stride":1,"padding":1,"groups":1,"bias":true}"#;
        let s: ConvShape = serde_json::from_str(conv).unwrap();
        assert_eq!(
            s,
            ConvShape {
                bias: true,
                ..ConvShape::new(3, 8, 3, 1)
            }
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), conv);
        let o: OutputSpec = serde_json::from_str(r#"{"name":"depth","node":"d"}"#).unwrap();
        assert_eq!(o.role, Role::Depth);
        let o: OutputSpec =
            serde_json::from_str(r#"{"name":"y","node":"d","role":"normals"}"#).unwrap();
        assert_eq!(o.role, Role::Normals);
        let e = serde_json::from_str::<OutputSpec>(r#"{"name":"y","node":"d","role":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown output role `x`"), "{e}");
    }

    #[test]
    fn conv_geometry_covers_dilation_and_asymmetric_pads() {
        let s = ConvShape {
            kernel: [1, 3],
            padding: [0, 1, 0, 2],
            dilation: [1, 2],
            ..ConvShape::new(4, 4, 3, 1)
        };
        // Width: 7 + 1 + 2 − 2·2 − 1 + 1 = 6.
        assert_eq!(s.out_size(5, 7), Some((5, 6)));
        assert!(!s.is_centred());
        assert_eq!(s.describe(), "1×3 s1 p0,1,0,2 d1,2");
        let same = ConvShape {
            dilation: [2, 2],
            padding: [2; 4],
            ..ConvShape::new(4, 4, 3, 1)
        };
        assert!(same.is_centred());
        assert_eq!(same.out_size(5, 5), Some((5, 5)));
    }
}
