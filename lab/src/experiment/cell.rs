//! One cell of a grid: train it (resuming a partial run), measure its INT8 drop, and record
//! the result in `<cell>/cell.json`; and a shard of cells run one after another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "train")]
use super::{CELL_FILE, Cell, Grid, Shard, Summary};
#[cfg(feature = "train")]
use crate::{Error, Result};
#[cfg(feature = "train")]
use overparam_base::Progress;

/// What a finished cell records in `<cell>/cell.json`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CellResult {
    pub label: String,
    pub seed: u64,
    /// `classification` or `nyuv2`.
    pub task: String,
    /// Metric name → value (classification: top-1/top-5 error in %; multi-task: the nine
    /// NYUv2 metrics).
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, with = "overparam_config::task_serde::one")]
    pub baseline_for: Option<overparam_base::Task>,
    pub train_seconds: f64,
    /// The training ran in more than one invocation (seconds are partial).
    pub resumed: bool,
    pub images_per_s: Option<f64>,
    pub train_params: usize,
    pub deploy_params: usize,
    pub deploy_macs: usize,
    /// Metric name → INT8 minus FP32 ONNX (through ONNX Runtime).
    pub int8_drop: BTreeMap<String, f64>,
    /// A fine-tuning cell (`model.from`): metric name → the imported network on the test split
    /// before the first step (its `start.json`). Empty for cells trained from scratch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub before: BTreeMap<String, f64>,
}

/// The `task` of a multi-task cell.
pub const TASK_NYUV2: &str = "nyuv2";
/// The `task` of a classification cell.
pub const TASK_CLASSIFICATION: &str = "classification";
/// The primary metric of a classification cell.
pub const TOP1: &str = "top-1 err %";
pub const TOP5: &str = "top-5 err %";

/// What a shard's run ended with: the cells that failed (`name: error`) and the summary of
/// everything finished so far.
#[cfg(feature = "train")]
#[derive(Debug)]
pub struct ShardOutcome {
    pub failed: Vec<String>,
    pub summary: Summary,
}

/// Runs the cells of one shard that have not finished, then summarises the grid. A failing
/// cell is reported and left for the next run; the grid goes on.
#[cfg(feature = "train")]
pub fn run_shard(grid: &Grid, shard: Shard, progress: &dyn Progress) -> Result<ShardOutcome> {
    // Every cell of the grid, not only this shard's: a typo fails before hours of training.
    grid.check_cells()?;
    grid.record()?;
    let mine = grid.shard(shard);
    progress.event(&format!(
        "experiment {}: {} cells ({} in shard {}/{}) under {}",
        grid.experiment.name,
        grid.cells().len(),
        mine.len(),
        shard.i,
        shard.n,
        grid.dir.display()
    ));
    let mut failed = vec![];
    let n = mine.len() as u64;
    for (k, (_, c)) in mine.iter().enumerate() {
        progress.outer(&c.name, k as u64, n);
        let at = format!("[{}/{}] {}", k + 1, mine.len(), c.name);
        if grid.cell_dir(c).join(CELL_FILE).exists() {
            progress.event(&format!("{at}: done, skipped"));
            continue;
        }
        progress.event(&format!("{at}: training"));
        match run_cell(grid, c, progress) {
            Ok(r) => progress.event(&format!(
                "{at}: {} in {:.0} s",
                r.metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.train_seconds
            )),
            Err(err) => {
                let err = crate::error_chain(&err);
                progress.event(&format!("{at}: FAILED: {err}"));
                failed.push(format!("{}: {err}", c.name));
            }
        }
    }
    progress.outer("", n, n);
    let summary = super::summarize(&grid.dir)?;
    Ok(ShardOutcome { failed, summary })
}

/// Trains one cell (resuming a partial run), measures its INT8 drop, writes `cell.json`.
#[cfg(feature = "train")]
pub fn run_cell(grid: &Grid, c: &Cell, progress: &dyn Progress) -> Result<CellResult> {
    use overparam_config::files::{DEPLOY_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE};
    use overparam_train::{mtl_trainer, trainer};
    let cfg = grid.cell_config(c)?;
    let cdir = cfg.run_dir();
    let resume = cdir.join(STATE_FILE).exists();
    if !resume && cdir.exists() {
        // Killed before its first epoch finished: nothing worth keeping, unless another
        // process is training it right now (it holds the run's lock).
        drop(overparam_base::lock_dir(&cdir).map_err(|e| Error::Run(format!("{}: {e}", c.name)))?);
        std::fs::remove_dir_all(&cdir).map_err(Error::io(&cdir))?;
    }
    let stopped = || Error::Run("training stopped early".into());
    let t0 = std::time::Instant::now();
    let mtl = mtl_trainer::is_mtl(&cfg)?;
    let mut metrics = BTreeMap::new();
    let mut images_per_s = None;
    if mtl {
        let s = mtl_trainer::train_mtl(&cfg, resume, progress, None)?.ok_or_else(stopped)?;
        for (k, v) in overparam_engine::dense::METRICS.iter().zip(s.metrics) {
            metrics.insert(k.to_string(), v);
        }
    } else {
        let s = trainer::train(&cfg, resume, progress, None)?.ok_or_else(stopped)?;
        metrics.insert(TOP1.into(), s.last.test_top1_err);
        metrics.insert(TOP5.into(), s.last.test_top5_err);
        let csv = crate::metrics_csv::MetricsCsv::read(&cdir.join(METRICS_FILE))?;
        images_per_s = Some(
            csv.mean("images_per_s")
                .ok_or_else(|| Error::file(&cdir.join(METRICS_FILE), "no images_per_s column"))?,
        );
    }
    let train_seconds = t0.elapsed().as_secs_f64();
    let op = overparam_fuse::checkpoint::load(&cdir.join(MODEL_FILE))?;
    let dep = overparam_fuse::checkpoint::load(&cdir.join(DEPLOY_FILE))?;
    let si = overparam_fuse::inspect::summarize(&op.spec)?;
    let sd = overparam_fuse::inspect::summarize(&dep.spec)?;
    let int8_drop = if grid.experiment.int8 {
        progress.event(&format!("{}: INT8 drop through ONNX Runtime…", c.name));
        int8_drop(&cfg, &dep, &grid.experiment.quantization(), mtl, progress)?
    } else {
        BTreeMap::new()
    };
    let before = before_fine_tuning(&cdir, mtl)?;
    let r = CellResult {
        label: c.spec.label.clone(),
        seed: c.seed,
        task: if mtl { TASK_NYUV2 } else { TASK_CLASSIFICATION }.into(),
        metrics,
        baseline_for: c.spec.baseline_for,
        train_seconds,
        resumed: resume,
        images_per_s,
        train_params: si.total_params,
        deploy_params: sd.total_params,
        deploy_macs: sd.total_macs,
        int8_drop,
        before,
    };
    crate::write(
        &cdir.join(CELL_FILE),
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    Ok(r)
}

/// A fine-tuning cell's starting point from its `start.json`: the imported network's metrics on
/// the test split, keyed as the cell's own (empty for a cell trained from scratch).
#[cfg(feature = "train")]
fn before_fine_tuning(cdir: &std::path::Path, mtl: bool) -> Result<BTreeMap<String, f64>> {
    use overparam_train::pretrained::{START_FILE, Start};
    let path = cdir.join(START_FILE);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let s: Start = serde_json::from_str(&crate::read_to_string(&path)?)
        .map_err(|e| Error::file(&path, format!("not a start record: {e}")))?;
    let names: Vec<&str> = if mtl {
        overparam_engine::dense::METRICS.to_vec()
    } else {
        vec![TOP1]
    };
    if s.imported.len() != names.len() {
        return Err(Error::file(
            &path,
            format!(
                "{} starting metrics where a {} cell has {}",
                s.imported.len(),
                if mtl { TASK_NYUV2 } else { TASK_CLASSIFICATION },
                names.len()
            ),
        ));
    }
    Ok(names
        .into_iter()
        .map(String::from)
        .zip(s.imported)
        .collect())
}

/// INT8 (the grid's calibrator, TensorRT's symmetric encoding) minus FP32 ONNX, per metric.
#[cfg(feature = "train")]
fn int8_drop(
    cfg: &overparam_config::TrainConfig,
    dep: &overparam_fuse::checkpoint::Checkpoint,
    q: &overparam_engine::quant::Quantization,
    mtl: bool,
    progress: &dyn Progress,
) -> Result<BTreeMap<String, f64>> {
    use crate::deploy::export_bytes;
    use overparam_engine::export::Precision;
    let overparam_fuse::AnySpec::Deploy(spec) = &dep.spec else {
        return Err(Error::Run(format!(
            "{} holds a train spec",
            overparam_config::files::DEPLOY_FILE
        )));
    };
    let w = &dep.weights;
    let mut out = BTreeMap::new();
    if mtl {
        use overparam_engine::dense;
        let (train, val) = overparam_train::mtl_trainer::load_splits(cfg)?;
        let p = dense::calibrate(spec, w, &train, q, progress)?.plan;
        let heads = dense::heads(spec);
        let fp32 = dense::evaluate(
            &export_bytes(spec, w, Precision::Fp32, 1, None)?,
            &val,
            &heads,
        )?;
        let int8 = dense::evaluate(
            &export_bytes(spec, w, Precision::Int8, 1, Some(p))?,
            &val,
            &heads,
        )?;
        for (k, name) in dense::METRICS.iter().enumerate() {
            out.insert(name.to_string(), int8[k] - fp32[k]);
        }
    } else {
        let (train, test) = overparam_train::trainer::load_data(cfg)?;
        // Batch 50 for export and calibration: the batch the committed grids were measured with.
        let e = crate::deploy::int8_against_fp32(spec, w, &train, &test, q, 50, progress)?;
        let (fp32, int8) = (e.fp32, e.int8);
        out.insert(TOP1.into(), int8.top1_error() - fp32.top1_error());
        out.insert(TOP5.into(), int8.top5_error() - fp32.top5_error());
    }
    Ok(out)
}
