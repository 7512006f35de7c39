//! Conv: the one op whose config is per graph kind ([`crate::spec::TrainConv`] with its method
//! and BatchNorm, [`crate::spec::DeployConv`] plain with bias). Its shape rule, MACs, f64
//! reference kernel and ONNX import are here; each backend runs it through
//! [`super::ConvBackend`] (the train-time methods are in `crate::exec` and the train crate).

use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::spec::{ActShape, ConvShape, DeployConv, Op};
use crate::tensor::{Real, Tensor};

pub fn infer(node: &str, s: &ConvShape, x: &[usize]) -> Result<ActShape> {
    s.validate(node)?;
    let (ch, h, w) = super::spatial(node, "conv", x)?;
    if ch != s.in_channels {
        return Err(Error::Spec(format!(
            "conv `{node}` expects {} input channels, its input has {ch}",
            s.in_channels
        )));
    }
    let (ho, wo) = s.out_size(h, w).ok_or_else(|| {
        Error::Spec(format!(
            "conv `{node}`: input {h}×{w} smaller than its {} window",
            s.describe()
        ))
    })?;
    Ok(vec![s.out_channels, ho, wo])
}

pub fn macs(s: &ConvShape, out: &[usize]) -> usize {
    // Saturating: a report figure, and declared sizes are bounded, not small.
    [s.fan_in(), out[1], out[2]]
        .iter()
        .fold(s.out_channels, |a, &b| a.saturating_mul(b))
}

/// 2-D cross-correlation, NCHW, zero padding, any kernel/stride/dilation/pads and groups, via
/// im2col + GEMM per sample and group.
pub fn conv2d<F: Real>(x: &Tensor<F>, w: &Tensor<F>, b: Option<&[F]>, s: &ConvShape) -> Tensor<F> {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    assert_eq!(c, s.in_channels, "conv input channels");
    assert_eq!(w.shape, s.weight_shape(), "conv weight shape");
    let g = s.groups;
    let ([kh, kw], [sh, sw], [dh, dw]) = (s.kernel, s.stride, s.dilation);
    let (pt, pl) = (s.padding[0] as isize, s.padding[1] as isize);
    let (ig, og) = (c / g, s.out_channels / g);
    let (ho, wo) = s.out_size(h, wd).expect("conv window fits (validated)");
    let hw = ho * wo;
    let rows = ig * kh * kw;
    let mut out = Tensor::zeros(&[n, s.out_channels, ho, wo]);
    let mut cols = vec![F::zero(); rows * hw];
    for ni in 0..n {
        for gi in 0..g {
            cols.iter_mut().for_each(|v| *v = F::zero());
            for ci in 0..ig {
                let plane = &x.data[((ni * c) + gi * ig + ci) * h * wd..][..h * wd];
                for u in 0..kh {
                    for v in 0..kw {
                        let row = &mut cols[((ci * kh + u) * kw + v) * hw..][..hw];
                        for oy in 0..ho {
                            let iy = (oy * sh + u * dh) as isize - pt;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for ox in 0..wo {
                                let ix = (ox * sw + v * dw) as isize - pl;
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

/// Pads for ONNX's `auto_pad` (`SAME_UPPER` puts the odd pixel at the end, `SAME_LOWER` at
/// the start, `VALID` none), per axis from the input length.
pub(crate) fn auto_pads(
    mode: &str,
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Option<[usize; 4]> {
    let mut pads = [0usize; 4];
    for a in 0..2 {
        let span = dilation[a] * (kernel[a] - 1) + 1;
        let out = input[a].div_ceil(stride[a]);
        let total = ((out - 1) * stride[a] + span).saturating_sub(input[a]);
        let (before, after) = match mode {
            "SAME_UPPER" => (total / 2, total - total / 2),
            "SAME_LOWER" => (total - total / 2, total / 2),
            "VALID" => (0, 0),
            _ => return None,
        };
        pads[a] = before;
        pads[a + 2] = after;
    }
    Some(pads)
}

/// `Conv(X, W[, B])`: kernel from W, strides, dilations, pads or `auto_pad`, group. The
/// weight must be a constant; the bias, absent, becomes zeros (deploy convs carry one).
pub(crate) fn import(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    let w = cx.weight(n, 1)?;
    if w.dims.len() != 4 {
        return Err(cx.bad(
            n,
            format!(
                "weight is {}-D, only 2-D convs (4-D weights) are supported",
                w.dims.len()
            ),
        ));
    }
    let (_, h, wd) = super::spatial(&n.name, "conv", &shape).map_err(|_| {
        cx.bad(
            n,
            format!("input is {}, a conv needs C×H×W", super::dims(&shape)),
        )
    })?;
    let [o, ig, kh, kw] = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
    let groups = n.int("group", 1)? as usize;
    let kernel = n.pair("kernel_shape", [kh, kw])?;
    if kernel != [kh, kw] {
        return Err(cx.bad(
            n,
            format!("kernel_shape {kernel:?} differs from the weight's {kh}×{kw}"),
        ));
    }
    let stride = n.pair("strides", [1, 1])?;
    let dilation = n.pair("dilations", [1, 1])?;
    let padding = match n.str("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" => n.quad("pads", [0; 4])?,
        mode => auto_pads(mode, [h, wd], kernel, stride, dilation).ok_or_else(|| {
            cx.bad(
                n,
                format!("auto_pad `{mode}` is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"),
            )
        })?,
    };
    let shape_c = ConvShape {
        in_channels: ig * groups,
        out_channels: o,
        kernel,
        stride,
        padding,
        groups,
        bias: true,
        dilation,
    };
    let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
        Some(_) => {
            let b = cx.weight(n, 2)?;
            if b.data.len() != o {
                return Err(cx.bad(
                    n,
                    format!("bias has {} values for {o} output channels", b.data.len()),
                ));
            }
            b.data
        }
        None => vec![0.0; o],
    };
    let prefix = cx.prefix_from_weight(n, 1);
    cx.push(
        n,
        Op::Conv(DeployConv { shape: shape_c }),
        &[&x],
        prefix,
        vec![
            ("weight", Tensor::new(w.dims.clone(), w.data)),
            ("bias", Tensor::new(vec![o], bias)),
        ],
    )
}
