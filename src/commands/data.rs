use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

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
        /// The dataset directory DIR to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Training images.
        #[arg(long, default_value_t = 50_000, value_parser = crate::args::count::<usize>)]
        train: usize,
        /// Test images.
        #[arg(long, default_value_t = 10_000, value_parser = crate::args::count::<usize>)]
        test: usize,
        /// Seed of the generator (the same seed gives the same files).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Replace DIR if it already holds files (the new dataset is written beside it and
        /// swapped in once complete); without it, a non-empty DIR is refused.
        #[arg(long)]
        force: bool,
    },
    /// Write synthetic indoor scenes in the NYUv2 (MTAN) layout: DIR/{train,val}/{image,label,
    /// depth,normal}/<i>.npy, with exact classes, depth and normals from a ray caster.
    SynthNyuv2 {
        /// The dataset directory DIR to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Training scenes (NYUv2 has 795).
        #[arg(long, default_value_t = 795, value_parser = crate::args::count::<usize>)]
        train: usize,
        /// Validation scenes (NYUv2 has 654).
        #[arg(long, default_value_t = 654, value_parser = crate::args::count::<usize>)]
        val: usize,
        /// Scene height in pixels (MTAN's 288).
        #[arg(long, default_value_t = 288, value_parser = crate::args::count::<usize>)]
        height: usize,
        /// Scene width in pixels (MTAN's 384).
        #[arg(long, default_value_t = 384, value_parser = crate::args::count::<usize>)]
        width: usize,
        /// Seed of the generator (the same seed gives the same files).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Replace DIR if it already holds files (the new dataset is written beside it and
        /// swapped in once complete); without it, a non-empty DIR is refused.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        DataCommand::SynthCifar {
            output,
            train,
            test,
            seed,
            force,
        } => {
            overparam_data::synth::check_split_sizes(train, test)?;
            let t0 = std::time::Instant::now();
            write_dataset(&output, force, |dir| {
                overparam_data::synth::write_synthetic_cifar100(dir, train, test, seed)
            })?;
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
            force,
        } => {
            overparam_data::scenes::check_scene_size(height, width)
                .context("--height and --width")?;
            let t0 = std::time::Instant::now();
            write_dataset(&output, force, |dir| {
                overparam_data::scenes::write_synthetic_nyuv2(dir, train, val, height, width, seed)
            })?;
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

/// Writes a dataset into `out` with `write`. An existing non-empty `out` is refused (it may be
/// a dataset, and NYUv2 scenes of a smaller run would otherwise be left mixed in), unless
/// `force`. Either way the dataset is written into a staging sibling and swapped in only once
/// complete (base::write_dir_atomic): a failure leaves the old one as it was, and a new `out`
/// exists only whole. SIGINT or SIGTERM removes the staging before the process ends; a kill
/// leaves it for the next writer to remove.
fn write_dataset(
    out: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> overparam_data::Result<()> + Send,
) -> Result<()> {
    let non_empty = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("{}", out.display())),
    };
    if non_empty && !force {
        bail!(
            "{} already exists and is not empty (a dataset?); nothing was written. Choose another \
             directory, or pass --force to replace it",
            out.display()
        );
    }
    crate::stop::install()?;
    // The generator runs on a worker so that this thread can answer a signal: the library's
    // loops do not poll for one.
    let joined = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            overparam_base::write_dir_atomic(out, |dir| write(dir).map_err(WriteError::Data))
        });
        while !worker.is_finished() {
            if let Some(sig) = crate::stop::requested() {
                let removed = overparam_base::fs::remove_staging(out, || worker.is_finished());
                eprintln!(
                    "{sig}: stopped; {} was not written{}",
                    out.display(),
                    match removed {
                        Ok(()) => ", and nothing of it is left".to_string(),
                        Err(e) => format!(" (its staging could not be removed: {e})"),
                    }
                );
                // Ends the worker too; what it had written is gone with the staging.
                std::process::exit(130);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        worker.join()
    });
    match joined {
        Ok(r) => r.map_err(|e| match e {
            WriteError::Data(e) => anyhow::Error::from(e),
            WriteError::Io(e) => anyhow::Error::from(e).context(format!("{}", out.display())),
        }),
        Err(_) => bail!(
            "the dataset writer panicked; {} was not written",
            out.display()
        ),
    }
}

/// A generator's error or the staging's.
enum WriteError {
    Data(overparam_data::Error),
    Io(std::io::Error),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}
