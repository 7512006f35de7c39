//! A naive reference executor for both graph kinds, so fold correctness is testable in pure
//! Rust. The train graph runs in eval mode with its branches in feature space (RepVGG) or its
//! kernel composed from factors (FNL, SFO), i.e. the *unfolded* computation.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::fold::{Bn, Weights, compose_kernel, get};
use crate::method::{Method, has_identity};
use crate::spec::{ConvLike, ConvShape, DeployConv, Graph, INPUT, Op, TrainConv};
use crate::tensor::{Real, Tensor};

fn exec_err(node: &str, message: impl Into<String>) -> Error {
    Error::Exec {
        node: node.to_string(),
        message: message.into(),
    }
}

/// 2-D cross-correlation, NCHW, zero padding, via im2col + GEMM per sample and group.
pub fn conv2d<F: Real>(x: &Tensor<F>, w: &Tensor<F>, b: Option<&[F]>, s: &ConvShape) -> Tensor<F> {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    assert_eq!(c, s.in_channels, "conv input channels");
    assert_eq!(w.shape, s.weight_shape(), "conv weight shape");
    let (g, k, st, p) = (s.groups, s.kernel, s.stride, s.padding);
    let (ig, og) = (c / g, s.out_channels / g);
    let (ho, wo) = s.out_size(h, wd);
    let hw = ho * wo;
    let rows = ig * k * k;
    let mut out = Tensor::zeros(&[n, s.out_channels, ho, wo]);
    let mut cols = vec![F::zero(); rows * hw];
    for ni in 0..n {
        for gi in 0..g {
            cols.iter_mut().for_each(|v| *v = F::zero());
            for ci in 0..ig {
                let plane = &x.data[((ni * c) + gi * ig + ci) * h * wd..][..h * wd];
                for u in 0..k {
                    for v in 0..k {
                        let row = &mut cols[((ci * k + u) * k + v) * hw..][..hw];
                        for oy in 0..ho {
                            let iy = (oy * st + u) as isize - p as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for ox in 0..wo {
                                let ix = (ox * st + v) as isize - p as isize;
                                if ix >= 0 && ix < wd as isize {
                                    row[oy * wo + ox] = plane[iy as usize * wd + ix as usize];
                                }
                            }
                        }
                    }
                }
            }
            let wg = &w.data[gi * og * rows..(gi + 1) * og * rows];
            let dst = &mut out.data[(ni * s.out_channels + gi * og) * hw..][..og * hw];
            F::gemm(og, rows, hw, wg, &cols, F::zero(), dst);
            if let Some(b) = b {
                for (oc, chunk) in dst.chunks_mut(hw).enumerate() {
                    let bv = b[gi * og + oc];
                    chunk.iter_mut().for_each(|v| *v = *v + bv);
                }
            }
        }
    }
    out
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

fn max_pool<F: Real>(x: &Tensor<F>, k: usize, st: usize, p: usize) -> Tensor<F> {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let f = |v: usize| (v + 2 * p - k) / st + 1;
    let (ho, wo) = (f(h), f(w));
    let mut out = Tensor::zeros(&[n, c, ho, wo]);
    for nc in 0..n * c {
        let plane = &x.data[nc * h * w..][..h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = F::neg_infinity();
                for u in 0..k {
                    for v in 0..k {
                        let (iy, ix) = (
                            (oy * st + u) as isize - p as isize,
                            (ox * st + v) as isize - p as isize,
                        );
                        if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                            m = m.max(plane[iy as usize * w + ix as usize]);
                        }
                    }
                }
                out.data[(nc * ho + oy) * wo + ox] = m;
            }
        }
    }
    out
}

/// Resizes NCHW maps to `h`×`w` (see [`crate::spec::Op::Resize`] for the conventions).
pub fn resize<F: Real>(
    x: &Tensor<F>,
    h: usize,
    w: usize,
    mode: crate::spec::ResizeMode,
) -> Tensor<F> {
    use crate::spec::ResizeMode;
    let (n, c, ih, iw) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let mut out = Tensor::zeros(&[n, c, h, w]);
    let (sy, sx) = (ih as f64 / h as f64, iw as f64 / w as f64);
    for nc in 0..n * c {
        let src = &x.data[nc * ih * iw..][..ih * iw];
        let dst = &mut out.data[nc * h * w..][..h * w];
        for oy in 0..h {
            for ox in 0..w {
                dst[oy * w + ox] = match mode {
                    ResizeMode::Nearest => {
                        let iy = ((oy as f64 * sy).floor() as usize).min(ih - 1);
                        let ix = ((ox as f64 * sx).floor() as usize).min(iw - 1);
                        src[iy * iw + ix]
                    }
                    ResizeMode::Bilinear => {
                        // Half-pixel centres, clamped at the border.
                        let fy = ((oy as f64 + 0.5) * sy - 0.5).max(0.0);
                        let fx = ((ox as f64 + 0.5) * sx - 0.5).max(0.0);
                        let (y0, x0) = (
                            (fy.floor() as usize).min(ih - 1),
                            (fx.floor() as usize).min(iw - 1),
                        );
                        let (y1, x1) = ((y0 + 1).min(ih - 1), (x0 + 1).min(iw - 1));
                        let (ly, lx) = (F::from_f64(fy - y0 as f64), F::from_f64(fx - x0 as f64));
                        let one = F::one();
                        let top = src[y0 * iw + x0] * (one - lx) + src[y0 * iw + x1] * lx;
                        let bot = src[y1 * iw + x0] * (one - lx) + src[y1 * iw + x1] * lx;
                        top * (one - ly) + bot * ly
                    }
                };
            }
        }
    }
    out
}

/// How the executor runs one conv node of a graph kind.
pub trait ConvEval<F: Real>: ConvLike {
    fn eval(&self, node: &str, x: &Tensor<F>, w: &Weights<F>) -> Result<Tensor<F>>;
}

impl<F: Real> ConvEval<F> for DeployConv {
    fn eval(&self, node: &str, x: &Tensor<F>, w: &Weights<F>) -> Result<Tensor<F>> {
        let k = get(w, &format!("{node}.weight"))?;
        let b = get(w, &format!("{node}.bias"))?;
        Ok(conv2d(x, k, Some(&b.data), &self.shape))
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
        // The 1×1 branch: same stride, padding p − k/2 so its window is centred.
        let one_by_one = ConvShape {
            kernel: 1,
            padding: s.padding - s.kernel / 2,
            bias: false,
            ..s.clone()
        };
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
                if s.kernel > 1 {
                    let w1 = get(w, &format!("{node}.rbr_1x1.conv.weight"))?;
                    let b1 = conv2d(x, w1, None, &one_by_one);
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
                if s.kernel > 1 {
                    let w1 = get(w, &format!("{node}.rbr_1x1.weight"))?;
                    y = add(&y, &conv2d(x, w1, None, &one_by_one));
                }
                if has_identity(s) {
                    y = add(&y, x);
                }
                Ok(batch_norm(&y, &bn_at(&format!("{node}.bn"))?))
            }
        }
    }
}

/// Every node's output (and the input), keyed by node name.
pub type Activations<F> = HashMap<String, Tensor<F>>;

/// Runs one node on its (already computed) inputs.
pub fn eval_node<F: Real, C: ConvEval<F>>(
    name: &str,
    op: &Op<C>,
    ins: &[&Tensor<F>],
    w: &Weights<F>,
) -> Result<Tensor<F>> {
    let x = ins[0];
    Ok(match op {
        Op::Conv(c) => c.eval(name, x, w)?,
        Op::Relu => {
            let mut y = x.clone();
            y.data.iter_mut().for_each(|v| *v = v.max(F::zero()));
            y
        }
        Op::MaxPool {
            kernel,
            stride,
            padding,
        } => max_pool(x, *kernel, *stride, *padding),
        Op::GlobalAvgPool => {
            let (n, c) = (x.shape[0], x.shape[1]);
            let plane = x.numel() / (n * c);
            let scale = F::from_f64(1.0 / plane as f64);
            let data = x
                .data
                .chunks(plane)
                .map(|ch| ch.iter().copied().sum::<F>() * scale)
                .collect();
            Tensor::new(vec![n, c, 1, 1], data)
        }
        Op::Add => add(x, ins[1]),
        Op::Resize {
            height,
            width,
            mode,
        } => resize(x, *height, *width, *mode),
        Op::L2Norm => {
            let (n, c) = (x.shape[0], x.shape[1]);
            let plane = x.numel() / (n * c);
            let mut y = x.clone();
            let eps = F::from_f64(1e-12);
            for b in 0..n {
                for p in 0..plane {
                    let idx = |ch: usize| (b * c + ch) * plane + p;
                    let norm = (0..c)
                        .map(|ch| x.data[idx(ch)] * x.data[idx(ch)])
                        .sum::<F>()
                        .sqrt()
                        .max(eps);
                    for ch in 0..c {
                        y.data[idx(ch)] = x.data[idx(ch)] / norm;
                    }
                }
            }
            y
        }
        Op::Flatten => {
            let n = x.shape[0];
            Tensor::new(vec![n, x.numel() / n], x.data.clone())
        }
        Op::Linear {
            in_features,
            out_features,
        } => {
            let (wt, b) = (
                get(w, &format!("{name}.weight"))?,
                get(w, &format!("{name}.bias"))?,
            );
            let n = x.shape[0];
            if x.shape != [n, *in_features] {
                return Err(exec_err(
                    name,
                    format!("input {:?}, expected [N, {in_features}]", x.shape),
                ));
            }
            let mut y = vec![F::zero(); n * out_features];
            for i in 0..n {
                for o in 0..*out_features {
                    let row = &wt.data[o * in_features..][..*in_features];
                    let xi = &x.data[i * in_features..][..*in_features];
                    y[i * out_features + o] =
                        row.iter().zip(xi).map(|(a, b)| *a * *b).sum::<F>() + b.data[o];
                }
            }
            Tensor::new(vec![n, *out_features], y)
        }
    })
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
    let mut acts: Activations<F> = HashMap::new();
    let mut x = x.clone();
    after(&mut x);
    acts.insert(INPUT.to_string(), x);
    for n in &g.nodes {
        let ins: Vec<&Tensor<F>> = n
            .inputs
            .iter()
            .map(|i| {
                acts.get(i)
                    .ok_or_else(|| exec_err(&n.name, format!("input `{i}` not computed")))
            })
            .collect::<Result<_>>()?;
        let mut y = eval_node(&n.name, &n.op, &ins, w)?;
        after(&mut y);
        acts.insert(n.name.clone(), y);
    }
    Ok(acts)
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
