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
    use overparam_base::Task;
    let mut rt = OrtRuntime::new(model, None)?;
    let mut conf = Confusion::new(CLASSES);
    let mut geo = GeometryErrors::default();
    for i in 0..split.len() {
        let s = split.get(i)?;
        let outs = rt.run(&input(&s))?;
        let get = |t: Task| -> Result<Option<&crate::runtime::Output>> {
            let Some(name) = &heads[t as usize] else {
                return Ok(None);
            };
            outs.iter()
                .find(|o| &o.0 == name)
                .map(Some)
                .ok_or_else(|| Error::Runtime(format!("the model has no `{name}` output")))
        };
        let hw = s.height * s.width;
        if let Some((_, shape, seg)) = get(Task::Segmentation)? {
            if shape[2] * shape[3] != hw {
                return Err(Error::Runtime(format!(
                    "model output {shape:?} does not match the data's {}×{}",
                    s.height, s.width
                )));
            }
            let c = shape[1];
            let pred: Vec<usize> = (0..hw)
                .map(|p| {
                    (0..c)
                        .max_by(|&a, &b| seg[a * hw + p].total_cmp(&seg[b * hw + p]))
                        .unwrap_or(0)
                })
                .collect();
            conf.add(&pred, &s.label);
        }
        let depth = get(Task::Depth)?.map(|o| o.2.as_slice());
        let normals: Option<Vec<f32>> =
            get(Task::Normals)?.map(|o| (0..hw * 3).map(|j| o.2[(j % 3) * hw + j / 3]).collect());
        geo.add_batch(
            depth.unwrap_or(&[]),
            if depth.is_some() { &s.depth } else { &[] },
            normals.as_deref().unwrap_or(&[]),
            if normals.is_some() { &s.normal } else { &[] },
        );
    }
    let mut m = overparam_data::metrics::nyu_metrics(&conf, &geo);
    for t in Task::ALL {
        if heads[t as usize].is_none() {
            m[t.metrics()].iter_mut().for_each(|v| *v = f64::NAN);
        }
    }
    Ok(m)
}

/// The output carrying each dense task (segmentation, depth, normals), by role; `None` for a
/// task the model has no output for (its metrics are NaN).
pub type Heads = [Option<String>; 3];

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
