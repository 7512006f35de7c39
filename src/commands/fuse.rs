use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use overparam_fuse::checkpoint::{self, Checkpoint};
use overparam_fuse::verify::verify_fold;
use overparam_fuse::{AnySpec, fold};

#[derive(clap::Args)]
pub struct Args {
    /// Train checkpoint to fold.
    input: PathBuf,
    /// Deploy checkpoint to write (only after verification passes).
    #[arg(short, long)]
    output: PathBuf,
    /// Random inputs in the verification batch.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Blocks to list in the report, worst first.
    #[arg(long, default_value_t = 5)]
    show: usize,
    /// Print the verification report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Checkpoint { spec, weights } = checkpoint::load(&a.input)?;
    let train = match spec {
        AnySpec::Train(t) => t,
        AnySpec::Deploy(_) => bail!(overparam_fuse::Error::AlreadyDeployed { path: a.input }),
    };
    let (deploy, dw) =
        fold(&train, &weights).with_context(|| format!("folding {}", a.input.display()))?;
    eprintln!("fuse: verifying the folded model against the train model in eval mode…");
    let v = verify_fold(&train, &weights, &deploy, &dw, a.batch, a.seed)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "verification ({}, batch {} of random inputs, eval-mode BN):",
            v.precision, v.batch
        );
        let mut blocks: Vec<_> = v.blocks.iter().collect();
        blocks.sort_by(|x, y| y.rel.total_cmp(&x.rel));
        println!(
            "  {} conv blocks; worst {}:",
            blocks.len(),
            a.show.min(blocks.len())
        );
        for d in blocks.iter().take(a.show) {
            println!(
                "    {:<28} max|Δ| {:.3e}  max|y| {:.3e}  rel {:.3e}",
                d.name, d.max_abs, d.max_ref, d.rel
            );
        }
        for d in &v.outputs {
            println!(
                "  end to end `{}`: max|Δ| {:.3e}  max|y| {:.3e}  rel {:.3e}",
                d.name, d.max_abs, d.max_ref, d.rel
            );
        }
    }
    if !v.passed() {
        eprintln!(
            "error: fold verification failed (tolerance {:.0e} per block, {:.0e} end to end); {} not written",
            v.block_tolerance,
            v.output_tolerance,
            a.output.display()
        );
        return Ok(ExitCode::from(2));
    }
    checkpoint::save(&a.output, &AnySpec::Deploy(deploy), &dw)?;
    println!(
        "PASS (≤ {:.0e} per block, ≤ {:.0e} end to end); wrote {}",
        v.block_tolerance,
        v.output_tolerance,
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
