//! overparam-train: tch (libtorch) modules built from the overparam spec. Every method's layer
//! creates exactly the tensors its fuse layout declares, under the same PyTorch names, and
//! computes the train-time forward: branches in feature space (repvgg, qarepvgg) or the
//! kernel composed in kernel space, then one conv (fnl, sfo), with BatchNorm in train or eval
//! mode.

pub mod bench;
pub mod error;
pub mod fit;
pub mod fold_gate;
pub mod memory;
pub mod model;
pub mod mtl;
pub mod mtl_trainer;
pub mod optim;
pub mod pretrained;
pub mod qat;
pub mod state;
pub mod trainer;

pub use error::{Error, Result};
pub use model::OpModel;

/// Sets libtorch's intra-op threads (what `run.threads` does for a run), for callers that
/// drive libtorch without a run config (`bench train`'s worker).
pub fn set_threads(n: usize) {
    tch::set_num_threads(n as i32);
}

/// A short report that libtorch loads, what it sees, and that one overparameterised training
/// step runs.
pub fn doctor() -> Result<String> {
    use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
    use overparam_fuse::{MethodConfig, MethodKind};
    let device = tch::Device::cuda_if_available();
    let spec = build(
        ModelKind::Resnet18Cifar,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            ..ClassifierOptions::new(MethodConfig::new(MethodKind::Sfo))
        },
    )?;
    let w = overparam_fuse::init::init_train_weights(&spec, &Default::default())?;
    let vs = tch::nn::VarStore::new(device);
    let model = OpModel::new(&vs.root(), &spec, &w)?;
    let x = tch::Tensor::f_randn([4, 3, 32, 32], (tch::Kind::Float, device))?;
    let t0 = std::time::Instant::now();
    let y = &model.forward(&x, true)?[0];
    let target = tch::Tensor::f_zeros([4], (tch::Kind::Int64, device))?;
    let loss =
        y.f_cross_entropy_loss::<tch::Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0)?;
    loss.f_backward()?;
    // Every factor must receive a gradient (zero-initialised extras would not).
    let missing: Vec<&str> = model
        .names()
        .filter(|n| model.kind(n).is_some_and(|k| k.is_factor()))
        .filter(|n| model.var(n).is_ok_and(|v| !v.grad().defined()))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Model(format!("no gradient reached {missing:?}")));
    }
    Ok(format!(
        "libtorch ok: device {device:?}, CUDA available: {}, cuDNN: {}, threads: {}\n\
         one sfo training step on a tiny resnet18_cifar (batch 4): loss {:.4}, {:.1} ms",
        tch::Cuda::is_available(),
        tch::Cuda::cudnn_is_available(),
        tch::get_num_threads(),
        loss.f_double_value(&[])?,
        t0.elapsed().as_secs_f64() * 1e3
    ))
}
