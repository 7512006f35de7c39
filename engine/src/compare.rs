//! A golden comparison of two models on the same inputs, in the manner of Polygraphy's
//! `polygraphy run --onnxrt --trt`: per output, max absolute and relative error, mean error,
//! cosine similarity, NaN and Inf counts, and a verdict against `atol`/`rtol`; with
//! `layerwise`, every conv output of both ONNX models is compared too, and the first layer
//! out of tolerance (in graph order) and the worst five are named.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pb::ModelProto;
use crate::runtime::OrtRuntime;

/// The tolerance: an element matches when |a − b| ≤ atol + rtol·|b| (numpy's `allclose`, B
/// the reference). A NaN or an infinity in one model where the other has a finite value, or
/// two different infinities, never match.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

/// One tensor compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorDiff {
    pub name: String,
    pub elements: usize,
    pub max_abs: f64,
    /// max |a − b| / |b| over elements where b ≠ 0.
    pub max_rel: f64,
    pub mean_abs: f64,
    /// a·b / (|a||b|) over all finite elements (1 for two zero tensors).
    pub cosine: f64,
    pub nan: [usize; 2],
    pub inf: [usize; 2],
    /// Elements out of tolerance.
    pub mismatched: usize,
    /// The worst element's |a − b| / (atol + rtol·|b|): ≤ 1 is within tolerance.
    pub worst_ratio: f64,
}

impl TensorDiff {
    pub fn passed(&self) -> bool {
        self.mismatched == 0
    }

    fn of(name: &str, a: &[f32], b: &[f32], tol: Tolerance) -> Self {
        let mut d = TensorDiff {
            name: name.to_string(),
            elements: a.len(),
            max_abs: 0.0,
            max_rel: 0.0,
            mean_abs: 0.0,
            cosine: 1.0,
            nan: [0, 0],
            inf: [0, 0],
            mismatched: 0,
            worst_ratio: 0.0,
        };
        let (mut dot, mut na, mut nb, mut sum, mut finite) = (0f64, 0f64, 0f64, 0f64, 0usize);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x as f64, y as f64);
            d.nan[0] += x.is_nan() as usize;
            d.nan[1] += y.is_nan() as usize;
            d.inf[0] += x.is_infinite() as usize;
            d.inf[1] += y.is_infinite() as usize;
            if !(x.is_finite() && y.is_finite()) {
                // Equal infinities match; anything else that is not finite does not.
                if !(x.is_infinite() && x == y) {
                    d.mismatched += 1;
                    d.worst_ratio = f64::INFINITY;
                }
                continue;
            }
            let e = (x - y).abs();
            finite += 1;
            sum += e;
            d.max_abs = d.max_abs.max(e);
            if y != 0.0 {
                d.max_rel = d.max_rel.max(e / y.abs());
            }
            let allowed = tol.atol + tol.rtol * y.abs();
            let ratio = if allowed > 0.0 {
                e / allowed
            } else if e > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            d.worst_ratio = d.worst_ratio.max(ratio);
            if e > allowed {
                d.mismatched += 1;
            }
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
        d.mean_abs = if finite > 0 { sum / finite as f64 } else { 0.0 };
        d.cosine = if na == 0.0 && nb == 0.0 {
            1.0
        } else if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            dot / (na.sqrt() * nb.sqrt())
        };
        d
    }
}

/// What [`compare`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub tolerance: Tolerance,
    /// The input shape both models were fed, and how many seeded batches.
    pub input_shape: Vec<usize>,
    pub batches: usize,
    pub outputs: Vec<TensorDiff>,
    /// With `layerwise`: every conv output both models have, in A's graph order.
    pub layers: Vec<TensorDiff>,
    /// The first layer out of tolerance, in graph order.
    pub first_over: Option<String>,
    /// The five layers with the largest `worst_ratio`, worst first.
    pub worst: Vec<String>,
}

impl Comparison {
    /// Every model output within tolerance (layers are diagnostics, not the verdict).
    pub fn passed(&self) -> bool {
        self.outputs.iter().all(TensorDiff::passed)
    }
}

/// Ops whose output is a quantised integer tensor: never compared (and never marked as a float
/// output).
const INTEGER_OUTPUTS: &[&str] = &[
    "QuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
];

/// The float tensors each node of `m` produces, in graph order, with the op that makes them.
fn produced(m: &ModelProto) -> Vec<(String, String)> {
    m.graph
        .iter()
        .flat_map(|g| &g.node)
        .flat_map(|n| {
            let op = n.op_type.clone().unwrap_or_default();
            n.output.iter().map(move |o| (o.clone(), op.clone()))
        })
        .filter(|(name, op)| !name.is_empty() && !INTEGER_OUTPUTS.contains(&op.as_str()))
        .collect()
}

/// The names `--layerwise` compares: the output of every Conv of `a` that `b` also produces as
/// a float tensor; then, for models in which the conv is followed by Q/DQ (an INT8 export),
/// the float tensor named after the layer that both produce. Graph order of `a`.
pub fn layer_names(a: &ModelProto, b: &ModelProto) -> Vec<String> {
    let in_b: BTreeSet<String> = produced(b).into_iter().map(|(n, _)| n).collect();
    let mut out = vec![];
    for n in a.graph.iter().flat_map(|g| &g.node) {
        if n.op_type.as_deref() != Some("Conv") {
            continue;
        }
        // An export names each layer's final tensor after the layer (its node name without
        // the op suffix); prefer that, else the conv's own output.
        let layer = n
            .name
            .as_deref()
            .and_then(|s| s.rsplit_once('/').map(|p| p.0).or(Some(s)))
            .unwrap_or_default()
            .to_string();
        for cand in [layer, n.output.first().cloned().unwrap_or_default()] {
            if !cand.is_empty() && in_b.contains(&cand) && !out.contains(&cand) {
                out.push(cand);
                break;
            }
        }
    }
    let in_a: BTreeSet<String> = produced(a).into_iter().map(|(n, _)| n).collect();
    out.retain(|n| in_a.contains(n));
    out
}

/// `model` with `names` added as float graph outputs (shape left to the runtime).
pub fn with_outputs(model: &ModelProto, names: &[String]) -> Vec<u8> {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let have: BTreeSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
        for n in names.iter().filter(|n| !have.contains(*n)) {
            let mut vi = crate::onnx::value_info(n, crate::pb::tensor_proto::DataType::Float, &[]);
            if let Some(crate::pb::type_proto::Value::TensorType(t)) =
                vi.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.shape = None;
            }
            g.output.push(vi);
        }
    }
    m.encode_to_vec()
}

/// Runs `a` and `b` (ONNX bytes) on `batches` seeded N(0, 1) inputs of their common input
/// shape and compares every output by name, and with `layerwise` every conv output.
pub fn compare(
    a: &[u8],
    b: &[u8],
    batches: usize,
    seed: u64,
    tol: Tolerance,
    layerwise: bool,
) -> Result<Comparison> {
    let decode = |bytes: &[u8], which: &str| {
        ModelProto::decode(bytes)
            .map_err(|e| Error::Runtime(format!("model {which} is not ONNX: {e}")))
    };
    let (ma, mb) = (decode(a, "A")?, decode(b, "B")?);
    let graph_outputs = |m: &ModelProto| -> Vec<String> {
        m.graph
            .iter()
            .flat_map(|g| &g.output)
            .filter_map(|o| o.name.clone())
            .collect()
    };
    let (outs_a, outs_b) = (graph_outputs(&ma), graph_outputs(&mb));
    let layers = if layerwise {
        layer_names(&ma, &mb)
    } else {
        vec![]
    };
    let mut ra = OrtRuntime::new(a, None)?;
    let mut rb = OrtRuntime::new(b, None)?;
    // The layers come from a second pair of sessions: a conv output marked as a graph output
    // stops ONNX Runtime fusing Q/DQ around it (QLinearConv), so the marked models are not
    // the ones the verdict is about.
    let mut marked = if layers.is_empty() {
        None
    } else {
        Some((
            OrtRuntime::new(&with_outputs(&ma, &layers), None)?,
            OrtRuntime::new(&with_outputs(&mb, &layers), None)?,
        ))
    };
    let fix = |r: &mut OrtRuntime| -> Result<Vec<usize>> {
        let dims = r.input_dims().to_vec();
        let shape: Vec<usize> = dims
            .iter()
            .map(|&d| if d < 0 { 1 } else { d as usize })
            .collect();
        r.set_input_shape(&shape)?;
        Ok(shape)
    };
    let (sa, sb) = (fix(&mut ra)?, fix(&mut rb)?);
    if let Some((x, y)) = marked.as_mut() {
        fix(x)?;
        fix(y)?;
    }
    if sa != sb {
        return Err(Error::Runtime(format!(
            "the models take different inputs: A {sa:?}, B {sb:?} (a symbolic dimension counted as 1)"
        )));
    }
    if outs_a != outs_b {
        return Err(Error::Runtime(format!(
            "the models have different outputs: A {outs_a:?}, B {outs_b:?}"
        )));
    }
    let n: usize = sa.iter().product();
    let mut rng = overparam_fuse::Rng::derive(seed, "compare");
    // Model outputs from the unmodified sessions, layers from the marked ones.
    let mut got: BTreeMap<String, [Vec<f32>; 2]> = BTreeMap::new();
    let mut got_layers: BTreeMap<String, [Vec<f32>; 2]> = BTreeMap::new();
    for _ in 0..batches {
        let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        for (k, r) in [&mut ra, &mut rb].into_iter().enumerate() {
            for (name, _, data) in r.run(&x)? {
                got.entry(name).or_default()[k].extend(data);
            }
        }
        if let Some((x_a, x_b)) = marked.as_mut() {
            for (k, r) in [x_a, x_b].into_iter().enumerate() {
                for (name, _, data) in r.run(&x)? {
                    if layers.contains(&name) {
                        got_layers.entry(name).or_default()[k].extend(data);
                    }
                }
            }
        }
    }
    let diff = |got: &BTreeMap<String, [Vec<f32>; 2]>, name: &str| -> Result<TensorDiff> {
        let [x, y] = got
            .get(name)
            .ok_or_else(|| Error::Runtime(format!("no values for `{name}`")))?;
        if x.len() != y.len() {
            return Err(Error::Runtime(format!(
                "`{name}` has {} values in A and {} in B",
                x.len(),
                y.len()
            )));
        }
        Ok(TensorDiff::of(name, x, y, tol))
    };
    let outputs = outs_a
        .iter()
        .map(|o| diff(&got, o))
        .collect::<Result<Vec<_>>>()?;
    let layers = layers
        .iter()
        .map(|l| diff(&got_layers, l))
        .collect::<Result<Vec<_>>>()?;
    let first_over = layers.iter().find(|l| !l.passed()).map(|l| l.name.clone());
    let mut ranked: Vec<&TensorDiff> = layers.iter().collect();
    ranked.sort_by(|x, y| y.worst_ratio.total_cmp(&x.worst_ratio));
    Ok(Comparison {
        tolerance: tol,
        input_shape: sa,
        batches,
        outputs,
        worst: ranked.iter().take(5).map(|l| l.name.clone()).collect(),
        layers,
        first_over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_nans_and_infinities() {
        let tol = Tolerance {
            atol: 1e-3,
            rtol: 1e-2,
        };
        let d = TensorDiff::of("t", &[1.0, 2.0, 0.0], &[1.0, 2.01, 0.0005], tol);
        assert!(d.passed(), "{d:?}");
        assert!((d.max_abs - 0.01).abs() < 1e-6);
        let d = TensorDiff::of("t", &[1.0, 3.0], &[1.0, 2.0], tol);
        assert_eq!(d.mismatched, 1);
        assert!(d.worst_ratio > 1.0);
        let d = TensorDiff::of(
            "t",
            &[f32::NAN, f32::INFINITY, 1.0],
            &[0.0, f32::INFINITY, 1.0],
            tol,
        );
        assert_eq!((d.nan, d.inf, d.mismatched), ([1, 0], [1, 1], 1));
        let d = TensorDiff::of("t", &[0.0; 3], &[0.0; 3], tol);
        assert_eq!((d.cosine, d.mismatched), (1.0, 0));
    }
}
