//! `overparam qat`: quantisation-aware fine-tuning of a finished run through the fold, and its
//! INT8 export with the learned thresholds (no recalibration).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::args::{CalibArgs, Encoding};

#[derive(clap::Args)]
pub struct Args {
    /// A finished training run's directory (its `config.toml` and train checkpoint); its data
    /// config gives the training and test splits.
    #[arg(long)]
    run: PathBuf,
    /// Epochs of QAT fine-tuning.
    #[arg(long, default_value_t = 1, value_parser = crate::args::count::<usize>)]
    epochs: usize,
    /// Peak learning rate, decayed by a cosine to zero [default: 1% of the run's optim.lr].
    #[arg(long, value_parser = crate::args::positive)]
    lr: Option<f64>,
    /// INT8 activation encoding to train for: `trt` (TensorRT's) or `cpu`.
    #[arg(long, value_enum, default_value_t = Encoding::Trt)]
    encoding: Encoding,
    #[command(flatten)]
    calibration: CalibArgs,
    /// Also run the equal-compute FP32 fine-tune (the same folded forward and steps, without
    /// fake quantisation), the FP32 side of the INT8 drop.
    #[arg(long)]
    pair: bool,
    /// Static batch of the exports.
    #[arg(long, default_value_t = 250, value_parser = crate::args::count::<usize>)]
    batch: usize,
    /// The INT8 ONNX to write [default: <run>/model.qat.int8.onnx]; its `.calib.json` and the
    /// fine-tuned deploy checkpoint go beside it.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "train")]
pub fn run(a: Args) -> Result<ExitCode> {
    use overparam_engine::export::ActivationEncoding;
    use overparam_engine::quant::NormSource;
    let req = overparam_lab::qat::QatRequest {
        run: a.run,
        epochs: a.epochs,
        lr: a.lr,
        quant: a
            .calibration
            .recipe(512, ActivationEncoding::from(a.encoding), NormSource::Model),
        batch: a.batch,
        pair: a.pair,
        output: a.output,
    };
    let r = overparam_lab::qat::run(&req, &crate::progress::Bars::stderr())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "QAT ({:?} encoding) on {} test images; started from {}",
        r.encoding, r.test_images, r.calibration
    );
    println!("  top-1 error %        model   ONNX Runtime");
    println!("  before, fp32                 {:>8.2}", r.fp32_top1_err);
    println!(
        "  before, int8 (PTQ)           {:>8.2}",
        r.ptq_int8_top1_err
    );
    println!(
        "  QAT, int8           {:>6.2}   {:>8.2}   ({} steps, {:.1} ms/step)",
        r.qat.model_top1_err,
        r.qat.onnx_top1_err,
        r.qat.steps,
        r.qat.step_seconds * 1e3
    );
    if let Some(p) = &r.pair {
        println!(
            "  fp32 fine-tune      {:>6.2}   {:>8.2}   ({} steps, {:.1} ms/step; QAT step {:.2}×)",
            p.model_top1_err,
            p.onnx_top1_err,
            p.steps,
            p.step_seconds * 1e3,
            r.qat.step_seconds / p.step_seconds.max(1e-12)
        );
    }
    if let Some(d) = r.int8_drop {
        println!("  INT8 drop against the equal-compute FP32 fine-tune: {d:+.2} points");
    }
    let rep = &r.reproduction;
    println!(
        "  ONNX Runtime reproduces the QAT model: top-1 agreement {:.2}% ({:.2}% of the {} images decided by more than 4 steps), logits within 2 steps {:.2}% (max {:.2} steps of max|logit|/127); {} thresholds learned",
        100.0 * rep.top1_agreement,
        100.0 * rep.decided_top1_agreement,
        rep.decided_images,
        100.0 * rep.within_2_steps,
        rep.max_steps,
        r.thresholds_moved
    );
    println!("wrote {} and {}", r.model.display(), r.calib.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "train"))]
pub fn run(_: Args) -> Result<ExitCode> {
    anyhow::bail!(
        "this overparam was built without the `train` feature (no libtorch); rebuild with default features"
    )
}
