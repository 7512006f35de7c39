//! `overparam experiment`: a grid of method × routine × seed on one task, each cell a normal
//! run directory; resumable, shardable across machines (`--shard I/N`, `--emit-slurm`), and
//! summarised as results.csv, results.md and plots. The grid lives in `overparam_lab::experiment`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use overparam_lab::experiment::{Grid, Shard, Summary, slurm, summarize};

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
    #[arg(long, value_parser = crate::args::count::<usize>)]
    shards: Option<usize>,
    /// List the cells and their state, and check that every cell's config resolves; run nothing.
    #[arg(long)]
    list: bool,
}

#[derive(clap::Subcommand)]
enum ExperimentCommand {
    /// Merge the finished cells of an experiment directory into results.csv, results.md and
    /// plots (whatever has finished so far, from any machine).
    Summarize {
        /// The grid's directory (default of a grid: runs/<name>).
        dir: PathBuf,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(ExperimentCommand::Summarize { dir }) = a.command {
        show(&dir, &summarize(&dir)?);
        return Ok(ExitCode::SUCCESS);
    }
    let path = a
        .config
        .context("--config FILE (or `experiment summarize DIR`)")?;
    let grid = Grid::load(&path)?;
    if let Some(out) = &a.emit_slurm {
        let exe = std::env::current_exe().context("locating the overparam binary")?;
        let exe = exe.canonicalize().unwrap_or(exe);
        let n = slurm::write(&grid, out, a.shards, &exe)?;
        if let Some(asked) = a.shards.filter(|&s| s > n) {
            eprintln!("--shards {asked}: the grid has {n} cells, so {n} array tasks");
        }
        println!(
            "wrote {} ({n} array tasks over {} cells)",
            out.display(),
            grid.cells().len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let shard = a.shard.unwrap_or(Shard::ALL);
    if a.list {
        return list(&grid, shard);
    }
    run_cells(&grid, shard)
}

/// `--list`: each cell's state; resolving every cell's config here catches a broken grid
/// before it is queued.
fn list(grid: &Grid, shard: Shard) -> Result<ExitCode> {
    let mut invalid = 0;
    for (k, c) in grid.shard(shard) {
        match grid.cell_config(&c) {
            Err(err) => {
                println!(
                    "{k:>3} {:<24} invalid: {:#}",
                    c.name,
                    anyhow::Error::from(err)
                );
                invalid += 1;
            }
            Ok(_) => println!("{k:>3} {:<24} {}", c.name, grid.state(&c).as_str()),
        }
    }
    if invalid > 0 {
        eprintln!("{invalid} cell(s) have an invalid config");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "train")]
fn run_cells(grid: &Grid, shard: Shard) -> Result<ExitCode> {
    let progress = crate::progress::Bars::stderr();
    let out = overparam_lab::experiment::cell::run_shard(grid, shard, &progress)?;
    show(&grid.dir, &out.summary);
    if !out.failed.is_empty() {
        eprintln!(
            "{} cell(s) failed (rerun the same command to retry them):\n  {}",
            out.failed.len(),
            out.failed.join("\n  ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "train"))]
fn run_cells(_: &Grid, _: Shard) -> Result<ExitCode> {
    anyhow::bail!(
        "running cells needs the `train` feature (libtorch); `experiment summarize`, `--list` and `--emit-slurm` work without it"
    )
}

fn show(dir: &std::path::Path, s: &Summary) {
    println!("{}", s.markdown);
    eprintln!("wrote {}/results.csv, results.md and plots", dir.display());
}
