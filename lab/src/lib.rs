//! overparam-lab: runs and grids. It owns what sits above one training run:
//! - [`experiment`]: a grid of method × routine × seed, each cell a normal run directory;
//!   shards, Slurm scripts, and summaries (results.csv/md, paired statistics, plots);
//! - [`pipeline`]: the main job's stages (train → fold → export → accuracy → latency →
//!   bridge) as functions that return data, and [`pipeline::report`] rendering them as
//!   markdown;
//! - [`deploy`]: what the deploy-side commands share (loading a deploy checkpoint, the
//!   calibration set, partial-INT8 plans, the model + calibration-record pair);
//! - [`metrics_csv`]: the one reader of a run's `metrics.csv`.
//!
//! It never prints: long work and events go through [`overparam_base::Progress`], and results
//! come back as values for the CLI to show. Training needs the `train` feature (libtorch);
//! without it, grids still resolve and validate, and summaries work.

pub mod deploy;
pub mod error;
pub mod experiment;
pub mod import;
pub mod metrics_csv;
pub mod pipeline;
#[cfg(feature = "train")]
pub mod qat;

pub use error::{Error, Result};

use std::path::Path;

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file and a failed write leaves the old one.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    overparam_base::write_file_atomic(path, bytes).map_err(Error::io(path))
}

/// CSV text of `rows` (the first is the header), quoted where a field needs it.
pub(crate) fn csv_text<R, F>(rows: impl IntoIterator<Item = R>) -> Result<String>
where
    R: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut w = csv::Writer::from_writer(vec![]);
    for r in rows {
        w.write_record(r)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Run(format!("csv: {}", e.error())))?;
    String::from_utf8(bytes).map_err(|e| Error::Run(format!("csv: {e}")))
}

pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(Error::io(path))
}

/// Human-readable counts: 23.71M, 1.30G.
pub fn si(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// An error and its sources on one line (`a: b: c`), as the CLI prints errors.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}
