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
    /// Write synthetic indoor scenes in the NYUv2 (MTAN) layout: DIR/{train,val}/{image,label,
    /// depth,normal}/<i>.npy, with exact classes, depth and normals from a ray caster.
    SynthNyuv2 {
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 795)]
        train: usize,
        #[arg(long, default_value_t = 654)]
        val: usize,
        #[arg(long, default_value_t = 288)]
        height: usize,
        #[arg(long, default_value_t = 384)]
        width: usize,
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
        DataCommand::SynthNyuv2 {
            output,
            train,
            val,
            height,
            width,
            seed,
        } => {
            if height < 8 || width < 8 {
                anyhow::bail!("--height and --width must be at least 8");
            }
            let t0 = std::time::Instant::now();
            overparam_data::scenes::write_synthetic_nyuv2(
                &output, train, val, height, width, seed,
            )?;
            let n = (train + val).max(1);
            println!(
                "wrote {} ({train} train, {val} val scenes at {height}×{width}, seed {seed}); {:.1} ms per scene",
                output.display(),
                t0.elapsed().as_secs_f64() * 1e3 / n as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
