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

/// What a model output means, so training, accuracy and the bridge read it instead of its
/// name: class logits (N×K), per-pixel class logits (N×K×H×W), depth in metres (N×1×H×W),
/// unit surface normals (N×3×H×W), or a tensor passed through as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    ClassLogits,
    SegmentationLogits,
    Depth,
    Normals,
    Raw,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::ClassLogits,
        Role::SegmentationLogits,
        Role::Depth,
        Role::Normals,
        Role::Raw,
    ];

    /// The name in specs, `--output NAME=ROLE` and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Role::ClassLogits => "class_logits",
            Role::SegmentationLogits => "segmentation_logits",
            Role::Depth => "depth",
            Role::Normals => "normals",
            Role::Raw => "raw",
        }
    }

    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The role an output name implies: the dense task names (and `normal`, MTAN's folder),
    /// `logits`/`class_logits`/`classes`, `segmentation_logits`/`seg`; anything else is raw.
    pub fn implied_by(output: &str) -> Role {
        match output.to_ascii_lowercase().as_str() {
            "logits" | "class_logits" | "classes" | "classification" => Role::ClassLogits,
            "segmentation" | "segmentation_logits" | "seg" | "semantic" => Role::SegmentationLogits,
            "depth" => Role::Depth,
            "normals" | "normal" | "surface_normals" => Role::Normals,
            _ => Role::Raw,
        }
    }

    /// The dense task this role is trained and evaluated as, if any.
    pub const fn task(self) -> Option<Task> {
        match self {
            Role::SegmentationLogits => Some(Task::Segmentation),
            Role::Depth => Some(Task::Depth),
            Role::Normals => Some(Task::Normals),
            Role::ClassLogits | Role::Raw => None,
        }
    }

    /// Checks that an output of per-image shape `shape` can carry this role.
    pub fn check_shape(self, shape: &[usize]) -> Result<(), String> {
        let ok = match self {
            Role::ClassLogits => shape.len() == 1 || (shape.len() == 3 && shape[1..] == [1, 1]),
            Role::SegmentationLogits => shape.len() == 3 && shape[0] >= 2,
            Role::Depth => shape.len() == 3 && shape[0] == 1,
            Role::Normals => shape.len() == 3 && shape[0] == 3,
            Role::Raw => true,
        };
        if ok {
            return Ok(());
        }
        let want = match self {
            Role::ClassLogits => "K (or K×1×1) class scores",
            Role::SegmentationLogits => "K×H×W with K ≥ 2 classes",
            Role::Depth => "1×H×W",
            Role::Normals => "3×H×W",
            Role::Raw => "",
        };
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        Err(format!(
            "role {} needs {want} per image, the output is {}",
            self.name(),
            dims.join("×")
        ))
    }
}

impl Task {
    /// The output role that carries this task.
    pub const fn role(self) -> Role {
        match self {
            Task::Segmentation => Role::SegmentationLogits,
            Task::Depth => Role::Depth,
            Task::Normals => Role::Normals,
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
        for r in Role::ALL {
            assert_eq!(Role::from_name(r.name()), Some(r));
        }
        for t in Task::ALL {
            assert_eq!(t.role().task(), Some(t));
            assert_eq!(Role::implied_by(t.name()), t.role());
        }
        assert_eq!(Role::implied_by("logits"), Role::ClassLogits);
        assert_eq!(Role::implied_by("feature_map"), Role::Raw);
        assert!(Role::Depth.check_shape(&[1, 4, 5]).is_ok());
        let e = Role::Depth.check_shape(&[3, 4, 5]).unwrap_err();
        assert!(e.contains("3×4×5") && e.contains("1×H×W"), "{e}");
        assert!(Role::ClassLogits.check_shape(&[10]).is_ok());
        assert!(Role::SegmentationLogits.check_shape(&[10]).is_err());
        assert_eq!(
            NYU_HIGHER_IS_BETTER,
            [true, true, false, false, false, false, true, true, true]
        );
    }
}
