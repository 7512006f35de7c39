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
/// `force`: then the dataset is written into a fresh sibling directory and swapped in only
/// once complete, so a failure leaves the old one as it was.
fn write_dataset(
    out: &Path,
    force: bool,
    write: impl FnOnce(&Path) -> overparam_data::Result<()>,
) -> Result<()> {
    let non_empty = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("{}", out.display())),
    };
    if !non_empty {
        write(out)?;
        return Ok(());
    }
    if !force {
        bail!(
            "{} already exists and is not empty (a dataset?); nothing was written. Choose another \
             directory, or pass --force to replace it",
            out.display()
        );
    }
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.new-{pid}"));
    let old = parent.join(format!(".{name}.old-{pid}"));
    let result = write(&tmp).map_err(anyhow::Error::from).and_then(|()| {
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
        if let Err(e) = std::fs::rename(&tmp, out) {
            // Put the old dataset back.
            let _ = std::fs::rename(&old, out);
            return Err(e).with_context(|| format!("moving the new dataset to {}", out.display()));
        }
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    std::fs::remove_dir_all(&old)
        .with_context(|| format!("removing the replaced dataset {}", old.display()))
}
