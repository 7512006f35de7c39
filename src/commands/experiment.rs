//! `overparam experiment`: a grid of method × routine × seed on one task, each cell a normal
//! run directory; resumable, shardable across machines (`--shard I/N`, `--emit-slurm`), and
//! summarised as results.csv, results.md and plots.
// Deploy-only builds (no `train` feature) compile the training paths out.
#![cfg_attr(not(feature = "train"), allow(unused_imports, dead_code))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ExperimentCommand>,
    /// Experiment file (TOML); see configs/experiments/.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run only every N-th cell starting at I (0-based), e.g. `--shard 2/8`.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Write a Slurm job-array script running N shards (`--shards`) to this file and exit.
    /// The job runs this overparam binary (by its absolute path), or `$OVERPARAM_BIN` if that
    /// is set when the job runs; it asks for a GPU only if the cells train on `cuda`.
    #[arg(long, value_name = "FILE")]
    emit_slurm: Option<PathBuf>,
    /// Shards for --emit-slurm (default: one per cell).
    #[arg(long)]
    shards: Option<usize>,
    /// List the cells and their state, and check that every cell's config resolves; run nothing.
    #[arg(long)]
    list: bool,
}

#[derive(clap::Subcommand)]
enum ExperimentCommand {
    /// Merge the finished cells of an experiment directory into results.csv, results.md and
    /// plots (whatever has finished so far, from any machine).
    Summarize { dir: PathBuf },
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct ExperimentFile {
    experiment: Experiment,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Experiment {
    name: String,
    /// Base training config, relative to the experiment file.
    base: PathBuf,
    seeds: Vec<u64>,
    /// Overrides for every cell (`key=value`, as `train --set`).
    #[serde(default)]
    set: Vec<String>,
    /// Where cells go (default `runs/<name>`), relative to the working directory.
    #[serde(default)]
    dir: Option<PathBuf>,
    /// Measure each cell's INT8 drop through the CPU runtime.
    #[serde(default = "yes")]
    int8: bool,
    #[serde(default = "calib_default")]
    calib_images: usize,
    cells: Vec<CellSpec>,
}

fn yes() -> bool {
    true
}
fn calib_default() -> usize {
    256
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CellSpec {
    /// Method and routine, e.g. `sfo-r2`; the row of the results table.
    label: String,
    /// A different base config for this cell (single-task baselines).
    #[serde(default)]
    base: Option<PathBuf>,
    #[serde(default)]
    set: Vec<String>,
    /// A single-task baseline for Δm of this task (multi-task grids).
    #[serde(default)]
    baseline_for: Option<String>,
}

/// What a finished cell records in `<cell>/cell.json`.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct CellResult {
    label: String,
    seed: u64,
    task: String,
    /// Metric name → value (classification: top-1/top-5 error in %; multi-task: the nine
    /// NYUv2 metrics).
    metrics: BTreeMap<String, f64>,
    baseline_for: Option<String>,
    train_seconds: f64,
    /// The training ran in more than one invocation (seconds are partial).
    resumed: bool,
    images_per_s: Option<f64>,
    train_params: usize,
    deploy_params: usize,
    deploy_macs: usize,
    /// Metric name → INT8 minus FP32 ONNX (through ONNX Runtime).
    int8_drop: BTreeMap<String, f64>,
}

const CELL_FILE: &str = "cell.json";
const GRID_FILE: &str = "experiment.json";

struct Cell {
    spec: CellSpec,
    seed: u64,
    name: String,
}

fn load(path: &Path) -> Result<Experiment> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let f: ExperimentFile = toml::from_str(&text)
        .with_context(|| format!("{}: not an experiment file", path.display()))?;
    let e = f.experiment;
    if e.seeds.is_empty() || e.cells.is_empty() {
        bail!(
            "{}: experiment.seeds and experiment.cells must not be empty",
            path.display()
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &e.cells {
        if c.label.is_empty() || c.label.contains(['/', '\\']) || !seen.insert(&c.label) {
            bail!(
                "{}: cell label `{}` is empty, has a slash or repeats",
                path.display(),
                c.label
            );
        }
    }
    Ok(e)
}

fn cells(e: &Experiment) -> Vec<Cell> {
    // Seed-major: a partial grid already has one seed of every method.
    e.seeds
        .iter()
        .flat_map(|&seed| {
            e.cells.iter().map(move |c| Cell {
                spec: c.clone(),
                seed,
                name: format!("{}-s{seed}", c.label),
            })
        })
        .collect()
}

fn exp_dir(e: &Experiment) -> PathBuf {
    e.dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&e.name))
}

/// `--shard I/N`: every N-th cell starting at I (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shard {
    i: usize,
    n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("want I/N, e.g. 2/8")?;
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| format!("`{x}` is not a count: {e}"))
        };
        let (i, n) = (num(i)?, num(n)?);
        if n == 0 || i >= n {
            return Err(format!("need 0 ≤ I < N, got {i}/{n}"));
        }
        Ok(Shard { i, n })
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(ExperimentCommand::Summarize { dir }) = a.command {
        summarize(&dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = a
        .config
        .context("--config FILE (or `experiment summarize DIR`)")?;
    let e = load(&path)?;
    let all = cells(&e);
    let dir = exp_dir(&e);
    if let Some(out) = &a.emit_slurm {
        let n = a.shards.unwrap_or(all.len()).clamp(1, all.len());
        let exe = std::env::current_exe().context("locating the overparam binary")?;
        let exe = exe.canonicalize().unwrap_or(exe);
        write_slurm(out, &path, n, &dir, &exe, needs_gpu(&e, &path, &dir, &all)?)?;
        println!(
            "wrote {} ({n} array tasks over {} cells)",
            out.display(),
            all.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Shard { i: si, n: sn } = a.shard.unwrap_or(Shard { i: 0, n: 1 });
    if a.list {
        // Resolving every cell's config here catches a broken grid before it is queued.
        #[cfg(feature = "train")]
        let check = |c: &Cell| cell_config(&e, &path, &dir, c).err();
        #[cfg(not(feature = "train"))]
        let check = |_: &Cell| None::<anyhow::Error>;
        let mut invalid = 0;
        for (k, c) in all.iter().enumerate().filter(|(k, _)| k % sn == si) {
            if let Some(err) = check(c) {
                println!("{k:>3} {:<24} invalid: {err:#}", c.name);
                invalid += 1;
                continue;
            }
            let d = dir.join(&c.name);
            let state = if d.join(CELL_FILE).exists() {
                "done"
            } else if d.join("train_state.safetensors").exists() {
                "partial"
            } else {
                "todo"
            };
            println!("{k:>3} {:<24} {state}", c.name);
        }
        if invalid > 0 {
            eprintln!("{invalid} cell(s) have an invalid config");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The grid as run: `summarize` takes the row order from it.
    overparam_fuse::checkpoint::write_file_atomic(
        &dir.join(GRID_FILE),
        serde_json::to_string_pretty(&e)?.as_bytes(),
    )?;
    let mine: Vec<&Cell> = all
        .iter()
        .enumerate()
        .filter(|(k, _)| k % sn == si)
        .map(|(_, c)| c)
        .collect();
    eprintln!(
        "experiment {}: {} cells ({} in shard {si}/{sn}) under {}",
        e.name,
        all.len(),
        mine.len(),
        dir.display()
    );
    let mut failed = vec![];
    for (k, c) in mine.iter().enumerate() {
        let cdir = dir.join(&c.name);
        if cdir.join(CELL_FILE).exists() {
            println!("[{}/{}] {}: done, skipped", k + 1, mine.len(), c.name);
            continue;
        }
        eprintln!("[{}/{}] {}: training", k + 1, mine.len(), c.name);
        // A failing cell is reported and left for the next run; the grid goes on.
        let r = match run_cell(&e, &path, &dir, c) {
            Ok(r) => r,
            Err(err) => {
                eprintln!("[{}/{}] {}: FAILED: {err:#}", k + 1, mine.len(), c.name);
                failed.push(format!("{}: {err:#}", c.name));
                continue;
            }
        };
        println!(
            "[{}/{}] {}: {} in {:.0} s",
            k + 1,
            mine.len(),
            c.name,
            r.metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.train_seconds
        );
    }
    summarize(&dir)?;
    if !failed.is_empty() {
        eprintln!(
            "{} cell(s) failed (rerun the same command to retry them):\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether any cell trains on a GPU (`run.device = "cuda"` in its resolved config).
#[cfg(feature = "train")]
fn needs_gpu(e: &Experiment, path: &Path, dir: &Path, all: &[Cell]) -> Result<bool> {
    for c in all {
        if cell_config(e, path, dir, c)?.run.device == overparam_train::config::DeviceChoice::Cuda {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(not(feature = "train"))]
fn needs_gpu(_: &Experiment, _: &Path, _: &Path, _: &[Cell]) -> Result<bool> {
    bail!("--emit-slurm needs the `train` feature (libtorch) to resolve the cells' configs")
}

/// `s` as one shell word, single-quoted.
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` escaped for the inside of a double-quoted shell string.
fn shell_dq(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' | '$' | '`' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

fn write_slurm(
    out: &Path,
    config: &Path,
    shards: usize,
    dir: &Path,
    exe: &Path,
    gpu: bool,
) -> Result<()> {
    let gres = if gpu { "#SBATCH --gres=gpu:1\n" } else { "" };
    let script = format!(
        "#!/bin/bash\n\
         # Runs `overparam experiment` as a Slurm job array: task I runs every {shards}-th cell\n\
         # starting at I. Cells are resumable, so a requeued task continues where it stopped.\n\
         # The run directory must be on a filesystem every node shares. Afterwards:\n\
         #   overparam experiment summarize {dir}\n\
         # The job runs $OVERPARAM_BIN if set (e.g. `sbatch --export=ALL,OVERPARAM_BIN=...`),\n\
         # else the overparam binary that wrote this script.\n\
         #SBATCH --job-name=overparam-experiment\n\
         #SBATCH --array=0-{last}\n\
         {gres}\
         #SBATCH --cpus-per-task=8\n\
         #SBATCH --time=48:00:00\n\
         #SBATCH --requeue\n\
         #SBATCH --output=slurm-%A_%a.out\n\
         set -euo pipefail\n\
         cd \"${{SLURM_SUBMIT_DIR}}\"\n\
         exec \"${{OVERPARAM_BIN:-{exe}}}\" experiment --config {config} --shard \"${{SLURM_ARRAY_TASK_ID}}/{shards}\"\n",
        last = shards - 1,
        dir = shell_word(&dir.display().to_string()),
        exe = shell_dq(&exe.display().to_string()),
        config = shell_word(&config.display().to_string()),
    );
    overparam_fuse::checkpoint::write_file_atomic(out, script.as_bytes())?;
    Ok(())
}

/// The run config of one cell: its base file (relative to the experiment file) with the grid's
/// and the cell's overrides, its seed, name and directory.
#[cfg(feature = "train")]
fn cell_config(
    e: &Experiment,
    path: &Path,
    dir: &Path,
    c: &Cell,
) -> Result<overparam_train::config::TrainConfig> {
    let root = path.parent().unwrap_or(Path::new("."));
    let base = root.join(c.spec.base.as_ref().unwrap_or(&e.base));
    let mut overrides = e.set.clone();
    overrides.extend(c.spec.set.iter().cloned());
    overrides.push(format!("run.seed={}", c.seed));
    overrides.push(format!("run.name=\"{}\"", c.name));
    overrides.push(format!("run.dir=\"{}\"", dir.display()));
    overparam_train::config::TrainConfig::load(&base, &overrides)
        .with_context(|| format!("cell {} from {}", c.name, base.display()))
}

#[cfg(feature = "train")]
fn run_cell(e: &Experiment, path: &Path, dir: &Path, c: &Cell) -> Result<CellResult> {
    let cfg = cell_config(e, path, dir, c)?;
    let cdir = cfg.run_dir();
    let resume = cdir.join("train_state.safetensors").exists();
    if !resume && cdir.exists() {
        // Killed before its first epoch finished: nothing worth keeping.
        std::fs::remove_dir_all(&cdir).with_context(|| format!("clearing {}", cdir.display()))?;
    }
    let progress = crate::progress::Bars::stderr();
    let t0 = std::time::Instant::now();
    let mtl = overparam_train::mtl_trainer::is_mtl(&cfg);
    let mut metrics = BTreeMap::new();
    let mut images_per_s = None;
    if mtl {
        let s = overparam_train::mtl_trainer::train_mtl(&cfg, resume, &progress, None)?
            .context("training stopped early")?;
        for (k, v) in overparam_engine::dense::METRICS.iter().zip(s.metrics) {
            metrics.insert(k.to_string(), v);
        }
    } else {
        let s = overparam_train::trainer::train(&cfg, resume, &progress, None)?
            .context("training stopped early")?;
        metrics.insert("top-1 err %".into(), s.last.test_top1_err);
        metrics.insert("top-5 err %".into(), s.last.test_top5_err);
        images_per_s = Some(mean_images_per_s(&cdir.join("metrics.csv"))?);
    }
    let train_seconds = t0.elapsed().as_secs_f64();
    let op = overparam_fuse::checkpoint::load(&cdir.join("model.op.safetensors"))?;
    let dep = overparam_fuse::checkpoint::load(&cdir.join("model.deploy.safetensors"))?;
    let si = overparam_fuse::inspect::summarize(&op.spec)?;
    let sd = overparam_fuse::inspect::summarize(&dep.spec)?;
    let int8_drop = if e.int8 {
        eprintln!("{}: INT8 drop through ONNX Runtime…", c.name);
        int8_drop(&cfg, &dep, e.calib_images, mtl)?
    } else {
        BTreeMap::new()
    };
    let r = CellResult {
        label: c.spec.label.clone(),
        seed: c.seed,
        task: if mtl { "nyuv2" } else { "classification" }.into(),
        metrics,
        baseline_for: c.spec.baseline_for.clone(),
        train_seconds,
        resumed: resume,
        images_per_s,
        train_params: si.total_params,
        deploy_params: sd.total_params,
        deploy_macs: sd.total_macs,
        int8_drop,
    };
    overparam_fuse::checkpoint::write_file_atomic(
        &cdir.join(CELL_FILE),
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    Ok(r)
}

#[cfg(not(feature = "train"))]
fn run_cell(_: &Experiment, _: &Path, _: &Path, _: &Cell) -> Result<CellResult> {
    bail!(
        "running cells needs the `train` feature (libtorch); `experiment summarize` works without it"
    )
}

fn mean_images_per_s(csv: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("{}", csv.display()))?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = head
        .iter()
        .position(|h| *h == "images_per_s")
        .with_context(|| format!("{}: no images_per_s column", csv.display()))?;
    let v: Vec<f64> = lines
        .filter_map(|l| l.split(',').nth(col)?.parse().ok())
        .collect();
    Ok(v.iter().sum::<f64>() / v.len().max(1) as f64)
}

/// INT8 (entropy calibration, TensorRT's symmetric encoding) minus FP32 ONNX, per metric.
#[cfg(feature = "train")]
fn int8_drop(
    cfg: &overparam_train::config::TrainConfig,
    dep: &overparam_fuse::checkpoint::Checkpoint,
    calib_images: usize,
    mtl: bool,
) -> Result<BTreeMap<String, f64>> {
    use overparam_engine::calib::Calibrator;
    use overparam_engine::export::{
        ActivationEncoding, ExportOptions, Precision, export, to_bytes,
    };
    let overparam_fuse::AnySpec::Deploy(spec) = &dep.spec else {
        bail!("model.deploy.safetensors holds a train spec");
    };
    let w = &dep.weights;
    let enc = ActivationEncoding::SignedSymmetric;
    let mut out = BTreeMap::new();
    if mtl {
        let (train, val) = overparam_train::mtl_trainer::load_splits(cfg)?;
        let (p, _, _) = overparam_engine::dense::calibrate(
            spec,
            w,
            &train,
            calib_images,
            Calibrator::Entropy,
            enc,
            &overparam_base::Silent,
        )?;
        let fp32 = overparam_engine::dense::evaluate(
            &to_bytes(&export(spec, w, &ExportOptions::new(Precision::Fp32))?),
            &val,
        )?;
        let mut o = ExportOptions::new(Precision::Int8);
        o.quant = Some(p);
        let int8 = overparam_engine::dense::evaluate(&to_bytes(&export(spec, w, &o)?), &val)?;
        for (k, name) in overparam_engine::dense::METRICS.iter().enumerate() {
            out.insert(name.to_string(), int8[k] - fp32[k]);
        }
    } else {
        let (train, test) = overparam_train::trainer::load_data(cfg)?;
        let norm = overparam_engine::accuracy::normalization(spec)?;
        let batch = 50;
        let model = |p: Precision, q| -> Result<Vec<u8>> {
            let mut o = ExportOptions::new(p);
            o.batch = batch;
            o.quant = q;
            Ok(to_bytes(&export(spec, w, &o)?))
        };
        let fp32 =
            overparam_engine::accuracy::evaluate(&model(Precision::Fp32, None)?, &test, &norm)?;
        let (p, _, _) = overparam_engine::calib::calibrate(
            spec,
            w,
            &train,
            &norm,
            calib_images,
            batch,
            Calibrator::Entropy,
            enc,
            &crate::progress::Bars::stderr(),
        )?;
        let int8 =
            overparam_engine::accuracy::evaluate(&model(Precision::Int8, Some(p))?, &test, &norm)?;
        out.insert("top-1 err %".into(), int8.top1_error() - fp32.top1_error());
        out.insert("top-5 err %".into(), int8.top5_error() - fp32.top5_error());
    }
    Ok(out)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

/// Reads every `*/cell.json` under `dir`; writes results.csv, results.md and plots.
pub fn summarize(dir: &Path) -> Result<()> {
    let mut rows: Vec<CellResult> = vec![];
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join(CELL_FILE)))
        .filter(|p| p.exists())
        .collect();
    entries.sort();
    for p in entries {
        let text = std::fs::read_to_string(&p)?;
        rows.push(serde_json::from_str(&text).with_context(|| format!("{}", p.display()))?);
    }
    if rows.is_empty() {
        bail!("{}: no finished cells (no */{CELL_FILE})", dir.display());
    }
    // Rows in the grid's cell order (then any other labels found), metric names from the
    // first row.
    let mut labels: Vec<String> = std::fs::read_to_string(dir.join(GRID_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<Experiment>(&t).ok())
        .map(|e| {
            e.cells
                .into_iter()
                .map(|c| c.label)
                .filter(|l| rows.iter().any(|r| &r.label == l))
                .collect()
        })
        .unwrap_or_default();
    for r in &rows {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
    }
    let mtl = rows[0].task == "nyuv2";
    let metric_names: Vec<String> = rows[0].metrics.keys().cloned().collect();
    // Δm against the single-task baselines (mean over their seeds), where all three exist.
    let baseline = if mtl { baseline(&rows) } else { None };
    let dm = |r: &CellResult| -> Option<f64> {
        let b = baseline.as_ref()?;
        if r.baseline_for.is_some() {
            return None;
        }
        let m: [f64; 9] = std::array::from_fn(|k| r.metrics[overparam_engine::dense::METRICS[k]]);
        Some(overparam_data::metrics::delta_m_nash(&m, b))
    };

    // results.csv: one row per cell.
    let mut csv = String::from("label,seed");
    for m in &metric_names {
        csv += &format!(",{m}");
    }
    if mtl {
        csv += ",delta_m_pct";
    }
    for m in &metric_names {
        csv += &format!(",int8_drop {m}");
    }
    csv += ",train_seconds,resumed,images_per_s,train_params,deploy_params,deploy_macs\n";
    for r in &rows {
        csv += &format!("{},{}", r.label, r.seed);
        for m in &metric_names {
            csv += &format!(",{:.6}", r.metrics.get(m).copied().unwrap_or(f64::NAN));
        }
        if mtl {
            // Empty where Δm is undefined (a baseline cell) or not yet known (baselines missing).
            csv += &dm(r)
                .map(|v| format!(",{v:.6}"))
                .unwrap_or_else(|| ",".into());
        }
        for m in &metric_names {
            csv += &format!(",{:.6}", r.int8_drop.get(m).copied().unwrap_or(f64::NAN));
        }
        csv += &format!(
            ",{:.1},{},{},{},{},{}\n",
            r.train_seconds,
            r.resumed,
            r.images_per_s
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default(),
            r.train_params,
            r.deploy_params,
            r.deploy_macs
        );
    }
    // Paired by seed against plain, on the primary metric: a section after the per-cell rows.
    let primary_of = |r: &CellResult| -> Option<f64> {
        if mtl {
            dm(r)
        } else {
            r.metrics.get("top-1 err %").copied()
        }
    };
    let paired = paired_vs_plain(&rows, &labels, primary_of);
    overparam_fuse::checkpoint::write_file_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    // paired.csv: its own table, so results.csv stays one rectangular table of cells.
    if !paired.is_empty() {
        let mut pc = format!("{PAIRED_CSV_HEADER}\n");
        for (l, p) in &paired {
            pc += &format!(
                "{l},{},{},{:.6},{:.6},{:.6},{:.6},{},{},{:.6}\n",
                if mtl { "delta_m_pct" } else { "top-1 err %" },
                p.n,
                p.mean_diff,
                p.se,
                p.t,
                p.p_t,
                p.below,
                p.above,
                p.p_sign
            );
        }
        overparam_fuse::checkpoint::write_file_atomic(&dir.join(PAIRED_FILE), pc.as_bytes())?;
    } else if dir.join(PAIRED_FILE).exists() {
        // A stale table from an earlier summary with plain would contradict this one.
        std::fs::remove_file(dir.join(PAIRED_FILE))
            .with_context(|| format!("{}", dir.join(PAIRED_FILE).display()))?;
    }

    // results.md: mean ± std over seeds per label.
    let group = |l: &str| rows.iter().filter(|r| r.label == l).collect::<Vec<_>>();
    // Multi-task tables show the six headline metrics (the first six; all nine are in the CSV).
    let show: Vec<&String> = if mtl {
        overparam_engine::dense::METRICS[..6]
            .iter()
            .filter_map(|m| metric_names.iter().find(|n| n == m))
            .collect()
    } else {
        metric_names.iter().collect()
    };
    let mut md = format!(
        "# {}\n\nMean ± standard deviation over seeds (n = seeds finished). {}\n\n| method | n |",
        dir.file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("experiment"),
        if mtl {
            "Metrics are fractions as MTAN reports them; Δm% (Nash-MTL convention: mean relative change over the nine metrics against the single-task baselines, **lower is better**)."
        } else {
            "Errors in % on the test split."
        }
    );
    for m in &show {
        md += &format!(" {m} |");
    }
    if mtl {
        md += " Δm % |";
    }
    let drop_key = if mtl { "mIoU" } else { "top-1 err %" };
    md += &format!(" INT8 Δ {drop_key} | train s | train params | deploy params |\n|---|---|");
    for _ in 0..show.len() + if mtl { 1 } else { 0 } {
        md += "---|";
    }
    md += "---|---|---|---|\n";
    let mut bars_metric = vec![];
    let mut bars_cost = vec![];
    let mut bars_int8 = vec![];
    let mut any_resumed = false;
    let primary = if mtl {
        "Δm %".to_string()
    } else {
        "top-1 err %".to_string()
    };
    for l in &labels {
        let g = group(l);
        md += &format!("| {l} | {} |", g.len());
        for m in &show {
            let v: Vec<f64> = g
                .iter()
                .filter_map(|r| r.metrics.get(*m).copied())
                .collect();
            md += &format!(" {} |", pm(&v, if mtl { 4 } else { 2 }));
        }
        let d: Vec<f64> = g.iter().filter_map(|r| dm(r)).collect();
        if mtl {
            if g.iter().all(|r| r.baseline_for.is_some()) {
                md += " (baseline) |";
            } else {
                md += &format!(" {} |", pm(&d, 2));
            }
        }
        let i8: Vec<f64> = g
            .iter()
            .filter_map(|r| r.int8_drop.get(drop_key).copied())
            .collect();
        let (ia, is) = mean_std(&i8);
        md += &format!(" {} |", pm(&i8, if mtl { 4 } else { 2 }));
        // A resumed cell's seconds cover its last invocation only: left out of the cost.
        let t: Vec<f64> = g
            .iter()
            .filter(|r| !r.resumed)
            .map(|r| r.train_seconds)
            .collect();
        let (ta, ts) = mean_std(&t);
        let resumed = g.len() - t.len();
        any_resumed |= resumed > 0;
        md += &format!(
            " {}{} | {} | {} |\n",
            pm(&t, 0),
            if resumed > 0 { " ¹" } else { "" },
            super::si(g[0].train_params),
            super::si(g[0].deploy_params)
        );
        let pv = if mtl {
            d.clone()
        } else {
            g.iter()
                .filter_map(|r| r.metrics.get("top-1 err %").copied())
                .collect()
        };
        if !pv.is_empty() {
            let (a, s) = mean_std(&pv);
            bars_metric.push(overparam_data::plot::Bar {
                label: l.clone(),
                value: a,
                err: s,
            });
        }
        if !t.is_empty() {
            bars_cost.push(overparam_data::plot::Bar {
                label: l.clone(),
                value: ta,
                err: ts,
            });
        }
        if !i8.is_empty() {
            bars_int8.push(overparam_data::plot::Bar {
                label: l.clone(),
                value: ia,
                err: is,
            });
        }
    }
    if any_resumed {
        md += "\n¹ Without the cells that resumed after an interruption: their seconds cover only the last run.\n";
    }
    if mtl && baseline.is_none() {
        md += "\nΔm needs all three single-task baselines (the `baseline_for` cells); not all have finished.\n";
    }
    if let Some(b) = &baseline {
        md += &format!(
            "\nSingle-task baseline used for Δm (mean over seeds): {}\n",
            overparam_engine::dense::METRICS
                .iter()
                .zip(b)
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md += &format!(
        "\nPlots: [{primary} per method](plot_metric.png), [training time per method](plot_train_time.png), [INT8 drop per method](plot_int8.png). Per-cell numbers: [results.csv](results.csv).\n"
    );
    if !paired.is_empty() {
        md += &paired_md(&paired, if mtl { "Δm %" } else { "top-1 err %" });
    }
    overparam_fuse::checkpoint::write_file_atomic(&dir.join("results.md"), md.as_bytes())?;
    use overparam_data::plot::bar_chart;
    if !bars_metric.is_empty() {
        bar_chart(
            &format!("{primary} (mean ± std over seeds)"),
            if mtl {
                "delta m %, lower is better"
            } else {
                "top-1 error %, lower is better"
            },
            &bars_metric,
        )
        .save(&dir.join("plot_metric.png"))?;
    }
    if !bars_cost.is_empty() {
        bar_chart("training time per run", "seconds", &bars_cost)
            .save(&dir.join("plot_train_time.png"))?;
    }
    if !bars_int8.is_empty() {
        bar_chart(
            &format!("INT8 minus FP32: {drop_key}"),
            "change (onnx runtime, entropy calibration)",
            &bars_int8,
        )
        .save(&dir.join("plot_int8.png"))?;
    }
    println!("{md}");
    eprintln!("wrote {}/results.csv, results.md and plots", dir.display());
    Ok(())
}

/// The paired statistics against plain, one row per method.
const PAIRED_FILE: &str = "paired.csv";
const PAIRED_CSV_HEADER: &str =
    "paired_vs_plain,metric,pairs,mean_diff,se,t,p_t,below_plain,above_plain,p_sign";

/// Every label but `plain` against `plain`, paired by seed over the seeds both finished
/// (cells without the metric, e.g. single-task baselines for Δm, are left out).
fn paired_vs_plain(
    rows: &[CellResult],
    labels: &[String],
    value: impl Fn(&CellResult) -> Option<f64>,
) -> Vec<(String, overparam_data::stats::Paired)> {
    let by_seed = |l: &str| -> std::collections::BTreeMap<u64, f64> {
        rows.iter()
            .filter(|r| r.label == l)
            .filter_map(|r| Some((r.seed, value(r)?)))
            .collect()
    };
    let plain = by_seed("plain");
    if plain.is_empty() {
        return vec![];
    }
    labels
        .iter()
        .filter(|l| *l != "plain")
        .filter_map(|l| {
            let (a, b): (Vec<f64>, Vec<f64>) = by_seed(l)
                .into_iter()
                .filter_map(|(seed, v)| Some((v, *plain.get(&seed)?)))
                .unzip();
            (!a.is_empty()).then(|| (l.clone(), overparam_data::stats::paired(&a, &b)))
        })
        .collect()
}

/// The paired section of results.md.
fn paired_md(paired: &[(String, overparam_data::stats::Paired)], metric: &str) -> String {
    let f = |v: f64, d: usize| {
        if v.is_nan() {
            "–".to_string()
        } else {
            format!("{v:.d$}")
        }
    };
    let mut md = format!(
        "\n## Paired by seed against plain\n\n{metric}, method − plain on the same seed (negative: lower than plain), over the seeds both finished. SE: standard error of the mean difference; p (t): two-sided paired t-test, n − 1 degrees of freedom; p (sign): two-sided exact sign test on below/above counts (ties dropped). With n pairs the sign test cannot go below 2/2ⁿ (0.25 for 3 seeds). Numbers: [paired.csv](paired.csv).\n\n| method | pairs | mean diff | SE | t | p (t) | below / above plain | p (sign) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for (l, p) in paired {
        md += &format!(
            "| {l} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            p.n,
            f(p.mean_diff, 2),
            f(p.se, 2),
            f(p.t, 2),
            f(p.p_t, 4),
            p.below,
            p.above,
            f(p.p_sign, 4)
        );
    }
    md
}

/// Mean ± sample standard deviation; the mean alone for one seed, which has no spread; "–"
/// for none.
fn pm(v: &[f64], d: usize) -> String {
    let (a, s) = mean_std(v);
    match v.len() {
        0 => "–".into(),
        1 => format!("{a:.d$}"),
        _ => format!("{a:.d$} ± {s:.d$}"),
    }
}

/// The nine-metric single-task baseline: segmentation metrics from the `segmentation`
/// baseline cells, depth from `depth`, normals from `normals` (means over seeds).
fn baseline(rows: &[CellResult]) -> Option<[f64; 9]> {
    let names = overparam_engine::dense::METRICS;
    let mut b = [f64::NAN; 9];
    for (task, range) in [("segmentation", 0..2), ("depth", 2..4), ("normals", 4..9)] {
        let g: Vec<&CellResult> = rows
            .iter()
            .filter(|r| r.baseline_for.as_deref() == Some(task))
            .collect();
        if g.is_empty() {
            return None;
        }
        for k in range {
            let v: Vec<f64> = g
                .iter()
                .filter_map(|r| r.metrics.get(names[k]).copied())
                .collect();
            b[k] = mean_std(&v).0;
        }
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_parses_i_of_n_and_refuses_the_rest() {
        assert_eq!("2/8".parse::<Shard>(), Ok(Shard { i: 2, n: 8 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard { i: 0, n: 1 }));
        for bad in ["8/8", "1/0", "a/2", "3", "-1/4", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    fn cell(dir: &Path, label: &str, seed: u64, baseline_for: Option<&str>, v: f64) {
        cell_timed(dir, label, seed, baseline_for, v, (10.0, false));
    }

    fn cell_timed(
        dir: &Path,
        label: &str,
        seed: u64,
        baseline_for: Option<&str>,
        v: f64,
        (train_seconds, resumed): (f64, bool),
    ) {
        let metrics: BTreeMap<String, f64> = overparam_engine::dense::METRICS
            .iter()
            .map(|m| (m.to_string(), v))
            .collect();
        let r = CellResult {
            label: label.into(),
            seed,
            task: "nyuv2".into(),
            metrics: metrics.clone(),
            baseline_for: baseline_for.map(Into::into),
            train_seconds,
            resumed,
            images_per_s: None,
            train_params: 10,
            deploy_params: 10,
            deploy_macs: 10,
            int8_drop: metrics.keys().map(|k| (k.clone(), 0.0)).collect(),
        };
        write_cell(dir, &r);
    }

    /// A finished cell's `cell.json` in its directory under the grid `dir`.
    fn write_cell(dir: &Path, r: &CellResult) {
        let d = dir.join(format!("{}-s{}", r.label, r.seed));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(CELL_FILE), serde_json::to_string(r).unwrap()).unwrap();
    }

    fn read(dir: &Path) -> (String, String) {
        summarize(dir).unwrap();
        (
            std::fs::read_to_string(dir.join("results.md")).unwrap(),
            std::fs::read_to_string(dir.join("results.csv")).unwrap(),
        )
    }

    fn class_cell(dir: &Path, label: &str, seed: u64, top1: f64) {
        let metrics = BTreeMap::from([
            ("top-1 err %".to_string(), top1),
            ("top-5 err %".to_string(), 1.0),
        ]);
        let r = CellResult {
            label: label.into(),
            seed,
            task: "classification".into(),
            metrics: metrics.clone(),
            baseline_for: None,
            train_seconds: 10.0,
            resumed: false,
            images_per_s: Some(100.0),
            train_params: 10,
            deploy_params: 10,
            deploy_macs: 10,
            int8_drop: metrics.keys().map(|k| (k.clone(), 0.0)).collect(),
        };
        write_cell(dir, &r);
    }

    /// Paired by seed against plain, by hand: differences −2, −4, −3 → mean −3, sd 1,
    /// SE 1/√3 = 0.5774, t = −3√3 = −5.196 on 2 df, two-sided p = 1 − |t|/√(t² + 2) = 0.0351
    /// (the df-2 closed form); sign test 3 below of 3: 2/8 = 0.25. A seed plain lacks is not
    /// paired; without plain there is no section, and the rest of the summary is unchanged.
    #[test]
    fn summarize_adds_paired_statistics_against_plain() {
        let dir = tempfile::tempdir().unwrap();
        for (seed, v) in [(0, 12.0), (1, 15.0), (2, 15.0)] {
            class_cell(dir.path(), "plain", seed, v);
        }
        for (seed, v) in [(0, 10.0), (1, 11.0), (2, 12.0), (3, 99.0)] {
            class_cell(dir.path(), "sfo-r1", seed, v);
        }
        class_cell(dir.path(), "fnl", 1, 14.0);
        let (md, csv) = read(dir.path());
        let paired = std::fs::read_to_string(dir.path().join(PAIRED_FILE)).unwrap();
        assert_eq!(
            paired,
            format!(
                "{PAIRED_CSV_HEADER}\nfnl,top-1 err %,1,-1.000000,NaN,NaN,NaN,1,0,1.000000\nsfo-r1,top-1 err %,3,-3.000000,0.577350,-5.196152,0.035099,3,0,0.250000\n"
            )
        );
        // results.csv is one table of cells, as before.
        assert_eq!(csv.lines().count(), 9, "{csv}");
        assert!(md.contains("## Paired by seed against plain"), "{md}");
        assert!(
            md.contains("| sfo-r1 | 3 | -3.00 | 0.58 | -5.20 | 0.0351 | 3 / 0 | 0.2500 |"),
            "{md}"
        );
        assert!(
            md.contains("| fnl | 1 | -1.00 | – | – | – | 1 / 0 | 1.0000 |"),
            "{md}"
        );
        // Without plain: no paired section, and everything before it is what it was.
        let (md_before, csv_before) = (
            md.split("\n## Paired").next().unwrap().to_string(),
            csv.clone(),
        );
        for seed in 0..3 {
            std::fs::remove_dir_all(dir.path().join(format!("plain-s{seed}"))).unwrap();
        }
        let (md, csv) = read(dir.path());
        assert!(!md.contains("Paired"), "{md}");
        assert!(!dir.path().join(PAIRED_FILE).exists());
        // The per-cell rows are the same, less plain's.
        let kept: String = csv_before
            .lines()
            .filter(|l| !l.starts_with("plain,"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(csv, kept);
        assert_eq!(
            md,
            md_before.replace(
                "| plain | 3 | 14.00 ± 1.73 | 1.00 ± 0.00 | 0.00 ± 0.00 | 10 ± 0 | 10 | 10 |\n",
                ""
            )
        );
    }

    /// Every shipped grid resolves into valid run configs (a typo in a GPU grid would otherwise
    /// surface hours into a cluster job), and R2's equal-updates cell has twice R2's epochs.
    #[cfg(feature = "train")]
    #[test]
    fn every_shipped_grid_resolves_and_r2_gets_both_budgets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/experiments");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{files:?}");
        for f in files {
            let e = load(&f).unwrap();
            let dir = exp_dir(&e);
            let epochs = |label: &str| {
                cells(&e)
                    .iter()
                    .find(|c| c.spec.label == label)
                    .map(|c| cell_config(&e, &f, &dir, c).unwrap().optim.epochs)
            };
            for c in cells(&e) {
                let cfg = cell_config(&e, &f, &dir, &c)
                    .unwrap_or_else(|err| panic!("{}: {err:#}", f.display()));
                assert_eq!(cfg.run.seed, c.seed);
                assert_eq!(cfg.run_dir(), dir.join(&c.name));
            }
            if let Some(r2) = epochs("sfo-r2") {
                assert_eq!(epochs("sfo-r2-2x"), Some(2 * r2), "{}", f.display());
            }
            // Equal-compute counterparts of sfo-r2-2x train exactly as long.
            for twin in ["plain-2x", "sfo-r1-2x"] {
                if let Some(n) = epochs(twin) {
                    assert_eq!(Some(n), epochs("sfo-r2-2x"), "{} {twin}", f.display());
                }
            }
        }
    }

    #[test]
    fn delta_m_waits_for_every_baseline_and_one_seed_has_no_spread() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        cell(dir, "plain", 0, None, 0.5);
        cell(dir, "plain", 1, None, 0.7);
        cell(dir, "stl-segmentation", 0, Some("segmentation"), 0.5);
        let (md, csv) = read(dir);
        // A multi-task row is not a baseline, and its Δm is unknown rather than NaN.
        let plain = md.lines().find(|l| l.starts_with("| plain |")).unwrap();
        assert!(
            plain.contains(" – |") && !plain.contains("(baseline)"),
            "{plain}"
        );
        assert!(
            md.contains("Δm needs all three single-task baselines"),
            "{md}"
        );
        assert!(!csv.contains("NaN"), "{csv}");
        assert!(plain.contains("0.6000 ± 0.1414"), "{plain}");
        let stl = md
            .lines()
            .find(|l| l.starts_with("| stl-segmentation |"))
            .unwrap();
        assert!(stl.contains("(baseline)") && !stl.contains('±'), "{stl}");

        cell(dir, "stl-depth", 0, Some("depth"), 0.5);
        cell(dir, "stl-normals", 0, Some("normals"), 0.5);
        // A resumed cell's partial seconds stay out of the training cost.
        cell_timed(dir, "stl-normals", 1, Some("normals"), 0.5, (1.0, true));
        let (md, csv) = read(dir);
        let stl = md
            .lines()
            .find(|l| l.starts_with("| stl-normals |"))
            .unwrap();
        assert!(stl.contains("| 10 ¹ |"), "{stl}");
        assert!(md.contains("¹ Without the cells that resumed"), "{md}");
        assert!(!md.contains("Δm needs"), "{md}");
        let plain = md.lines().find(|l| l.starts_with("| plain |")).unwrap();
        assert!(!plain.contains(" – |"), "{plain}");
        // Seed 0 equals the baseline on every metric: Δm 0.
        let row = csv.lines().find(|l| l.starts_with("plain,0,")).unwrap();
        assert!(row.contains(",0.000000,"), "{row}");
    }
}
