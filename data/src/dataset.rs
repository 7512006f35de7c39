//! Which reader a classification directory takes: CIFAR binary or the MNIST family's IDX,
//! named or detected from the files present.

use std::path::Path;

use crate::cifar::{self, ImageSet, Split};
use crate::error::{Error, Result};
use crate::idx;

/// The on-disk layout of a classification data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// CIFAR-10/100 binary records.
    Cifar,
    /// The IDX files of MNIST, Fashion-MNIST, KMNIST.
    Idx,
}

impl DataKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Cifar => "cifar",
            DataKind::Idx => "idx",
        }
    }
}

impl std::str::FromStr for DataKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cifar" => Ok(DataKind::Cifar),
            "idx" => Ok(DataKind::Idx),
            _ => Err(Error::Invalid(format!(
                "unknown data kind `{s}` (expected cifar or idx)"
            ))),
        }
    }
}

/// The layout of `dir`, from the train files present (CIFAR first, as before IDX existed).
pub fn detect(dir: &Path) -> Option<DataKind> {
    if cifar::split_files(dir, Split::Train).is_ok() {
        Some(DataKind::Cifar)
    } else if idx::is_idx_dir(dir) {
        Some(DataKind::Idx)
    } else {
        None
    }
}

/// Loads a split of `dir` with the reader `kind` names, or the one its files call for.
/// `idx_classes` is the class count of an IDX set (its files do not record it; 10 for MNIST,
/// Fashion-MNIST and KMNIST).
pub fn load(
    dir: &Path,
    split: Split,
    kind: Option<DataKind>,
    idx_classes: usize,
) -> Result<ImageSet> {
    let kind = match kind.or_else(|| detect(dir)) {
        Some(k) => k,
        None => {
            let (i, l) = idx::file_names(Split::Train);
            return Err(Error::Format {
                path: dir.into(),
                message: format!(
                    "no data set found: expected CIFAR binary files (train.bin/test.bin, or data_batch_1..5.bin/test_batch.bin) or IDX files ({i}[.gz], {l}[.gz], t10k-…)"
                ),
            });
        }
    };
    match kind {
        DataKind::Cifar => cifar::load(dir, split),
        DataKind::Idx => idx::load(dir, split, idx_classes),
    }
}
