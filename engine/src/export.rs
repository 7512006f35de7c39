//! ONNX export of a deploy spec: FP32, FP16 (FP16 types inside, FP32 at the edges, casts
//! between) and INT8 as explicit Q/DQ (symmetric per-channel int8 weights on axis 0, per-tensor
//! activations). One explicitly typed model serves TensorRT 10 (`--stronglyTyped`) and 11.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use overparam_fuse::spec::{DeploySpec, INPUT, Op};
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
        .filter(|n| matches!(n.op, Op::Conv(_) | Op::Linear { .. }))
        .map(|n| (n.name.clone(), n.inputs[0].clone()))
        .collect()
}

/// Per-output-channel symmetric int8 weights: s_c = max|W_c| / 127, q = round(W/s) ∈ [−127, 127].
pub fn quantize_weight(w: &Tensor<f32>) -> (Vec<i8>, Vec<f32>) {
    let o = w.shape[0];
    let per = w.numel() / o;
    let mut q = Vec::with_capacity(w.numel());
    let mut scales = Vec::with_capacity(o);
    for ch in w.data.chunks(per) {
        let amax = ch.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(
            ch.iter()
                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

struct Builder<'a> {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    w: &'a Weights<f32>,
    opts: &'a ExportOptions,
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

    /// A float initializer in the graph's float type.
    fn float_init(&mut self, name: &str) -> Result<String> {
        let half = self.opts.precision == Precision::Fp16;
        self.init(name, half)
    }

    fn init(&mut self, name: &str, half: bool) -> Result<String> {
        let t = self.weight(name)?;
        let (proto, amax) = if half {
            let amax = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            (tensor_f16(name, &t.shape, &t.data), amax)
        } else {
            (tensor_f32(name, &t.shape, &t.data), 0.0)
        };
        if amax > half::f16::MAX.to_f32() {
            self.fp16_overflow.push((name.to_string(), amax));
        }
        self.inits.push(proto);
        Ok(name.to_string())
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
        let (q, s) = quantize_weight(&t);
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
}

/// Tensors that cannot be negative: ReLU outputs, and pools, flattens and sums of them.
pub fn nonnegative_tensors(spec: &DeploySpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in &spec.nodes {
        let all_in = n.inputs.iter().all(|i| out.contains(i));
        let nonneg = match n.op {
            Op::Relu => true,
            Op::MaxPool { .. } | Op::GlobalAvgPool | Op::Flatten | Op::Add | Op::Resize { .. } => {
                all_in
            }
            Op::L2Norm => false,
            Op::Conv(_) | Op::Linear { .. } => false,
        };
        if nonneg {
            out.insert(n.name.clone());
        }
    }
    out
}

/// Exports a deploy spec and its weights as an ONNX model (opset 17, static shapes).
///
/// Long on purpose: one pass over the nodes with one arm per op, all sharing the builder,
/// the tensor-name map and the quantisation plan; split up, each arm would take them all as
/// arguments and the order of emitted nodes (which fixes the bytes) would be harder to see.
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
        dq: HashMap::new(),
        dq_outputs: BTreeSet::new(),
        nonneg: nonnegative_tensors(spec),
        half: HashMap::new(),
        fp16_overflow: vec![],
    };
    // Tensor names: the input, then one tensor per node named after the node.
    let mut name_of: HashMap<String, String> = HashMap::new();
    let input_name = INPUT.to_string();
    let input = if opts.precision == Precision::Fp16 {
        b.half_of(INPUT)
    } else {
        input_name.clone()
    };
    name_of.insert(INPUT.into(), input);
    for n in &spec.nodes {
        let ins: Vec<String> = n.inputs.iter().map(|i| name_of[i].clone()).collect();
        let out = n.name.clone();
        let quantised = plan.filter(|p| p.layers.as_ref().is_none_or(|l| l.contains(&n.name)));
        // A layer a partial INT8 plan keeps in FP16: Cast → FP16 layer → Cast back, so the
        // quantised layers around it keep their FP32 Q/DQ boundaries (opset 17 DQ is FP32).
        let kept_half = matches!(n.op, Op::Conv(_) | Op::Linear { .. })
            && quantised.is_none()
            && plan.is_some_and(|p| p.kept == KeptPrecision::Fp16);
        let layer_out = if kept_half {
            format!("{}_fp16_out", n.name)
        } else {
            out.clone()
        };
        let layer_inputs = |b: &mut Builder| -> Result<(String, String, String)> {
            let (weight, bias) = (format!("{}.weight", n.name), format!("{}.bias", n.name));
            Ok(match quantised {
                Some(p) => (
                    b.quant_act(&ins[0], &n.inputs[0], p)?,
                    b.quant_weight(&weight)?,
                    b.float_init(&bias)?,
                ),
                None if kept_half => (
                    b.half_of(&ins[0]),
                    b.init(&weight, true)?,
                    b.init(&bias, true)?,
                ),
                None => (ins[0].clone(), b.float_init(&weight)?, b.float_init(&bias)?),
            })
        };
        match &n.op {
            Op::Conv(c) => {
                let s = &c.shape;
                let (x, wt, bias) = layer_inputs(&mut b)?;
                let p = s.padding as i64;
                b.nodes.push(node(
                    "Conv",
                    &n.name,
                    &[&x, &wt, &bias],
                    &[&layer_out],
                    vec![
                        attr_ints("kernel_shape", &[s.kernel as i64; 2]),
                        attr_ints("strides", &[s.stride as i64; 2]),
                        attr_ints("pads", &[p, p, p, p]),
                        attr_ints("dilations", &[1, 1]),
                        attr_int("group", s.groups as i64),
                    ],
                ));
            }
            Op::Linear { .. } => {
                let (x, wt, bias) = layer_inputs(&mut b)?;
                b.nodes.push(node(
                    "Gemm",
                    &n.name,
                    &[&x, &wt, &bias],
                    &[&layer_out],
                    vec![attr_int("transB", 1)],
                ));
            }
            Op::Relu => b
                .nodes
                .push(node("Relu", &n.name, &[&ins[0]], &[&out], vec![])),
            Op::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                let p = *padding as i64;
                b.nodes.push(node(
                    "MaxPool",
                    &n.name,
                    &[&ins[0]],
                    &[&out],
                    vec![
                        attr_ints("kernel_shape", &[*kernel as i64; 2]),
                        attr_ints("strides", &[*stride as i64; 2]),
                        attr_ints("pads", &[p, p, p, p]),
                    ],
                ));
            }
            Op::GlobalAvgPool => b.nodes.push(node(
                "GlobalAveragePool",
                &n.name,
                &[&ins[0]],
                &[&out],
                vec![],
            )),
            Op::Add => b
                .nodes
                .push(node("Add", &n.name, &[&ins[0], &ins[1]], &[&out], vec![])),
            Op::Flatten => b.nodes.push(node(
                "Flatten",
                &n.name,
                &[&ins[0]],
                &[&out],
                vec![attr_int("axis", 1)],
            )),
            Op::Resize {
                height,
                width,
                mode,
            } => {
                let sizes = format!("{}_sizes", n.name);
                let c = shapes[&n.name][0];
                b.inits.push(crate::onnx::tensor_i64(
                    &sizes,
                    &[4],
                    &[opts.batch as i64, c as i64, *height as i64, *width as i64],
                ));
                let attrs = match mode {
                    overparam_fuse::spec::ResizeMode::Nearest => vec![
                        attr_str("mode", "nearest"),
                        attr_str("coordinate_transformation_mode", "asymmetric"),
                        attr_str("nearest_mode", "floor"),
                    ],
                    overparam_fuse::spec::ResizeMode::Bilinear => vec![
                        attr_str("mode", "linear"),
                        attr_str("coordinate_transformation_mode", "half_pixel"),
                    ],
                };
                b.nodes.push(node(
                    "Resize",
                    &n.name,
                    &[&ins[0], "", "", &sizes],
                    &[&out],
                    attrs,
                ));
            }
            Op::L2Norm => {
                // ReduceL2 → Max(·, eps) → Div: F.normalize's clamp, which LpNormalization lacks.
                let (norm, clamped, eps) = (
                    format!("{}_norm", n.name),
                    format!("{}_norm_clamped", n.name),
                    format!("{}_eps", n.name),
                );
                b.nodes.push(node(
                    "ReduceL2",
                    &norm,
                    &[&ins[0]],
                    &[&norm],
                    vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
                ));
                b.inits.push(if float == DataType::Float16 {
                    tensor_f16(&eps, &[], &[1e-7])
                } else {
                    tensor_f32(&eps, &[], &[1e-12])
                });
                b.nodes
                    .push(node("Max", &clamped, &[&norm, &eps], &[&clamped], vec![]));
                b.nodes
                    .push(node("Div", &n.name, &[&ins[0], &clamped], &[&out], vec![]));
            }
        }
        if kept_half {
            b.cast(
                &format!("{}_to_fp32", n.name),
                &layer_out,
                &out,
                DataType::Float,
            );
        }
        // CPU encoding: Q/DQ on conv outputs too, so ONNX Runtime sees DQ→Conv→Q and runs
        // QLinearConv (int8 in, int8 out) instead of dequantising around a float conv. Not on
        // a conv that is a model output: rounding the prediction itself to 8 bits (and
        // clipping it at a calibrated threshold) costs accuracy where nothing is gained, e.g.
        // a depth head in metres.
        let out = match (quantised, &n.op) {
            (Some(p), Op::Conv(_))
                if p.encoding == ActivationEncoding::UnsignedOffset
                    && !spec.outputs.iter().any(|o| o.node == n.name) =>
            {
                let d = b.quant_act(&out, &n.name, p)?;
                b.dq_outputs.insert(d.clone());
                d
            }
            _ => out,
        };
        name_of.insert(n.name.clone(), out);
    }
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
