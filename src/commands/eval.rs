use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// A train or deploy checkpoint made by `overparam train`.
    checkpoint: PathBuf,
    /// Directory with CIFAR-10/100 binaries (its test split is evaluated).
    #[arg(long)]
    data: PathBuf,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[cfg(feature = "train")]
pub fn run(a: Args) -> Result<ExitCode> {
    use overparam_train::config::DeviceChoice;
    let choice = match a.device.as_str() {
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda,
        d => anyhow::bail!("unknown device `{d}` (cpu or cuda)"),
    };
    let device = overparam_train::trainer::device(choice)?;
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
