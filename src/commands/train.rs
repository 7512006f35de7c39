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
    #[arg(long, value_parser = crate::args::count::<usize>)]
    epochs_now: Option<usize>,
}

#[cfg(feature = "train")]
pub fn run(a: Args) -> Result<ExitCode> {
    use overparam_config::TrainConfig;
    let cfg = TrainConfig::load(&a.config, &a.overrides)?;
    let progress = crate::progress::Bars::stderr();
    if overparam_train::mtl_trainer::is_mtl(&cfg)? {
        match overparam_train::mtl_trainer::train_mtl(&cfg, a.resume, &progress, a.epochs_now)? {
            Some(s) => {
                let m = s.metrics;
                println!(
                    "run {}: {}",
                    cfg.run_dir().display(),
                    overparam_train::mtl_trainer::format_metrics(&m)
                );
            }
            None => println!(
                "run {}: stopped after --epochs-now; continue with --resume",
                cfg.run_dir().display()
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    match overparam_train::trainer::train(&cfg, a.resume, &progress, a.epochs_now)? {
        Some(s) => {
            println!(
                "run {}: test top-1 error {:.2}% (top-5 {:.2}%); fold exact in f64; deploy model top-1 error {:.2}% (top-5 {:.2}%), {} predictions moved by the device's rounding (max logit rel diff {:.1e})",
                s.run_dir.display(),
                s.last.test_top1_err,
                s.last.test_top5_err,
                s.deploy_test_top1_err,
                s.deploy_test_top5_err,
                s.prediction_mismatches,
                s.max_logit_rel_diff
            );
            if let Some(q) = overparam_lab::qat::after_training(&cfg, &s.run_dir, &progress)? {
                println!(
                    "QAT ({} epoch(s), {:?} encoding): INT8 top-1 error {:.2}% in ONNX Runtime (PTQ {:.2}%, fp32 {:.2}%); top-1 agreement with the QAT model {:.2}%; wrote {}",
                    cfg.quant.qat_epochs,
                    q.encoding,
                    q.qat.onnx_top1_err,
                    q.ptq_int8_top1_err,
                    q.fp32_top1_err,
                    100.0 * q.reproduction.top1_agreement,
                    q.model.display()
                );
            }
        }
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
