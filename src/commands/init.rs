use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use overparam_fuse::checkpoint;
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::layout::{param_count, train_layout};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{AnySpec, MethodConfig, MethodKind};

#[derive(clap::Args)]
pub struct Args {
    /// Model builder: resnet18_cifar, resnet50_cifar, vgg_small or mtl (the NYUv2 multi-task
    /// encoder-decoder at image_size × image_size·4/3).
    #[arg(long, required_unless_present = "from")]
    model: Option<ModelKind>,
    /// Expand a trained deploy checkpoint (from `overparam import` or `fuse`) instead of
    /// building a fresh model: the same function exactly (checked in f64), overparameterised
    /// with --method.
    #[arg(long, conflicts_with_all = ["model", "width", "num_classes", "image_size", "in_channels", "random_bn"])]
    from: Option<PathBuf>,
    /// Overparameterisation method: plain, repvgg, qarepvgg, fnl or sfo.
    #[arg(long, default_value = "plain")]
    method: MethodKind,
    /// Width multiplier on every channel count (tests use tiny widths such as 0.125).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::positive)]
    width: f64,
    /// Seed of the weight initialisation (the same seed gives the same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classes of a classifier's last layer.
    #[arg(long, default_value_t = 100, value_parser = crate::args::count::<usize>)]
    num_classes: usize,
    /// Square input size the spec (and MAC counts) assume.
    #[arg(long, default_value_t = 32, value_parser = crate::args::count::<usize>)]
    image_size: usize,
    /// Input channels of a classifier (3 for CIFAR, 1 for the MNIST family).
    #[arg(long, default_value_t = 3, value_parser = crate::args::count::<usize>)]
    in_channels: usize,
    /// Also overparameterise 1×1 convs (default: only k×k convs with k > 1).
    #[arg(long)]
    include_1x1: bool,
    /// SFO expansion e: inner dimension d = e·min(O, I·k²).
    #[arg(long, default_value_t = 1, value_parser = crate::args::count::<usize>)]
    sfo_expand: usize,
    /// FNL rank scale (≥ 1): r = round(scale·O·k).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::positive)]
    fnl_rank_scale: f64,
    /// Draw random BatchNorm statistics and affine parameters, so that `fuse` verification
    /// exercises the BN folds (a fresh network has μ=0, σ²=1, γ=1, β=0).
    #[arg(long)]
    random_bn: bool,
    /// Output train checkpoint (.safetensors).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let method = MethodConfig {
        include_1x1: a.include_1x1,
        sfo_expand: a.sfo_expand,
        fnl_rank_scale: a.fnl_rank_scale,
        ..MethodConfig::new(a.method)
    };
    if let Some(from) = &a.from {
        return from_deploy(from, &method, &a);
    }
    let model = a.model.expect("clap requires --model without --from");
    let opts = ClassifierOptions {
        width: a.width,
        num_classes: a.num_classes,
        image_size: a.image_size,
        in_channels: a.in_channels,
        method,
    };
    let spec = build(model, &opts).context("building the model spec")?;
    overparam_fuse::memory::check(&[&spec], 0, 0, "--width")?;
    eprintln!(
        "init: {} ({}, width {}), spectral factorisation where the method asks…",
        model.as_str(),
        a.method.as_str(),
        a.width
    );
    let weights = init_train_weights(
        &spec,
        &InitOptions {
            seed: a.seed,
            random_bn: a.random_bn,
        },
    )?;
    let params = param_count(&train_layout(&spec)?);
    checkpoint::save(&a.output, &AnySpec::Train(spec), &weights)?;
    println!(
        "wrote {} ({} train-time parameters)",
        a.output.display(),
        super::si(params)
    );
    Ok(ExitCode::SUCCESS)
}

/// `--from`: the exact expansion of a trained deploy checkpoint, written only when the f64
/// verdict passes.
fn from_deploy(from: &std::path::Path, method: &MethodConfig, a: &Args) -> Result<ExitCode> {
    overparam_base::check_output(&a.output, &[from])?;
    eprintln!(
        "init: expanding {} with {} exactly…",
        from.display(),
        a.method.as_str()
    );
    let e = overparam_lab::import::expand(from, method, a.seed)?;
    for (node, why) in &e.expanded.kept_plain {
        println!("  {node} stays plain: {why}");
    }
    let v = &e.verdict;
    let worst = |d: Option<&overparam_fuse::verify::Deviation>| d.map_or(0.0, |d| d.rel);
    println!(
        "exactness: the expanded model (eval mode) against {} in f64: worst block rel {:.2e}, worst output rel {:.2e} (tolerance {:.0e}, {:.2} s)",
        from.display(),
        worst(v.worst_block()),
        worst(v.worst_output()),
        v.output_tolerance,
        e.seconds
    );
    if !v.passed() {
        eprintln!(
            "error: the expansion is not exact; {} not written",
            a.output.display()
        );
        return Ok(ExitCode::from(2));
    }
    let params = param_count(&train_layout(&e.expanded.spec)?);
    checkpoint::save(
        &a.output,
        &AnySpec::Train(e.expanded.spec),
        &e.expanded.weights,
    )?;
    println!(
        "PASS: exact in f64; wrote {} ({} train-time parameters)",
        a.output.display(),
        super::si(params)
    );
    Ok(ExitCode::SUCCESS)
}
