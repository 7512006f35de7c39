use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use overparam_base::Role;
use overparam_fuse::import::ImportOptions;
use overparam_fuse::spec::Normalization;
use overparam_lab::import::{Request, SUSPECT_REL, run as import};

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model, as `torch.onnx.export` writes it (either exporter; opsets 13–21 are
    /// tested; external data, `MODEL.onnx.data`, is read from beside the model).
    model: PathBuf,
    /// Deploy checkpoint to write (`model.deploy.safetensors`).
    #[arg(short = 'o', long = "out")]
    output: PathBuf,
    /// The input shape N,C,H,W, for a model whose input dimensions are dynamic.
    #[arg(long, value_name = "N,C,H,W")]
    input_shape: Option<crate::args::Shape>,
    /// The role of an output, NAME=ROLE (class_logits, segmentation_logits, depth, normals or
    /// raw); repeatable. Outputs not named get the role their name implies (`logits`,
    /// `segmentation`, `depth`, `normals`), else raw.
    #[arg(long = "output", value_name = "NAME=ROLE", value_parser = crate::args::output_role)]
    roles: Vec<(String, Role)>,
    /// Per-channel mean the network's inputs were normalised with, in the (x/255 − mean)/std
    /// convention (e.g. 0.485,0.456,0.406 for torchvision); recorded in the checkpoint for
    /// evaluation, calibration and the bridge. Give --std with it.
    #[arg(long, value_delimiter = ',', requires = "std", value_parser = crate::args::finite)]
    mean: Vec<f32>,
    /// Per-channel standard deviation (with --mean).
    #[arg(long, value_delimiter = ',', requires = "mean", value_parser = crate::args::positive_f32)]
    std: Vec<f32>,
    /// Seed of the inputs the import is checked on.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the comparison with the original in ONNX Runtime.
    #[arg(long)]
    no_check: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    // The dynamo exporter's weights sit beside the model as `<model>.data`.
    let data = std::path::PathBuf::from(format!("{}.data", a.model.display()));
    overparam_base::check_output(&a.output, &[&a.model, &data])?;
    let normalize = if a.mean.is_empty() {
        None
    } else {
        if a.mean.len() != a.std.len() || a.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("--mean and --std need one value per channel each, and every std positive");
        }
        Some(Normalization {
            mean: a.mean,
            std: a.std,
        })
    };
    let req = Request {
        model: a.model,
        output: a.output,
        options: ImportOptions {
            input_shape: a.input_shape.map(|s| s.0),
            roles: a.roles,
            model: String::new(),
            normalize,
        },
        seed: a.seed,
        check: !a.no_check,
    };
    let r = import(&req, &crate::progress::Bars::stderr())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} nodes from {} (opset {}), {} parameters ({}), {} MACs per image, batch {} ({:.2} s)",
        r.model.display(),
        r.nodes,
        r.producer,
        r.opset,
        r.params,
        super::si(r.params),
        super::si(r.macs),
        r.batch,
        r.import_seconds
    );
    for (name, role) in &r.outputs {
        println!("  output `{name}`: {role}");
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    match &r.unchecked {
        Some(why) => println!("not checked against the original: {why}"),
        None => {
            println!(
                "checked against the original in ONNX Runtime on seeded inputs (measurements; about 1e-6 relative is fp32 rounding, above {SUSPECT_REL:.0e} means a bug):"
            );
            for c in &r.checks {
                let d = &c.deviation;
                println!(
                    "  `{}` {:<30} rel {:.3e}  (max|Δ| {:.3e}, max|y| {:.3e})",
                    d.name, c.against, d.rel, d.max_abs, d.max_ref
                );
            }
            if r.suspect() {
                eprintln!(
                    "warning: an output deviates by more than {SUSPECT_REL:.0e}: the import is suspect; please report the model"
                );
            }
        }
    }
    println!("wrote {}", r.output.display());
    Ok(ExitCode::SUCCESS)
}
