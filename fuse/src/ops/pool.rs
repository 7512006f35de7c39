//! Pooling: MaxPool, AveragePool (both with any window, stride, dilation for max, and
//! four-sided padding) and GlobalAveragePool (also ONNX's ReduceMean over H and W).

use serde::{Deserialize, Serialize};

use super::window::{is_ones, ones, out_len, pair, quad};
use super::{Backend, Forward, NodeCx, OpShape, spatial};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::spec::{ActShape, MAX_WINDOW, Op};
use crate::tensor::{Real, Tensor};

/// A pooling window (floor rounding; `ceil_mode` is refused on import where it would
/// change the output size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    #[serde(with = "pair")]
    pub kernel: [usize; 2],
    #[serde(with = "pair")]
    pub stride: [usize; 2],
    #[serde(with = "quad")]
    pub padding: [usize; 4],
    #[serde(default = "ones", skip_serializing_if = "is_ones", with = "pair")]
    pub dilation: [usize; 2],
}

impl Window {
    pub fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 4],
            dilation: [1, 1],
        }
    }
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let [t, l, b, r] = self.padding;
        Some((
            out_len(h, self.kernel[0], self.stride[0], self.dilation[0], t, b)?,
            out_len(w, self.kernel[1], self.stride[1], self.dilation[1], l, r)?,
        ))
    }
    /// Whether every side has the same padding.
    pub fn symmetric(&self) -> bool {
        let [t, l, b, r] = self.padding;
        t == b && l == r
    }
    fn infer(&self, what: &str, node: &str, x: &[usize]) -> Result<ActShape> {
        let (ch, h, w) = spatial(node, what, x)?;
        let sizes = self
            .kernel
            .iter()
            .chain(&self.stride)
            .chain(&self.dilation)
            .chain(&self.padding);
        if self.kernel.contains(&0)
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
            || sizes.clone().any(|&v| v > MAX_WINDOW)
        {
            return Err(Error::Spec(format!("{what} `{node}`: bad window {self:?}")));
        }
        let (ho, wo) = self.out_size(h, w).ok_or_else(|| {
            Error::Spec(format!(
                "{what} `{node}`: input {h}×{w} smaller than its window"
            ))
        })?;
        Ok(vec![ch, ho, wo])
    }
    fn detail(&self) -> String {
        let mut s = format!(
            "{}×{} s{}",
            self.kernel[0],
            self.kernel[1],
            if self.stride[0] == self.stride[1] {
                self.stride[0].to_string()
            } else {
                format!("{},{}", self.stride[0], self.stride[1])
            }
        );
        if self.padding != [0; 4] {
            s += &format!(" p{:?}", self.padding);
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaxPool(pub Window);

impl OpShape for MaxPool {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        self.0.infer("max_pool", node, ins[0])
    }
    fn nonnegative(&self, ins: &[bool]) -> bool {
        ins[0]
    }
    fn detail(&self) -> String {
        self.0.detail()
    }
}

impl Forward for MaxPool {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.max_pool(cx, ins[0], &self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvgPool {
    #[serde(flatten)]
    pub window: Window,
    /// Divide by the full window (padding counted as zeros) rather than by the taps inside.
    pub count_include_pad: bool,
}

impl OpShape for AvgPool {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        if self.window.dilation != [1, 1] {
            return Err(Error::Spec(format!(
                "avg_pool `{node}`: dilation is not supported"
            )));
        }
        self.window.infer("avg_pool", node, ins[0])
    }
    fn nonnegative(&self, ins: &[bool]) -> bool {
        ins[0]
    }
    fn macs(&self, _ins: &[&[usize]], out: &[usize]) -> usize {
        out.iter().product::<usize>() * self.window.kernel[0] * self.window.kernel[1]
    }
    fn detail(&self) -> String {
        self.window.detail()
    }
}

impl Forward for AvgPool {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.avg_pool(cx, ins[0], self)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalAvgPool {}

impl OpShape for GlobalAvgPool {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        let (ch, _, _) = spatial(node, "global_avg_pool", ins[0])?;
        Ok(vec![ch, 1, 1])
    }
    fn nonnegative(&self, ins: &[bool]) -> bool {
        ins[0]
    }
    fn macs(&self, ins: &[&[usize]], _out: &[usize]) -> usize {
        ins[0].iter().product()
    }
}

impl Forward for GlobalAvgPool {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.global_avg_pool(cx, ins[0])
    }
}

/// The reference kernel of both window pools: the max, or the mean over the window
/// (divided by the full window, or by the taps inside the input).
pub fn pool<F: Real>(x: &Tensor<F>, w: &Window, avg: Option<bool>) -> Tensor<F> {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (ho, wo) = w.out_size(h, wd).expect("window fits (validated)");
    let ([kh, kw], [sh, sw], [dh, dw]) = (w.kernel, w.stride, w.dilation);
    let (pt, pl) = (w.padding[0] as isize, w.padding[1] as isize);
    let mut out = Tensor::zeros(&[n, c, ho, wo]);
    for nc in 0..n * c {
        let plane = &x.data[nc * h * wd..][..h * wd];
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut m, mut sum, mut taps) = (F::neg_infinity(), F::zero(), 0usize);
                for u in 0..kh {
                    for v in 0..kw {
                        let iy = (oy * sh + u * dh) as isize - pt;
                        let ix = (ox * sw + v * dw) as isize - pl;
                        if iy >= 0 && iy < h as isize && ix >= 0 && ix < wd as isize {
                            let val = plane[iy as usize * wd + ix as usize];
                            m = m.max(val);
                            sum = sum + val;
                            taps += 1;
                        }
                    }
                }
                out.data[(nc * ho + oy) * wo + ox] = match avg {
                    None => m,
                    Some(true) => sum / F::from_f64((kh * kw) as f64),
                    Some(false) => sum / F::from_f64(taps.max(1) as f64),
                };
            }
        }
    }
    out
}

/// The reference kernel of the global mean.
pub fn global_avg_pool<F: Real>(x: &Tensor<F>) -> Tensor<F> {
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

/// The window of a MaxPool/AveragePool node; `ceil_mode` only where it changes nothing.
fn window(n: &OnnxNode, cx: &ImportCx, shape: &[usize]) -> Result<Window> {
    let kernel = n.pair("kernel_shape", [0, 0])?;
    if kernel.contains(&0) {
        return Err(cx.bad(n, "kernel_shape is missing".into()));
    }
    let stride = n.pair("strides", [1, 1])?;
    let dilation = n.pair("dilations", [1, 1])?;
    let (h, w) = (shape[1], shape[2]);
    let padding = match n.str("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" => n.quad("pads", [0; 4])?,
        mode => {
            super::conv::auto_pads(mode, [h, w], kernel, stride, dilation).ok_or_else(|| {
                cx.bad(
                    n,
                    format!(
                        "auto_pad `{mode}` is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"
                    ),
                )
            })?
        }
    };
    let win = Window {
        kernel,
        stride,
        padding,
        dilation,
    };
    if n.int("ceil_mode", 0)? != 0 {
        let [t, l, b, r] = padding;
        let ceil = |len: usize, a: usize, p0: usize, p1: usize| {
            let span = dilation[a] * (kernel[a] - 1) + 1;
            (len + p0 + p1).saturating_sub(span).div_ceil(stride[a]) + 1
        };
        if Some((ceil(h, 0, t, b), ceil(w, 1, l, r))) != win.out_size(h, w) {
            return Err(cx.bad(
                n,
                "ceil_mode = 1 changes the output size here; only floor rounding is supported"
                    .into(),
            ));
        }
    }
    Ok(win)
}

pub(crate) fn import_max_pool(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    if n.outputs.len() > 1 && !n.outputs[1].is_empty() {
        return Err(cx.bad(n, "the indices output is not supported".into()));
    }
    let (x, shape) = cx.act(n, 0)?;
    spatial(&n.name, "MaxPool", &shape).map_err(|e| cx.bad(n, e.to_string()))?;
    let win = window(n, cx, &shape)?;
    cx.push(n, Op::MaxPool(MaxPool(win)), &[&x], None, vec![])
}

pub(crate) fn import_avg_pool(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    spatial(&n.name, "AveragePool", &shape).map_err(|e| cx.bad(n, e.to_string()))?;
    let window = window(n, cx, &shape)?;
    let count_include_pad = n.int("count_include_pad", 0)? != 0;
    if window.dilation != [1, 1] {
        return Err(cx.bad(n, "dilations are not supported on AveragePool".into()));
    }
    if !window.symmetric() && !count_include_pad {
        return Err(cx.bad(
            n,
            "asymmetric pads with count_include_pad = 0 are not supported".into(),
        ));
    }
    cx.push(
        n,
        Op::AvgPool(AvgPool {
            window,
            count_include_pad,
        }),
        &[&x],
        None,
        vec![],
    )
}

pub(crate) fn import_global_avg_pool(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    spatial(&n.name, "GlobalAveragePool", &shape).map_err(|e| cx.bad(n, e.to_string()))?;
    cx.push(n, Op::GlobalAvgPool(GlobalAvgPool {}), &[&x], None, vec![])
}

/// `ReduceMean` over H and W (axes as an attribute before opset 18, an input since): a
/// global average pool, flattened when `keepdims = 0`.
pub(crate) fn import_reduce_mean(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    let axes = match n.inputs.get(1).filter(|s| !s.is_empty()) {
        Some(_) => cx.ints(n, 1)?,
        None => n.ints("axes")?.unwrap_or_default(),
    };
    let rank = shape.len() as i64 + 1;
    let mut axes: Vec<i64> = axes
        .iter()
        .map(|&a| if a < 0 { a + rank } else { a })
        .collect();
    axes.sort();
    if shape.len() != 3 || axes != [2, 3] {
        return Err(cx.bad(n, format!(
            "axes {axes:?} of a {}-D tensor: only the mean over H and W (axes 2, 3) of N×C×H×W is supported",
            rank
        )));
    }
    if n.int("keepdims", 1)? != 0 {
        return cx.push(n, Op::GlobalAvgPool(GlobalAvgPool {}), &[&x], None, vec![]);
    }
    let pooled = cx.push_hidden(n, "pool", Op::GlobalAvgPool(GlobalAvgPool {}), &[&x])?;
    cx.push(n, Op::Flatten(super::Flatten {}), &[&pooled], None, vec![])
}
