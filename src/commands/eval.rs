use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// A train or deploy checkpoint made by `overparam train`.
    checkpoint: PathBuf,
    /// CIFAR-10/100 binaries (the test split is evaluated) or, for the multi-task network, an
    /// NYUv2-layout root (its `val` split).
    #[arg(long)]
    data: PathBuf,
    /// Multi-task only: write per-image predictions as .npy under this directory.
    #[arg(long)]
    dump_predictions: Option<PathBuf>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[cfg(feature = "train")]
pub fn run(a: Args) -> Result<ExitCode> {
    use overparam_config::DeviceChoice;
    if let Some(d) = &a.dump_predictions {
        // Predictions are written under the split's own file names: never into the dataset.
        overparam_base::check_output(d, &[&a.data, &a.checkpoint])?;
    }
    let choice = match a.device.as_str() {
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda,
        d => anyhow::bail!("unknown device `{d}` (cpu or cuda)"),
    };
    let device = overparam_train::trainer::device(choice)?;
    let dense = match overparam_fuse::checkpoint::load(&a.checkpoint)?.spec {
        overparam_fuse::AnySpec::Train(s) => s.has_dense_outputs(),
        overparam_fuse::AnySpec::Deploy(s) => s.has_dense_outputs(),
    };
    if dense {
        let m = overparam_train::mtl_trainer::evaluate_checkpoint(
            &a.checkpoint,
            &a.data,
            device,
            a.dump_predictions.as_deref(),
        )?;
        println!(
            "{}: {}",
            a.checkpoint.display(),
            overparam_train::mtl_trainer::format_metrics(&m)
        );
        if let Some(d) = &a.dump_predictions {
            println!("predictions written under {}", d.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.dump_predictions.is_some() {
        anyhow::bail!("--dump-predictions is for the multi-task network");
    }
    let (stage, loss, top) =
        overparam_train::trainer::evaluate_checkpoint(&a.checkpoint, &a.data, device)?;
    println!(
        "{} ({stage}): {} test images, loss {loss:.4}, top-1 error {:.2}%, top-5 error {:.2}%",
        a.checkpoint.display(),
        top.seen,
        top.top1_error(),
        top.top5_error()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "train"))]
pub fn run(_: Args) -> Result<ExitCode> {
    anyhow::bail!(
        "this overparam was built without the `train` feature (no libtorch); rebuild with default features"
    )
}
