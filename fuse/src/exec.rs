//! The reference executor: the [`Backend`] that runs every op's f64 (or f32) reference kernel,
//! so folds, imports and exports are checked in pure Rust. The train graph runs in eval mode
//! with its branches in feature space (RepVGG) or its kernel composed from factors (FNL,
//! SFO), i.e. the *unfolded* computation.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::fold::{Bn, Weights, compose_kernel, get};
use crate::method::{Method, has_identity};
use crate::ops::{
    self, AvgPool, Backend, BinaryKind, ConvBackend, ConvTranspose, NodeCx, Resize, Unary, Window,
};
use crate::spec::{ConvLike, ConvShape, DeployConv, Graph, INPUT, Op, TrainConv};
use crate::tensor::{Real, Tensor};

pub use crate::ops::conv::conv2d;
pub use crate::ops::resize::resize;

fn exec_err(node: &str, message: impl Into<String>) -> Error {
    Error::Exec {
        node: node.to_string(),
        message: message.into(),
    }
}

/// Eval-mode BatchNorm, computed as written, `(x − μ)/√(σ²+ε)·γ + β` (not via the folded scale).
pub fn batch_norm<F: Real>(x: &Tensor<F>, bn: &Bn<F>) -> Tensor<F> {
    let (n, c) = (x.shape[0], x.shape[1]);
    let plane = x.numel() / (n * c);
    let mut out = x.clone();
    for (i, chunk) in out.data.chunks_mut(plane).enumerate() {
        let ch = i % c;
        let denom = (bn.var[ch] + bn.eps).sqrt();
        chunk
            .iter_mut()
            .for_each(|v| *v = (*v - bn.mean[ch]) / denom * bn.gamma[ch] + bn.beta[ch]);
    }
    out
}

fn add<F: Real>(a: &Tensor<F>, b: &Tensor<F>) -> Tensor<F> {
    let mut out = a.clone();
    out.data
        .iter_mut()
        .zip(&b.data)
        .for_each(|(x, y)| *x = *x + *y);
    out
}

/// How the executor runs one conv node of a graph kind.
pub trait ConvEval<F: Real>: ConvLike {
    /// `prefix` is the node's tensor prefix ([`crate::spec::Node::prefix`]).
    fn eval(&self, prefix: &str, x: &Tensor<F>, w: &Weights<F>) -> Result<Tensor<F>>;
}

impl<F: Real> ConvEval<F> for DeployConv {
    fn eval(&self, node: &str, x: &Tensor<F>, w: &Weights<F>) -> Result<Tensor<F>> {
        let k = get(w, &format!("{node}.weight"))?;
        let b = get(w, &format!("{node}.bias"))?;
        Ok(conv2d(x, k, Some(&b.data), &self.shape))
    }
}

/// The centred 1×1 branch of a RepVGG-style block: same stride, no padding (the block is
/// centred, [`ConvShape::is_centred`]), so its tap is the dense kernel's centre.
pub fn one_by_one(s: &ConvShape) -> ConvShape {
    ConvShape {
        kernel: [1, 1],
        padding: [0; 4],
        dilation: [1, 1],
        bias: false,
        ..s.clone()
    }
}

impl<F: Real> ConvEval<F> for TrainConv {
    fn eval(&self, node: &str, x: &Tensor<F>, w: &Weights<F>) -> Result<Tensor<F>> {
        let s = &self.shape;
        let eps = self.bn.as_ref().map_or(1e-5, |b| b.eps);
        let bn_at = |prefix: &str| Bn::from_weights(w, prefix, eps);
        let conv_bn = |kernel: &Tensor<F>| -> Result<Tensor<F>> {
            let bias = if s.bias {
                Some(get(w, &format!("{node}.bias"))?.data.as_slice())
            } else {
                None
            };
            let y = conv2d(x, kernel, bias, s);
            Ok(match &self.bn {
                Some(bn) => batch_norm(&y, &Bn::from_weights(w, &bn.name, bn.eps)?),
                None => y,
            })
        };
        let one = one_by_one(s);
        match &self.method {
            Method::Plain => conv_bn(get(w, &format!("{node}.weight"))?),
            Method::Fnl { .. } | Method::Sfo { .. } => conv_bn(&compose_kernel(node, self, w)?),
            Method::Repvgg => {
                let dense = conv2d(
                    x,
                    get(w, &format!("{node}.rbr_dense.conv.weight"))?,
                    None,
                    s,
                );
                let mut y = batch_norm(&dense, &bn_at(&format!("{node}.rbr_dense.bn"))?);
                if !s.is_1x1() {
                    let w1 = get(w, &format!("{node}.rbr_1x1.conv.weight"))?;
                    let b1 = conv2d(x, w1, None, &one);
                    y = add(&y, &batch_norm(&b1, &bn_at(&format!("{node}.rbr_1x1.bn"))?));
                }
                if has_identity(s) {
                    y = add(&y, &batch_norm(x, &bn_at(&format!("{node}.rbr_identity"))?));
                }
                Ok(y)
            }
            Method::Qarepvgg => {
                let dense = conv2d(
                    x,
                    get(w, &format!("{node}.rbr_dense.conv.weight"))?,
                    None,
                    s,
                );
                let mut y = batch_norm(&dense, &bn_at(&format!("{node}.rbr_dense.bn"))?);
                if !s.is_1x1() {
                    let w1 = get(w, &format!("{node}.rbr_1x1.weight"))?;
                    y = add(&y, &conv2d(x, w1, None, &one));
                }
                if has_identity(s) {
                    y = add(&y, x);
                }
                Ok(batch_norm(&y, &bn_at(&format!("{node}.bn"))?))
            }
        }
    }
}

/// The reference [`Backend`]: every primitive is the op's naive kernel on [`Tensor`]s, with
/// an optional hook on every node's output (rounding to a reduced precision between layers).
pub struct Reference<'a, F: Real> {
    pub weights: &'a Weights<F>,
    pub after: Option<AfterHook<'a, F>>,
}

/// A hook on every node's output.
pub type AfterHook<'a, F> = &'a mut dyn FnMut(&mut Tensor<F>);

impl<F: Real> Reference<'_, F> {
    fn w(&self, cx: &NodeCx, leaf: &str) -> Result<&Tensor<F>> {
        get(self.weights, &cx.param(leaf))
    }
}

impl<F: Real> Backend for Reference<'_, F> {
    type T = Tensor<F>;
    type Error = Error;

    fn param(&mut self, cx: &NodeCx, leaf: &str) -> Result<Tensor<F>> {
        Ok(self.w(cx, leaf)?.clone())
    }
    fn unary(&mut self, _cx: &NodeCx, x: &Tensor<F>, f: Unary) -> Result<Tensor<F>> {
        let mut y = x.clone();
        y.data.iter_mut().for_each(|v| *v = f.apply(*v));
        Ok(y)
    }
    fn binary(
        &mut self,
        _cx: &NodeCx,
        a: &Tensor<F>,
        b: &Tensor<F>,
        f: BinaryKind,
    ) -> Result<Tensor<F>> {
        Ok(ops::binary::apply_broadcast(a, b, f))
    }
    fn affine(&mut self, cx: &NodeCx, x: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(ops::affine::affine(
            x,
            &self.w(cx, "weight")?.data,
            &self.w(cx, "bias")?.data,
        ))
    }
    fn conv_transpose(
        &mut self,
        cx: &NodeCx,
        x: &Tensor<F>,
        op: &ConvTranspose,
    ) -> Result<Tensor<F>> {
        Ok(ops::conv_transpose::conv_transpose(
            x,
            self.w(cx, "weight")?,
            &self.w(cx, "bias")?.data,
            op,
        ))
    }
    fn max_pool(&mut self, _cx: &NodeCx, x: &Tensor<F>, w: &Window) -> Result<Tensor<F>> {
        Ok(ops::pool::pool(x, w, None))
    }
    fn avg_pool(&mut self, _cx: &NodeCx, x: &Tensor<F>, op: &AvgPool) -> Result<Tensor<F>> {
        Ok(ops::pool::pool(x, &op.window, Some(op.count_include_pad)))
    }
    fn global_avg_pool(&mut self, _cx: &NodeCx, x: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(ops::pool::global_avg_pool(x))
    }
    fn concat(&mut self, _cx: &NodeCx, xs: &[&Tensor<F>]) -> Result<Tensor<F>> {
        Ok(ops::concat::concat(xs))
    }
    fn flatten(&mut self, _cx: &NodeCx, x: &Tensor<F>) -> Result<Tensor<F>> {
        let n = x.shape[0];
        Ok(Tensor::new(vec![n, x.numel() / n], x.data.clone()))
    }
    fn linear(&mut self, cx: &NodeCx, x: &Tensor<F>) -> Result<Tensor<F>> {
        let (w, b) = (self.w(cx, "weight")?, self.w(cx, "bias")?);
        let f = w.shape[1];
        if x.shape.len() != 2 || x.shape[1] != f {
            return Err(exec_err(
                cx.name,
                format!("input {:?}, expected [N, {f}]", x.shape),
            ));
        }
        Ok(ops::linear::linear(x, w, &b.data))
    }
    fn resize(&mut self, _cx: &NodeCx, x: &Tensor<F>, op: &Resize) -> Result<Tensor<F>> {
        Ok(resize(x, op.height, op.width, op.mode))
    }
    fn l2_norm(&mut self, _cx: &NodeCx, x: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(ops::l2norm::l2_norm(x))
    }
    fn finish<C>(&mut self, _cx: &NodeCx, _op: &Op<C>, mut y: Tensor<F>) -> Result<Tensor<F>> {
        if let Some(f) = self.after.as_mut() {
            f(&mut y);
        }
        Ok(y)
    }
}

impl<F: Real, C: ConvEval<F>> ConvBackend<C> for Reference<'_, F> {
    fn conv(&mut self, cx: &NodeCx, c: &C, x: &Tensor<F>) -> Result<Tensor<F>> {
        c.eval(cx.prefix, x, self.weights)
    }
}

/// Every node's output (and the input), keyed by node name.
pub type Activations<F> = HashMap<String, Tensor<F>>;

/// Runs one node on its (already computed) inputs.
pub fn eval_node<F: Real, C: ConvEval<F>>(
    g: &Graph<C>,
    node: &crate::spec::Node<C>,
    ins: &[&Tensor<F>],
    w: &Weights<F>,
) -> Result<Tensor<F>> {
    let shapes = g.infer_shapes()?;
    let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|i| shapes[i].as_slice()).collect();
    let cx = NodeCx {
        name: &node.name,
        prefix: node.prefix(),
        inputs: &node.inputs,
        ins: &in_shapes,
        out: &shapes[&node.name],
    };
    let mut b = Reference {
        weights: w,
        after: None,
    };
    node.op.forward(&mut b, &cx, ins)
}

/// Runs the whole graph on an NCHW batch and returns every node's output.
pub fn run_all<F: Real, C: ConvEval<F>>(
    g: &Graph<C>,
    w: &Weights<F>,
    x: &Tensor<F>,
) -> Result<Activations<F>> {
    run_all_with(g, w, x, &mut |_| {})
}

/// [`run_all`] with a hook applied to every node's output before the next node reads it (the
/// input included), e.g. rounding activations to a reduced precision between layers.
pub fn run_all_with<F: Real, C: ConvEval<F>>(
    g: &Graph<C>,
    w: &Weights<F>,
    x: &Tensor<F>,
    after: &mut dyn FnMut(&mut Tensor<F>),
) -> Result<Activations<F>> {
    let want = [g.input.channels, g.input.height, g.input.width];
    if x.shape.len() != 4 || x.shape[1..] != want {
        return Err(exec_err(
            INPUT,
            format!(
                "input {:?}, the spec expects [N, {}, {}, {}]",
                x.shape, want[0], want[1], want[2]
            ),
        ));
    }
    let shapes = g.infer_shapes()?;
    let mut x = x.clone();
    after(&mut x);
    let mut b = Reference {
        weights: w,
        after: Some(after),
    };
    ops::run_graph(g, &shapes, &mut b, x)
}

/// Runs the graph and returns its named outputs in spec order.
pub fn run<F: Real, C: ConvEval<F>>(
    g: &Graph<C>,
    w: &Weights<F>,
    x: &Tensor<F>,
) -> Result<Vec<(String, Tensor<F>)>> {
    outputs_of(g, &run_all(g, w, x)?)
}

/// The named outputs of a graph, in spec order, from its activations.
pub fn outputs_of<F: Real, C>(
    g: &Graph<C>,
    acts: &Activations<F>,
) -> Result<Vec<(String, Tensor<F>)>> {
    g.outputs
        .iter()
        .map(|o| {
            let y = acts
                .get(&o.node)
                .ok_or_else(|| exec_err(&o.node, "output node not computed"))?;
            Ok((o.name.clone(), y.clone()))
        })
        .collect()
}
