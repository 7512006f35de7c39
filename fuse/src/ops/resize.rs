//! Resize to an explicit size: nearest (PyTorch's `nearest`: source ⌊dst·in/out⌋, ONNX
//! `asymmetric` + `floor`) and bilinear (half-pixel centres, PyTorch `align_corners=False`; or
//! corner-aligned, `align_corners=True`). TensorRT's ONNX parser has no MaxUnpool, so decoders
//! resize.

use serde::{Deserialize, Serialize};

use super::{Backend, Forward, NodeCx, OpShape, spatial};
use crate::error::{Error, Result};
use crate::import::{ImportCx, OnnxNode};
use crate::spec::{ActShape, MAX_DIM, Op};
use crate::tensor::{Real, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    Nearest,
    Bilinear,
    BilinearAlignCorners,
}

impl ResizeMode {
    pub fn name(self) -> &'static str {
        match self {
            ResizeMode::Nearest => "nearest",
            ResizeMode::Bilinear => "bilinear",
            ResizeMode::BilinearAlignCorners => "bilinear (align corners)",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub height: usize,
    pub width: usize,
    pub mode: ResizeMode,
}

impl OpShape for Resize {
    fn infer(&self, node: &str, ins: &[&[usize]]) -> Result<ActShape> {
        let (ch, _, _) = spatial(node, "resize", ins[0])?;
        if self.height == 0 || self.width == 0 || self.height > MAX_DIM || self.width > MAX_DIM {
            return Err(Error::Spec(format!(
                "resize `{node}`: output size must be in 1..={MAX_DIM}"
            )));
        }
        Ok(vec![ch, self.height, self.width])
    }
    fn nonnegative(&self, ins: &[bool]) -> bool {
        ins[0]
    }
    fn macs(&self, _ins: &[&[usize]], out: &[usize]) -> usize {
        match self.mode {
            ResizeMode::Nearest => 0,
            _ => 4 * out.iter().product::<usize>(),
        }
    }
    fn detail(&self) -> String {
        format!("{}×{} {}", self.height, self.width, self.mode.name())
    }
}

impl Forward for Resize {
    fn forward<B: Backend>(&self, b: &mut B, cx: &NodeCx, ins: &[&B::T]) -> Result<B::T, B::Error> {
        b.resize(cx, ins[0], self)
    }
}

/// The reference kernel: NCHW maps to `h`×`w`.
pub fn resize<F: Real>(x: &Tensor<F>, h: usize, w: usize, mode: ResizeMode) -> Tensor<F> {
    let (n, c, ih, iw) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let mut out = Tensor::zeros(&[n, c, h, w]);
    let (sy, sx) = (ih as f64 / h as f64, iw as f64 / w as f64);
    // Source coordinate of an output index, per mode (before clamping).
    let src = |o: usize, scale: f64, inl: usize, outl: usize| match mode {
        ResizeMode::Nearest | ResizeMode::Bilinear => (o as f64 + 0.5) * scale - 0.5,
        ResizeMode::BilinearAlignCorners if outl > 1 => {
            o as f64 * (inl - 1) as f64 / (outl - 1) as f64
        }
        ResizeMode::BilinearAlignCorners => 0.0,
    };
    for nc in 0..n * c {
        let s = &x.data[nc * ih * iw..][..ih * iw];
        let dst = &mut out.data[nc * h * w..][..h * w];
        for oy in 0..h {
            for ox in 0..w {
                dst[oy * w + ox] = match mode {
                    ResizeMode::Nearest => {
                        let iy = ((oy as f64 * sy).floor() as usize).min(ih - 1);
                        let ix = ((ox as f64 * sx).floor() as usize).min(iw - 1);
                        s[iy * iw + ix]
                    }
                    ResizeMode::Bilinear | ResizeMode::BilinearAlignCorners => {
                        // Clamped at the border.
                        let fy = src(oy, sy, ih, h).max(0.0);
                        let fx = src(ox, sx, iw, w).max(0.0);
                        let (y0, x0) = (
                            (fy.floor() as usize).min(ih - 1),
                            (fx.floor() as usize).min(iw - 1),
                        );
                        let (y1, x1) = ((y0 + 1).min(ih - 1), (x0 + 1).min(iw - 1));
                        let (ly, lx) = (F::from_f64(fy - y0 as f64), F::from_f64(fx - x0 as f64));
                        let one = F::one();
                        let top = s[y0 * iw + x0] * (one - lx) + s[y0 * iw + x1] * lx;
                        let bot = s[y1 * iw + x0] * (one - lx) + s[y1 * iw + x1] * lx;
                        top * (one - ly) + bot * ly
                    }
                };
            }
        }
    }
    out
}

/// `Resize(X, roi, scales, sizes)` (opset 11+), `Resize(X, scales)` (opset 10) and
/// `Upsample(X, scales)`: nearest as PyTorch writes it (asymmetric, floor; or half-pixel with
/// an integer upscale, which picks the same pixels) and linear with half-pixel or
/// align-corners coordinates.
pub(crate) fn import(n: &OnnxNode, cx: &mut ImportCx) -> Result<()> {
    let (x, shape) = cx.act(n, 0)?;
    let (ch, ih, iw) =
        spatial(&n.name, &n.op_type, &shape).map_err(|e| cx.bad(n, e.to_string()))?;
    let upsample = n.op_type == "Upsample";
    let (scales_at, sizes_at) = if upsample || cx.opset() < 11 {
        (1, 99)
    } else {
        (2, 3)
    };
    let given = |i: usize| n.inputs.get(i).is_some_and(|s| !s.is_empty());
    let (h, w) = if given(sizes_at) {
        let s = cx.ints(n, sizes_at)?;
        if s.len() != 4 || s[1] != ch as i64 || s[0] < 0 || s[2] <= 0 || s[3] <= 0 {
            return Err(cx.bad(n, format!("sizes {s:?}: expected [N, {ch}, H, W]")));
        }
        (s[2] as usize, s[3] as usize)
    } else if given(scales_at) {
        let s = cx.floats(n, scales_at)?;
        if s.len() != 4 || s[0] != 1.0 || s[1] != 1.0 {
            return Err(cx.bad(n, format!("scales {s:?}: only H and W may be scaled")));
        }
        // ONNX scales the coordinates by the given factor; the spec by in/out. The two agree
        // exactly when in·scale is a whole number, so nothing else is taken.
        let side = |len: usize, scale: f32| -> Result<usize> {
            let out = len as f64 * scale as f64;
            if scale <= 0.0 || (out - out.round()).abs() > 1e-6 || out.round() < 1.0 {
                return Err(cx.bad(n, format!(
                    "scale {scale} on a side of {len} gives {out} pixels; only scales that give a whole number are supported (give sizes instead)"
                )));
            }
            Ok(out.round() as usize)
        };
        (side(ih, s[2])?, side(iw, s[3])?)
    } else {
        return Err(cx.bad(n, "neither scales nor sizes are given".into()));
    };
    let mode = n.str("mode", "nearest")?;
    let coord = n.str(
        "coordinate_transformation_mode",
        if upsample { "asymmetric" } else { "half_pixel" },
    )?;
    let nearest = n.str("nearest_mode", "round_prefer_floor")?;
    if n.int("antialias", 0)? != 0 {
        return Err(cx.bad(n, "antialias = 1 is not supported".into()));
    }
    let integer_upscale = h % ih == 0 && w % iw == 0;
    let spec_mode = match (mode.as_str(), coord.as_str()) {
        ("nearest", "asymmetric") if nearest == "floor" => ResizeMode::Nearest,
        ("nearest", "half_pixel" | "pytorch_half_pixel" | "asymmetric")
            if integer_upscale && nearest.starts_with("round_prefer") =>
        {
            ResizeMode::Nearest
        }
        ("linear", "half_pixel") => ResizeMode::Bilinear,
        ("linear", "pytorch_half_pixel") if h > 1 && w > 1 => ResizeMode::Bilinear,
        ("linear", "align_corners") => ResizeMode::BilinearAlignCorners,
        _ => {
            return Err(cx.bad(n, format!(
                "mode `{mode}` with coordinate_transformation_mode `{coord}` and nearest_mode `{nearest}` (to {h}×{w} from {ih}×{iw}) is not supported: nearest as PyTorch exports it (asymmetric, floor) and linear with half_pixel or align_corners are"
            )));
        }
    };
    cx.push(
        n,
        Op::Resize(Resize {
            height: h,
            width: w,
            mode: spec_mode,
        }),
        &[&x],
        None,
        vec![],
    )
}
