use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand)]
enum DataCommand {
    /// Write a synthetic CIFAR-100 (100 procedural classes) in the real binary layout:
    /// DIR/train.bin and DIR/test.bin.
    SynthCifar {
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 50_000)]
        train: usize,
        #[arg(long, default_value_t = 10_000)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        DataCommand::SynthCifar {
            output,
            train,
            test,
            seed,
        } => {
            let t0 = std::time::Instant::now();
            overparam_data::synth::write_synthetic_cifar100(&output, train, test, seed)?;
            println!(
                "wrote {} ({train} train, {test} test images, seed {seed}) in {:.1} s",
                output.display(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
