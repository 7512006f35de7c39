//! Training runs on tiny synthetic data: real learning, bit-identical resume, R2 alternation,
//! R3 phases, and refusals that leave the run directory as it was.

use overparam_base::{Recorder, Silent};
use std::path::Path;

use overparam_config::{
    DataConfig, DeviceChoice, ModelConfig, OptimConfig, Routine, RunConfig, Schedule, TrainConfig,
};
use overparam_fuse::models::ModelKind;
use overparam_fuse::{MethodConfig, MethodKind};
use overparam_train::trainer::{self, STATE_FILE, train};

fn cfg(dir: &Path, name: &str, method: MethodKind, epochs: usize) -> TrainConfig {
    TrainConfig {
        run: RunConfig {
            name: name.into(),
            dir: dir.to_path_buf(),
            seed: 5,
            threads: Some(2),
            device: DeviceChoice::Cpu,
            tf32: true,
        },
        model: ModelConfig {
            kind: Some(ModelKind::VggSmall),
            from: None,
            width: 0.25,
            method: MethodConfig::new(method),
        },
        data: DataConfig {
            dir: None,
            synthetic_train: 2000,
            synthetic_test: 500,
            synthetic_seed: 1,
            augment: true,
            ..Default::default()
        },
        optim: OptimConfig {
            epochs,
            batch_size: 32,
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            label_smoothing: 0.0,
            schedule: Schedule::Cosine,
            warmup_epochs: 0,
            optimizer: Default::default(),
        },
        routine: Routine::R1,
        mtl: Default::default(),
        quant: Default::default(),
    }
}

/// A real learning test: 100 classes (chance = 1% top-1), a few epochs, error well below chance.
#[test]
fn sfo_learns_far_above_chance_and_folds_with_identical_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "learn", MethodKind::Sfo, 6);
    c.data.synthetic_train = 3000;
    let log = Recorder::default();
    let s = train(&c, false, &log, None).unwrap().unwrap();
    // The library prints nothing: the data generation, each epoch and the fold are events.
    let lines = log.lines();
    assert!(
        lines[0].starts_with("data: generating synthetic CIFAR-100"),
        "{lines:?}"
    );
    for e in 1..=6 {
        let want = format!("epoch {e}/6 [train]");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(&want)).count(),
            1,
            "{lines:?}"
        );
    }
    assert!(lines.last().unwrap().contains("fold: on the"), "{lines:?}");
    // ≤ 85% top-1 error is ≥ 15× chance accuracy.
    assert!(s.last.test_top1_err < 85.0, "{:?}", s.last);
    assert!(s.last.train_loss < 4.0, "{:?}", s.last);
    assert_eq!(s.prediction_mismatches, 0);
    assert!((s.deploy_test_top1_err - s.last.test_top1_err).abs() < 1e-9);
    let run = dir.path().join("learn");
    for f in [
        "config.toml",
        "metrics.csv",
        "model.op.safetensors",
        "model.deploy.safetensors",
        STATE_FILE,
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    // Header, 6 epochs, and the deploy model's test metrics after the fold.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 8, "{csv}");
    let deploy: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    assert_eq!(deploy[..2], ["deploy", "deploy"], "{csv}");
    let top1: f64 = deploy[6].parse().unwrap();
    assert!((top1 - s.deploy_test_top1_err).abs() < 1e-3, "{csv}");
    assert!(s.fold.passed() && s.fold.exact.precision == "fp64");
    assert!(run.join("fold.json").exists());
    // `eval` on both checkpoints gives the run's final error.
    let data = dir.path().join("_data/synth-cifar100-3000-500-seed1");
    for f in ["model.op.safetensors", "model.deploy.safetensors"] {
        let (_, _, top) =
            trainer::evaluate_checkpoint(&run.join(f), &data, tch::Device::Cpu).unwrap();
        assert!(
            (top.top1_error() - s.last.test_top1_err).abs() < 1e-9,
            "{f}"
        );
    }
}

#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    for routine in [Routine::R1, Routine::R2 { period: 3 }] {
        let mut straight = cfg(dir.path(), "straight", MethodKind::Sfo, 2);
        straight.routine = routine.clone();
        straight.data.synthetic_train = 400;
        straight.data.synthetic_test = 100;
        let mut split = straight.clone();
        split.run.name = "split".into();
        let name = |r: &Routine| format!("{r:?}");
        straight.run.name = format!("straight-{}", name(&routine));
        split.run.name = format!("split-{}", name(&routine));
        train(&straight, false, &Silent, None).unwrap();
        assert!(train(&split, false, &Silent, Some(1)).unwrap().is_none());
        train(&split, true, &Silent, None).unwrap().unwrap();
        let a = std::fs::read(straight.run_dir().join("model.op.safetensors")).unwrap();
        let b = std::fs::read(split.run_dir().join("model.op.safetensors")).unwrap();
        assert!(a.len() > 1000);
        // The spec is the same and the run name is not in the checkpoint, so the bytes match.
        assert!(a == b, "{routine:?}: resumed weights differ");
        let ma = std::fs::read_to_string(straight.run_dir().join("metrics.csv")).unwrap();
        let mb = std::fs::read_to_string(split.run_dir().join("metrics.csv")).unwrap();
        let strip = |s: &str| {
            s.lines()
                .map(|l| l.rsplit_once(',').unwrap().0.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&ma), strip(&mb), "metrics (throughput aside)");
    }
    // A run killed after its last epoch but before the fold resumes into the fold only.
    let mut done = cfg(dir.path(), "killed-while-folding", MethodKind::Sfo, 1);
    done.data.synthetic_train = 200;
    done.data.synthetic_test = 50;
    train(&done, false, &Silent, None).unwrap().unwrap();
    let deploy = done.run_dir().join("model.deploy.safetensors");
    let (op, metrics) = (
        done.run_dir().join("model.op.safetensors"),
        done.run_dir().join("metrics.csv"),
    );
    let (before_deploy, before_op, before_metrics) = (
        std::fs::read(&deploy).unwrap(),
        std::fs::read(&op).unwrap(),
        std::fs::read(&metrics).unwrap(),
    );
    std::fs::remove_file(&deploy).unwrap();
    let s = train(&done, true, &Silent, None).unwrap().unwrap();
    assert_eq!(s.last.phase, overparam_train::trainer::RowKind::Resumed);
    assert_eq!(std::fs::read(&deploy).unwrap(), before_deploy);
    assert_eq!(std::fs::read(&op).unwrap(), before_op);
    assert_eq!(std::fs::read(&metrics).unwrap(), before_metrics);
}

#[test]
fn r3_runs_its_three_phases() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "r3", MethodKind::Sfo, 3);
    c.data.synthetic_train = 400;
    c.data.synthetic_test = 100;
    c.routine = Routine::R3 {
        plain_epochs: 1,
        op_epochs: 1,
        finetune_epochs: 1,
    };
    let s = train(&c, false, &Silent, None).unwrap().unwrap();
    let csv = std::fs::read_to_string(s.run_dir.join("metrics.csv")).unwrap();
    let phases: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(phases, ["plain", "op", "finetune", "deploy"]);
    // Resuming across a phase boundary re-parameterises the same way.
    let mut d = c.clone();
    d.run.name = "r3-split".into();
    train(&d, false, &Silent, Some(1)).unwrap();
    train(&d, true, &Silent, None).unwrap().unwrap();
    assert!(
        std::fs::read(s.run_dir.join("model.op.safetensors")).unwrap()
            == std::fs::read(d.run_dir().join("model.op.safetensors")).unwrap()
    );
}

#[test]
fn refusals_leave_the_run_directory_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "r", MethodKind::Plain, 2);
    c.data.synthetic_train = 200;
    c.data.synthetic_test = 50;
    train(&c, false, &Silent, Some(1)).unwrap();
    let snapshot = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&c.run_dir());
    // Starting again over an existing run.
    let e = train(&c, false, &Silent, None).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    // Resuming with a different config.
    let mut other = c.clone();
    other.optim.lr = 0.2;
    let e = train(&other, true, &Silent, None).unwrap_err().to_string();
    assert!(e.contains("different config"), "{e}");
    assert!(snapshot(&c.run_dir()) == before);

    // A truncated dataset names its file.
    let data = tempfile::tempdir().unwrap();
    overparam_data::synth::write_synthetic_cifar100(data.path(), 50, 10, 0).unwrap();
    let f = data.path().join("train.bin");
    let raw = std::fs::read(&f).unwrap();
    std::fs::write(&f, &raw[..raw.len() - 7]).unwrap();
    let mut bad = cfg(dir.path(), "bad-data", MethodKind::Plain, 1);
    bad.data.dir = Some(data.path().to_path_buf());
    let e = train(&bad, false, &Silent, None).unwrap_err().to_string();
    assert!(e.contains("train.bin") && e.contains("truncated"), "{e}");
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // `pipeline --from`'s template gets model.from from the pipeline.
            let set: Vec<String> = if p.ends_with("finetune.toml") {
                vec!["model.from=\"imported.deploy.safetensors\"".into()]
            } else {
                vec![]
            };
            overparam_config::TrainConfig::load(&p, &set)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 10, "{n} configs");
}

/// A 1-channel 28×28 IDX data set (a gzip fixture in the MNIST family's layout, detected from
/// its files): the model takes the data's shape, trains with the configured augmentation,
/// folds exactly, and `eval` reads the same directory.
#[test]
fn idx_data_trains_a_one_channel_model() {
    use overparam_data::cifar::Split;
    use overparam_data::idx::{synthetic_set, write_split};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fmnist");
    write_split(
        &data,
        Split::Train,
        &synthetic_set(320, 28, 10, 1, "train"),
        true,
    )
    .unwrap();
    write_split(
        &data,
        Split::Test,
        &synthetic_set(80, 28, 10, 1, "test"),
        true,
    )
    .unwrap();
    let mut c = cfg(dir.path(), "idx", MethodKind::Plain, 3);
    c.data.dir = Some(data.clone());
    c.data.crop_pad = 2;
    c.data.hflip = false;
    c.optim.batch_size = 16;
    let (train_set, _) = trainer::load_data(&c).unwrap();
    assert_eq!(train_set.shape.channels, 1);
    let s = train(&c, false, &Silent, None).unwrap().unwrap();
    assert!(s.fold.passed());
    // Ten bar angles are easy: far better than chance (90% error) after three epochs.
    assert!(s.last.test_top1_err < 50.0, "{:?}", s.last);
    let run = dir.path().join("idx");
    let ck = overparam_fuse::checkpoint::load(&run.join("model.deploy.safetensors")).unwrap();
    let overparam_fuse::AnySpec::Deploy(spec) = &ck.spec else {
        panic!("a deploy checkpoint")
    };
    assert_eq!((spec.input.channels, spec.input.height), (1, 28));
    assert_eq!(spec.input.normalize.as_ref().unwrap().mean.len(), 1);
    let (_, _, top) = trainer::evaluate_checkpoint(
        &run.join("model.deploy.safetensors"),
        &data,
        tch::Device::Cpu,
    )
    .unwrap();
    assert!((top.top1_error() - s.deploy_test_top1_err).abs() < 1e-9);
}

/// A named data set whose files are missing says which package installs them.
#[test]
fn missing_fashion_mnist_names_the_debian_package() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "fm", MethodKind::Plain, 1);
    c.data.dataset = Some(overparam_config::Dataset::FashionMnist);
    c.data.dir = Some(dir.path().join("empty"));
    let e = trainer::load_data(&c).unwrap_err().to_string();
    assert!(
        e.contains("dataset-fashion-mnist")
            && e.contains("train-images-idx3-ubyte")
            && e.contains("empty"),
        "{e}"
    );
    // data.kind = idx without a dataset still points at the package.
    c.data.dataset = None;
    c.data.kind = Some(overparam_config::DataKindChoice::Idx);
    let e = trainer::load_data(&c).unwrap_err().to_string();
    assert!(e.contains("dataset-fashion-mnist"), "{e}");
}
