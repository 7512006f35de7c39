//! Training-step cost of a method: median step time and peak memory on a fixed random batch.

use std::time::Instant;

use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind};
use tch::{Device, Kind, Tensor, nn};

use crate::error::Result;
use crate::model::OpModel;
use crate::optim::{Optimizer, Param};
use overparam_config::OptimizerKind;

#[derive(Clone, Debug)]
pub struct StepStats {
    pub method: MethodKind,
    pub train_params: usize,
    pub median_ms: f64,
    pub min_ms: f64,
}

/// Runs `warmup + steps` SGD steps (forward, cross-entropy + Frobenius decay, backward, update)
/// of one method at batch `batch` and returns the step-time statistics. `input` is a
/// classifier's (channels, side), e.g. (1, 28) for the MNIST family; default 3×32×32.
pub fn train_step_time(
    model: ModelKind,
    width: f64,
    method: MethodKind,
    batch: usize,
    steps: usize,
    input: Option<(usize, usize)>,
    device: Device,
) -> Result<StepStats> {
    if batch == 0 || steps == 0 {
        return Err(crate::error::Error::Config(format!(
            "bench: batch ({batch}) and steps ({steps}) must be at least 1"
        )));
    }
    // The multi-task net runs at a 3:4 NYUv2-like size (96×128), classifiers at 32×32.
    let (in_channels, image_size) = match input {
        Some(i) => i,
        None if model == ModelKind::Mtl => (3, 96),
        None => (3, 32),
    };
    let spec = build(
        model,
        &ClassifierOptions {
            width,
            image_size,
            in_channels,
            ..ClassifierOptions::new(MethodConfig::new(method))
        },
    )?;
    overparam_fuse::memory::check(&[&spec], batch, 1, "--width, --batch")?;
    let w = init_train_weights(&spec, &InitOptions::default())?;
    let m = OpModel::new(&nn::VarStore::new(device).root(), &spec, &w)?;
    let params: Vec<Param> = m
        .names()
        .filter(|n| m.kind(n).is_some_and(|k| !k.is_buffer()))
        .map(|n| Param {
            name: n.to_string(),
            tensor: m.var(n).expect("known").shallow_clone(),
            weight_decay: if m.kind(n).is_some_and(|k| k.takes_weight_decay()) {
                5e-4
            } else {
                0.0
            },
        })
        .collect();
    let train_params = params.iter().map(|p| p.tensor.numel()).sum();
    let mut opt = Optimizer {
        kind: OptimizerKind::Sgd,
        momentum: 0.9,
        nesterov: false,
        params,
        buffers: Default::default(),
        steps: 0,
    };
    let i = &spec.input;
    let x = Tensor::f_randn(
        [
            batch as i64,
            i.channels as i64,
            i.height as i64,
            i.width as i64,
        ],
        (Kind::Float, device),
    )?;
    let t = Tensor::f_randint(
        spec.outputs.len().max(100) as i64,
        [batch as i64],
        (Kind::Int64, device),
    )?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let (ys, frob) = m.forward_with_frobenius(&x)?;
        let mut loss = if model == ModelKind::Mtl {
            // A stand-in for the three task losses: the cost is in the network, not the loss.
            let mut l = ys[0].f_square()?.f_mean(Kind::Float)?;
            for y in &ys[1..] {
                l = l.f_add(&y.f_square()?.f_mean(Kind::Float)?)?;
            }
            l
        } else {
            ys[0].f_cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Mean, -100, 0.0)?
        };
        if let Some(f) = frob {
            loss = loss.f_add(&f.f_mul_scalar(2.5e-4)?)?;
        }
        opt.zero_grad()?;
        loss.f_backward()?;
        opt.step(0.01)?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(StepStats {
        method,
        train_params,
        median_ms: times[times.len() / 2],
        min_ms: times[0],
    })
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every model, the multi-task net included, runs timed training steps.
    #[test]
    fn step_timing_runs_for_classifiers_and_the_mtl_net() {
        for model in [ModelKind::VggSmall, ModelKind::Mtl] {
            let s =
                train_step_time(model, 0.125, MethodKind::Sfo, 2, 1, None, Device::Cpu).unwrap();
            assert!(s.median_ms > 0.0 && s.train_params > 0, "{model:?}");
        }
        // A 1×28×28 classifier (the MNIST family) has a stem with fewer weights than 3×32×32's.
        let rgb = train_step_time(
            ModelKind::VggSmall,
            0.125,
            MethodKind::Plain,
            2,
            1,
            None,
            Device::Cpu,
        )
        .unwrap();
        let gray = train_step_time(
            ModelKind::VggSmall,
            0.125,
            MethodKind::Plain,
            2,
            1,
            Some((1, 28)),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(rgb.train_params - gray.train_params, 2 * 9 * 4);
        for (batch, steps) in [(0, 1), (2, 0)] {
            let e = train_step_time(
                ModelKind::VggSmall,
                0.125,
                MethodKind::Plain,
                batch,
                steps,
                None,
                Device::Cpu,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("at least 1"), "{e}");
        }
    }
}
