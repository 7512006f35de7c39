//! The training memory estimate (`overparam_fuse::memory`, which `train`, `init`, `bench train`
//! and `pipeline` check before allocating) against the measured peak resident memory of
//! training steps, for three model sizes (goal: within a factor of 1.5). Each size runs in a
//! child process (this bench re-executed) so its peak (VmHWM) is its own; the child's resident
//! memory once libtorch has run one op is its baseline, and the estimate is compared with what
//! training adds to it plus the estimate's runtime allowance.
//!     cargo bench --bench memory

use std::process::Command;

use overparam_fuse::memory::{human, train_memory};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind};

/// Peak resident memory of this process (VmHWM), bytes.
fn vm_hwm() -> u64 {
    (overparam_train::bench::peak_rss_mib().unwrap_or(0.0) * 1048576.0) as u64
}

const SIZES: [(ModelKind, f64, MethodKind, usize); 3] = [
    (ModelKind::Resnet18Cifar, 1.0, MethodKind::Plain, 64),
    (ModelKind::Resnet50Cifar, 1.0, MethodKind::Sfo, 32),
    (ModelKind::Resnet18Cifar, 2.0, MethodKind::Repvgg, 128),
];

/// The child: three SGD steps of size `i`; prints "baseline peak".
fn child(i: usize) {
    let (model, width, method, batch) = SIZES[i];
    overparam_train::set_threads(1);
    let _ = tch::Tensor::ones([64, 64], (tch::Kind::Float, tch::Device::Cpu)).sum(tch::Kind::Float);
    let base = vm_hwm();
    overparam_train::bench::train_step_time(&overparam_train::bench::StepBench::new(
        model, width, method, batch,
    ))
    .unwrap();
    println!("{base} {}", vm_hwm());
}

fn main() {
    if let Ok(i) = std::env::var("OVERPARAM_MEMORY_CHILD") {
        return child(i.parse().unwrap());
    }
    let exe = std::env::current_exe().unwrap();
    println!(
        "model              width method  batch   estimate   measured  ratio (measured/estimate)"
    );
    let mut worst: f64 = 1.0;
    for (i, &(model, width, method, batch)) in SIZES.iter().enumerate() {
        let spec = build(
            model,
            &ClassifierOptions {
                width,
                ..ClassifierOptions::new(MethodConfig::new(method))
            },
        )
        .unwrap();
        let est = train_memory(&spec, batch, 1).unwrap().total();
        let out = Command::new(&exe)
            .env("OVERPARAM_MEMORY_CHILD", i.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let measured = v[1] - v[0];
        let ratio = measured as f64 / est as f64;
        worst = worst.max(ratio.max(1.0 / ratio));
        println!(
            "{:<18} {width:>5} {:<7} {batch:>5} {:>10} {:>10}  {ratio:.2}",
            model.as_str(),
            method.as_str(),
            human(est),
            human(measured)
        );
    }
    println!("worst factor {worst:.2} (goal ≤ 1.5)");
}
