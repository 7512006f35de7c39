//! The multi-task vocabulary, named once: the three dense tasks of the multi-task network and
//! the nine NYUv2 metrics (MTAN's table, fractions rather than percent) with their display
//! names, `metrics.csv` columns, task and direction.

use std::ops::Range;

/// NYUv2's semantic classes in the MTAN protocol (13: the 40-class labels grouped).
pub const NYU_CLASSES: usize = 13;

/// A dense task, in the network's output order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    Segmentation,
    Depth,
    Normals,
}

impl Task {
    /// Every task, in output order.
    pub const ALL: [Task; 3] = [Task::Segmentation, Task::Depth, Task::Normals];

    /// The name in configs (`mtl.tasks`, `baseline_for`), head tensors (`heads.<name>.*`),
    /// model outputs and topics.
    pub const fn name(self) -> &'static str {
        match self {
            Task::Segmentation => "segmentation",
            Task::Depth => "depth",
            Task::Normals => "normals",
        }
    }

    pub fn from_name(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Its loss column in `metrics.csv`.
    pub const fn loss_column(self) -> &'static str {
        match self {
            Task::Segmentation => "loss_seg",
            Task::Depth => "loss_depth",
            Task::Normals => "loss_normal",
        }
    }

    /// Its metrics, as indices into [`NYU_METRICS`] (segmentation 2, depth 2, normals 5).
    pub const fn metrics(self) -> Range<usize> {
        match self {
            Task::Segmentation => 0..2,
            Task::Depth => 2..4,
            Task::Normals => 4..9,
        }
    }
}

/// One NYUv2 metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NyuMetric {
    /// As tables and summaries show it.
    pub name: &'static str,
    /// Its column in `metrics.csv`.
    pub column: &'static str,
    pub task: Task,
    pub higher_is_better: bool,
}

const fn metric(
    name: &'static str,
    column: &'static str,
    task: Task,
    higher_is_better: bool,
) -> NyuMetric {
    NyuMetric {
        name,
        column,
        task,
        higher_is_better,
    }
}

/// The nine NYUv2 metrics in MTAN's order: mIoU, pixel accuracy, depth absolute and relative
/// error, normals mean and median angle error, and the fractions within 11.25°, 22.5°, 30°.
pub const NYU_METRICS: [NyuMetric; 9] = [
    metric("mIoU", "miou", Task::Segmentation, true),
    metric("pixel acc", "pix_acc", Task::Segmentation, true),
    metric("depth abs err", "abs_err", Task::Depth, false),
    metric("depth rel err", "rel_err", Task::Depth, false),
    metric("normals mean °", "mean_deg", Task::Normals, false),
    metric("normals median °", "median_deg", Task::Normals, false),
    metric("within 11.25°", "within_11_25", Task::Normals, true),
    metric("within 22.5°", "within_22_5", Task::Normals, true),
    metric("within 30°", "within_30", Task::Normals, true),
];

/// [`NYU_METRICS`]' display names.
pub const NYU_METRIC_NAMES: [&str; 9] = {
    let mut out = [""; 9];
    let mut i = 0;
    while i < 9 {
        out[i] = NYU_METRICS[i].name;
        i += 1;
    }
    out
};

/// [`NYU_METRICS`]' `metrics.csv` columns.
pub const NYU_METRIC_COLUMNS: [&str; 9] = {
    let mut out = [""; 9];
    let mut i = 0;
    while i < 9 {
        out[i] = NYU_METRICS[i].column;
        i += 1;
    }
    out
};

/// Whether a higher value of each of [`NYU_METRICS`] is better.
pub const NYU_HIGHER_IS_BETTER: [bool; 9] = {
    let mut out = [false; 9];
    let mut i = 0;
    while i < 9 {
        out[i] = NYU_METRICS[i].higher_is_better;
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_belongs_to_the_range_of_its_task_and_names_round_trip() {
        for t in Task::ALL {
            assert_eq!(Task::from_name(t.name()), Some(t));
            for k in t.metrics() {
                assert_eq!(NYU_METRICS[k].task, t, "{}", NYU_METRICS[k].name);
            }
        }
        let covered: usize = Task::ALL.iter().map(|t| t.metrics().len()).sum();
        assert_eq!(covered, 9);
        assert_eq!(Task::from_name("normal"), None);
        assert_eq!(NYU_METRIC_NAMES[4], "normals mean °");
        assert_eq!(NYU_METRIC_COLUMNS[8], "within_30");
        assert_eq!(
            NYU_HIGHER_IS_BETTER,
            [true, true, false, false, false, false, true, true, true]
        );
    }
}
