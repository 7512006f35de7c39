//! ONNX import: a decoded ONNX graph ([`ir::OnnxGraph`]) becomes a [`DeploySpec`] and its
//! weights, node by node through each op's importer (registered in [`IMPORTERS`], written in
//! the op's own file under `crate::ops`).
//!
//! What it reads is what `torch.onnx.export` writes with either exporter: BatchNorm already
//! folded into convs (a BatchNormalization left over is folded into the conv before it, or
//! becomes a per-channel affine), SiLU as `x·Sigmoid(x)`, global pooling as ReduceMean,
//! Resize sizes computed by Shape/Gather/Concat chains (folded to constants here), MatMul + Add
//! for linear layers. Anything else is refused with the node, its op type and the supported
//! set, and nothing is written.
//!
//! Names: nodes keep the ONNX node names; tensors keep PyTorch's module path where the
//! exporter kept it (the dynamo exporter's `layer1.0.conv1.weight`, or the TorchScript
//! exporter's scope `/layer1/layer1.0/conv1/Conv`), and get a name made from the node's
//! otherwise.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use overparam_base::Role;

use crate::error::{Error, Result};
use crate::fold::Weights;
use crate::ops::{self, NodeCx};
use crate::spec::{
    ActShape, DeployConv, DeploySpec, INPUT, InputSpec, Node, Normalization, Op, OutputSpec,
};
use crate::tensor::Tensor;

mod constant;
pub mod ir;

pub use ir::{Attr, Data, OnnxGraph, OnnxNode, OnnxTensor, ValueInfo};

/// An op type's importer.
pub(crate) type Importer = fn(&OnnxNode, &mut ImportCx) -> Result<()>;

/// ONNX op type → importer: the one list of what import takes (besides Identity, Dropout,
/// Constant and the constant-folded shape arithmetic, handled by the driver).
pub(crate) const IMPORTERS: &[(&str, Importer)] = &[
    ("Conv", ops::conv::import),
    ("ConvTranspose", ops::conv_transpose::import),
    ("BatchNormalization", ops::affine::import_batch_norm),
    ("Relu", ops::activation::import_relu),
    ("LeakyRelu", ops::activation::import_leaky_relu),
    ("Clip", ops::activation::import_clip),
    ("Sigmoid", ops::activation::import_sigmoid),
    ("HardSigmoid", ops::activation::import_hard_sigmoid),
    ("HardSwish", ops::activation::import_hard_swish),
    ("Add", ops::binary::import),
    ("Sub", ops::binary::import),
    ("Mul", ops::binary::import),
    ("Div", ops::binary::import),
    ("Concat", ops::concat::import),
    ("MaxPool", ops::pool::import_max_pool),
    ("AveragePool", ops::pool::import_avg_pool),
    ("GlobalAveragePool", ops::pool::import_global_avg_pool),
    ("ReduceMean", ops::pool::import_reduce_mean),
    ("Flatten", ops::flatten::import),
    ("Reshape", ops::flatten::import_reshape),
    ("Gemm", ops::linear::import_gemm),
    ("MatMul", ops::linear::import_matmul),
    ("Resize", ops::resize::import),
    ("Upsample", ops::resize::import),
];

/// Op types the driver handles itself.
const PASS_THROUGH: &[&str] = &["Identity", "Dropout", "Constant"];

/// Every op type import takes, for messages.
pub fn supported_ops() -> String {
    let mut all: Vec<&str> = IMPORTERS
        .iter()
        .map(|(t, _)| *t)
        .chain(PASS_THROUGH.iter().copied())
        .collect();
    all.sort();
    all.dedup();
    all.join(", ")
}

/// The oldest and newest default-domain opsets import reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=23;

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// `N, C, H, W` for a graph whose input shape is dynamic (or to check a static one).
    pub input_shape: Option<Vec<usize>>,
    /// Roles by output name (`--output NAME=ROLE`); other outputs get the role their name
    /// implies ([`Role::implied_by`]).
    pub roles: Vec<(String, Role)>,
    /// The spec's model name.
    pub model: String,
    /// The normalisation the network expects its inputs in (`(x/255 − mean)/std`).
    pub normalize: Option<Normalization>,
}

/// An imported network.
#[derive(Clone, Debug)]
pub struct Imported {
    pub spec: DeploySpec,
    pub weights: Weights<f32>,
    /// The batch size the graph declares (or `--input-shape` gave).
    pub batch: usize,
    /// What import did beyond one node per ONNX node (folds, fusions, dropped nodes).
    pub notes: Vec<String>,
}

/// What an ONNX tensor is during import. Initializers are borrowed from the graph (a large
/// model's weights are not copied twice); folded constants are owned.
#[derive(Clone, Debug)]
enum Value<'g> {
    /// The output of a spec node (or the input).
    Act(String),
    Const(Cow<'g, OnnxTensor>),
}

/// A constant weight tensor read from the graph, as f32.
pub(crate) struct FloatTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// The state importers work on.
pub struct ImportCx<'g> {
    g: &'g OnnxGraph,
    values: HashMap<String, Value<'g>>,
    nodes: Vec<Node<DeployConv>>,
    weights: Weights<f32>,
    shapes: HashMap<String, ActShape>,
    /// Consumers of each ONNX tensor (a graph output counts as one).
    uses: HashMap<String, usize>,
    /// The ONNX node reading each tensor, when exactly one does.
    reader: HashMap<String, usize>,
    skip: HashSet<usize>,
    names: HashSet<String>,
    prefixes: HashSet<String>,
    batch: usize,
    notes: Vec<String>,
}

impl<'g> ImportCx<'g> {
    pub(crate) fn bad(&self, n: &OnnxNode, message: String) -> Error {
        Error::Import {
            node: n.name.clone(),
            op_type: n.op_type.clone(),
            message,
        }
    }
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }
    pub(crate) fn opset(&self) -> i64 {
        self.g.opset
    }
    fn value(&self, n: &OnnxNode, i: usize) -> Result<&Value<'g>> {
        let name = n
            .inputs
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.bad(n, format!("input {i} is missing")))?;
        self.values.get(name).ok_or_else(|| {
            self.bad(
                n,
                format!("input `{name}` is neither an initializer nor the output of an earlier node (a missing initializer?)"),
            )
        })
    }
    pub(crate) fn is_const(&self, n: &OnnxNode, i: usize) -> bool {
        matches!(self.value(n, i), Ok(Value::Const(_)))
    }
    /// Input `i` as a feature map: the spec node computing it and its per-image shape.
    pub(crate) fn act(&self, n: &OnnxNode, i: usize) -> Result<(String, ActShape)> {
        match self.value(n, i)? {
            Value::Act(node) => Ok((node.clone(), self.shapes[node].clone())),
            Value::Const(_) => Err(self.bad(
                n,
                format!(
                    "input `{}` is a constant where a feature map is expected",
                    n.inputs[i]
                ),
            )),
        }
    }
    pub(crate) fn constant(&self, n: &OnnxNode, i: usize) -> Result<&OnnxTensor> {
        match self.value(n, i)? {
            Value::Const(t) => Ok(t),
            Value::Act(_) => Err(self.bad(
                n,
                format!(
                    "input `{}` must be a constant (an initializer), it is computed from the image",
                    n.inputs[i]
                ),
            )),
        }
    }
    /// Input `i` as a finite float constant (a weight).
    pub(crate) fn weight(&self, n: &OnnxNode, i: usize) -> Result<FloatTensor> {
        let t = self.constant(n, i)?;
        let data = t.floats();
        if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
            return Err(self.bad(
                n,
                format!("weight `{}` holds a non-finite value ({bad})", n.inputs[i]),
            ));
        }
        Ok(FloatTensor {
            dims: t.dims.clone(),
            data,
        })
    }
    pub(crate) fn ints(&self, n: &OnnxNode, i: usize) -> Result<Vec<i64>> {
        Ok(self.constant(n, i)?.ints())
    }
    pub(crate) fn floats(&self, n: &OnnxNode, i: usize) -> Result<Vec<f32>> {
        Ok(self.constant(n, i)?.floats())
    }
    pub(crate) fn scalar(&self, n: &OnnxNode, i: usize) -> Result<f32> {
        let v = self.floats(n, i)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.bad(n, format!("input {i} has {} values, expected one", v.len()))),
        }
    }

    /// A tensor prefix from input `i`'s initializer name when the exporter kept PyTorch's
    /// (`layer1.0.conv1.weight` → `layer1.0.conv1`), else from a TorchScript scope in the node
    /// name (`/layer1/layer1.0/Conv` → `layer1.0`).
    pub(crate) fn prefix_from_weight(&self, n: &OnnxNode, i: usize) -> Option<String> {
        if let Some(w) = n.inputs.get(i)
            && let Some(p) = w.strip_suffix(".weight")
            && torch_like(p)
        {
            return Some(p.to_string());
        }
        scope_of(&n.name)
    }

    fn unique(set: &mut HashSet<String>, base: String) -> String {
        if set.insert(base.clone()) {
            return base;
        }
        (1..)
            .map(|k| format!("{base}_{k}"))
            .find(|c| set.insert(c.clone()))
            .expect("a free name")
    }

    fn add_node(
        &mut self,
        n: &OnnxNode,
        name: String,
        op: Op<DeployConv>,
        inputs: &[&str],
        prefix: Option<String>,
        weights: Vec<(&str, Tensor<f32>)>,
    ) -> Result<String> {
        let ins: Vec<&[usize]> = inputs.iter().map(|i| self.shapes[*i].as_slice()).collect();
        let (lo, hi) = op.arity();
        if ins.len() < lo || ins.len() > hi {
            return Err(self.bad(
                n,
                format!("takes {lo}..={hi} feature maps, got {}", ins.len()),
            ));
        }
        let out = op
            .infer(&name, &ins)
            .map_err(|e| self.bad(n, e.to_string()))?;
        let prefix = if weights.is_empty() {
            None
        } else {
            let base = prefix.unwrap_or_else(|| sanitize(&name));
            let p = Self::unique(&mut self.prefixes, base);
            Some(p)
        };
        if let Some(p) = &prefix {
            let no_inputs: [String; 0] = [];
            let cx = NodeCx {
                name: &name,
                prefix: p,
                inputs: &no_inputs,
                ins: &ins,
                out: &out,
            };
            let declared = match &op {
                Op::Conv(c) => crate::layout::deploy_conv_params(p, &c.shape),
                o => o.shape_rules().expect("not a conv").params(p, &ins),
            };
            for (leaf, t) in weights {
                let full = cx.param(leaf);
                let spec = declared.iter().find(|d| d.name == full).ok_or_else(|| {
                    self.bad(
                        n,
                        format!("internal: tensor `{full}` is not in the op's layout"),
                    )
                })?;
                if spec.shape != t.shape {
                    return Err(self.bad(
                        n,
                        format!(
                            "tensor `{full}` has shape {:?}, the op needs {:?}",
                            t.shape, spec.shape
                        ),
                    ));
                }
                self.weights.insert(full, t);
            }
        }
        self.shapes.insert(name.clone(), out);
        self.nodes.push(Node {
            params: prefix.filter(|p| *p != name),
            ..Node::new(name.clone(), inputs, op)
        });
        Ok(name)
    }

    /// Adds the spec node for ONNX node `n`, which computes its first output.
    pub(crate) fn push(
        &mut self,
        n: &OnnxNode,
        op: Op<DeployConv>,
        inputs: &[&str],
        prefix: Option<String>,
        weights: Vec<(&str, Tensor<f32>)>,
    ) -> Result<()> {
        let base = if n.name.is_empty() || n.name == INPUT {
            format!("{}_{}", n.op_type, self.nodes.len())
        } else {
            n.name.clone()
        };
        let name = Self::unique(&mut self.names, base);
        let name = self.add_node(n, name, op, inputs, prefix, weights)?;
        self.values.insert(n.outputs[0].clone(), Value::Act(name));
        Ok(())
    }

    /// Adds an intermediate spec node for `n` (named `<node>/<suffix>`), returning its name.
    pub(crate) fn push_hidden(
        &mut self,
        n: &OnnxNode,
        suffix: &str,
        op: Op<DeployConv>,
        inputs: &[&str],
    ) -> Result<String> {
        let base = format!(
            "{}/{suffix}",
            if n.name.is_empty() {
                &n.op_type
            } else {
                &n.name
            }
        );
        let name = Self::unique(&mut self.names, base);
        self.add_node(n, name, op, inputs, None, vec![])
    }

    /// `n`'s first output is its input `i`.
    pub(crate) fn alias(&mut self, n: &OnnxNode, i: usize) {
        if let Ok(v) = self.value(n, i) {
            let v = v.clone();
            self.values.insert(n.outputs[0].clone(), v);
        }
    }

    /// Another ONNX tensor (a fused node's output) is what `n` computes.
    pub(crate) fn alias_output(&mut self, tensor: &str, n: &OnnxNode) {
        if let Some(v) = self.values.get(&n.outputs[0]).cloned() {
            self.values.insert(tensor.to_string(), v);
        }
    }

    /// Folds an eval-mode BatchNormalization (`scale`, `shift` per channel) into the conv that
    /// computes its input, when nothing else reads that conv's output. Returns whether it did.
    pub(crate) fn fold_into_conv(
        &mut self,
        n: &OnnxNode,
        x: &str,
        scale: &[f64],
        shift: &[f64],
    ) -> Result<bool> {
        if self.uses.get(&n.inputs[0]).copied() != Some(1) {
            return Ok(false);
        }
        let Some(node) = self.nodes.iter().find(|m| m.name == x) else {
            return Ok(false);
        };
        let Op::Conv(c) = &node.op else {
            return Ok(false);
        };
        if c.shape.out_channels != scale.len() {
            return Ok(false);
        }
        let prefix = node.prefix().to_string();
        let (wn, bn) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let o = scale.len();
        let w = self.weights.get_mut(&wn).expect("conv weight");
        let per = w.numel() / o;
        for (ch, chunk) in w.data.chunks_mut(per).enumerate() {
            chunk
                .iter_mut()
                .for_each(|v| *v = (*v as f64 * scale[ch]) as f32);
        }
        let b = self.weights.get_mut(&bn).expect("conv bias");
        for (ch, v) in b.data.iter_mut().enumerate() {
            *v = (*v as f64 * scale[ch] + shift[ch]) as f32;
        }
        self.notes.push(format!(
            "BatchNormalization `{}` folded into conv `{x}`",
            n.name
        ));
        self.values
            .insert(n.outputs[0].clone(), Value::Act(x.to_string()));
        Ok(true)
    }

    /// When `n`'s output is read only by an `Add` of a constant with `o` values, takes that
    /// Add over (it is skipped) and returns its constant and its output tensor.
    pub(crate) fn absorb_bias_add(
        &mut self,
        n: &OnnxNode,
        o: usize,
    ) -> Result<Option<(Vec<f32>, String)>> {
        let out = &n.outputs[0];
        if self.uses.get(out).copied() != Some(1) {
            return Ok(None);
        }
        let Some(&j) = self.reader.get(out) else {
            return Ok(None);
        };
        let add = &self.g.nodes[j];
        if add.op_type != "Add" || add.inputs.len() != 2 {
            return Ok(None);
        }
        let other = if add.inputs[0] == *out { 1 } else { 0 };
        let Some(Value::Const(c)) = self.values.get(&add.inputs[other]) else {
            return Ok(None);
        };
        if c.len() != o || c.dims.iter().product::<usize>() != o || c.dims.len() > 2 {
            return Ok(None);
        }
        let bias = c.floats();
        if bias.iter().any(|v| !v.is_finite()) {
            return Err(self.bad(add, "bias holds a non-finite value".into()));
        }
        self.skip.insert(j);
        self.notes.push(format!(
            "MatMul `{}` and Add `{}` imported as one linear layer",
            n.name, add.name
        ));
        Ok(Some((bias, add.outputs[0].clone())))
    }
}

/// `a.b_1.c`: identifier segments joined by dots, as PyTorch module paths are.
fn torch_like(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The module path in a TorchScript-exporter node name. Its scope segments are cumulative
/// module paths ending in the op (`/layer1/layer1.0/Conv`), so the module is the segment
/// before the op (`layer1.0`).
fn scope_of(node: &str) -> Option<String> {
    let segs: Vec<&str> = node.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() < 2 || !node.starts_with('/') {
        return None;
    }
    let scope = segs[segs.len() - 2];
    torch_like(scope).then(|| scope.to_string())
}

/// A tensor prefix from a node name: characters other than letters, digits, `_` and `.`
/// become `_`.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '_' || c == '.').to_string();
    if s.is_empty() { "node".into() } else { s }
}

/// Imports a decoded ONNX graph.
pub fn import(g: &OnnxGraph, opts: &ImportOptions) -> Result<Imported> {
    let graph_err = |m: String| Error::ImportGraph(m);
    if !OPSETS.contains(&g.opset) {
        return Err(graph_err(format!(
            "opset {} of the default domain is not supported (opsets {}–{} are; re-export with opset_version=17)",
            g.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let inputs: Vec<&ValueInfo> = g
        .inputs
        .iter()
        .filter(|i| !g.initializers.contains_key(&i.name))
        .collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        many => {
            let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
            return Err(graph_err(format!(
                "the model has {} inputs ({}); import takes a model with one image input",
                many.len(),
                names.join(", ")
            )));
        }
    };
    if !input.float {
        return Err(graph_err(format!(
            "input `{}` is not a float tensor",
            input.name
        )));
    }
    let dims: Vec<usize> = match &opts.input_shape {
        Some(s) => {
            if s.len() != input.dims.len() {
                return Err(graph_err(format!(
                    "--input-shape has {} dimensions, input `{}` has {}",
                    s.len(),
                    input.name,
                    input.dims.len()
                )));
            }
            for (k, (&given, declared)) in s.iter().zip(&input.dims).enumerate() {
                if let Some(d) = declared
                    && *d != given
                {
                    return Err(graph_err(format!(
                        "--input-shape gives {given} for dimension {k} of `{}`, which the graph fixes at {d}",
                        input.name
                    )));
                }
            }
            s.clone()
        }
        None => input
            .dims
            .iter()
            .enumerate()
            .map(|(k, d)| {
                d.ok_or_else(|| {
                    graph_err(format!(
                        "input `{}` has a dynamic dimension {k} ({}); give the shape with --input-shape N,C,H,W",
                        input.name,
                        input
                            .dims
                            .iter()
                            .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
                            .collect::<Vec<_>>()
                            .join("×")
                    ))
                })
            })
            .collect::<Result<_>>()?,
    };
    if dims.len() != 4 || dims.contains(&0) {
        return Err(graph_err(format!(
            "input `{}` is {dims:?}; import takes one N×C×H×W image tensor",
            input.name
        )));
    }
    let mut cx = ImportCx {
        g,
        values: HashMap::new(),
        nodes: vec![],
        weights: Weights::new(),
        shapes: HashMap::from([(INPUT.to_string(), dims[1..].to_vec())]),
        uses: HashMap::new(),
        reader: HashMap::new(),
        skip: HashSet::new(),
        names: HashSet::from([INPUT.to_string()]),
        prefixes: HashSet::new(),
        batch: dims[0],
        notes: vec![],
    };
    for (name, t) in &g.initializers {
        cx.values
            .insert(name.clone(), Value::Const(Cow::Borrowed(t)));
    }
    cx.values
        .insert(input.name.clone(), Value::Act(INPUT.to_string()));
    for (j, n) in g.nodes.iter().enumerate() {
        for i in n.inputs.iter().filter(|s| !s.is_empty()) {
            *cx.uses.entry(i.clone()).or_default() += 1;
            cx.reader.insert(i.clone(), j);
        }
    }
    for o in &g.outputs {
        *cx.uses.entry(o.name.clone()).or_default() += 1;
    }
    let importers: HashMap<&str, Importer> = IMPORTERS.iter().copied().collect();
    for (j, n) in g.nodes.iter().enumerate() {
        if cx.skip.contains(&j) {
            continue;
        }
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(Error::Unsupported {
                node: n.name.clone(),
                op_type: format!("{}::{}", n.domain, n.op_type),
                supported: supported_ops(),
            });
        }
        if n.outputs.is_empty() {
            continue;
        }
        match n.op_type.as_str() {
            "Identity" | "Dropout" => {
                if n.op_type == "Dropout"
                    && n.outputs.get(1).is_some_and(|m| cx.uses.contains_key(m))
                {
                    return Err(cx.bad(n, "its mask output is used; export in eval mode".into()));
                }
                cx.value(n, 0)?;
                cx.alias(n, 0);
                continue;
            }
            "Constant" => {
                let t = constant::constant_node(n)?;
                cx.values
                    .insert(n.outputs[0].clone(), Value::Const(Cow::Owned(t)));
                continue;
            }
            _ => {}
        }
        if let Some(t) = constant::try_fold(&cx, n)? {
            cx.values
                .insert(n.outputs[0].clone(), Value::Const(Cow::Owned(t)));
            continue;
        }
        let Some(f) = importers.get(n.op_type.as_str()) else {
            return Err(Error::Unsupported {
                node: n.name.clone(),
                op_type: n.op_type.clone(),
                supported: supported_ops(),
            });
        };
        f(n, &mut cx)?;
        if !cx.values.contains_key(&n.outputs[0]) {
            return Err(cx.bad(n, "internal: the importer produced no value".into()));
        }
    }
    finish(cx, g, input, opts)
}

/// The outputs with their roles, unreachable nodes dropped, and the spec checked.
fn finish(
    cx: ImportCx,
    g: &OnnxGraph,
    input: &ValueInfo,
    opts: &ImportOptions,
) -> Result<Imported> {
    let mut notes = cx.notes;
    for (name, _) in &opts.roles {
        if !g.outputs.iter().any(|o| &o.name == name) {
            let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(Error::ImportGraph(format!(
                "--output names `{name}`, which is not an output of the model (its outputs: {})",
                names.join(", ")
            )));
        }
    }
    let mut outputs = vec![];
    for o in &g.outputs {
        let node = match cx.values.get(&o.name) {
            Some(Value::Act(node)) if node != INPUT => node.clone(),
            Some(Value::Act(_)) => {
                return Err(Error::ImportGraph(format!(
                    "output `{}` is the input itself",
                    o.name
                )));
            }
            Some(Value::Const(_)) => {
                return Err(Error::ImportGraph(format!(
                    "output `{}` is a constant, not computed from the image",
                    o.name
                )));
            }
            None => {
                return Err(Error::ImportGraph(format!(
                    "output `{}` is computed by no node",
                    o.name
                )));
            }
        };
        let role = opts
            .roles
            .iter()
            .find(|(n, _)| *n == o.name)
            .map_or_else(|| Role::implied_by(&o.name), |(_, r)| *r);
        outputs.push(OutputSpec {
            name: o.name.clone(),
            node,
            role,
        });
    }
    // Keep the nodes some output needs.
    let mut live: HashSet<String> = outputs.iter().map(|o| o.node.clone()).collect();
    for n in cx.nodes.iter().rev() {
        if live.contains(&n.name) {
            live.extend(n.inputs.iter().cloned());
        }
    }
    let mut weights = cx.weights;
    let mut nodes = vec![];
    for n in cx.nodes {
        if live.contains(&n.name) {
            nodes.push(n);
        } else {
            notes.push(format!("node `{}` feeds no output and was dropped", n.name));
            let prefix = format!("{}.", n.prefix());
            weights.retain(|k, _| !k.starts_with(&prefix));
        }
    }
    let shape = &cx.shapes[INPUT];
    let spec = DeploySpec {
        model: if opts.model.is_empty() {
            g.name.clone()
        } else {
            opts.model.clone()
        },
        input: InputSpec {
            channels: shape[0],
            height: shape[1],
            width: shape[2],
            normalize: opts.normalize.clone(),
        },
        nodes,
        outputs,
    };
    spec.validate()?;
    crate::checkpoint::check_against_layout(&crate::layout::deploy_layout(&spec), &weights)?;
    let _ = input;
    Ok(Imported {
        spec,
        weights,
        batch: cx.batch,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_exporters() {
        assert!(torch_like("layer1.0.conv1"));
        assert!(torch_like("features_3"));
        assert!(!torch_like("onnx::Conv_95"));
        assert!(!torch_like("0.weight"));
        assert_eq!(
            scope_of("/layer1/layer1.0/Conv").as_deref(),
            Some("layer1.0")
        );
        assert_eq!(scope_of("/conv1/Conv").as_deref(), Some("conv1"));
        assert_eq!(scope_of("/Add"), None);
        assert_eq!(scope_of("node_Conv_87"), None);
        assert_eq!(sanitize("/layer1/Add_1"), "layer1_Add_1");
        assert_eq!(sanitize("///"), "node");
    }
}
