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
