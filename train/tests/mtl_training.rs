//! Multi-task training on tiny synthetic scenes: all three tasks improve well beyond the
//! untrained network, the run folds to matching outputs, and resume is bit-identical.

use overparam_base::Silent;
use std::path::Path;

use overparam_config::*;
use overparam_fuse::models::ModelKind;
use overparam_fuse::{MethodConfig, MethodKind};
use overparam_train::mtl::Weighting;
use overparam_train::mtl_trainer::train_mtl;

fn cfg(dir: &Path, name: &str, epochs: usize) -> TrainConfig {
    TrainConfig {
        run: RunConfig {
            name: name.into(),
            dir: dir.to_path_buf(),
            seed: 1,
            threads: Some(2),
            device: DeviceChoice::Cpu,
            tf32: true,
        },
        model: ModelConfig {
            kind: Some(ModelKind::Mtl),
            from: None,
            width: 0.25,
            method: MethodConfig::new(MethodKind::Sfo),
        },
        data: DataConfig {
            dir: None,
            synthetic_train: 24,
            synthetic_test: 6,
            synthetic_seed: 0,
            synthetic_height: 48,
            synthetic_width: 64,
            augment: true,
            ..DataConfig::default()
        },
        optim: OptimConfig {
            epochs,
            batch_size: 4,
            lr: 2e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: 0,
            optimizer: OptimizerKind::Adam,
        },
        routine: Routine::R1,
        mtl: MtlConfig {
            weighting: Weighting::Equal,
            baseline: None,
            tasks: None,
        },
        quant: Default::default(),
    }
}

#[test]
fn all_three_tasks_improve_and_the_fold_matches() {
    let dir = tempfile::tempdir().unwrap();
    let s = train_mtl(&cfg(dir.path(), "learn", 8), false, &Silent, None)
        .unwrap()
        .unwrap();
    let (m, u) = (s.metrics, s.untrained.unwrap());
    assert!(m[0] > u[0] + 0.1, "mIoU {} vs untrained {}", m[0], u[0]);
    assert!(
        m[2] < 0.6 * u[2],
        "depth abs err {} vs untrained {}",
        m[2],
        u[2]
    );
    assert!(
        m[4] < u[4] - 10.0,
        "normal mean angle {} vs untrained {}",
        m[4],
        u[4]
    );
    assert!(s.max_output_rel_diff <= 1e-4);
    let run = dir.path().join("learn");
    assert!(run.join("model.deploy.safetensors").exists());
    // 8 epochs, the header, and the deploy model's row after the fold.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10, "{csv}");
    let deploy: Vec<f64> = csv
        .lines()
        .last()
        .unwrap()
        .split(',')
        .skip(5)
        .take(9)
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(csv.lines().last().unwrap().starts_with("deploy,"));
    for (a, b) in deploy.iter().zip(s.deploy_metrics) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} {b}");
    }
    let fold: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("fold.json")).unwrap()).unwrap();
    assert_eq!(fold["exact"]["precision"], "fp64");
    assert!(fold["measured"].as_array().unwrap().len() >= 3);
    let panel = std::fs::read(run.join("panels/val_0.png")).unwrap();
    assert_eq!(&panel[..8], b"\x89PNG\r\n\x1a\n");
    // `eval` on the deploy checkpoint reproduces the run's final metrics and dumps predictions.
    let data = dir.path().join("_data/synth-nyuv2-24-6-48x64-seed0");
    let dump = dir.path().join("pred");
    let e = overparam_train::mtl_trainer::evaluate_checkpoint(
        &run.join("model.deploy.safetensors"),
        &data,
        tch::Device::Cpu,
        Some(&dump),
    )
    .unwrap();
    // Segmentation metrics do not depend on batching (a confusion matrix over the set); depth
    // and normal errors are per-batch means (MTAN), and eval batches by 2, training by 4.
    assert!(
        (e[0] - m[0]).abs() < 1e-3 && (e[1] - m[1]).abs() < 1e-3,
        "{e:?} vs {m:?}"
    );
    assert!((e[2] - m[2]).abs() < 0.05 * m[2], "{e:?} vs {m:?}");
    let d = overparam_data::npy::read(&dump.join("depth/0.npy")).unwrap();
    assert_eq!(d.shape, vec![48, 64, 1]);
}

#[test]
fn mtl_resume_is_bit_identical_with_uncertainty_weighting_and_r2() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = cfg(dir.path(), "straight", 2);
    a.mtl.weighting = Weighting::Uncertainty;
    a.routine = Routine::R2 { period: 2 };
    a.data.synthetic_train = 8;
    a.data.synthetic_test = 2;
    let mut b = a.clone();
    b.run.name = "split".into();
    train_mtl(&a, false, &Silent, None).unwrap().unwrap();
    assert!(train_mtl(&b, false, &Silent, Some(1)).unwrap().is_none());
    train_mtl(&b, true, &Silent, None).unwrap().unwrap();
    let x = std::fs::read(a.run_dir().join("train_state.safetensors")).unwrap();
    let y = std::fs::read(b.run_dir().join("train_state.safetensors")).unwrap();
    assert!(x == y, "state after resume differs");
}
