//! `overparam compare A B`: a golden comparison of two models (ONNX or deploy checkpoints)
//! on the same seeded inputs, with a verdict and, for two ONNX models, the first conv layer
//! where they part.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use overparam_engine::compare::{Comparison, TensorDiff, Tolerance};

#[derive(clap::Args)]
pub struct Args {
    /// The model under test: an ONNX model or a deploy checkpoint (exported at FP32, batch 1).
    a: PathBuf,
    /// The reference (relative errors are relative to it).
    b: PathBuf,
    /// Absolute tolerance: an element matches when |a − b| ≤ atol + rtol·|b|.
    #[arg(long, default_value_t = 1e-5, value_parser = crate::args::non_negative)]
    atol: f64,
    /// Relative tolerance.
    #[arg(long, default_value_t = 1e-3, value_parser = crate::args::non_negative)]
    rtol: f64,
    /// Seeded N(0, 1) input batches (of the models' input shape; a symbolic dimension is 1).
    #[arg(long, default_value_t = 4, value_parser = crate::args::count::<usize>)]
    inputs: usize,
    /// Seed of the inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also compare every conv output both models have, and name the first layer out of
    /// tolerance and the worst five (e.g. an FP32 and an INT8 export of one model).
    #[arg(long)]
    layerwise: bool,
    /// Also evaluate both on a dataset: classifiers on the test split of this CIFAR or IDX
    /// directory (top-1 error of each, their difference and the share of images where they
    /// agree); multi-task models on the val scenes of this NYUv2-layout directory (the nine
    /// metrics of each and A − B, pixels where the class maps agree, mean |Δdepth| and the
    /// mean angle between their normals).
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: the input normalisation [default: the one a deploy checkpoint among A
    /// and B records].
    #[command(flatten)]
    norm: crate::args::NormArgs,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let tol = Tolerance {
        atol: a.atol,
        rtol: a.rtol,
    };
    // The dataset first: what cannot be evaluated together (a classifier against a
    // multi-task model) is refused as that, not as a shape mismatch.
    let data = match &a.data {
        Some(d) => Some(overparam_lab::deploy::compare_on_data(
            &a.a,
            &a.b,
            d,
            &a.norm.source()?,
        )?),
        None => None,
    };
    let c = overparam_lab::deploy::compare(&a.a, &a.b, a.inputs, a.seed, tol, a.layerwise)?;
    if a.json {
        let mut v = serde_json::to_value(&c)?;
        if let Some(d) = &data {
            v["data"] = serde_json::to_value(d)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print(&a, &c);
        if let Some(d) = &data {
            print_data(d);
        }
    }
    Ok(if c.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn print_data(d: &overparam_lab::deploy::DataAgreement) {
    use overparam_lab::deploy::DataAgreement;
    match d {
        DataAgreement::Classifier(d) => println!(
            "on {} test images: top-1 error {:.2}% (A) and {:.2}% (B), A − B {:+.2} points; top-1 agreement {:.2}%",
            d.images, d.a_top1_err, d.b_top1_err, d.delta_points, d.top1_agreement
        ),
        DataAgreement::Dense(d) => {
            println!("on {} val scenes:", d.scenes);
            println!("  {:<22} {:>10} {:>10} {:>10}", "metric", "A", "B", "A − B");
            for k in 0..9 {
                if d.a[k].is_nan() && d.b[k].is_nan() {
                    continue;
                }
                println!(
                    "  {:<22} {:>10.4} {:>10.4} {:>+10.4}",
                    d.metrics[k], d.a[k], d.b[k], d.a_minus_b[k]
                );
            }
            let mut agree = vec![];
            if let Some(v) = d.segmentation_pixel_agreement_pct {
                agree.push(format!("class maps agree on {v:.2}% of pixels"));
            }
            if let Some(v) = d.depth_mean_abs_diff {
                agree.push(format!("mean |depth A − depth B| {v:.4} m"));
            }
            if let Some(v) = d.normals_mean_angle_deg {
                agree.push(format!("normals {v:.3}° apart on average"));
            }
            if !agree.is_empty() {
                println!("  A against B: {}", agree.join("; "));
            }
        }
    }
}

fn row(d: &TensorDiff) -> String {
    format!(
        "  {:<28} {:>10.3e} {:>10.3e} {:>10.3e} {:>9.6} {:>5}/{:<5} {:>5}/{:<5} {:>9} {}",
        d.name,
        d.max_abs,
        d.max_rel,
        d.mean_abs,
        d.cosine,
        d.nan[0],
        d.nan[1],
        d.inf[0],
        d.inf[1],
        d.mismatched,
        if d.passed() { "PASS" } else { "FAIL" }
    )
}

fn print(a: &Args, c: &Comparison) {
    println!(
        "{} against {}: {} seeded input batch(es) of {:?}; an element matches when |a − b| ≤ {} + {}·|b|",
        a.a.display(),
        a.b.display(),
        c.batches,
        c.input_shape,
        c.tolerance.atol,
        c.tolerance.rtol
    );
    let head = format!(
        "  {:<28} {:>10} {:>10} {:>10} {:>9} {:>11} {:>11} {:>9}",
        "tensor", "max abs", "max rel", "mean abs", "cosine", "NaN a/b", "Inf a/b", "mismatch"
    );
    println!("outputs:\n{head}");
    for d in &c.outputs {
        println!("{}", row(d));
    }
    if a.layerwise {
        if c.layers.is_empty() {
            println!("layerwise: the models share no conv output names");
        } else {
            println!("layers ({}, in graph order):\n{head}", c.layers.len());
            for d in &c.layers {
                println!("{}", row(d));
            }
            match &c.first_over {
                Some(l) => println!("first layer out of tolerance: {l}"),
                None => println!("every layer is within tolerance"),
            }
            println!("worst layers: {}", c.worst.join(", "));
        }
    }
    println!(
        "verdict: {}",
        if c.passed() {
            "PASS (every output within tolerance)"
        } else {
            "FAIL (outputs out of tolerance)"
        }
    );
}
