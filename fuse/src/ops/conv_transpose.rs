//! ConvTranspose (a learned upsampling): weight `[I, O/g, kh, kw]` (PyTorch's layout), bias
//! `[O]`, any stride, dilation, four-sided padding (cropped from the full output) and output
//! padding (added at the end).

use serde::{Deserialize, Serialize};

use super::window::{is_ones, ones, pair, quad};
use super::{Backend, Forward, NodeCx, OpShape, spatial};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::layout::{ParamKind, ParamSpec};
use crate::spec::{ActShape, MAX_DIM, MAX_WINDOW, Op};
use crate::tensor::{Real, Tensor};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvTranspose {
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(with = "pair")]
    pub kernel: [usize; 2],
    #[serde(with = "pair")]
    pub stride: [usize; 2],
    #[serde(with = "quad")]
    pub padding: [usize; 4],
    #[serde(default, skip_serializing_if = "is_zero", with = "pair")]
    pub output_padding: [usize; 2],
    #[serde(default = "ones", skip_serializing_if = "is_ones", with = "pair")]
    pub dilation: [usize; 2],
    pub groups: usize,
}

fn is_zero(v: &[usize; 2]) -> bool {
    *v == [0, 0]
}

impl ConvTranspose {
    /// `(in − 1)·s − pads + d·(k − 1) + output_padding + 1` per axis.
    pub fn out_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let side = |a: usize, len: usize| {
            let full = (len - 1) * self.stride[a]
                + self.dilation[a] * (self.kernel[a] - 1)
                + self.output_padding[a]
                + 1;
            full.checked_sub(self.padding[a] + self.padding[a + 2])
                .filter(|&v| v > 0)
        };
        Some((side(0, h)?, side(1, w)?))
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.in_channels,
            self.out_channels / self.groups,
            self.kernel[0],
            self.kernel[1],
        ]
    }
}

impl OpShape for ConvTranspose {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        let (ch, h, w) = spatial(node, "conv_transpose", ins[0])?;
        let sizes = self
            .kernel
            .iter()
            .chain(&self.stride)
            .chain(&self.dilation)
            .chain(&self.padding)
            .chain(&self.output_padding);
        if self.kernel.contains(&0)
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
            || sizes.clone().any(|&v| v > MAX_WINDOW)
            || self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
            || self.out_channels > MAX_DIM
            || self.output_padding[0] >= self.stride[0].max(self.dilation[0])
            || self.output_padding[1] >= self.stride[1].max(self.dilation[1])
        {
            return Err(Error::Spec(format!(
                "conv_transpose `{node}`: bad geometry {self:?}"
            )));
        }
        if ch != self.in_channels {
            return Err(Error::Spec(format!(
                "conv_transpose `{node}` expects {} input channels, got {ch}",
                self.in_channels
            )));
        }
        let (ho, wo) = self.out_size(h, w).ok_or_else(|| {
            Error::Spec(format!("conv_transpose `{node}`: padding leaves no output"))
        })?;
        if ho > MAX_DIM || wo > MAX_DIM {
            return Err(Error::Spec(format!(
                "conv_transpose `{node}`: output {ho}×{wo} is too large"
            )));
        }
        Ok(vec![self.out_channels, ho, wo])
    }
    fn params(&self, prefix: &str, _ins: &[&[usize]]) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                format!("{prefix}.weight"),
                self.weight_shape().to_vec(),
                ParamKind::TransposedWeight,
            ),
            ParamSpec::new(
                format!("{prefix}.bias"),
                vec![self.out_channels],
                ParamKind::Bias,
            ),
        ]
    }
    fn macs(&self, ins: &[&[usize]], _out: &[usize]) -> usize {
        let [_, og, kh, kw] = self.weight_shape();
        ins[0].iter().product::<usize>() * og * kh * kw
    }
    fn detail(&self) -> String {
        format!("{}×{} s{:?}", self.kernel[0], self.kernel[1], self.stride)
    }
}

impl Forward for ConvTranspose {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.conv_transpose(cx, ins[0], self)
    }
}

/// The reference kernel, as a scatter: every input pixel adds its kernel-weighted copy to the
/// output window it touches.
pub fn conv_transpose<F: Real>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    b: &[F],
    op: &ConvTranspose,
) -> Tensor<F> {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (ho, wo) = op.out_size(h, wd).expect("validated");
    let [_, og, kh, kw] = op.weight_shape();
    let ig = c / op.groups;
    let (pt, pl) = (op.padding[0] as isize, op.padding[1] as isize);
    let mut out = Tensor::zeros(&[n, op.out_channels, ho, wo]);
    for ni in 0..n {
        for (oc, &bias) in b.iter().enumerate().take(op.out_channels) {
            let plane = &mut out.data[(ni * op.out_channels + oc) * ho * wo..][..ho * wo];
            plane.iter_mut().for_each(|v| *v = bias);
            let (g, ocg) = (oc / og, oc % og);
            for icg in 0..ig {
                let ic = g * ig + icg;
                let xin = &x.data[(ni * c + ic) * h * wd..][..h * wd];
                let k = &w.data[(ic * og + ocg) * kh * kw..][..kh * kw];
                for iy in 0..h {
                    for ix in 0..wd {
                        let v = xin[iy * wd + ix];
                        for u in 0..kh {
                            let oy = (iy * op.stride[0] + u * op.dilation[0]) as isize - pt;
                            if oy < 0 || oy >= ho as isize {
                                continue;
                            }
                            for q in 0..kw {
                                let ox = (ix * op.stride[1] + q * op.dilation[1]) as isize - pl;
                                if ox >= 0 && ox < wo as isize {
                                    let o = oy as usize * wo + ox as usize;
                                    plane[o] = plane[o] + v * k[u * kw + q];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// `ConvTranspose(X, W[, B])`.
pub(crate) fn import(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    let (_, h, wd) =
        spatial(&n.name, "ConvTranspose", &shape).map_err(|e| cx.bad(n, e.to_string()))?;
    let w = cx.weight(n, 1)?;
    if w.dims.len() != 4 {
        return Err(cx.bad(
            n,
            format!(
                "weight is {}-D, only 2-D (4-D weights) is supported",
                w.dims.len()
            ),
        ));
    }
    if n.str("auto_pad", "NOTSET")? != "NOTSET" {
        return Err(cx.bad(
            n,
            "auto_pad is not supported on ConvTranspose (give pads)".into(),
        ));
    }
    let groups = n.int("group", 1)? as usize;
    let [i, og, kh, kw] = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
    let op = ConvTranspose {
        in_channels: i,
        out_channels: og * groups,
        kernel: n.pair("kernel_shape", [kh, kw])?,
        stride: n.pair("strides", [1, 1])?,
        padding: n.quad("pads", [0; 4])?,
        output_padding: n.pair("output_padding", [0, 0])?,
        dilation: n.pair("dilations", [1, 1])?,
        groups,
    };
    if op.kernel != [kh, kw] {
        return Err(cx.bad(
            n,
            format!(
                "kernel_shape {:?} differs from the weight's {kh}×{kw}",
                op.kernel
            ),
        ));
    }
    if let Some(want) = n.ints("output_shape")? {
        let got = op.out_size(h, wd).map(|(a, b)| vec![a as i64, b as i64]);
        let tail: Vec<i64> = want.iter().rev().take(2).rev().copied().collect();
        if got.as_deref() != Some(tail.as_slice()) {
            return Err(cx.bad(
                n,
                format!("output_shape {want:?} is not what pads give ({got:?}); give pads instead"),
            ));
        }
    }
    let o = op.out_channels;
    let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
        Some(_) => cx.weight(n, 2)?.data,
        None => vec![0.0; o],
    };
    if bias.len() != o {
        return Err(cx.bad(n, format!("bias has {} values for {o} outputs", bias.len())));
    }
    let prefix = cx.prefix_from_weight(n, 1);
    cx.push(
        n,
        Op::ConvTranspose(op),
        &[&x],
        prefix,
        vec![
            ("weight", Tensor::new(w.dims.clone(), w.data)),
            ("bias", Tensor::new(vec![o], bias)),
        ],
    )
}
