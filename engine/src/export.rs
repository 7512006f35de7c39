//! ONNX export of a deploy spec: FP32, FP16 (FP16 types inside, FP32 at the edges, casts
//! between) and INT8 as explicit Q/DQ (symmetric per-channel int8 weights on axis 0, per-tensor
//! activations). One explicitly typed model serves TensorRT 10 (`--stronglyTyped`) and 11.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use overparam_fuse::ops::{
    AvgPool, Backend, BinaryKind, ConvBackend, ConvTranspose, NodeCx, Resize, ResizeMode, Unary,
    Window,
};
use overparam_fuse::spec::{DeployConv, DeploySpec, INPUT, Op};
use overparam_fuse::{Tensor, Weights};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::onnx::*;
use crate::pb::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, tensor_proto::DataType,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            _ => Err(Error::Export(format!(
                "unknown precision `{s}` (fp32, fp16 or int8)"
            ))),
        }
    }
}

/// How INT8 activations are written. Both encode the same grid (scale s, levels −128..127):
/// TensorRT requires signed int8 with zero point 0; ONNX Runtime's fast CPU kernels want uint8,
/// which is the same grid with zero point 128.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationEncoding {
    #[default]
    SignedSymmetric,
    UnsignedOffset,
}

/// Precision of the conv and linear layers a partial INT8 plan leaves unquantised.
///
/// TensorRT builds strongly typed networks from explicitly typed ONNX (TensorRT 11 has no
/// other mode), so a kept layer runs in the type the graph gives it: FP16 keeps it fast on the
/// GPU; FP32 suits CPU runtimes, which have no fast FP16 kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptPrecision {
    #[default]
    Fp32,
    Fp16,
}

impl KeptPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            KeptPrecision::Fp32 => "fp32",
            KeptPrecision::Fp16 => "fp16",
        }
    }

    /// FP16 for TensorRT's encoding, FP32 for the CPU encoding.
    pub fn for_encoding(e: ActivationEncoding) -> Self {
        match e {
            ActivationEncoding::SignedSymmetric => KeptPrecision::Fp16,
            ActivationEncoding::UnsignedOffset => KeptPrecision::Fp32,
        }
    }
}

impl std::str::FromStr for KeptPrecision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(KeptPrecision::Fp32),
            "fp16" => Ok(KeptPrecision::Fp16),
            _ => Err(Error::Export(format!(
                "unknown precision `{s}` for kept layers (fp16 or fp32)"
            ))),
        }
    }
}

/// INT8 plan: a clipping threshold (amax) per activation tensor and which layers to quantise.
/// The scale follows from the tensor's encoding: amax/127 on the signed grid, amax/255 for the
/// non-negative (post-ReLU) tensors of the CPU encoding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantPlan {
    pub thresholds: BTreeMap<String, f32>,
    /// Layers quantised; `None` means every conv and linear layer. Others are kept in `kept`.
    pub layers: Option<BTreeSet<String>>,
    pub encoding: ActivationEncoding,
    #[serde(default)]
    pub kept: KeptPrecision,
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub precision: Precision,
    pub batch: usize,
    /// Required for INT8.
    pub quant: Option<QuantPlan>,
    /// Extra FP32 graph outputs (activation tensors by node name), for calibration.
    pub extra_outputs: Vec<String>,
}

impl ExportOptions {
    pub fn new(precision: Precision) -> Self {
        Self {
            precision,
            batch: 1,
            quant: None,
            extra_outputs: vec![],
        }
    }
}

/// Conv and linear layers with the activation tensor each one reads.
pub fn quantizable_layers(spec: &DeploySpec) -> Vec<(String, String)> {
    spec.nodes
        .iter()
        .filter(|n| n.op.is_weighted_layer())
        .map(|n| (n.name.clone(), n.inputs[0].clone()))
        .collect()
}

impl ActivationEncoding {
    /// The largest weight level: 127 in TensorRT's encoding; 63 (7-bit weights, ONNX
    /// Runtime's `reduce_range`) in the CPU encoding. ONNX Runtime runs uint8 × int8 through
    /// VPMADDUBSW on AVX2 and AVX-512 machines without VNNI, which adds two products in a
    /// saturating int16: 255·127·2 overflows it, 255·63·2 = 32130 does not (ONNX Runtime's
    /// quantization docs, "reduce-range"). With full-range weights the same INT8 ONNX gave
    /// logits 7 output steps off on an AVX2-only EPYC and exact ones on an AVX-512-VNNI host.
    pub const fn weight_qmax(self) -> f32 {
        match self {
            ActivationEncoding::SignedSymmetric => 127.0,
            ActivationEncoding::UnsignedOffset => 63.0,
        }
    }
}

/// Per-output-channel symmetric int8 weights: s_c = max|W_c| / qmax, q = round(W/s) ∈
/// [−qmax, qmax] ([`ActivationEncoding::weight_qmax`]).
pub fn quantize_weight(w: &Tensor<f32>, qmax: f32) -> (Vec<i8>, Vec<f32>) {
    let o = w.shape[0];
    let per = w.numel() / o;
    let mut q = Vec::with_capacity(w.numel());
    let mut scales = Vec::with_capacity(o);
    for ch in w.data.chunks(per) {
        let amax = ch.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / qmax } else { 1.0 };
        scales.push(s);
        q.extend(ch.iter().map(|v| (v / s).round().clamp(-qmax, qmax) as i8));
    }
    (q, scales)
}

/// The ONNX writer: the third [`Backend`] of the ops (after the reference executor and
/// libtorch). Every primitive appends ONNX nodes and returns the name of the tensor it wrote;
/// [`Backend::finish`] names each spec node's final tensor after the node, so calibration can
/// expose any node's activation by name.
struct Builder<'a> {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    w: &'a Weights<f32>,
    opts: &'a ExportOptions,
    spec: &'a DeploySpec,
    plan: Option<&'a QuantPlan>,
    /// Activation tensor → its Q/DQ output (one pair per tensor, shared by its consumers).
    dq: HashMap<String, String>,
    /// Tensors that are already Q/DQ outputs (conv outputs in the CPU encoding).
    dq_outputs: BTreeSet<String>,
    /// Tensors that are never negative (after ReLU), for the CPU encoding.
    nonneg: BTreeSet<String>,
    /// FP32 tensor → its FP16 cast, for layers a partial INT8 plan keeps in FP16.
    half: HashMap<String, String>,
    /// Weights written as FP16 that FP16 cannot hold: (name, largest |w|).
    fp16_overflow: Vec<(String, f32)>,
    /// Temporary tensor names handed out (renamed at each node's end).
    temps: usize,
}

impl Builder<'_> {
    fn weight(&self, name: &str) -> Result<&Tensor<f32>> {
        let t = self
            .w
            .get(name)
            .ok_or_else(|| Error::Export(format!("missing tensor `{name}`")))?;
        if !t.is_finite() {
            return Err(Error::Export(format!(
                "tensor `{name}` has non-finite values"
            )));
        }
        Ok(t)
    }

    fn half_precision(&self) -> bool {
        self.opts.precision == Precision::Fp16
    }

    /// A float initializer in the graph's float type.
    fn float_init(&mut self, name: &str) -> Result<String> {
        self.init(name, self.half_precision())
    }

    fn init(&mut self, name: &str, half: bool) -> Result<String> {
        let shape = self.weight(name)?.shape.clone();
        self.init_as(name, &shape, half)
    }

    /// The weight `name` written with `dims` (a broadcastable view of the same values).
    fn init_as(&mut self, name: &str, dims: &[usize], half: bool) -> Result<String> {
        let t = self.weight(name)?;
        let (proto, amax) = if half {
            let amax = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            (tensor_f16(name, dims, &t.data), amax)
        } else {
            (tensor_f32(name, dims, &t.data), 0.0)
        };
        if amax > half::f16::MAX.to_f32() {
            self.fp16_overflow.push((name.to_string(), amax));
        }
        self.inits.push(proto);
        Ok(name.to_string())
    }

    /// A scalar constant in the graph's float type.
    fn float_scalar(&mut self, name: &str, v: f32) -> String {
        self.inits.push(if self.half_precision() {
            tensor_f16(name, &[], &[v])
        } else {
            tensor_f32(name, &[], &[v])
        });
        name.to_string()
    }

    /// A fresh tensor name for a primitive's output.
    fn temp(&mut self, cx: &NodeCx) -> String {
        self.temps += 1;
        format!("{}__t{}", cx.name, self.temps)
    }

    /// One node `op` reading `inputs`, named after the spec node; returns its output.
    fn emit(
        &mut self,
        cx: &NodeCx,
        op: &str,
        inputs: &[&str],
        attrs: Vec<crate::pb::AttributeProto>,
    ) -> String {
        let out = self.temp(cx);
        self.nodes.push(node(op, cx.name, inputs, &[&out], attrs));
        out
    }

    /// `tensor` cast to FP16 (one Cast per tensor, shared by the kept layers reading it).
    fn half_of(&mut self, tensor: &str) -> String {
        if let Some(h) = self.half.get(tensor) {
            return h.clone();
        }
        let h = format!("{tensor}_fp16");
        self.cast(&h, tensor, &h, DataType::Float16);
        self.half.insert(tensor.to_string(), h.clone());
        h
    }

    /// A Cast node `name`: `input` → `output` of type `to`.
    fn cast(&mut self, name: &str, input: &str, output: &str, to: DataType) {
        self.nodes.push(node(
            "Cast",
            name,
            &[input],
            &[output],
            vec![attr_int("to", to as i64)],
        ));
    }

    /// The int8 weight with its DequantizeLinear, per output channel (axis 0).
    fn quant_weight(&mut self, name: &str) -> Result<String> {
        let t = self.weight(name)?.clone();
        let qmax = self.plan.map_or(127.0, |p| p.encoding.weight_qmax());
        let (q, s) = quantize_weight(&t, qmax);
        let o = t.shape[0];
        let (qn, sn, zn, out) = (
            format!("{name}_quantized"),
            format!("{name}_scale"),
            format!("{name}_zero_point"),
            format!("{name}_dequantized"),
        );
        self.inits.push(tensor_i8(&qn, &t.shape, &q));
        self.inits.push(tensor_f32(&sn, &[o], &s));
        self.inits.push(tensor_i8(&zn, &[o], &vec![0; o]));
        self.nodes.push(node(
            "DequantizeLinear",
            &out,
            &[&qn, &sn, &zn],
            &[&out],
            vec![attr_int("axis", 0)],
        ));
        Ok(out)
    }

    /// Q/DQ on an activation tensor, per tensor, shared by every consumer.
    ///
    /// TensorRT encoding: int8, zero point 0, scale amax/127. CPU encoding: uint8; zero point
    /// 0 and scale amax/255 on non-negative tensors (so ONNX Runtime drops the ReLU before the
    /// Q and fuses Conv→Q into QLinearConv), else zero point 128 and amax/127 (the signed grid).
    fn quant_act(&mut self, tensor: &str, key: &str, plan: &QuantPlan) -> Result<String> {
        if self.dq_outputs.contains(tensor) {
            return Ok(tensor.to_string());
        }
        if let Some(d) = self.dq.get(tensor) {
            return Ok(d.clone());
        }
        let amax = *plan.thresholds.get(key).ok_or_else(|| {
            Error::Export(format!("no calibrated threshold for activation `{key}`"))
        })?;
        if !(amax.is_finite() && amax > 0.0) {
            return Err(Error::Export(format!(
                "threshold of `{key}` is {amax}, must be positive"
            )));
        }
        let (sn, zn, qn, dn) = (
            format!("{tensor}_act_scale"),
            format!("{tensor}_act_zero_point"),
            format!("{tensor}_quantized"),
            format!("{tensor}_dequantized"),
        );
        let (scale, zp) = match plan.encoding {
            ActivationEncoding::SignedSymmetric => (amax / 127.0, tensor_i8(&zn, &[], &[0])),
            ActivationEncoding::UnsignedOffset if self.nonneg.contains(key) => {
                (amax / 255.0, tensor_u8(&zn, &[], &[0]))
            }
            ActivationEncoding::UnsignedOffset => (amax / 127.0, tensor_u8(&zn, &[], &[128])),
        };
        self.inits.push(tensor_f32(&sn, &[], &[scale]));
        self.inits.push(zp);
        self.nodes.push(node(
            "QuantizeLinear",
            &qn,
            &[tensor, &sn, &zn],
            &[&qn],
            vec![],
        ));
        self.nodes.push(node(
            "DequantizeLinear",
            &dn,
            &[&qn, &sn, &zn],
            &[&dn],
            vec![],
        ));
        self.dq.insert(tensor.to_string(), dn.clone());
        Ok(dn)
    }

    /// The INT8 plan when it quantises this layer.
    fn quantised(&self, layer: &str) -> Option<&QuantPlan> {
        self.plan
            .filter(|p| p.layers.as_ref().is_none_or(|l| l.contains(layer)))
    }

    /// A conv or linear layer `op` on `x` with the node's weight and bias, quantised (Q/DQ on
    /// its input and its weight), kept in FP16 (Cast → FP16 layer → Cast back, so the
    /// quantised layers around it keep their FP32 Q/DQ boundaries; opset 17 DQ is FP32), or
    /// in the graph's float type.
    fn layer(
        &mut self,
        cx: &NodeCx,
        op: &str,
        x: &str,
        attrs: Vec<crate::pb::AttributeProto>,
    ) -> Result<String> {
        let (weight, bias) = (cx.param("weight"), cx.param("bias"));
        let quantised = self.quantised(cx.name).cloned();
        let kept_half =
            quantised.is_none() && self.plan.is_some_and(|p| p.kept == KeptPrecision::Fp16);
        let (x, wt, b) = match &quantised {
            Some(p) => (
                self.quant_act(x, &cx.inputs[0], p)?,
                self.quant_weight(&weight)?,
                self.float_init(&bias)?,
            ),
            None if kept_half => (
                self.half_of(x),
                self.init(&weight, true)?,
                self.init(&bias, true)?,
            ),
            None => (
                x.to_string(),
                self.float_init(&weight)?,
                self.float_init(&bias)?,
            ),
        };
        if !kept_half {
            return Ok(self.emit(cx, op, &[&x, &wt, &b], attrs));
        }
        let half_out = format!("{}_fp16_out", cx.name);
        self.nodes
            .push(node(op, cx.name, &[&x, &wt, &b], &[&half_out], attrs));
        let out = self.temp(cx);
        self.cast(
            &format!("{}_to_fp32", cx.name),
            &half_out,
            &out,
            DataType::Float,
        );
        Ok(out)
    }
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

impl Backend for Builder<'_> {
    type T = String;
    type Error = Error;

    fn param(&mut self, cx: &NodeCx, leaf: &str) -> Result<String> {
        self.float_init(&cx.param(leaf))
    }
    fn unary(&mut self, cx: &NodeCx, x: &String, f: Unary) -> Result<String> {
        Ok(match f {
            Unary::Relu => self.emit(cx, "Relu", &[x], vec![]),
            Unary::LeakyRelu { alpha } => {
                self.emit(cx, "LeakyRelu", &[x], vec![attr_float("alpha", alpha)])
            }
            Unary::Clip { min, max } => {
                let lo = if min.is_finite() {
                    self.float_scalar(&format!("{}_min", cx.name), min)
                } else {
                    String::new()
                };
                let hi = if max.is_finite() {
                    self.float_scalar(&format!("{}_max", cx.name), max)
                } else {
                    String::new()
                };
                self.emit(cx, "Clip", &[x, &lo, &hi], vec![])
            }
            Unary::Sigmoid => self.emit(cx, "Sigmoid", &[x], vec![]),
            Unary::HardSigmoid { alpha, beta } => self.emit(
                cx,
                "HardSigmoid",
                &[x],
                vec![attr_float("alpha", alpha), attr_float("beta", beta)],
            ),
            Unary::HardSwish => self.emit(cx, "HardSwish", &[x], vec![]),
        })
    }
    fn binary(&mut self, cx: &NodeCx, a: &String, b: &String, f: BinaryKind) -> Result<String> {
        Ok(self.emit(cx, f.onnx(), &[a, b], vec![]))
    }
    fn affine(&mut self, cx: &NodeCx, x: &String) -> Result<String> {
        // [C] parameters as [C, 1, 1] (or [C] on flat features) so they broadcast per channel.
        let mut dims = vec![cx.out[0]];
        dims.extend(std::iter::repeat_n(1, cx.out.len() - 1));
        let half = self.half_precision();
        let scale = self.init_as(&cx.param("weight"), &dims, half)?;
        let shift = self.init_as(&cx.param("bias"), &dims, half)?;
        let y = self.emit(cx, "Mul", &[x, &scale], vec![]);
        let out = self.temp(cx);
        self.nodes.push(node(
            "Add",
            &format!("{}_shift", cx.name),
            &[&y, &shift],
            &[&out],
            vec![],
        ));
        Ok(out)
    }
    fn conv_transpose(&mut self, cx: &NodeCx, x: &String, op: &ConvTranspose) -> Result<String> {
        let (w, b) = (
            self.float_init(&cx.param("weight"))?,
            self.float_init(&cx.param("bias"))?,
        );
        let mut attrs = vec![
            attr_ints("kernel_shape", &ints(&op.kernel)),
            attr_ints("strides", &ints(&op.stride)),
            attr_ints("pads", &ints(&op.padding)),
            attr_ints("dilations", &ints(&op.dilation)),
            attr_int("group", op.groups as i64),
        ];
        if op.output_padding != [0, 0] {
            attrs.push(attr_ints("output_padding", &ints(&op.output_padding)));
        }
        Ok(self.emit(cx, "ConvTranspose", &[x, &w, &b], attrs))
    }
    fn max_pool(&mut self, cx: &NodeCx, x: &String, w: &Window) -> Result<String> {
        let mut attrs = vec![
            attr_ints("kernel_shape", &ints(&w.kernel)),
            attr_ints("strides", &ints(&w.stride)),
            attr_ints("pads", &ints(&w.padding)),
        ];
        if w.dilation != [1, 1] {
            attrs.push(attr_ints("dilations", &ints(&w.dilation)));
        }
        Ok(self.emit(cx, "MaxPool", &[x], attrs))
    }
    fn avg_pool(&mut self, cx: &NodeCx, x: &String, op: &AvgPool) -> Result<String> {
        let w = &op.window;
        let attrs = vec![
            attr_ints("kernel_shape", &ints(&w.kernel)),
            attr_ints("strides", &ints(&w.stride)),
            attr_ints("pads", &ints(&w.padding)),
            attr_int("count_include_pad", op.count_include_pad as i64),
        ];
        Ok(self.emit(cx, "AveragePool", &[x], attrs))
    }
    fn global_avg_pool(&mut self, cx: &NodeCx, x: &String) -> Result<String> {
        Ok(self.emit(cx, "GlobalAveragePool", &[x], vec![]))
    }
    fn concat(&mut self, cx: &NodeCx, xs: &[&String]) -> Result<String> {
        let ins: Vec<&str> = xs.iter().map(|s| s.as_str()).collect();
        Ok(self.emit(cx, "Concat", &ins, vec![attr_int("axis", 1)]))
    }
    fn flatten(&mut self, cx: &NodeCx, x: &String) -> Result<String> {
        Ok(self.emit(cx, "Flatten", &[x], vec![attr_int("axis", 1)]))
    }
    fn linear(&mut self, cx: &NodeCx, x: &String) -> Result<String> {
        self.layer(cx, "Gemm", x, vec![attr_int("transB", 1)])
    }
    fn resize(&mut self, cx: &NodeCx, x: &String, op: &Resize) -> Result<String> {
        let sizes = format!("{}_sizes", cx.name);
        self.inits.push(crate::onnx::tensor_i64(
            &sizes,
            &[4],
            &[
                self.opts.batch as i64,
                cx.out[0] as i64,
                op.height as i64,
                op.width as i64,
            ],
        ));
        let attrs = match op.mode {
            ResizeMode::Nearest => vec![
                attr_str("mode", "nearest"),
                attr_str("coordinate_transformation_mode", "asymmetric"),
                attr_str("nearest_mode", "floor"),
            ],
            ResizeMode::Bilinear => vec![
                attr_str("mode", "linear"),
                attr_str("coordinate_transformation_mode", "half_pixel"),
            ],
            ResizeMode::BilinearAlignCorners => vec![
                attr_str("mode", "linear"),
                attr_str("coordinate_transformation_mode", "align_corners"),
            ],
        };
        Ok(self.emit(cx, "Resize", &[x, "", "", &sizes], attrs))
    }
    fn l2_norm(&mut self, cx: &NodeCx, x: &String) -> Result<String> {
        // ReduceL2 → Max(·, eps) → Div: F.normalize's clamp, which LpNormalization lacks.
        let (norm, clamped, eps) = (
            format!("{}_norm", cx.name),
            format!("{}_norm_clamped", cx.name),
            format!("{}_eps", cx.name),
        );
        self.nodes.push(node(
            "ReduceL2",
            &norm,
            &[x],
            &[&norm],
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
        ));
        self.inits.push(if self.half_precision() {
            tensor_f16(&eps, &[], &[1e-7])
        } else {
            tensor_f32(&eps, &[], &[1e-12])
        });
        self.nodes
            .push(node("Max", &clamped, &[&norm, &eps], &[&clamped], vec![]));
        Ok(self.emit(cx, "Div", &[x, &clamped], vec![]))
    }
    fn finish<C>(&mut self, cx: &NodeCx, op: &Op<C>, y: String) -> Result<String> {
        // The node's tensor takes the node's name.
        match self
            .nodes
            .iter_mut()
            .rev()
            .find(|n| n.output.first() == Some(&y))
        {
            Some(n) if y.starts_with(&format!("{}__t", cx.name)) => {
                n.output[0] = cx.name.to_string();
            }
            _ => {
                self.nodes
                    .push(node("Identity", cx.name, &[&y], &[cx.name], vec![]));
            }
        }
        let out = cx.name.to_string();
        // CPU encoding: Q/DQ on conv outputs too, so ONNX Runtime sees DQ→Conv→Q and runs
        // QLinearConv (int8 in, int8 out) instead of dequantising around a float conv. Not on
        // a conv that is a model output: rounding the prediction itself to 8 bits (and
        // clipping it at a calibrated threshold) costs accuracy where nothing is gained, e.g.
        // a depth head in metres.
        if let (Some(p), Op::Conv(_)) = (self.quantised(cx.name).cloned(), op)
            && p.encoding == ActivationEncoding::UnsignedOffset
            && !self.spec.outputs.iter().any(|o| o.node == cx.name)
        {
            let d = self.quant_act(&out, cx.name, &p)?;
            self.dq_outputs.insert(d.clone());
            return Ok(d);
        }
        Ok(out)
    }
}

impl ConvBackend<DeployConv> for Builder<'_> {
    fn conv(&mut self, cx: &NodeCx, c: &DeployConv, x: &String) -> Result<String> {
        let s = &c.shape;
        self.layer(
            cx,
            "Conv",
            x,
            vec![
                attr_ints("kernel_shape", &ints(&s.kernel)),
                attr_ints("strides", &ints(&s.stride)),
                attr_ints("pads", &ints(&s.padding)),
                attr_ints("dilations", &ints(&s.dilation)),
                attr_int("group", s.groups as i64),
            ],
        )
    }
}

/// Tensors that cannot be negative: ReLU outputs, and pools, flattens and sums of them (each
/// op's own rule, [`overparam_fuse::ops::OpShape::nonnegative`]).
pub fn nonnegative_tensors(spec: &DeploySpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in &spec.nodes {
        let ins: Vec<bool> = n.inputs.iter().map(|i| out.contains(i)).collect();
        if n.op.nonnegative(&ins) {
            out.insert(n.name.clone());
        }
    }
    out
}

/// Exports a deploy spec and its weights as an ONNX model (opset 17, static shapes): every
/// node through its op's forward on the ONNX writer.
pub fn export(spec: &DeploySpec, w: &Weights<f32>, opts: &ExportOptions) -> Result<ModelProto> {
    spec.validate()?;
    overparam_fuse::checkpoint::check_against_layout(
        &overparam_fuse::layout::deploy_layout(spec),
        w,
    )?;
    if opts.batch == 0 {
        return Err(Error::Export("batch must be ≥ 1".into()));
    }
    let plan = match (opts.precision, &opts.quant) {
        (Precision::Int8, None) => {
            return Err(Error::Export("INT8 export needs calibrated scales".into()));
        }
        (Precision::Int8, Some(p)) => Some(p),
        _ => None,
    };
    let shapes = spec.infer_shapes()?;
    let with_batch = |s: &[usize]| {
        std::iter::once(opts.batch)
            .chain(s.iter().copied())
            .collect::<Vec<_>>()
    };
    let float = if opts.precision == Precision::Fp16 {
        DataType::Float16
    } else {
        DataType::Float
    };
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
        w,
        opts,
        spec,
        plan,
        dq: HashMap::new(),
        dq_outputs: BTreeSet::new(),
        nonneg: nonnegative_tensors(spec),
        half: HashMap::new(),
        fp16_overflow: vec![],
        temps: 0,
    };
    let input_name = INPUT.to_string();
    let input = if opts.precision == Precision::Fp16 {
        b.half_of(INPUT)
    } else {
        input_name.clone()
    };
    let name_of = overparam_fuse::ops::run_graph(spec, &shapes, &mut b, input)?;
    if !b.fp16_overflow.is_empty() {
        return Err(Error::Fp16Range(b.fp16_overflow));
    }
    let mut outputs = vec![];
    for o in &spec.outputs {
        let src = &name_of[&o.node];
        if opts.precision == Precision::Fp16 {
            b.cast(&o.name, src, &o.name, DataType::Float);
        } else {
            b.nodes
                .push(node("Identity", &o.name, &[src], &[&o.name], vec![]));
        }
        outputs.push(value_info(
            &o.name,
            DataType::Float,
            &with_batch(&shapes[&o.node]),
        ));
    }
    for t in &opts.extra_outputs {
        let s = shapes
            .get(t)
            .ok_or_else(|| Error::Export(format!("no tensor `{t}` to expose")))?;
        if float != DataType::Float {
            return Err(Error::Export("extra outputs are for FP32 models".into()));
        }
        outputs.push(value_info(t, DataType::Float, &with_batch(s)));
    }
    let i = &spec.input;
    let graph = GraphProto {
        name: Some(spec.model.clone()),
        node: b.nodes,
        initializer: b.inits,
        input: vec![value_info(
            &input_name,
            DataType::Float,
            &[opts.batch, i.channels, i.height, i.width],
        )],
        output: outputs,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("overparam".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "{} deploy model, {}",
            spec.model,
            opts.precision.as_str()
        )),
        graph: Some(graph),
        ..Default::default()
    })
}

pub fn to_bytes(m: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use overparam_fuse::init::random_weights;
    use overparam_fuse::layout::train_layout;
    use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
    use overparam_fuse::{MethodConfig, MethodKind, fold};

    fn deploy() -> (DeploySpec, Weights<f32>) {
        let t = build(
            ModelKind::VggSmall,
            &ClassifierOptions {
                width: 0.125,
                num_classes: 10,
                ..ClassifierOptions::new(MethodConfig::new(MethodKind::Plain))
            },
        )
        .unwrap();
        let w = random_weights::<f32>(&train_layout(&t).unwrap(), 4);
        fold(&t, &w).unwrap()
    }

    /// Weights beyond FP16's range are refused by name (they would be written as infinities),
    /// and still export at FP32.
    #[test]
    fn fp16_refuses_weights_it_cannot_hold() {
        let (spec, mut w) = deploy();
        let (first, _) = quantizable_layers(&spec).remove(0);
        let name = format!("{first}.weight");
        let t = w.get_mut(&name).unwrap();
        t.data.iter_mut().for_each(|v| *v *= 1e6);
        let amax = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(amax > 65504.0);
        let e = export(&spec, &w, &ExportOptions::new(Precision::Fp16)).unwrap_err();
        let Error::Fp16Range(bad) = &e else {
            panic!("{e}")
        };
        assert_eq!(bad, &vec![(name.clone(), amax)]);
        let msg = e.to_string();
        assert!(msg.contains(&name) && msg.contains("65504"), "{msg}");
        assert!(export(&spec, &w, &ExportOptions::new(Precision::Fp32)).is_ok());
    }
}
