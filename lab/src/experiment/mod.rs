//! A grid of method × routine × seed on one task. Each cell is a normal run directory under
//! the grid's directory; cells are resumable and shardable across machines, and [`summary`]
//! merges whatever has finished into results.csv, results.md, paired.csv and plots.

use std::path::{Path, PathBuf};

use overparam_config::TrainConfig;
use overparam_config::files::STATE_FILE;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub mod cell;
pub mod slurm;
pub mod summary;

pub use cell::CellResult;
pub use summary::{Summary, summarize};

/// What a finished cell records in its directory.
pub const CELL_FILE: &str = "cell.json";
/// The grid as last run, in the grid's directory: `summarize` takes the row order from it.
pub const GRID_FILE: &str = "experiment.json";

#[derive(Clone, Debug, Deserialize, Serialize)]
struct ExperimentFile {
    experiment: Experiment,
}

/// The `[experiment]` table of a grid file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    /// Base training config, relative to the experiment file.
    pub base: PathBuf,
    pub seeds: Vec<u64>,
    /// Overrides for every cell (`key=value`, as `train --set`).
    #[serde(default)]
    pub set: Vec<String>,
    /// Where cells go (default `runs/<name>`), relative to the working directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Measure each cell's INT8 drop through the CPU runtime.
    #[serde(default = "yes")]
    pub int8: bool,
    #[serde(default = "calib_default")]
    pub calib_images: usize,
    /// The calibrator of each cell's INT8 drop (default auto; the grids committed before auto
    /// existed say `entropy`, so they rerun as committed).
    #[serde(default)]
    pub calibrator: overparam_engine::calib::Calibrator,
    pub cells: Vec<CellSpec>,
}

impl Experiment {
    /// The INT8 recipe of every cell: the grid's calibrator and images, TensorRT's encoding,
    /// the model's recorded normalisation.
    pub fn quantization(&self) -> overparam_engine::quant::Quantization {
        overparam_engine::quant::Quantization {
            calibrator: self.calibrator,
            images: self.calib_images,
            ..Default::default()
        }
    }
}

fn yes() -> bool {
    true
}
fn calib_default() -> usize {
    256
}

/// One row of the results table: a method and routine, with its overrides.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// Method and routine, e.g. `sfo-r2`; the row of the results table.
    pub label: String,
    /// A different base config for this cell (single-task baselines).
    #[serde(default)]
    pub base: Option<PathBuf>,
    #[serde(default)]
    pub set: Vec<String>,
    /// A single-task baseline for Δm of this task (multi-task grids).
    #[serde(default, with = "overparam_config::task_serde::one")]
    pub baseline_for: Option<overparam_base::Task>,
}

/// One run of the grid: a cell spec at one seed, in `<grid dir>/<label>-s<seed>`.
#[derive(Clone, Debug)]
pub struct Cell {
    pub spec: CellSpec,
    pub seed: u64,
    pub name: String,
}

/// How far a cell has got, from its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellState {
    Todo,
    /// Trained for at least one epoch, not finished.
    Partial,
    Done,
}

impl CellState {
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Todo => "todo",
            CellState::Partial => "partial",
            CellState::Done => "done",
        }
    }
}

/// `--shard I/N`: every N-th cell starting at I (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub i: usize,
    pub n: usize,
}

impl Shard {
    /// The whole grid.
    pub const ALL: Shard = Shard { i: 0, n: 1 };

    pub fn contains(self, k: usize) -> bool {
        k % self.n == self.i
    }
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

/// A loaded grid file: the experiment, where the file is (base configs are relative to it),
/// and where its cells go.
#[derive(Clone, Debug)]
pub struct Grid {
    pub experiment: Experiment,
    pub file: PathBuf,
    pub dir: PathBuf,
}

impl Grid {
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::read_to_string(path)?;
        let f: ExperimentFile = toml::from_str(&text)
            .map_err(|e| Error::file(path, format!("not an experiment file: {e}")))?;
        let e = f.experiment;
        if e.seeds.is_empty() || e.cells.is_empty() {
            return Err(Error::file(
                path,
                "experiment.seeds and experiment.cells must not be empty",
            ));
        }
        overparam_base::number::COUNT
            .check("experiment.calib_images", e.calib_images)
            .map_err(|err| Error::file(path, err.to_string()))?;
        // Both become directory names under the runs directory: never a path out of it.
        let plain = overparam_base::is_plain_name;
        if !plain(&e.name) {
            return Err(Error::file(
                path,
                format!(
                    "experiment.name `{}` must be a plain directory name (no path separators, not `.` or `..`)",
                    e.name
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &e.cells {
            if !plain(&c.label) || !seen.insert(&c.label) {
                return Err(Error::file(
                    path,
                    format!("cell label `{}` is empty, has a slash or repeats", c.label),
                ));
            }
        }
        let dir = e
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&e.name));
        Ok(Self {
            experiment: e,
            file: path.to_path_buf(),
            dir,
        })
    }

    /// Every cell, seed-major: a partial grid already has one seed of every method.
    pub fn cells(&self) -> Vec<Cell> {
        let e = &self.experiment;
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

    /// The cells of one shard, with their index in the whole grid.
    pub fn shard(&self, s: Shard) -> Vec<(usize, Cell)> {
        self.cells()
            .into_iter()
            .enumerate()
            .filter(|(k, _)| s.contains(*k))
            .collect()
    }

    pub fn cell_dir(&self, c: &Cell) -> PathBuf {
        self.dir.join(&c.name)
    }

    pub fn state(&self, c: &Cell) -> CellState {
        let d = self.cell_dir(c);
        if d.join(CELL_FILE).exists() {
            CellState::Done
        } else if d.join(STATE_FILE).exists() {
            CellState::Partial
        } else {
            CellState::Todo
        }
    }

    /// The run config of one cell: its base file (relative to the experiment file) with the
    /// grid's and the cell's overrides, its seed, name and directory.
    pub fn cell_config(&self, c: &Cell) -> Result<TrainConfig> {
        let e = &self.experiment;
        let root = self.file.parent().unwrap_or(Path::new("."));
        let base = root.join(c.spec.base.as_ref().unwrap_or(&e.base));
        let mut overrides = e.set.clone();
        overrides.extend(c.spec.set.iter().cloned());
        overrides.push(format!("run.seed={}", c.seed));
        overrides.push(format!("run.name=\"{}\"", c.name));
        overrides.push(format!("run.dir=\"{}\"", self.dir.display()));
        TrainConfig::load(&base, &overrides).map_err(|err| {
            Error::from(err).context(format!("cell {} from {}", c.name, base.display()))
        })
    }

    /// Resolves every cell's config, so a bad cell fails before any cell trains or is queued;
    /// the error names each bad cell (not just the first).
    pub fn check_cells(&self) -> Result<Vec<TrainConfig>> {
        let mut good = vec![];
        let mut bad = vec![];
        for c in self.cells() {
            match self.cell_config(&c) {
                Ok(cfg) => good.push(cfg),
                Err(e) => bad.push(crate::error_chain(&e)),
            }
        }
        if bad.is_empty() {
            return Ok(good);
        }
        Err(Error::file(
            &self.file,
            format!(
                "{} of {} cells have an invalid config:\n  {}",
                bad.len(),
                self.cells().len(),
                bad.join("\n  ")
            ),
        ))
    }

    /// Whether any cell trains on a GPU (`run.device = "cuda"` in its resolved config).
    pub fn needs_gpu(&self) -> Result<bool> {
        Ok(self
            .check_cells()?
            .iter()
            .any(|cfg| cfg.run.device == overparam_config::DeviceChoice::Cuda))
    }

    /// Records the grid as run in its directory (`summarize` takes the row order from it).
    pub fn record(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io(&self.dir))?;
        crate::write(
            &self.dir.join(GRID_FILE),
            serde_json::to_string_pretty(&self.experiment)?.as_bytes(),
        )
    }
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

    /// Every shipped grid resolves into valid run configs (a typo in a GPU grid would otherwise
    /// surface hours into a cluster job), and R2's equal-updates cell has twice R2's epochs.
    /// Needs no libtorch: the config crate resolves them.
    #[test]
    fn every_shipped_grid_resolves_and_r2_gets_both_budgets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/experiments");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{files:?}");
        for f in files {
            let g = Grid::load(&f).unwrap();
            let epochs = |label: &str| {
                g.cells()
                    .iter()
                    .find(|c| c.spec.label == label)
                    .map(|c| g.cell_config(c).unwrap().optim.epochs)
            };
            for c in g.cells() {
                let cfg = g
                    .cell_config(&c)
                    .unwrap_or_else(|err| panic!("{}: {err}", f.display()));
                assert_eq!(cfg.run.seed, c.seed);
                assert_eq!(cfg.run_dir(), g.dir.join(&c.name));
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
    fn shards_partition_the_grid_seed_major() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("g.toml");
        std::fs::write(
            &f,
            "[experiment]\nname = \"g\"\nbase = \"b.toml\"\nseeds = [0, 1]\n\
             [[experiment.cells]]\nlabel = \"plain\"\n[[experiment.cells]]\nlabel = \"sfo\"\n",
        )
        .unwrap();
        let g = Grid::load(&f).unwrap();
        let names = |s| {
            g.shard(s)
                .into_iter()
                .map(|(_, c)| c.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Shard::ALL),
            ["plain-s0", "sfo-s0", "plain-s1", "sfo-s1"]
        );
        assert_eq!(names(Shard { i: 1, n: 2 }), ["sfo-s0", "sfo-s1"]);
        assert_eq!(g.dir, Path::new("runs/g"));
        assert_eq!(g.state(&g.cells()[0]), CellState::Todo);
        std::fs::write(
            &f,
            "[experiment]\nname = \"g\"\nbase = \"b.toml\"\nseeds = []\ncells = []\n",
        )
        .unwrap();
        let e = Grid::load(&f).unwrap_err().to_string();
        assert!(
            e.contains("g.toml") && e.contains("must not be empty"),
            "{e}"
        );
    }
}
