//! The fold gate at the end of a training run, the same for both trainers.
//!
//! The deploy checkpoint is written when the fold is exact **in f64 on the CPU**
//! ([`overparam_fuse::verify::fold_verified`]), whatever device trained the model. The training
//! device's own precision (CPU fp32, CUDA fp32 with or without TF32) is measured against the
//! same f64 reference, for the train model and the deploy model, and recorded in `fold.json`
//! next to the checkpoints; it never decides anything, so a correct fold cannot be refused
//! because a GPU rounds differently.

use std::path::Path;

use overparam_fuse::fold::as_train_spec;
use overparam_fuse::verify::{Folded, Precision, VerifyOptions, bound, fold_verified};
use tch::{Device, Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::model::OpModel;
use crate::state::{io, to_f};
use crate::trainer::DEPLOY_FILE;

/// The fold report of a run (verdict and measurements), written next to the deploy checkpoint.
pub use overparam_config::files::FOLD_FILE;

/// How the training device runs fp32, e.g. `cuda:0 fp32, TF32 on` or `cpu fp32 (libtorch)`.
pub fn device_precision(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!(
            "cuda:{i} fp32, TF32 {}",
            if crate::model::allow_tf32() {
                "on"
            } else {
                "off"
            }
        ),
        _ => "cpu fp32 (libtorch)".into(),
    }
}

/// Folds `model`, measures the device against the f64 reference, writes `fold.json`, and
/// returns the folded model with its tch twin only if the fold is exact in f64. `checked`
/// says which outputs the verdict covers (every conv block always counts).
pub fn fold_and_gate(
    dir: &Path,
    model: &OpModel,
    device: Device,
    checked: &dyn Fn(&str) -> bool,
) -> Result<(Folded, OpModel)> {
    let spec = model.spec().clone();
    let w = model.weights()?;
    let opts = VerifyOptions {
        batch: 2,
        seed: 0,
        measure: vec![Precision::Fp32],
    };
    let mut f = fold_verified(&spec, &w, &opts)?;
    let dmodel = OpModel::new(
        &nn::VarStore::new(device).root(),
        &as_train_spec(&f.spec)?,
        &f.weights,
    )?;
    let x = {
        let data: Vec<f32> = f.input.data.iter().map(|&v| v as f32).collect();
        let shape: Vec<i64> = f.input.shape.iter().map(|&d| d as i64).collect();
        Tensor::f_from_slice(&data)?
            .f_reshape(shape)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?
    };
    let label = device_precision(device);
    let tf32 = matches!(device, Device::Cuda(_)) && crate::model::allow_tf32();
    let u = if tf32 {
        Precision::Tf32
    } else {
        Precision::Fp32
    }
    .unit_roundoff();
    let b = bound(&f.report.depth, u, Precision::Fp32.unit_roundoff());
    use overparam_fuse::verify::MeasuredModel;
    for (which, m) in [
        (MeasuredModel::Train, model),
        (MeasuredModel::Deploy, &dmodel),
    ] {
        let name = match which {
            MeasuredModel::Train => "train",
            MeasuredModel::Deploy => "deploy",
        };
        let ys = tch::no_grad(|| m.forward(&x, false))?
            .iter()
            .map(to_f)
            .collect::<Result<Vec<_>>>()?;
        let mut measured = f.measure(
            &format!("{label}, {name} model"),
            &format!("the {name} model in libtorch on the training device"),
            &ys,
            b,
        );
        measured.model = Some(which);
        f.report.measured.push(measured);
    }
    let path = dir.join(FOLD_FILE);
    let json = serde_json::to_string_pretty(&f.report).expect("a fold report serialises");
    overparam_base::write_file_atomic(&path, json.as_bytes()).map_err(io(&path))?;
    if !f.report.exact.passed_for(checked) {
        return Err(Error::Run {
            dir: dir.into(),
            message: format!(
                "{}; not writing {DEPLOY_FILE} (details in {FOLD_FILE})",
                f.report.summary()
            ),
        });
    }
    Ok((f, dmodel))
}
