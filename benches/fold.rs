//! Folding an overparameterised ResNet-50 (CIFAR, width 1) for every method, and each time as a
//! ratio of the plain model's fold measured in the same run (this machine is noisy).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind, TrainSpec, Weights, fold};

fn model(kind: MethodKind) -> (TrainSpec, Weights) {
    let spec = build(
        ModelKind::Resnet50Cifar,
        &ClassifierOptions::new(MethodConfig::new(kind)),
    )
    .expect("spec");
    let w = init_train_weights(
        &spec,
        &InitOptions {
            seed: 0,
            random_bn: true,
        },
    )
    .expect("init");
    (spec, w)
}

fn median_secs(mut f: impl FnMut(), reps: usize) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn bench_fold(c: &mut Criterion) {
    let models: Vec<_> = MethodKind::ALL.iter().map(|&k| (k, model(k))).collect();
    let mut group = c.benchmark_group("fold_resnet50_cifar");
    group.sample_size(10);
    for (kind, (spec, w)) in &models {
        group.bench_function(kind.as_str(), |b| {
            b.iter(|| black_box(fold(spec, w).unwrap()))
        });
    }
    group.finish();

    let (ps, pw) = &models[0].1;
    let plain = median_secs(|| drop(black_box(fold(ps, pw).unwrap())), 7);
    println!("\nfold time relative to plain (median of 7, same run):");
    for (kind, (spec, w)) in &models {
        let t = median_secs(|| drop(black_box(fold(spec, w).unwrap())), 7);
        println!(
            "  {:<9} {:>8.1} ms  {:>5.2}× plain",
            kind.as_str(),
            t * 1e3,
            t / plain
        );
    }
}

criterion_group!(benches, bench_fold);
criterion_main!(benches);
