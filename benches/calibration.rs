//! Calibration time per calibrator, as ratios to entropy measured in the same run (#23): the
//! Fashion-MNIST model of docs/results/fashion-mnist-int8 (vgg_small at width 0.5, 1×28×28,
//! randomised BatchNorm folded in), 512 calibration images at batch 50 in TensorRT's encoding,
//! and for auto the 256 held-out images it chooses on. Each time covers the whole
//! calibration: the histogram passes through the FP32 model, the thresholds, and for auto every
//! INT8 model it tries.
//!     cargo bench --bench calibration

use std::time::Instant;

use overparam_engine::calib::Calibrator;
use overparam_engine::quant::{Quantization, calibrate};
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::spec::Normalization;
use overparam_fuse::{MethodConfig, MethodKind, fold};

fn main() {
    let spec = build(
        ModelKind::VggSmall,
        &ClassifierOptions {
            width: 0.5,
            num_classes: 10,
            image_size: 28,
            in_channels: 1,
            ..ClassifierOptions::new(MethodConfig::new(MethodKind::Plain))
        },
    )
    .unwrap();
    let w = init_train_weights(
        &spec,
        &InitOptions {
            seed: 0,
            random_bn: true,
        },
    )
    .unwrap();
    let (mut dspec, dw) = fold(&spec, &w).unwrap();
    dspec.input.normalize = Some(Normalization {
        mean: vec![0.286],
        std: vec![0.353],
    });
    let set = overparam_data::idx::synthetic_set(1000, 28, 10, 1, "train");
    let time = |c: Calibrator| -> (f64, usize) {
        let q = Quantization {
            calibrator: c,
            images: 512,
            heldout: 256,
            ..Default::default()
        };
        // Median of three.
        let mut t: Vec<(f64, usize)> = (0..3)
            .map(|_| {
                let s = Instant::now();
                let r = calibrate(&dspec, &dw, &set, &q, 50, &overparam_base::Silent).unwrap();
                let evals = r.record.auto.map_or(0, |a| a.evaluations);
                (s.elapsed().as_secs_f64(), evals)
            })
            .collect();
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        t[1]
    };
    let (entropy, _) = time(Calibrator::Entropy);
    println!(
        "calibration of vgg_small ×0.5 (1×28×28), 512 images at batch 50, median of 3, measured in this run:"
    );
    println!("  {:<8} {:>8.2} s   1.00× entropy", "entropy", entropy);
    for c in [Calibrator::Max, Calibrator::Mse, Calibrator::Auto] {
        let (t, evals) = time(c);
        println!(
            "  {:<8} {:>8.2} s   {:.2}× entropy{}",
            c.as_str(),
            t,
            t / entropy,
            if evals > 0 {
                format!("   ({evals} INT8 models tried on 256 held-out images)")
            } else {
                String::new()
            }
        );
    }
}
