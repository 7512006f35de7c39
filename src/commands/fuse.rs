use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use overparam_fuse::checkpoint::{self, Checkpoint};
use overparam_fuse::verify::{Precision, VerifyOptions, fold_verified};
use overparam_fuse::{AnySpec, Error};

#[derive(clap::Args)]
pub struct Args {
    /// Train checkpoint to fold.
    input: PathBuf,
    /// Deploy checkpoint to write (only after the f64 verdict passes; never the input).
    #[arg(short, long)]
    output: PathBuf,
    /// Random inputs in the verification batch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: u16,
    /// Seed of the random verification inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Blocks to list in the report, worst first.
    #[arg(long, default_value_t = 5)]
    show: usize,
    /// Precisions to measure the deploy model in against the f64 reference (reported, never a
    /// gate): fp32 runs on this CPU; tf32, bf16 and fp16 are simulated by rounding weights and
    /// activations between layers.
    #[arg(long, value_delimiter = ',', default_value = "fp32,tf32,bf16,fp16", value_parser = parse_precision)]
    measure: Vec<Precision>,
    /// Print the verification report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("`{s}`: expected fp32, tf32, bf16 or fp16"))
}

pub fn run(a: Args) -> Result<ExitCode> {
    overparam_base::check_output(&a.output, &[&a.input])?;
    let Checkpoint { spec, weights } = checkpoint::load(&a.input)?;
    let train = match spec {
        AnySpec::Train(t) => t,
        AnySpec::Deploy(_) => bail!(Error::AlreadyDeployed { path: a.input }),
    };
    eprintln!("fuse: folding in f64 and checking it against the train model in eval mode…");
    let opts = VerifyOptions {
        batch: a.batch as usize,
        seed: a.seed,
        measure: a.measure.clone(),
    };
    let f = fold_verified(&train, &weights, &opts)
        .with_context(|| format!("folding {}", a.input.display()))?;
    let r = &f.report;
    if a.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        let v = &r.exact;
        println!(
            "exactness (the verdict): f64 reference executor on the CPU, batch {} of random inputs, eval-mode BN, tolerance {:.0e} relative to max|y| ({:.2} s)",
            v.batch, v.output_tolerance, r.exact_seconds
        );
        let mut blocks: Vec<_> = v.blocks.iter().collect();
        blocks.sort_by(|x, y| y.rel.total_cmp(&x.rel));
        println!(
            "  {} conv blocks; worst {}:",
            blocks.len(),
            a.show.min(blocks.len())
        );
        for d in blocks.iter().take(a.show) {
            println!(
                "    {:<28} rel {:.3e}  (abs max|Δ| {:.3e}, max|y| {:.3e})",
                d.name, d.rel, d.max_abs, d.max_ref
            );
        }
        for d in &v.outputs {
            println!(
                "  end to end `{}`: rel {:.3e}  (abs max|Δ| {:.3e}, max|y| {:.3e})",
                d.name, d.rel, d.max_abs, d.max_ref
            );
        }
        if !r.measured.is_empty() {
            println!(
                "precision (measurements, not a gate): the deploy model against the f64 train model; depth {} nodes / {} layers, widest dot product {}",
                r.depth.nodes, r.depth.layers, r.depth.max_fan_in
            );
            for m in &r.measured {
                for d in &m.outputs {
                    if d.rel.is_nan() {
                        println!(
                            "  {:<16} `{}`: non-finite output (the format overflowed or a NaN appeared)",
                            m.precision, d.name
                        );
                        continue;
                    }
                    println!(
                        "  {:<16} `{}`: rel {:.3e}  (abs max|Δ| {:.3e}); first-order bound rel {:.1e}{}",
                        m.precision,
                        d.name,
                        d.rel,
                        d.max_abs,
                        m.bound,
                        if d.rel <= m.bound {
                            ""
                        } else {
                            " (above: worth a look)"
                        }
                    );
                }
            }
        }
    }
    if !r.passed() {
        eprintln!(
            "error: the fold is not exact: f64 relative error above {:.0e}; {} not written",
            r.exact.output_tolerance,
            a.output.display()
        );
        return Ok(ExitCode::from(2));
    }
    checkpoint::save(&a.output, &AnySpec::Deploy(f.spec), &f.weights)?;
    let done = format!(
        "PASS: exact in f64 (every block and output within {:.0e} relative); wrote {}",
        r.exact.output_tolerance,
        a.output.display()
    );
    // With --json, stdout is the report alone.
    if a.json {
        eprintln!("{done}");
    } else {
        println!("{done}");
    }
    Ok(ExitCode::SUCCESS)
}
