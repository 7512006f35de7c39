//! Parameter layouts: every tensor a method creates, by name and shape, declared once.
//! The train crate creates exactly these tensors; checkpoints are checked against them.
//!
//! # Naming convention (PyTorch-compatible)
//!
//! - `plain`: torchvision's names: `<conv>.weight` (`<conv>.bias` if the conv has one) and the
//!   following BN under its own name: `<bn>.weight|bias|running_mean|running_var|num_batches_tracked`
//!   (e.g. `layer1.0.conv1.weight`, `layer1.0.bn1.running_var`, `layer1.0.downsample.1.weight`).
//! - `repvgg` replaces a conv and its BN with the RepVGG reference names under the conv's name:
//!   `<conv>.rbr_dense.conv.weight`, `<conv>.rbr_dense.bn.*`, `<conv>.rbr_1x1.conv.weight`,
//!   `<conv>.rbr_1x1.bn.*` (only for k > 1), `<conv>.rbr_identity.*` (a BN; only if stride 1,
//!   in = out).
//! - `qarepvgg` (YOLOv6's `QARepVGGBlock` names): `<conv>.rbr_dense.conv.weight`,
//!   `<conv>.rbr_dense.bn.*`, `<conv>.rbr_1x1.weight` (no BN, k > 1), the identity has no
//!   parameters, and the post-sum BN is `<conv>.bn.*`.
//! - `fnl`, `sfo`: `<conv>.U`, `<conv>.M`, `<conv>.V` (plus `<conv>.bias` if the conv has one)
//!   next to the block's usual BN. Grouped convs get a leading group dimension. Shared SFO
//!   head factors are `<group>.U` / `<group>.V`, and each head keeps `<conv>.M` (and `<conv>.U`
//!   when output widths differ).
//! - Deploy: `<conv>.weight`, `<conv>.bias` for every conv; `<linear>.weight|bias`; an
//!   affine's `weight|bias` (scale, shift), a transposed conv's `weight|bias`, and an
//!   elementwise op's constant `value`.
//! - `<conv>` is the node's tensor prefix ([`crate::spec::Node::prefix`]): its name, or for
//!   an imported node the PyTorch module path the exporter kept.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::method::{Method, has_identity};
use crate::spec::{BatchNorm, ConvShape, DeploySpec, Op, TrainConv, TrainSpec};

/// What a tensor is; decides its init, optimiser treatment and on-disk dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    ConvWeight,
    Bias,
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
    /// `num_batches_tracked`: an i64 scalar on disk, as PyTorch writes it.
    BnCount,
    FactorU,
    FactorM,
    FactorV,
    LinearWeight,
    /// A ConvTranspose kernel `[I, O/g, kh, kw]`.
    TransposedWeight,
    /// A constant operand of an elementwise op (never trained).
    Constant,
}

impl ParamKind {
    /// Buffers are state, not trained parameters.
    pub fn is_buffer(self) -> bool {
        matches!(
            self,
            ParamKind::BnMean | ParamKind::BnVar | ParamKind::BnCount | ParamKind::Constant
        )
    }
    pub fn is_factor(self) -> bool {
        matches!(
            self,
            ParamKind::FactorU | ParamKind::FactorM | ParamKind::FactorV
        )
    }
    /// Ordinary weight decay applies (not to BN, biases or factors, which get Frobenius decay).
    pub fn takes_weight_decay(self) -> bool {
        matches!(
            self,
            ParamKind::ConvWeight | ParamKind::LinearWeight | ParamKind::TransposedWeight
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    pub fn new(name: String, shape: Vec<usize>, kind: ParamKind) -> Self {
        Self { name, shape, kind }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The five tensors of a PyTorch `BatchNorm2d` named `prefix`.
pub fn bn_params(prefix: &str, channels: usize) -> Vec<ParamSpec> {
    use ParamKind::*;
    [
        ("weight", BnWeight),
        ("bias", BnBias),
        ("running_mean", BnMean),
        ("running_var", BnVar),
    ]
    .into_iter()
    .map(|(n, k)| ParamSpec::new(format!("{prefix}.{n}"), vec![channels], k))
    .chain(std::iter::once(ParamSpec::new(
        format!("{prefix}.num_batches_tracked"),
        vec![],
        BnCount,
    )))
    .collect()
}

/// With a leading group dimension only when groups > 1.
fn grouped(g: usize, shape: &[usize]) -> Vec<usize> {
    if g == 1 {
        shape.to_vec()
    } else {
        std::iter::once(g).chain(shape.iter().copied()).collect()
    }
}

/// Shapes of the SFO factors `(U, M, V)` for one conv: W = U·M·V on the O×(I·kh·kw) view.
pub fn sfo_shapes(s: &ConvShape, rank: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let g = s.groups;
    let o = s.out_channels / g;
    (
        grouped(g, &[o, rank]),
        grouped(g, &[rank, rank]),
        grouped(g, &[rank, s.fan_in()]),
    )
}

/// Shapes of the FNL factors `(U, M, V)` for one conv: Ŵ = U·M·Vᵀ, Ŵ ∈ R^{(O·kh)×(I·kw)}
/// (rows (o, u), columns (i, v); the square (O·k)×(I·k) of Khodak et al. for k×k kernels).
pub fn fnl_shapes(s: &ConvShape, rank: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let g = s.groups;
    let (o, i) = (s.out_channels / g, s.in_channels / g);
    let [kh, kw] = s.kernel;
    (
        grouped(g, &[o * kh, rank]),
        grouped(g, &[rank, rank]),
        grouped(g, &[i * kw, rank]),
    )
}

/// The tensor names a train conv uses for its (unshared or shared) factors.
pub fn factor_names(node: &str, method: &Method) -> (String, String, String) {
    match method {
        Method::Sfo {
            share: Some(sh), ..
        } => (
            if sh.share_u {
                format!("{}.U", sh.group)
            } else {
                format!("{node}.U")
            },
            format!("{node}.M"),
            format!("{}.V", sh.group),
        ),
        _ => (
            format!("{node}.U"),
            format!("{node}.M"),
            format!("{node}.V"),
        ),
    }
}

/// Every tensor of one train-time conv node.
pub fn conv_params(node: &str, c: &TrainConv) -> Vec<ParamSpec> {
    use ParamKind::*;
    let s = &c.shape;
    let o = s.out_channels;
    let mut out = Vec::new();
    let plain_tail = |out: &mut Vec<ParamSpec>, bn: &Option<BatchNorm>| {
        if s.bias {
            out.push(ParamSpec::new(format!("{node}.bias"), vec![o], Bias));
        }
        if let Some(bn) = bn {
            out.extend(bn_params(&bn.name, o));
        }
    };
    match &c.method {
        Method::Plain => {
            out.push(ParamSpec::new(
                format!("{node}.weight"),
                s.weight_shape().to_vec(),
                ConvWeight,
            ));
            plain_tail(&mut out, &c.bn);
        }
        Method::Repvgg | Method::Qarepvgg => {
            let qa = matches!(c.method, Method::Qarepvgg);
            out.push(ParamSpec::new(
                format!("{node}.rbr_dense.conv.weight"),
                s.weight_shape().to_vec(),
                ConvWeight,
            ));
            out.extend(bn_params(&format!("{node}.rbr_dense.bn"), o));
            if !s.is_1x1() {
                let w1 = vec![o, s.in_channels / s.groups, 1, 1];
                if qa {
                    out.push(ParamSpec::new(
                        format!("{node}.rbr_1x1.weight"),
                        w1,
                        ConvWeight,
                    ));
                } else {
                    out.push(ParamSpec::new(
                        format!("{node}.rbr_1x1.conv.weight"),
                        w1,
                        ConvWeight,
                    ));
                    out.extend(bn_params(&format!("{node}.rbr_1x1.bn"), o));
                }
            }
            if has_identity(s) && !qa {
                out.extend(bn_params(&format!("{node}.rbr_identity"), o));
            }
            if qa {
                out.extend(bn_params(&format!("{node}.bn"), o));
            }
        }
        Method::Fnl { rank } | Method::Sfo { rank, .. } => {
            let (u, m, v) = if matches!(c.method, Method::Fnl { .. }) {
                fnl_shapes(s, *rank)
            } else {
                sfo_shapes(s, *rank)
            };
            let (un, mn, vn) = factor_names(node, &c.method);
            out.push(ParamSpec::new(un, u, FactorU));
            out.push(ParamSpec::new(mn, m, FactorM));
            out.push(ParamSpec::new(vn, v, FactorV));
            plain_tail(&mut out, &c.bn);
        }
    }
    out
}

/// The tensors of a deploy conv: `<prefix>.weight`, `<prefix>.bias`.
pub fn deploy_conv_params(prefix: &str, s: &ConvShape) -> Vec<ParamSpec> {
    vec![
        ParamSpec::new(
            format!("{prefix}.weight"),
            s.weight_shape().to_vec(),
            ParamKind::ConvWeight,
        ),
        ParamSpec::new(
            format!("{prefix}.bias"),
            vec![s.out_channels],
            ParamKind::Bias,
        ),
    ]
}

/// The tensors a non-conv node owns (linear layers, affines, constants, transposed convs),
/// from its op's own rule, under the node's prefix.
fn op_params<C: crate::spec::ConvLike>(
    n: &crate::spec::Node<C>,
    shapes: &std::collections::HashMap<String, crate::spec::ActShape>,
) -> Vec<ParamSpec> {
    let ins: Vec<&[usize]> = n.inputs.iter().map(|i| shapes[i].as_slice()).collect();
    n.op.shape_rules()
        .map_or_else(Vec::new, |r| r.params(n.prefix(), &ins))
}

/// The tensors of one train-time node.
pub fn train_node_params(
    n: &crate::spec::Node<TrainConv>,
    shapes: &std::collections::HashMap<String, crate::spec::ActShape>,
) -> Vec<ParamSpec> {
    match &n.op {
        Op::Conv(c) => conv_params(n.prefix(), c),
        _ => op_params(n, shapes),
    }
}

/// The tensors of one deploy-time node.
pub fn deploy_node_params(
    n: &crate::spec::Node<crate::spec::DeployConv>,
    shapes: &std::collections::HashMap<String, crate::spec::ActShape>,
) -> Vec<ParamSpec> {
    match &n.op {
        Op::Conv(c) => deploy_conv_params(n.prefix(), &c.shape),
        _ => op_params(n, shapes),
    }
}

/// Every tensor of a train spec, in node order; shared tensors appear once (their first
/// declaration), and declarations that disagree on shape are an error.
pub fn train_layout(spec: &TrainSpec) -> Result<Vec<ParamSpec>> {
    let shapes = spec.infer_shapes()?;
    let mut out: Vec<ParamSpec> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for n in &spec.nodes {
        for p in train_node_params(n, &shapes) {
            if let Some(&i) = seen.get(&p.name) {
                if out[i].shape != p.shape || out[i].kind != p.kind {
                    return Err(Error::Spec(format!(
                        "tensor `{}` is declared twice with different shapes: {:?} and {:?} (node `{}`)",
                        p.name, out[i].shape, p.shape, n.name
                    )));
                }
                continue;
            }
            seen.insert(p.name.clone(), out.len());
            out.push(p);
        }
    }
    Ok(out)
}

/// Every tensor of a deploy spec (empty when the spec's shapes do not check: validate it
/// first).
pub fn deploy_layout(spec: &DeploySpec) -> Vec<ParamSpec> {
    let Ok(shapes) = spec.infer_shapes() else {
        return vec![];
    };
    spec.nodes
        .iter()
        .flat_map(|n| deploy_node_params(n, &shapes))
        .collect()
}

/// Trainable parameter count (buffers excluded), as PyTorch's `sum(p.numel() for p in parameters())`.
pub fn param_count(layout: &[ParamSpec]) -> usize {
    layout
        .iter()
        .filter(|p| !p.kind.is_buffer())
        .map(ParamSpec::numel)
        .sum()
}
