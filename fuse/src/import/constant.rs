//! Constants and the shape arithmetic exporters emit around them (the TorchScript exporter
//! computes Resize sizes as `Shape → Slice → Concat`), folded to constants at import: every
//! shape is static, so these never reach the spec.

use super::{Data, ImportCx, OnnxNode, OnnxTensor, Value};
use crate::error::Result;
use crate::import::ir::Attr;

/// The tensor of a `Constant` node.
pub(super) fn constant_node(n: &OnnxNode) -> Result<OnnxTensor> {
    let bad = |m: String| crate::Error::Import {
        node: n.name.clone(),
        op_type: n.op_type.clone(),
        message: m,
    };
    let (name, a) = n
        .attrs
        .iter()
        .next()
        .ok_or_else(|| bad("no value attribute".into()))?;
    Ok(match (name.as_str(), a) {
        ("value", Attr::Tensor(t)) => t.clone(),
        ("value_float", Attr::Float(v)) => OnnxTensor::f32(vec![], vec![*v]),
        ("value_floats", Attr::Floats(v)) => OnnxTensor::f32(vec![v.len()], v.clone()),
        ("value_int", Attr::Int(v)) => OnnxTensor::i64(vec![], vec![*v]),
        ("value_ints", Attr::Ints(v)) => OnnxTensor::i64(vec![v.len()], v.clone()),
        (other, _) => return Err(bad(format!("value attribute `{other}` is not supported"))),
    })
}

/// Op types folded when all their inputs are constants (and `Shape` of any tensor).
const FOLDABLE: &[&str] = &[
    "Shape",
    "Gather",
    "Slice",
    "Concat",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Reshape",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Floor",
    "Ceil",
    "ConstantOfShape",
];

fn norm_axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64).max(0) as usize
    } else {
        a as usize
    }
}

/// The folded value of `n`, or `None` when it is not shape arithmetic on constants.
pub(super) fn try_fold(cx: &ImportCx, n: &OnnxNode) -> Result<Option<OnnxTensor>> {
    if !FOLDABLE.contains(&n.op_type.as_str()) {
        return Ok(None);
    }
    let present: Vec<usize> = (0..n.inputs.len())
        .filter(|&i| !n.inputs[i].is_empty())
        .collect();
    if n.op_type == "Shape" {
        let dims: Vec<usize> = match cx.value(n, 0)? {
            Value::Act(node) => std::iter::once(cx.batch)
                .chain(cx.shapes[node].iter().copied())
                .collect(),
            Value::Const(t) => t.dims.clone(),
        };
        let r = dims.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(n.int("start", 0)?), clamp(n.int("end", r)?));
        let d: Vec<i64> = dims[s..e.max(s)].iter().map(|&v| v as i64).collect();
        return Ok(Some(OnnxTensor::i64(vec![d.len()], d)));
    }
    if !present.iter().all(|&i| cx.is_const(n, i)) {
        return Ok(None);
    }
    let c = |i: usize| cx.constant(n, i);
    let bad = |m: String| cx.bad(n, m);
    let t = match n.op_type.as_str() {
        "Gather" => {
            let (x, idx) = (c(0)?, c(1)?.ints());
            if x.dims.len() != 1 {
                return Err(bad("only gathering from a 1-D constant is supported".into()));
            }
            let len = x.dims[0] as i64;
            let pick = |v: &[i64]| -> Result<Vec<i64>> {
                idx.iter()
                    .map(|&i| {
                        let j = if i < 0 { i + len } else { i };
                        v.get(j as usize)
                            .copied()
                            .ok_or_else(|| bad(format!("index {i} out of range")))
                    })
                    .collect()
            };
            let dims = c(1)?.dims.clone();
            match &x.data {
                Data::I64(v) => OnnxTensor::i64(dims, pick(v)?),
                Data::F32(v) => {
                    let as_i: Vec<i64> = (0..v.len() as i64).collect();
                    let ix = pick(&as_i)?;
                    OnnxTensor::f32(dims, ix.iter().map(|&i| v[i as usize]).collect())
                }
            }
        }
        "Slice" => {
            let x = c(0)?;
            if x.dims.len() != 1 {
                return Err(bad("only slicing a 1-D constant is supported".into()));
            }
            let (starts, ends) = (c(1)?.ints(), c(2)?.ints());
            let steps = if n.inputs.len() > 4 && !n.inputs[4].is_empty() {
                c(4)?.ints()
            } else {
                vec![1]
            };
            if starts.len() != 1 || ends.len() != 1 || steps != [1] {
                return Err(bad("only a unit-step slice of one axis is supported".into()));
            }
            let len = x.dims[0] as i64;
            let clamp = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
            let (s, e) = (clamp(starts[0]), clamp(ends[0]).max(clamp(starts[0])));
            match &x.data {
                Data::I64(v) => OnnxTensor::i64(vec![e - s], v[s..e].to_vec()),
                Data::F32(v) => OnnxTensor::f32(vec![e - s], v[s..e].to_vec()),
            }
        }
        "Concat" => {
            let parts: Vec<&OnnxTensor> = present.iter().map(|&i| c(i)).collect::<Result<_>>()?;
            if parts.iter().any(|p| p.dims.len() > 1) {
                return Err(bad("only concatenating 1-D constants is supported".into()));
            }
            if parts.iter().all(|p| p.is_float()) {
                let v: Vec<f32> = parts.iter().flat_map(|p| p.floats()).collect();
                OnnxTensor::f32(vec![v.len()], v)
            } else {
                let v: Vec<i64> = parts.iter().flat_map(|p| p.ints()).collect();
                OnnxTensor::i64(vec![v.len()], v)
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let x = c(0)?.clone();
            let axes = match n.ints("axes")? {
                Some(a) => a,
                None if present.len() > 1 => c(1)?.ints(),
                None => vec![],
            };
            let mut dims = x.dims.clone();
            if n.op_type == "Unsqueeze" {
                let rank = dims.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect();
                ax.sort();
                for a in ax {
                    dims.insert(a.min(dims.len()), 1);
                }
            } else {
                let rank = dims.len();
                let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect();
                dims = dims
                    .iter()
                    .enumerate()
                    .filter(|(k, d)| {
                        !(if ax.is_empty() {
                            **d == 1
                        } else {
                            ax.contains(k)
                        })
                    })
                    .map(|(_, d)| *d)
                    .collect();
            }
            OnnxTensor { dims, data: x.data }
        }
        "Cast" => {
            let x = c(0)?;
            // ONNX TensorProto.DataType: 1 float, 10 float16, 11 double, 16 bfloat16.
            let to = n.int("to", 1)?;
            if matches!(to, 1 | 10 | 11 | 16) {
                OnnxTensor::f32(x.dims.clone(), x.floats())
            } else {
                OnnxTensor::i64(x.dims.clone(), x.ints())
            }
        }
        "Reshape" => {
            let x = c(0)?;
            let shape = c(1)?.ints();
            let total = x.len();
            let known: usize = shape
                .iter()
                .filter(|&&d| d > 0)
                .map(|&d| d as usize)
                .product();
            let dims: Vec<usize> = shape
                .iter()
                .enumerate()
                .map(|(k, &d)| match d {
                    -1 => total / known.max(1),
                    0 => x.dims.get(k).copied().unwrap_or(1),
                    d => d as usize,
                })
                .collect();
            if dims.iter().product::<usize>() != total {
                return Err(bad(format!("cannot reshape {} values to {shape:?}", total)));
            }
            OnnxTensor {
                dims,
                data: x.data.clone(),
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (c(0)?, c(1)?);
            let shape = crate::ops::binary::broadcast(&a.dims, &b.dims)
                .ok_or_else(|| bad("constant shapes do not broadcast".into()))?;
            let kind = match n.op_type.as_str() {
                "Add" => crate::ops::BinaryKind::Add,
                "Sub" => crate::ops::BinaryKind::Sub,
                "Mul" => crate::ops::BinaryKind::Mul,
                _ => crate::ops::BinaryKind::Div,
            };
            let ta = crate::Tensor::new(
                a.dims.clone(),
                a.floats().iter().map(|&v| v as f64).collect(),
            );
            let tb = crate::Tensor::new(
                b.dims.clone(),
                b.floats().iter().map(|&v| v as f64).collect(),
            );
            let y = crate::ops::binary::apply_broadcast(&ta, &tb, kind);
            if a.is_float() || b.is_float() {
                OnnxTensor::f32(shape, y.data.iter().map(|&v| v as f32).collect())
            } else {
                // Integer division truncates toward zero in ONNX's reference (as in C).
                OnnxTensor::i64(shape, y.data.iter().map(|&v| v.trunc() as i64).collect())
            }
        }
        "Floor" | "Ceil" => {
            let x = c(0)?;
            let f = if n.op_type == "Floor" {
                f32::floor
            } else {
                f32::ceil
            };
            OnnxTensor::f32(x.dims.clone(), x.floats().into_iter().map(f).collect())
        }
        "ConstantOfShape" => {
            let dims: Vec<usize> = c(0)?.ints().iter().map(|&d| d.max(0) as usize).collect();
            let total = dims.iter().product();
            match n.attrs.get("value") {
                Some(Attr::Tensor(v)) if v.is_float() => {
                    OnnxTensor::f32(dims, vec![v.floats()[0]; total])
                }
                Some(Attr::Tensor(v)) => OnnxTensor::i64(dims, vec![v.ints()[0]; total]),
                _ => OnnxTensor::f32(dims, vec![0.0; total]),
            }
        }
        _ => return Ok(None),
    };
    if t.len() > 1 << 20 {
        return Err(bad("folded constant is larger than 2^20 values".into()));
    }
    Ok(Some(t))
}
