//! The fold verdict is decided in f64 and catches errors just above its tolerance; reduced
//! precisions are measured against the same reference and never decide it.

use overparam_fuse::init::random_weights;
use overparam_fuse::layout::train_layout;
use overparam_fuse::models::{ClassifierOptions, ModelKind, MtlOptions, build, mtl_net};
use overparam_fuse::spec::Op;
use overparam_fuse::verify::{
    EXACT_TOLERANCE, Precision, VerifyOptions, fold_verified, measure_precision, verify_fold,
};
use overparam_fuse::{MethodConfig, MethodKind, TrainSpec, Weights};

fn small(kind: MethodKind) -> TrainSpec {
    build(
        ModelKind::Resnet18Cifar,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            ..ClassifierOptions::new(MethodConfig::new(kind))
        },
    )
    .unwrap()
}

/// A stand-in for a trained network: every tensor random, BN statistics included.
fn trained(spec: &TrainSpec, seed: u64) -> Weights<f32> {
    random_weights(&train_layout(spec).unwrap(), seed)
}

fn all_precisions() -> VerifyOptions {
    VerifyOptions {
        batch: 2,
        seed: 3,
        measure: Precision::ALL.to_vec(),
    }
}

#[test]
fn a_correct_fold_is_exact_in_f64_for_every_method() {
    for kind in MethodKind::ALL {
        let spec = small(kind);
        let f = fold_verified(&spec, &trained(&spec, 1), &all_precisions()).unwrap();
        let r = &f.report;
        assert!(r.passed(), "{kind:?}: {}", r.summary());
        let worst = r
            .exact
            .worst_block()
            .unwrap()
            .rel
            .max(r.exact.worst_output().unwrap().rel);
        // Far below the tolerance: f64 rounding, not a fold error.
        assert!(worst < 1e-12, "{kind:?}: {worst:e}");
        // The shipped fp32 weights are the f64 fold rounded once.
        for (k, v) in &f.weights {
            let r: Vec<f32> = f.weights_f64[k].data.iter().map(|&x| x as f32).collect();
            assert_eq!(v.data, r, "{k}");
        }
    }
}

#[test]
fn a_fold_error_just_above_the_tolerance_is_caught() {
    let spec = small(MethodKind::Repvgg);
    let w = trained(&spec, 2);
    let f = fold_verified(&spec, &w, &all_precisions()).unwrap();
    let w64: Weights<f64> = w.iter().map(|(k, v)| (k.clone(), v.cast())).collect();
    // The last conv block: shift one output channel's bias by a multiple of the tolerance.
    let (node, block) = spec
        .nodes
        .iter()
        .rev()
        .find(|n| matches!(n.op, Op::Conv(_)))
        .map(|n| {
            let d = f
                .report
                .exact
                .blocks
                .iter()
                .find(|d| d.name == n.name)
                .unwrap();
            (n.name.clone(), d.clone())
        })
        .unwrap();
    let shifted = |factor: f64| {
        let mut dw = f.weights_f64.clone();
        dw.get_mut(&format!("{node}.bias")).unwrap().data[0] +=
            factor * EXACT_TOLERANCE * block.max_ref;
        verify_fold(&spec, &w64, &f.spec, &dw, 2, 3).unwrap()
    };
    let above = shifted(1.5);
    let d = above.blocks.iter().find(|d| d.name == node).unwrap();
    assert!(d.rel > EXACT_TOLERANCE, "{d:?}");
    assert!(!above.passed(), "an error 1.5× the tolerance must fail");
    let below = shifted(0.5);
    let d = below.blocks.iter().find(|d| d.name == node).unwrap();
    assert!(d.rel <= EXACT_TOLERANCE, "{d:?}");
}

#[test]
fn reduced_precision_is_measured_not_gated() {
    for kind in [MethodKind::Sfo, MethodKind::Qarepvgg] {
        let spec = small(kind);
        let f = fold_verified(&spec, &trained(&spec, 4), &all_precisions()).unwrap();
        let r = &f.report;
        assert!(r.passed(), "{}", r.summary());
        let rel = |p: &str| {
            r.measured
                .iter()
                .find(|m| m.precision.starts_with(p))
                .unwrap()
                .worst()
                .unwrap()
                .rel
        };
        let (fp32, tf32, bf16, fp16) = (rel("fp32"), rel("tf32"), rel("bf16"), rel("fp16"));
        for (p, v) in [
            ("fp32", fp32),
            ("tf32", tf32),
            ("bf16", bf16),
            ("fp16", fp16),
        ] {
            assert!(v.is_finite() && v > 0.0, "{kind:?} {p}: {v:e}");
        }
        // Each format deviates at its own scale: fp32 ≪ tf32 (10 bits) < bf16 (7 bits); BF16
        // is far beyond what an fp32 gate (1e-4) would have accepted, yet the fold passes.
        assert!(
            fp32 < 1e-5 && fp32 < tf32 && tf32 < bf16,
            "{fp32:e} {tf32:e} {bf16:e}"
        );
        assert!(bf16 > 1e-4, "{bf16:e}");
        // The bounds grow with the unit roundoff.
        let bound = |p: &str| {
            r.measured
                .iter()
                .find(|m| m.precision.starts_with(p))
                .unwrap()
                .bound
        };
        assert!(bound("fp32") < bound("tf32") && bound("tf32") < bound("bf16"));
    }
}

#[test]
fn the_verdict_is_not_fooled_by_nan() {
    let spec = small(MethodKind::Plain);
    let mut w = trained(&spec, 5);
    let var = w
        .keys()
        .find(|k| k.ends_with("running_var"))
        .unwrap()
        .clone();
    w.get_mut(&var).unwrap().data[0] = f32::NAN;
    match fold_verified(&spec, &w, &VerifyOptions::default()) {
        Ok(f) => assert!(!f.report.passed(), "NaN passed: {}", f.report.summary()),
        Err(e) => assert!(e.to_string().contains("running_var"), "{e}"),
    }
}

#[test]
fn the_multi_task_net_is_exact_and_its_fp16_deviation_measured() {
    let spec = mtl_net(&MtlOptions {
        width: 0.0625,
        height: 32,
        width_px: 48,
        classes: 13,
        method: MethodConfig::new(MethodKind::Sfo),
    })
    .unwrap();
    let f = fold_verified(&spec, &trained(&spec, 6), &VerifyOptions::default()).unwrap();
    assert!(f.report.passed(), "{}", f.report.summary());
    assert_eq!(f.report.exact.outputs.len(), 3);
    let m = measure_precision(&f, Precision::Fp16).unwrap();
    assert_eq!(m.outputs.len(), 3);
    assert!(
        m.outputs.iter().all(|d| d.rel.is_finite() && d.rel > 0.0),
        "{m:?}"
    );
}

#[test]
fn a_zero_batch_is_refused() {
    let spec = small(MethodKind::Plain);
    let o = VerifyOptions {
        batch: 0,
        ..Default::default()
    };
    assert!(fold_verified(&spec, &trained(&spec, 7), &o).is_err());
}
