//! Multi-task losses and loss weighting for NYUv2 (MTAN protocol, methods.md §3.2 and §4).

use tch::{Kind, Tensor};

use crate::error::Result;

/// Pixel-wise cross-entropy over 13-class logits `[N, C, H, W]`, labels `[N, H, W]` as floats
/// with −1 ignored (MTAN: NLL on log-softmax, `ignore_index=-1`).
pub fn segmentation_loss(logits: &Tensor, label: &Tensor) -> Result<Tensor> {
    Ok(logits.f_cross_entropy_loss::<Tensor>(
        &label.f_to_kind(Kind::Int64)?,
        None,
        tch::Reduction::Mean,
        -1,
        0.0,
    )?)
}

/// Masked L1 over valid depth (ground truth ≠ 0); inputs `[N, 1, H, W]`.
pub fn depth_loss(pred: &Tensor, gt: &Tensor) -> Result<Tensor> {
    let mask = gt.f_ne(0.0)?.f_to_kind(Kind::Float)?;
    let n = mask.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    Ok(pred
        .f_sub(gt)?
        .f_abs()?
        .f_mul(&mask)?
        .f_sum(Kind::Float)?
        .f_div(&n)?)
}

/// 1 − mean cosine over valid pixels (ground truth not all-zero); inputs `[N, 3, H, W]`, the
/// prediction already unit length (MTAN's normal loss).
pub fn normal_loss(pred: &Tensor, gt: &Tensor) -> Result<Tensor> {
    let mask = gt
        .f_abs()?
        .f_sum_dim_intlist(1, true, Kind::Float)?
        .f_ne(0.0)?
        .f_to_kind(Kind::Float)?;
    let n = mask.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    let dot = pred
        .f_mul(gt)?
        .f_sum_dim_intlist(1, true, Kind::Float)?
        .f_mul(&mask)?
        .f_sum(Kind::Float)?;
    Ok(dot.f_div(&n)?.f_neg()?.f_add_scalar(1.0)?)
}

pub use overparam_config::Weighting;

pub const DWA_TEMPERATURE: f64 = 2.0;

/// Loss weighting state: learned log-variances (uncertainty) and epoch mean losses (DWA).
#[derive(Debug)]
pub struct Weighter {
    pub kind: Weighting,
    pub log_vars: Option<Tensor>,
    pub epoch_means: Vec<Vec<f64>>,
    tasks: usize,
}

impl Weighter {
    pub fn new(kind: Weighting, tasks: usize, root: &tch::nn::Path) -> Result<Self> {
        let log_vars = match kind {
            Weighting::Uncertainty => {
                Some(root.f_var("log_vars", &[tasks as i64], tch::nn::Init::Const(-0.5))?)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            log_vars,
            epoch_means: vec![],
            tasks,
        })
    }

    /// DWA's weights for the current epoch (all ones until two epochs are recorded).
    pub fn dwa_weights(&self) -> Vec<f64> {
        let e = self.epoch_means.len();
        if e < 2 {
            return vec![1.0; self.tasks];
        }
        let (last, prev) = (&self.epoch_means[e - 1], &self.epoch_means[e - 2]);
        let r: Vec<f64> = last
            .iter()
            .zip(prev)
            .map(|(a, b)| a / b.max(1e-12))
            .collect();
        let ex: Vec<f64> = r.iter().map(|v| (v / DWA_TEMPERATURE).exp()).collect();
        let z: f64 = ex.iter().sum();
        ex.iter().map(|v| self.tasks as f64 * v / z).collect()
    }

    /// Records an epoch's mean task losses (for DWA).
    pub fn end_epoch(&mut self, means: Vec<f64>) {
        self.epoch_means.push(means);
    }

    /// The total loss from per-task losses.
    pub fn combine(&self, losses: &[Tensor]) -> Result<Tensor> {
        let mut total = Tensor::f_zeros([], (Kind::Float, losses[0].device()))?;
        match self.kind {
            Weighting::Equal => {
                for l in losses {
                    total = total.f_add(l)?;
                }
            }
            Weighting::Dwa => {
                for (l, w) in losses.iter().zip(self.dwa_weights()) {
                    total = total.f_add(&l.f_mul_scalar(w)?)?;
                }
            }
            Weighting::Uncertainty => {
                let s = self
                    .log_vars
                    .as_ref()
                    .expect("uncertainty weighting has log-variances");
                for (t, l) in losses.iter().enumerate() {
                    let st = s.f_get(t as i64)?;
                    let term = st
                        .f_neg()?
                        .f_exp()?
                        .f_mul(l)?
                        .f_mul_scalar(0.5)?
                        .f_add(&st.f_mul_scalar(0.5)?)?;
                    total = total.f_add(&term)?;
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(shape)
    }

    #[test]
    fn losses_by_hand() {
        // Depth: pixel 1 invalid; |1−2| and |3−3| → mean 0.5.
        let d = depth_loss(
            &t(&[1.0, 5.0, 3.0], &[1, 1, 1, 3]),
            &t(&[2.0, 0.0, 3.0], &[1, 1, 1, 3]),
        )
        .unwrap();
        assert!((d.double_value(&[]) - 0.5).abs() < 1e-6);
        // Normals [N,3,H,W] with 2 pixels: pixel 0 exact (cos 1), pixel 1 invalid → loss 0;
        // with pixel 1 valid and orthogonal → 1 − (1+0)/2 = 0.5.
        // Channel-major: both predicted pixels are (0, 1, 0).
        let pred = t(&[0.0, 0.0, 1.0, 1.0, 0.0, 0.0], &[1, 3, 1, 2]);
        let gt_invalid = t(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], &[1, 3, 1, 2]);
        assert!(
            normal_loss(&pred, &gt_invalid)
                .unwrap()
                .double_value(&[])
                .abs()
                < 1e-6
        );
        let gt = t(&[0.0, 1.0, 1.0, 0.0, 0.0, 0.0], &[1, 3, 1, 2]);
        assert!((normal_loss(&pred, &gt).unwrap().double_value(&[]) - 0.5).abs() < 1e-6);
        // Segmentation: one valid pixel with uniform logits over 13 classes → ln 13; the −1
        // pixel is ignored.
        let logits = Tensor::zeros([1, 13, 1, 2], (Kind::Float, tch::Device::Cpu));
        let s = segmentation_loss(&logits, &t(&[4.0, -1.0], &[1, 1, 2])).unwrap();
        assert!((s.double_value(&[]) - 13f64.ln()).abs() < 1e-5);
    }

    #[test]
    fn weightings() {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let losses = [
            Tensor::from(1.0f32),
            Tensor::from(2.0f32),
            Tensor::from(4.0f32),
        ];
        let eq = Weighter::new(Weighting::Equal, 3, &vs.root()).unwrap();
        assert!((eq.combine(&losses).unwrap().double_value(&[]) - 7.0).abs() < 1e-6);
        // Uncertainty at s = −0.5: Σ ½e^{0.5}L + ½(−0.5).
        let uw = Weighter::new(Weighting::Uncertainty, 3, &vs.root()).unwrap();
        let want = 0.5 * 0.5f64.exp() * 7.0 - 0.75;
        assert!((uw.combine(&losses).unwrap().double_value(&[]) - want).abs() < 1e-5);
        // DWA: ones for two epochs, then T·softmax(r/2).
        let mut dwa = Weighter::new(Weighting::Dwa, 3, &vs.root()).unwrap();
        assert_eq!(dwa.dwa_weights(), vec![1.0; 3]);
        dwa.end_epoch(vec![1.0, 1.0, 1.0]);
        dwa.end_epoch(vec![1.0, 0.5, 2.0]);
        let w = dwa.dwa_weights();
        let ex = [0.5f64.exp(), 0.25f64.exp(), 1.0f64.exp()];
        let z: f64 = ex.iter().sum();
        for (a, e) in w.iter().zip(ex) {
            assert!((a - 3.0 * e / z).abs() < 1e-12);
        }
        assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-12);
    }
}
