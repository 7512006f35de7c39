//! Training-step cost of a method: median step time and peak memory on a fixed random batch.

use std::time::Instant;

use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind};
use tch::{Device, Kind, Tensor, nn};

use overparam_fuse::{TrainSpec, Weights};

use crate::error::Result;
use crate::model::OpModel;
use crate::optim::{Optimizer, Param};
use crate::qat::{Qat, QatPlan};
use overparam_config::OptimizerKind;

#[derive(Clone, Debug)]
pub struct StepStats {
    pub method: MethodKind,
    pub train_params: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// With [`StepBench::qat`]: the QAT step's median and minimum, timed interleaved with the
    /// FP32 step (one of each per round, so the machine's noise falls on both alike).
    pub qat: Option<(f64, f64)>,
}

/// What [`train_step_time`] measures.
#[derive(Clone, Debug)]
pub struct StepBench {
    pub model: ModelKind,
    pub width: f64,
    pub method: MethodKind,
    pub batch: usize,
    pub steps: usize,
    /// A classifier's (channels, side), e.g. (1, 28) for the MNIST family; default 3×32×32.
    pub input: Option<(usize, usize)>,
    pub device: Device,
    /// Also the QAT step of the same model ([`crate::qat`]: deploy kernels fake-quantised,
    /// TensorRT's encoding).
    pub qat: bool,
}

impl StepBench {
    pub fn new(model: ModelKind, width: f64, method: MethodKind, batch: usize) -> Self {
        Self {
            model,
            width,
            method,
            batch,
            steps: 3,
            input: None,
            device: Device::Cpu,
            qat: false,
        }
    }
}

/// One model and its optimiser, stepping on a fixed batch.
struct Stepper {
    m: OpModel,
    opt: Optimizer,
    mtl: bool,
}

impl Stepper {
    fn new(spec: &TrainSpec, w: &Weights<f32>, qat: Option<Qat>, device: Device) -> Result<Self> {
        let mut m = OpModel::new(&nn::VarStore::new(device).root(), spec, w)?;
        let mut params: Vec<Param> = m
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
        if let Some(q) = &qat {
            params.extend(q.params().into_iter().map(|(name, t)| Param {
                name,
                tensor: t.shallow_clone(),
                weight_decay: 0.0,
            }));
        }
        m.set_qat(qat);
        let opt = Optimizer {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: false,
            params,
            buffers: Default::default(),
            steps: 0,
        };
        Ok(Self {
            m,
            opt,
            mtl: spec.has_dense_outputs(),
        })
    }

    fn train_params(&self) -> usize {
        self.opt
            .params
            .iter()
            .filter(|p| !p.name.starts_with("qat."))
            .map(|p| p.tensor.numel())
            .sum()
    }

    /// One timed step, in ms.
    fn step(&mut self, x: &Tensor, t: &Tensor, device: Device) -> Result<f64> {
        let t0 = Instant::now();
        let (ys, frob) = self.m.forward_with_frobenius(x)?;
        let mut loss = if self.mtl {
            // A stand-in for the three task losses: the cost is in the network, not the loss.
            let mut l = ys[0].f_square()?.f_mean(Kind::Float)?;
            for y in &ys[1..] {
                l = l.f_add(&y.f_square()?.f_mean(Kind::Float)?)?;
            }
            l
        } else {
            ys[0].f_cross_entropy_loss::<Tensor>(t, None, tch::Reduction::Mean, -100, 0.0)?
        };
        if let Some(f) = frob {
            loss = loss.f_add(&f.f_mul_scalar(2.5e-4)?)?;
        }
        self.opt.zero_grad()?;
        loss.f_backward()?;
        self.opt.step(0.01)?;
        if let Some(q) = self.m.qat() {
            q.clamp()?;
        }
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// Runs `2 + steps` SGD steps (forward, cross-entropy + Frobenius decay, backward, update) of
/// one method, and with `qat` as many QAT steps interleaved, and returns the step-time
/// statistics (the first two of each are warm-up).
pub fn train_step_time(b: &StepBench) -> Result<StepStats> {
    let (batch, steps, device) = (b.batch, b.steps, b.device);
    if batch == 0 || steps == 0 {
        return Err(crate::error::Error::Config(format!(
            "bench: batch ({batch}) and steps ({steps}) must be at least 1"
        )));
    }
    // The multi-task net runs at a 3:4 NYUv2-like size (96×128), classifiers at 32×32.
    let (in_channels, image_size) = match b.input {
        Some(i) => i,
        None if b.model == ModelKind::Mtl => (3, 96),
        None => (3, 32),
    };
    let spec = build(
        b.model,
        &ClassifierOptions {
            width: b.width,
            image_size,
            in_channels,
            ..ClassifierOptions::new(MethodConfig::new(b.method))
        },
    )?;
    overparam_fuse::memory::check(&[&spec], batch, 1, "--width, --batch")?;
    let w = init_train_weights(&spec, &InitOptions::default())?;
    let mut fp32 = Stepper::new(&spec, &w, None, device)?;
    let mut qat = match b.qat {
        true => Some(Stepper::new(
            &spec,
            &w,
            Some(Qat::new(&spec, QatPlan::unit(&spec), device, true)?),
            device,
        )?),
        false => None,
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
    let (mut times, mut qat_times) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for i in 0..steps + 2 {
        let ms = fp32.step(&x, &t, device)?;
        let qms = match &mut qat {
            Some(q) => Some(q.step(&x, &t, device)?),
            None => None,
        };
        if i >= 2 {
            times.push(ms);
            qat_times.extend(qms);
        }
    }
    let (median_ms, min_ms) = median_min(times);
    Ok(StepStats {
        method: b.method,
        train_params: fp32.train_params(),
        median_ms,
        min_ms,
        qat: (!qat_times.is_empty()).then(|| median_min(qat_times)),
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
            let mut b = StepBench::new(model, 0.125, MethodKind::Sfo, 2);
            b.steps = 1;
            b.qat = model == ModelKind::VggSmall;
            let s = train_step_time(&b).unwrap();
            assert!(s.median_ms > 0.0 && s.train_params > 0, "{model:?}");
            assert_eq!(s.qat.is_some(), b.qat);
        }
        // A 1×28×28 classifier (the MNIST family) has a stem with fewer weights than 3×32×32's.
        let mut b = StepBench::new(ModelKind::VggSmall, 0.125, MethodKind::Plain, 2);
        b.steps = 1;
        let rgb = train_step_time(&b).unwrap();
        b.input = Some((1, 28));
        let gray = train_step_time(&b).unwrap();
        assert_eq!(rgb.train_params - gray.train_params, 2 * 9 * 4);
        for (batch, steps) in [(0, 1), (2, 0)] {
            let mut b = StepBench::new(ModelKind::VggSmall, 0.125, MethodKind::Plain, batch);
            b.steps = steps;
            let e = train_step_time(&b).unwrap_err().to_string();
            assert!(e.contains("at least 1"), "{e}");
        }
    }
}
