//! Deployment speed, as ratios measured in the same run (this machine is noisy):
//! - the unfused overparameterised eval forward (tch) vs the fused deploy model (ONNX Runtime),
//!   for repvgg and sfo;
//! - INT8 (uint8 CPU encoding) vs FP32 on ONNX Runtime, at batch 1 and 64;
//! - achieved GFLOP/s of the FP32 deploy model against this machine's fp32 matmul peak
//!   (about 375 GFLOP/s on 2 threads, 190 on 1; stack.md / needs.md §G).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use overparam_data::loader::Normalize;
use overparam_engine::calib::{Candidate, calibration_batches, collect, plan};
use overparam_engine::export::{ActivationEncoding, ExportOptions, Precision, export, to_bytes};
use overparam_engine::runtime::OrtRuntime;
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind, fold};

const THREADS: usize = 2;
const PEAK_GFLOPS: f64 = 375.0;

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn bench(c: &mut Criterion) {
    tch::set_num_threads(THREADS as i32);
    let calib_set = overparam_data::synth::image_set(256, 0, "train");
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let mut report = vec![];
    let mut group = c.benchmark_group("deploy_resnet18_cifar");
    group.sample_size(10);
    for kind in [MethodKind::Repvgg, MethodKind::Sfo] {
        let spec = build(
            ModelKind::Resnet18Cifar,
            &ClassifierOptions::new(MethodConfig::new(kind)),
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
        let (dspec, dw) = fold(&spec, &w).unwrap();
        let gflop_per_image = 2.0 * dspec.total_macs().unwrap() as f64 / 1e9;
        let model = overparam_train::OpModel::new(
            &tch::nn::VarStore::new(tch::Device::Cpu).root(),
            &spec,
            &w,
        )
        .unwrap();
        for batch in [1usize, 64] {
            let x = tch::Tensor::randn(
                [batch as i64, 3, 32, 32],
                (tch::Kind::Float, tch::Device::Cpu),
            );
            let xs: Vec<f32> = Vec::<f32>::try_from(&x.flatten(0, -1)).unwrap();
            let mut o = ExportOptions::new(Precision::Fp32);
            o.batch = batch;
            let mut fp32 =
                OrtRuntime::new(&to_bytes(&export(&dspec, &dw, &o).unwrap()), Some(THREADS))
                    .unwrap();
            let batches = calibration_batches(&calib_set, &norm, 128.max(batch), batch, 0).unwrap();
            let hists = collect(&dspec, &dw, &batches, &overparam_base::Silent).unwrap();
            o.precision = Precision::Int8;
            o.quant = Some(plan(
                &hists,
                Candidate::Entropy,
                ActivationEncoding::UnsignedOffset,
            ));
            let mut int8 =
                OrtRuntime::new(&to_bytes(&export(&dspec, &dw, &o).unwrap()), Some(THREADS))
                    .unwrap();
            let name = format!("{}/b{batch}", kind.as_str());
            group.bench_function(format!("{name}/unfused_tch"), |b| {
                b.iter(|| black_box(tch::no_grad(|| model.forward(&x, false)).unwrap()))
            });
            group.bench_function(format!("{name}/fused_ort_fp32"), |b| {
                b.iter(|| black_box(fp32.run(&xs).unwrap()))
            });
            group.bench_function(format!("{name}/fused_ort_int8"), |b| {
                b.iter(|| black_box(int8.run(&xs).unwrap()))
            });
            let reps = if batch == 1 { 31 } else { 5 };
            let t_unfused = median_ms(
                || drop(tch::no_grad(|| model.forward(&x, false)).unwrap()),
                reps,
            );
            let t_fp32 = median_ms(|| drop(fp32.run(&xs).unwrap()), reps);
            let t_int8 = median_ms(|| drop(int8.run(&xs).unwrap()), reps);
            report.push(format!(
                "  {:<8} batch {:>2}: unfused tch {:>8.2} ms | fused fp32 {:>7.2} ms ({:.2}× faster) | int8 {:>7.2} ms ({:.2}× fp32) | fp32 {:.0} GFLOP/s = {:.0}% of peak",
                kind.as_str(),
                batch,
                t_unfused,
                t_fp32,
                t_unfused / t_fp32,
                t_int8,
                t_fp32 / t_int8,
                gflop_per_image * batch as f64 / (t_fp32 / 1e3),
                100.0 * gflop_per_image * batch as f64 / (t_fp32 / 1e3) / PEAK_GFLOPS
            ));
        }
    }
    group.finish();
    println!("\nresnet18_cifar width 1, {THREADS} threads, medians measured in this run:");
    for r in report {
        println!("{r}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
