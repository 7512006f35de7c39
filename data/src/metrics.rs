//! Classification metrics.

/// Top-k hits of one row of logits for a label.
pub fn topk_hit(logits: &[f32], label: usize, k: usize) -> bool {
    let target = logits[label];
    // Rank = number of classes scoring strictly higher (ties count in the label's favour).
    logits.iter().filter(|&&v| v > target).count() < k
}

/// Accumulates top-1 and top-5 errors over batches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopK {
    pub seen: usize,
    pub top1: usize,
    pub top5: usize,
}

impl TopK {
    pub fn add(&mut self, logits: &[f32], classes: usize, labels: &[i64]) {
        for (row, &l) in logits.chunks(classes).zip(labels) {
            self.seen += 1;
            self.top1 += topk_hit(row, l as usize, 1) as usize;
            self.top5 += topk_hit(row, l as usize, 5.min(classes)) as usize;
        }
    }
    /// Top-1 error in percent.
    pub fn top1_error(&self) -> f64 {
        100.0 * (1.0 - self.top1 as f64 / self.seen.max(1) as f64)
    }
    pub fn top5_error(&self) -> f64 {
        100.0 * (1.0 - self.top5 as f64 / self.seen.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_counts_ranks() {
        let mut m = TopK::default();
        // label 2 is the best in row 0, second best in row 1.
        m.add(
            &[0.1, 0.2, 0.9, 0.0, 0.3, 0.4, 0.9, 0.8, 0.1, 0.0],
            5,
            &[2, 2],
        );
        assert_eq!((m.seen, m.top1, m.top5), (2, 1, 2));
        assert!((m.top1_error() - 50.0).abs() < 1e-9);
    }
}

/// Segmentation confusion matrix over a whole set (rows: ground truth, columns: prediction),
/// as MTAN's `ConfMatrix`; labels outside `0..classes` (−1) are ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }
    pub fn add(&mut self, pred: &[usize], label: &[f32]) {
        for (&p, &l) in pred.iter().zip(label) {
            if l >= 0.0 && (l as usize) < self.classes && p < self.classes {
                self.counts[l as usize * self.classes + p] += 1;
            }
        }
    }
    /// Mean IoU over the classes present in the ground truth or the predictions (MTAN takes
    /// the plain mean, which is NaN when a class never occurs; we skip such classes).
    pub fn miou(&self) -> f64 {
        let n = self.classes;
        let ious: Vec<f64> = (0..n)
            .filter_map(|c| {
                let tp = self.counts[c * n + c] as f64;
                let row: u64 = self.counts[c * n..(c + 1) * n].iter().sum();
                let col: u64 = (0..n).map(|r| self.counts[r * n + c]).sum();
                let union = row as f64 + col as f64 - tp;
                (union > 0.0).then_some(tp / union)
            })
            .collect();
        ious.iter().sum::<f64>() / ious.len().max(1) as f64
    }
    pub fn pixel_accuracy(&self) -> f64 {
        let n = self.classes;
        let diag: u64 = (0..n).map(|c| self.counts[c * n + c]).sum();
        diag as f64 / self.counts.iter().sum::<u64>().max(1) as f64
    }
}

/// Depth and normal errors as MTAN's `depth_error`/`normal_error`: computed per batch over its
/// valid pixels (depth ≠ 0; normal not all-zero), then averaged over batches with equal weight,
/// as its trainer does. Angles in degrees; thresholds as fractions in [0, 1].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GeometryErrors {
    batches: usize,
    sums: [f64; 7],
}

impl GeometryErrors {
    /// One batch: depth maps (N·H·W) and normals (N·H·W·3, channel last, predictions unit length).
    pub fn add_batch(
        &mut self,
        depth_pred: &[f32],
        depth_gt: &[f32],
        normal_pred: &[f32],
        normal_gt: &[f32],
    ) {
        let (mut abs, mut rel, mut n) = (0.0, 0.0, 0usize);
        for (&p, &g) in depth_pred.iter().zip(depth_gt) {
            if g != 0.0 {
                abs += (p - g).abs() as f64;
                rel += ((p - g).abs() / g) as f64;
                n += 1;
            }
        }
        let mut angles: Vec<f64> = normal_pred
            .chunks(3)
            .zip(normal_gt.chunks(3))
            .filter(|(_, g)| g.iter().map(|v| v.abs()).sum::<f32>() != 0.0)
            .map(|(p, g)| {
                let d: f32 = p.iter().zip(g).map(|(a, b)| a * b).sum();
                (d.clamp(-1.0, 1.0) as f64).acos().to_degrees()
            })
            .collect();
        angles.sort_by(f64::total_cmp);
        let m = angles.len().max(1) as f64;
        let median = if angles.is_empty() {
            0.0
        } else if angles.len() % 2 == 1 {
            angles[angles.len() / 2]
        } else {
            (angles[angles.len() / 2 - 1] + angles[angles.len() / 2]) / 2.0
        };
        let frac = |t: f64| angles.iter().filter(|&&a| a < t).count() as f64 / m;
        let vals = [
            abs / n.max(1) as f64,
            rel / n.max(1) as f64,
            angles.iter().sum::<f64>() / m,
            median,
            frac(11.25),
            frac(22.5),
            frac(30.0),
        ];
        self.sums.iter_mut().zip(vals).for_each(|(s, v)| *s += v);
        self.batches += 1;
    }
    /// [abs err, rel err, mean°, median°, <11.25°, <22.5°, <30°].
    pub fn values(&self) -> [f64; 7] {
        self.sums.map(|s| s / self.batches.max(1) as f64)
    }
}

/// The nine NYUv2 metrics (order of [`NYU_HIGHER_IS_BETTER`]) from the accumulators.
pub fn nyu_metrics(conf: &Confusion, geo: &GeometryErrors) -> [f64; 9] {
    let g = geo.values();
    [
        conf.miou(),
        conf.pixel_accuracy(),
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        g[6],
    ]
}

/// Whether higher is better, per metric of `overparam_base::NYU_METRICS` (named there).
pub use overparam_base::task::NYU_HIGHER_IS_BETTER;

/// Δm% as CAGrad/Nash-MTL compute it: the mean over all nine metrics of the relative change
/// against the single-task baseline, signed so that **positive is worse** (methods.md §3.3).
pub fn delta_m_nash(m: &[f64; 9], base: &[f64; 9]) -> f64 {
    100.0
        * (0..9)
            .map(|k| {
                let s = if NYU_HIGHER_IS_BETTER[k] { -1.0 } else { 1.0 };
                s * (m[k] - base[k]) / base[k]
            })
            .sum::<f64>()
        / 9.0
}

/// LibMTL's `count_improvement`: relative changes averaged per task first, then over tasks;
/// **positive is better** (methods.md §3.3).
pub fn delta_p_libmtl(m: &[f64; 9], base: &[f64; 9]) -> f64 {
    let tasks = overparam_base::Task::ALL;
    let mut total = 0.0;
    for task in tasks {
        let mut t = 0.0;
        for k in task.metrics() {
            let s = if NYU_HIGHER_IS_BETTER[k] { 1.0 } else { -1.0 };
            t += s * (m[k] - base[k]) / base[k];
        }
        total += t / task.metrics().len() as f64;
    }
    100.0 * total / tasks.len() as f64
}

#[cfg(test)]
mod mtl_tests {
    use super::*;

    #[test]
    fn confusion_by_hand_with_ignored_and_absent_classes() {
        let mut c = Confusion::new(4);
        // gt:   0 0 1 1 -1 2 ; pred: 0 1 1 1 3 0 ; class 3 absent from gt, predicted only on an
        // ignored pixel, so it never counts.
        c.add(&[0, 1, 1, 1, 3, 0], &[0.0, 0.0, 1.0, 1.0, -1.0, 2.0]);
        // IoU: class0 = 1/(2+2-1)=1/3, class1 = 2/(2+3-2)=2/3, class2 = 0/(1+0-0)=0; class 3
        // has no union and is skipped.
        assert!((c.miou() - (1.0 / 3.0 + 2.0 / 3.0 + 0.0) / 3.0).abs() < 1e-12);
        assert!((c.pixel_accuracy() - 3.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn geometry_by_hand_with_invalid_pixels() {
        let mut g = GeometryErrors::default();
        // Depth: pixel 2 invalid. errors |1-2|=1 (rel .5), |3-3|=0 → abs .5, rel .25.
        // Normals: pixel 1 invalid; pixel 0 exact (0°), pixel 2 at 90°.
        g.add_batch(
            &[1.0, 9.0, 3.0],
            &[2.0, 0.0, 3.0],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        );
        let v = g.values();
        assert!((v[0] - 0.5).abs() < 1e-9 && (v[1] - 0.25).abs() < 1e-9);
        assert!((v[2] - 45.0).abs() < 1e-4 && (v[3] - 45.0).abs() < 1e-4);
        assert_eq!((v[4], v[5], v[6]), (0.5, 0.5, 0.5));
        // A second batch is averaged with equal weight (MTAN's trainer), not by pixel count.
        g.add_batch(&[1.0], &[1.0], &[0.0, 0.0, 1.0], &[0.0, 0.0, 1.0]);
        assert!((g.values()[0] - 0.25).abs() < 1e-9);
    }

    #[test]
    fn delta_m_conventions() {
        // methods.md Table A: STL vs EW (LS), Nash-style Δm% = 5.59 (positive = worse).
        let stl = [
            38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15,
        ];
        let ew = [
            39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08,
        ];
        assert!(
            (delta_m_nash(&ew, &stl) - 5.59).abs() < 0.01,
            "{}",
            delta_m_nash(&ew, &stl)
        );
        assert_eq!(delta_m_nash(&stl, &stl), 0.0);
        // Task-balanced LibMTL form, positive = better: by hand for a one-metric change.
        let mut m = stl;
        m[0] *= 1.1; // mIoU +10% → segmentation task +5% → overall +5/3 %
        assert!((delta_p_libmtl(&m, &stl) - 100.0 * 0.05 / 3.0).abs() < 1e-9);
    }
}
