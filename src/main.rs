//! `overparam`: train overparameterised CNNs, fold them exactly, ship the plain network.
//! Glue only: every subcommand calls library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod commands;
mod progress;
mod stop;

#[derive(Parser)]
#[command(
    name = "overparam",
    version,
    about,
    long_about = None,
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: train → fold → verify → export FP32/FP16/INT8 → accuracy → latency →
    /// publish over zenoh → runs/<name>/report.md (default: multi-task SFO on synthetic scenes).
    Pipeline(commands::pipeline::Args),
    /// Import a trained network from ONNX (PyTorch's exporters) as a deploy checkpoint,
    /// checked against the original in ONNX Runtime.
    Import(commands::import::Args),
    /// Build a model spec with a method and write its freshly initialised train checkpoint.
    Init(commands::init::Args),
    /// Fold a train checkpoint into a plain deploy checkpoint and verify it numerically.
    Fuse(commands::fuse::Args),
    /// Print a per-layer table of a checkpoint: op, method, shapes, params, MACs.
    Inspect(commands::inspect::Args),
    /// Train a model from a TOML config (routines r1/r2/r3), fold it, and check the fold.
    Train(commands::train::Args),
    /// Evaluate a train or deploy checkpoint on a dataset's test split.
    Eval(commands::eval::Args),
    /// Export a deploy checkpoint as ONNX (fp32, fp16, or int8 with calibration).
    Export(commands::export::Args),
    /// Quantisation-aware fine-tuning of a finished run through the fold, exported INT8 with
    /// the learned thresholds.
    Qat(commands::qat::Args),
    /// TensorRT plans (build with trtexec + manifest) and accuracy per precision.
    Engine(commands::engine::Args),
    /// Two models on the same seeded inputs, Polygraphy-style: per-output errors, NaN/Inf, a
    /// verdict against --atol/--rtol (exit 3 when out of tolerance), --layerwise localisation.
    Compare(commands::compare::Args),
    /// Latency of an ONNX model or TensorRT plan (`bench MODEL`), or `bench train`.
    Bench(commands::bench::Args),
    /// Publish a model's outputs over zenoh (native or ROS 2), or listen to them.
    Bridge(commands::bridge::Args),
    /// A grid of method × routine × seed, resumable and shardable, with a summary and plots.
    Experiment(commands::experiment::Args),
    /// Generate datasets (synthetic data in the real formats).
    Data(commands::data::Args),
    /// Check that libtorch loads and run one overparameterised training step (needs `train`).
    Doctor(commands::doctor::Args),
}

/// The exit statuses every subcommand shares, shown under `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0    success
  1    an error (the message on stderr names the file or option); `experiment`: a cell failed
  2    a usage error; `fuse`: the fold is not exact in f64 (nothing written)
  3    `bench --enforce`: the p99 latency is over --budget-ms
  141  the output pipe closed early (`| head`)
  128+N  `bridge`: a second signal N ended it at once (the first stops it cleanly, status 0)";

/// Exit status for a closed output pipe, as if killed by SIGPIPE (what `cat`, `ls` … give
/// under `| head`).
const BROKEN_PIPE_EXIT: i32 = 141;

/// `overparam … | head` closes stdout early: that ends the command quietly instead of a panic
/// (`println!` panics on EPIPE, since Rust ignores SIGPIPE so that sockets report it as an
/// error; zenoh needs that, so SIGPIPE stays ignored and the panic is caught here).
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("os error 32") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info)
    }));
}

/// [`Cli::parse`], with negative numbers taken as values everywhere: `--width -1` then reaches
/// the flag's rule ("want a positive, finite number") instead of "unexpected argument '-1'".
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    fn negatives(c: clap::Command) -> clap::Command {
        let c = c.allow_negative_numbers(true);
        let names: Vec<String> = c
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        names
            .iter()
            .fold(c, |c, n| c.mut_subcommand(n.as_str(), negatives))
    }
    let m = negatives(Cli::command()).get_matches();
    Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = parse();
    let result = match cli.command {
        Command::Import(a) => commands::import::run(a),
        Command::Init(a) => commands::init::run(a),
        Command::Pipeline(a) => commands::pipeline::run(a),
        Command::Fuse(a) => commands::fuse::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
        Command::Data(a) => commands::data::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Experiment(a) => commands::experiment::run(a),
        Command::Bridge(a) => commands::bridge::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Engine(a) => commands::engine::run(a),
        Command::Qat(a) => commands::qat::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and positional argument of every subcommand says what it is for.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = vec![];
        walk(&super::Cli::command(), "overparam", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    /// Every numeric flag of every subcommand goes through a rule (#25 §4): none takes a
    /// negative number, a float none takes NaN or ±inf, and 0 only where it means something
    /// (a seed, a device index, "no warm-up", "do not wait"). A new flag without a rule fails
    /// here.
    #[test]
    fn every_numeric_flag_refuses_what_has_no_meaning() {
        use std::any::TypeId;
        const ZERO_MEANS_SOMETHING: &[&str] = &[
            "seed",
            "calib_seed",
            "atol",
            "rtol",
            "max_drop",
            "max_drop_dense_pct",
            "max_loss_pct",
            "source_timeout",
            "device_id",
            "dla",
            "warmup",
            "warmup_ms",
            "show",
            "wait_subscribers",
            "budget",
            "domain_id",
            "duration",
        ];
        fn leaves(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
            out.push((path.clone(), c.clone()));
            for s in c.get_subcommands() {
                leaves(s, format!("{path} {}", s.get_name()), out);
            }
        }
        let mut cmds = vec![];
        leaves(&super::Cli::command(), "overparam".into(), &mut cmds);
        let ints = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
        ];
        let floats = [TypeId::of::<f32>(), TypeId::of::<f64>()];
        let (mut checked, mut wrong) = (0, vec![]);
        for (path, c) in cmds {
            for a in c.get_arguments() {
                let (Some(long), true) = (a.get_long(), a.get_action().takes_values()) else {
                    continue;
                };
                let t = a.get_value_parser().type_id();
                let float = floats.iter().any(|f| t == *f);
                if !float && !ints.iter().any(|i| t == *i) {
                    continue;
                }
                checked += 1;
                // The flag alone, nothing required: only the value's own parser can refuse.
                let refuses = |v: &str| {
                    let cmd = c
                        .clone()
                        .subcommand_required(false)
                        .mut_args(|a| a.required(false));
                    matches!(
                        cmd.try_get_matches_from([c.get_name().to_string(), format!("--{long}={v}")]),
                        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation
                    )
                };
                let id = a.get_id().as_str();
                // A normalisation mean is an offset: any finite number.
                let offset = id == "mean";
                let mut bad: Vec<&str> = if offset { vec![] } else { vec!["-1"] };
                if float {
                    bad.extend(["nan", "inf", "-inf"]);
                }
                if !offset && !ZERO_MEANS_SOMETHING.contains(&id) {
                    bad.push("0");
                }
                for v in bad {
                    if !refuses(v) {
                        wrong.push(format!("{path} --{long}={v}"));
                    }
                }
            }
        }
        assert!(checked > 40, "only {checked} numeric flags found");
        assert!(wrong.is_empty(), "accepted: {wrong:#?}");
    }
}
