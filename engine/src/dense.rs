//! Accuracy per precision for the multi-task (dense prediction) network on an NYUv2-layout
//! split: the nine MTAN metrics through the CPU runtime, and INT8 calibration on its images.

use overparam_base::Progress;
use overparam_data::metrics::{Confusion, GeometryErrors};
use overparam_data::nyuv2::{CLASSES, NyuSample, NyuSplit};
use overparam_fuse::Weights;
use overparam_fuse::spec::DeploySpec;

use crate::error::{Error, Result};
use crate::export::{ExportOptions, Precision, export, to_bytes};
use crate::quant::{Calibration, Quantization, calibrate_inputs};
use crate::runtime::OrtRuntime;

/// Names of the nine metrics, in the order of [`evaluate`]'s result (named once, in
/// `overparam_base::NYU_METRICS`).
pub const METRICS: [&str; 9] = overparam_base::task::NYU_METRIC_NAMES;

/// One sample as the network's NCHW input (batch 1).
pub fn input(s: &NyuSample) -> Vec<f32> {
    let hw = s.height * s.width;
    let mut x = vec![0f32; 3 * hw];
    for i in 0..hw {
        for c in 0..3 {
            x[c * hw + i] = s.image[i * 3 + c];
        }
    }
    x
}

/// The nine metrics of a multi-task ONNX model (batch 1) over `split`, reading each task from
/// the output `heads` names. Depth and normal errors
/// are averaged per sample (MTAN averages per batch, so its numbers at batch > 1 differ slightly).
pub fn evaluate(model: &[u8], split: &NyuSplit, heads: &Heads) -> Result<[f64; 9]> {
    let mut rt = OrtRuntime::new(model, None)?;
    let mut score = Scorer::new(heads);
    for i in 0..split.len() {
        let s = split.get(i)?;
        score.add(&rt.run(&input(&s))?, &s)?;
    }
    Ok(score.metrics())
}

/// One sample's predictions, per task the model has: the class map, depth, and normals
/// channels last.
#[derive(Default)]
struct Predictions {
    seg: Option<Vec<usize>>,
    depth: Option<Vec<f32>>,
    normals: Option<Vec<f32>>,
}

/// The nine metrics accumulated sample by sample.
struct Scorer<'h> {
    heads: &'h Heads,
    conf: Confusion,
    geo: GeometryErrors,
}

impl<'h> Scorer<'h> {
    fn new(heads: &'h Heads) -> Self {
        Scorer {
            heads,
            conf: Confusion::new(CLASSES),
            geo: GeometryErrors::default(),
        }
    }

    /// Scores one sample's outputs and returns its predictions.
    fn add(&mut self, outs: &[crate::runtime::Output], s: &NyuSample) -> Result<Predictions> {
        use overparam_base::Task;
        let hw = s.height * s.width;
        // A task's output, checked to be N×C×H×W at the scene's size.
        let get = |t: Task| -> Result<Option<&crate::runtime::Output>> {
            let Some(name) = &self.heads[t as usize] else {
                return Ok(None);
            };
            let o = outs
                .iter()
                .find(|o| &o.0 == name)
                .ok_or_else(|| Error::Runtime(format!("the model has no `{name}` output")))?;
            if o.1.len() != 4 || o.1[2] * o.1[3] != hw {
                return Err(Error::Runtime(format!(
                    "model output {:?} does not match the data's {}×{}",
                    o.1, s.height, s.width
                )));
            }
            Ok(Some(o))
        };
        let mut p = Predictions::default();
        if let Some((_, shape, seg)) = get(Task::Segmentation)? {
            let c = shape[1];
            let pred: Vec<usize> = (0..hw)
                .map(|p| {
                    (0..c)
                        .max_by(|&a, &b| seg[a * hw + p].total_cmp(&seg[b * hw + p]))
                        .unwrap_or(0)
                })
                .collect();
            self.conf.add(&pred, &s.label);
            p.seg = Some(pred);
        }
        p.depth = get(Task::Depth)?.map(|o| o.2.clone());
        p.normals =
            get(Task::Normals)?.map(|o| (0..hw * 3).map(|j| o.2[(j % 3) * hw + j / 3]).collect());
        self.geo.add_batch(
            p.depth.as_deref().unwrap_or(&[]),
            if p.depth.is_some() { &s.depth } else { &[] },
            p.normals.as_deref().unwrap_or(&[]),
            if p.normals.is_some() { &s.normal } else { &[] },
        );
        Ok(p)
    }

    fn metrics(self) -> [f64; 9] {
        let mut m = overparam_data::metrics::nyu_metrics(&self.conf, &self.geo);
        for t in overparam_base::Task::ALL {
            if self.heads[t as usize].is_none() {
                m[t.metrics()].iter_mut().for_each(|v| *v = f64::NAN);
            }
        }
        m
    }
}

/// Two multi-task models on the same scenes ([`agreement`]): each one's nine metrics, A − B,
/// and how close their predictions are to each other, for the tasks both have.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DenseAgreement {
    pub scenes: usize,
    /// Metric names, in the order of the arrays ([`METRICS`]).
    pub metrics: [&'static str; 9],
    /// NaN (null in JSON) for a task the model has no output for.
    pub a: [f64; 9],
    pub b: [f64; 9],
    pub a_minus_b: [f64; 9],
    /// Pixels both assign the same class, percent.
    pub segmentation_pixel_agreement_pct: Option<f64>,
    /// Mean |depth A − depth B| over every pixel, metres.
    pub depth_mean_abs_diff: Option<f64>,
    /// Mean angle between A's and B's normals, degrees.
    pub normals_mean_angle_deg: Option<f64>,
}

/// Both models (batch-1 ONNX, outputs named by `heads_a` / `heads_b`) on every scene of
/// `split`, in one pass.
pub fn agreement(
    a: &[u8],
    b: &[u8],
    split: &NyuSplit,
    heads_a: &Heads,
    heads_b: &Heads,
) -> Result<DenseAgreement> {
    let (mut ra, mut rb) = (OrtRuntime::new(a, None)?, OrtRuntime::new(b, None)?);
    let (mut sa, mut sb) = (Scorer::new(heads_a), Scorer::new(heads_b));
    // (sum, count) per task: same class, |Δdepth|, angle.
    let mut acc = [(0f64, 0u64); 3];
    for i in 0..split.len() {
        let s = split.get(i)?;
        let x = input(&s);
        let pa = sa.add(&ra.run(&x)?, &s)?;
        let pb = sb.add(&rb.run(&x)?, &s)?;
        if let (Some(x), Some(y)) = (&pa.seg, &pb.seg) {
            acc[0].0 += x.iter().zip(y).filter(|(p, q)| p == q).count() as f64;
            acc[0].1 += x.len() as u64;
        }
        if let (Some(x), Some(y)) = (&pa.depth, &pb.depth) {
            acc[1].0 += x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() as f64)
                .sum::<f64>();
            acc[1].1 += x.len() as u64;
        }
        if let (Some(x), Some(y)) = (&pa.normals, &pb.normals) {
            for (u, v) in x.chunks_exact(3).zip(y.chunks_exact(3)) {
                let dot: f64 = u.iter().zip(v).map(|(p, q)| *p as f64 * *q as f64).sum();
                let n = |w: &[f32]| w.iter().map(|c| (*c as f64).powi(2)).sum::<f64>().sqrt();
                let c = dot / (n(u) * n(v)).max(1e-12);
                acc[2].0 += c.clamp(-1.0, 1.0).acos().to_degrees();
            }
            acc[2].1 += x.len() as u64 / 3;
        }
    }
    let mean = |(s, n): (f64, u64)| (n > 0).then(|| s / n as f64);
    let (ma, mb) = (sa.metrics(), sb.metrics());
    Ok(DenseAgreement {
        scenes: split.len(),
        metrics: METRICS,
        a: ma,
        b: mb,
        a_minus_b: std::array::from_fn(|k| ma[k] - mb[k]),
        segmentation_pixel_agreement_pct: mean(acc[0]).map(|v| 100.0 * v),
        depth_mean_abs_diff: mean(acc[1]),
        normals_mean_angle_deg: mean(acc[2]),
    })
}

/// The output carrying each dense task (segmentation, depth, normals), by role; `None` for a
/// task the model has no output for (its metrics are NaN).
pub type Heads = [Option<String>; 3];

/// An ONNX model's [`Heads`], by the roles its output names imply ([`overparam_base::Role::implied_by`]),
/// read from one run on a zero input.
pub fn heads_of_onnx(model: &[u8]) -> Result<Heads> {
    let outs = OrtRuntime::new(model, None)?.probe()?;
    Ok(overparam_base::Task::ALL.map(|t| {
        outs.iter()
            .find(|o| overparam_base::Role::implied_by(&o.0) == t.role())
            .map(|o| o.0.clone())
    }))
}

/// A deploy model's [`Heads`].
pub fn heads(spec: &DeploySpec) -> Heads {
    overparam_base::Task::ALL.map(|t| {
        spec.outputs
            .iter()
            .find(|o| o.role == t.role())
            .map(|o| o.name.clone())
    })
}

/// Samples `range` of the seeded permutation of `split`, as batch-1 inputs (the calibration
/// set is `0..n`, auto's held-out scenes follow it).
pub fn calibration_inputs(
    split: &NyuSplit,
    range: std::ops::Range<usize>,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let mut idx: Vec<usize> = (0..split.len()).collect();
    let mut rng = overparam_fuse::Rng::new(seed);
    for i in (1..idx.len()).rev() {
        idx.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let end = range.end.min(idx.len());
    idx[range.start.min(end)..end]
        .iter()
        .map(|&i| Ok(input(&split.get(i)?)))
        .collect()
}

/// The INT8 calibration of `q` on scenes of `split` (taken as they are: the scenes carry no
/// normalisation); auto chooses on the scenes after the calibration ones.
pub fn calibrate(
    spec: &DeploySpec,
    w: &Weights<f32>,
    split: &NyuSplit,
    q: &Quantization,
    progress: &dyn Progress,
) -> Result<Calibration> {
    q.check()?;
    let (n, h) = q.draw(split.len(), 1, "scenes", progress)?;
    let calib = calibration_inputs(split, 0..n, q.seed)?;
    let heldout = calibration_inputs(split, n..n + h, q.seed)?;
    calibrate_inputs(spec, w, &calib, &heldout, q, None, progress)
}

/// An exported model per precision.
pub type Models = Vec<(Precision, Vec<u8>)>;

/// One row of an accuracy-per-precision table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrecisionRow {
    pub precision: Precision,
    pub metrics: [f64; 9],
    pub onnx_bytes: usize,
}

/// FP32, FP16 and INT8 exports of one deploy model, evaluated on `eval`; INT8 calibrated on
/// `calib` by the recipe `q`. Returns the rows, the ONNX bytes of each precision (for writing
/// out) and the calibration.
pub fn precision_table(
    spec: &DeploySpec,
    w: &Weights<f32>,
    calib: &NyuSplit,
    eval: &NyuSplit,
    q: &Quantization,
    progress: &dyn Progress,
) -> Result<(Vec<PrecisionRow>, Models, Calibration)> {
    let cal = calibrate(spec, w, calib, q, progress)?;
    let p = &cal.plan;
    let mut rows = vec![];
    let mut models = vec![];
    for prec in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
        let mut o = ExportOptions::new(prec);
        if prec == Precision::Int8 {
            o.quant = Some(p.clone());
        }
        let bytes = to_bytes(&export(spec, w, &o)?);
        rows.push(PrecisionRow {
            precision: prec,
            metrics: evaluate(&bytes, eval, &heads(spec))?,
            onnx_bytes: bytes.len(),
        });
        models.push((prec, bytes));
    }
    Ok((rows, models, cal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_channel_first() {
        let s = NyuSample {
            height: 1,
            width: 2,
            image: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            label: vec![0.0; 2],
            depth: vec![1.0; 2],
            normal: vec![0.0; 6],
        };
        assert_eq!(input(&s), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
