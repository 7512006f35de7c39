//! SGD with momentum (and Nesterov) and Adam, written over plain tensors so their state can be
//! saved and a run resumed bit-identically (tch's optimiser keeps its buffers out of reach).
//! SGD as `torch.optim.SGD`: `b ← μ·b + g` (b = g at the first step), `d = g + μ·b` with
//! Nesterov else `b`, `p ← p − lr·d`. Adam as `torch.optim.Adam` (coupled L2): `m ← β₁m +
//! (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p − lr·m̂/(√v̂ + ε)` with bias-corrected m̂, v̂. In both,
//! `g` includes `wd·p` where weight decay applies.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::error::Result;
use overparam_config::{OptimConfig, OptimizerKind, Schedule};

#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub weight_decay: f64,
}

/// Adam's β₁, β₂ and ε (PyTorch's defaults).
pub const ADAM: (f64, f64, f64) = (0.9, 0.999, 1e-8);

/// SGD (with momentum, optionally Nesterov) or Adam over a group of parameters, with its
/// state in plain tensors.
#[derive(Debug)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    /// SGD's momentum μ (0: plain SGD).
    pub momentum: f64,
    pub nesterov: bool,
    pub params: Vec<Param>,
    /// Momentum buffers by parameter name (SGD), or `m.<name>` / `v.<name>` (Adam); absent
    /// until the first step.
    pub buffers: BTreeMap<String, Tensor>,
    /// Steps taken (Adam's bias correction).
    pub steps: usize,
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig, params: Vec<Param>) -> Self {
        Self {
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            kind: cfg.optimizer,
            params,
            buffers: BTreeMap::new(),
            steps: 0,
        }
    }

    fn adam_step(&mut self, lr: f64) -> Result<()> {
        let (b1, b2, eps) = ADAM;
        self.steps += 1;
        let (c1, c2) = (
            1.0 - b1.powi(self.steps as i32),
            1.0 - b2.powi(self.steps as i32),
        );
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let g = if p.weight_decay > 0.0 {
                g.f_add(&p.tensor.f_mul_scalar(p.weight_decay)?)?
            } else {
                g.f_detach_copy()?
            };
            let zeros = || g.f_zeros_like();
            let m = match self.buffers.remove(&format!("m.{}", p.name)) {
                Some(m) => m,
                None => zeros()?,
            };
            let v = match self.buffers.remove(&format!("v.{}", p.name)) {
                Some(v) => v,
                None => zeros()?,
            };
            let m = m.f_mul_scalar(b1)?.f_add(&g.f_mul_scalar(1.0 - b1)?)?;
            let v = v
                .f_mul_scalar(b2)?
                .f_add(&g.f_square()?.f_mul_scalar(1.0 - b2)?)?;
            let denom = v.f_div_scalar(c2)?.f_sqrt()?.f_add_scalar(eps)?;
            let update = m.f_div_scalar(c1)?.f_div(&denom)?.f_mul_scalar(lr)?;
            let _ = p.tensor.f_sub_(&update)?;
            self.buffers.insert(format!("m.{}", p.name), m);
            self.buffers.insert(format!("v.{}", p.name), v);
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.f_detach_()?;
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    pub fn step(&mut self, lr: f64) -> Result<()> {
        if self.kind == OptimizerKind::Adam {
            return tch::no_grad(|| self.adam_step(lr));
        }
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if p.weight_decay > 0.0 {
                    g.f_add(&p.tensor.f_mul_scalar(p.weight_decay)?)?
                } else {
                    g.f_detach_copy()?
                };
                if self.momentum > 0.0 {
                    let buf = match self.buffers.get_mut(&p.name) {
                        Some(b) => {
                            let _ = b.f_mul_scalar_(self.momentum)?.f_add_(&d)?;
                            b
                        }
                        None => self
                            .buffers
                            .entry(p.name.clone())
                            .or_insert(d.f_detach_copy()?),
                    };
                    d = if self.nesterov {
                        d.f_add(&buf.f_mul_scalar(self.momentum)?)?
                    } else {
                        buf.shallow_clone()
                    };
                }
                let _ = p.tensor.f_sub_(&d.f_mul_scalar(lr)?)?;
            }
            Ok(())
        })
    }
}

/// Learning rate at fractional epoch `t` (epoch + step/steps) of `total` epochs.
pub fn learning_rate(cfg: &OptimConfig, t: f64, total: usize) -> f64 {
    let base = cfg.lr;
    let lr = match &cfg.schedule {
        Schedule::Constant => base,
        Schedule::Multistep { milestones, gamma } => {
            base * gamma.powi(milestones.iter().filter(|&&m| t >= m as f64).count() as i32)
        }
        Schedule::Cosine => {
            0.5 * base * (1.0 + (std::f64::consts::PI * t / total.max(1) as f64).cos())
        }
    };
    if cfg.warmup_epochs > 0 && t < cfg.warmup_epochs as f64 {
        let f = t / cfg.warmup_epochs as f64;
        lr * (0.1 + 0.9 * f)
    } else {
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: Schedule, nesterov: bool) -> OptimConfig {
        OptimConfig {
            epochs: 200,
            batch_size: 1,
            lr: 0.1,
            momentum: 0.9,
            nesterov,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            schedule,
            warmup_epochs: 0,
            optimizer: Default::default(),
        }
    }

    #[test]
    fn schedules() {
        let m = cfg(
            Schedule::Multistep {
                milestones: vec![60, 120, 160],
                gamma: 0.2,
            },
            false,
        );
        assert!((learning_rate(&m, 59.9, 200) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&m, 60.0, 200) - 0.02).abs() < 1e-12);
        assert!((learning_rate(&m, 170.0, 200) - 0.1 * 0.2f64.powi(3)).abs() < 1e-12);
        let c = cfg(Schedule::Cosine, false);
        assert!((learning_rate(&c, 100.0, 200) - 0.05).abs() < 1e-12);
        let w = OptimConfig {
            warmup_epochs: 5,
            ..cfg(Schedule::Constant, false)
        };
        assert!((learning_rate(&w, 0.0, 200) - 0.01).abs() < 1e-12);
    }

    /// Two steps on f(p) = ½p² (g = p) against the hand-computed torch.optim.SGD sequence.
    #[test]
    fn matches_torch_sgd_update_rule() {
        for nesterov in [false, true] {
            let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
            let mut opt = Optimizer::new(
                &cfg(Schedule::Constant, nesterov),
                vec![Param {
                    name: "p".into(),
                    tensor: p.shallow_clone(),
                    weight_decay: 0.5,
                }],
            );
            let (mut want, mut buf): (f64, Option<f64>) = (1.0, None);
            for _ in 0..2 {
                opt.zero_grad().unwrap();
                (p.square() * 0.5).sum(tch::Kind::Float).backward();
                opt.step(0.1).unwrap();
                let g = want + 0.5 * want;
                let b = buf.map_or(g, |b| 0.9 * b + g);
                buf = Some(b);
                let d = if nesterov { g + 0.9 * b } else { b };
                want -= 0.1 * d;
            }
            assert!(
                (p.double_value(&[0]) - want).abs() < 1e-6,
                "nesterov {nesterov}"
            );
        }
    }

    /// Two Adam steps on f(p) = ½p² against the hand-computed torch.optim.Adam sequence.
    #[test]
    fn matches_torch_adam_update_rule() {
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut c = cfg(Schedule::Constant, false);
        c.optimizer = overparam_config::OptimizerKind::Adam;
        let mut opt = Optimizer::new(
            &c,
            vec![Param {
                name: "p".into(),
                tensor: p.shallow_clone(),
                weight_decay: 0.0,
            }],
        );
        let (mut want, mut m, mut v) = (1.0f64, 0.0, 0.0);
        for t in 1..=2 {
            opt.zero_grad().unwrap();
            (p.square() * 0.5).sum(tch::Kind::Float).backward();
            opt.step(0.1).unwrap();
            let g = want;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
            want -= 0.1 * mh / (vh.sqrt() + 1e-8);
        }
        assert!((p.double_value(&[0]) - want).abs() < 1e-6);
        assert_eq!(opt.steps, 2);
    }
}
