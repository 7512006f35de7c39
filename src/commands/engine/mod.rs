//! `overparam engine`: TensorRT plans (`build`) and accuracy per precision (`accuracy`).

use std::process::ExitCode;

use anyhow::Result;

mod accuracy;
mod build;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: EngineCommand,
}

#[derive(clap::Subcommand)]
enum EngineCommand {
    /// Build a TensorRT plan from an ONNX model with trtexec, plus its manifest.
    Build(build::Args),
    /// Accuracy of FP32 / FP16 / INT8 exports through the CPU runtime against the fused model,
    /// with a weight-range report, and optionally a per-layer INT8 sensitivity scan and a
    /// partial-INT8 plan that meets `--budget`.
    Accuracy(accuracy::Args),
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        EngineCommand::Build(b) => build::run(b),
        EngineCommand::Accuracy(c) => accuracy::run(c),
    }
}
