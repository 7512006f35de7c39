//! A Slurm job array that runs a grid's shards: task I runs `--shard I/N`.

use std::path::Path;

use super::Grid;
use crate::Result;

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

/// The job script for `shards` array tasks (at least 1, at most one per cell). The job runs
/// `$OVERPARAM_BIN` if set when it runs, else `exe`; it asks for a GPU only if a cell trains
/// on `cuda`.
pub fn script(grid: &Grid, shards: usize, exe: &Path) -> Result<String> {
    let gres = if grid.needs_gpu()? {
        "#SBATCH --gres=gpu:1\n"
    } else {
        ""
    };
    Ok(format!(
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
        dir = shell_word(&grid.dir.display().to_string()),
        exe = shell_dq(&exe.display().to_string()),
        config = shell_word(&grid.file.display().to_string()),
    ))
}

/// Writes [`script`] to `out`, with the shard count clamped to 1..=cells (default: one per
/// cell); returns the count used.
pub fn write(grid: &Grid, out: &Path, shards: Option<usize>, exe: &Path) -> Result<usize> {
    let cells = grid.cells().len();
    let n = shards.unwrap_or(cells).clamp(1, cells);
    crate::write(out, script(grid, n, exe)?.as_bytes())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes_and_dollars() {
        assert_eq!(shell_word("a'b"), "'a'\\''b'");
        assert_eq!(shell_dq("a\"$`\\b"), "a\\\"\\$\\`\\\\b");
    }
}
