use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Run configuration (TOML); see configs/.
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. `--set optim.lr=0.05 --set run.name=try2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in `<run.dir>/<run.name>` from its last finished epoch (bit-identical
    /// to an uninterrupted run). Refused if the config differs from the run's config.toml.
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs of this invocation (resume later with --resume).
    #[arg(long)]
    epochs_now: Option<usize>,
}

#[cfg(feature = "train")]
pub fn run(a: Args) -> Result<ExitCode> {
    use overparam_train::config::TrainConfig;
    let cfg = TrainConfig::load(&a.config, &a.overrides)?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if overparam_train::mtl_trainer::is_mtl(&cfg) {
        match overparam_train::mtl_trainer::train_mtl(&cfg, a.resume, progress, a.epochs_now)? {
            Some(s) => {
                let m = s.metrics;
                println!(
                    "run {}: mIoU {:.2}%, pixel acc {:.2}%, depth abs {:.4} rel {:.4}, normals mean {:.2}° median {:.2}°, within 11.25/22.5/30°: {:.1}/{:.1}/{:.1}%",
                    cfg.run_dir().display(),
                    100.0 * m[0],
                    100.0 * m[1],
                    m[2],
                    m[3],
                    m[4],
                    m[5],
                    100.0 * m[6],
                    100.0 * m[7],
                    100.0 * m[8]
                );
            }
            None => println!(
                "run {}: stopped after --epochs-now; continue with --resume",
                cfg.run_dir().display()
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    match overparam_train::trainer::train(&cfg, a.resume, progress, a.epochs_now)? {
        Some(s) => println!(
            "run {}: test top-1 error {:.2}% (top-5 {:.2}%), deploy model identical in predictions (max logit rel diff {:.1e})",
            s.run_dir.display(),
            s.last.test_top1_err,
            s.last.test_top5_err,
            s.max_logit_rel_diff
        ),
        None => println!(
            "run {}: stopped after --epochs-now; continue with --resume",
            cfg.run_dir().display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "train"))]
pub fn run(_: Args) -> Result<ExitCode> {
    anyhow::bail!(
        "this overparam was built without the `train` feature (no libtorch); rebuild with default features"
    )
}
