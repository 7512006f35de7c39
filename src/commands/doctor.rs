use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {}

#[cfg(feature = "train")]
pub fn run(_: Args) -> Result<ExitCode> {
    let r = overparam_train::doctor()?;
    println!("{r}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "train"))]
pub fn run(_: Args) -> Result<ExitCode> {
    anyhow::bail!(
        "this overparam was built without the `train` feature (no libtorch); rebuild with default features"
    )
}
