//! Every op in libtorch: each case of `overparam_fuse::ops::examples` run by the training
//! backend (eval mode) equals the f64 reference executor, and gradients flow through it
//! (the third way, the reference against ONNX Runtime, is `overparam-engine`'s `tests/ops.rs`).

use overparam_fuse::fold::as_train_spec;
use overparam_fuse::ops::examples::{cases, weights};
use overparam_fuse::verify::Deviation;
use overparam_fuse::{RandomTensor, Rng, Tensor as FTensor, Weights};
use overparam_train::OpModel;
use tch::{Device, Tensor, nn};

#[test]
fn every_op_in_libtorch_computes_what_the_reference_computes() {
    let mut failures = vec![];
    for (k, (name, g)) in cases().into_iter().enumerate() {
        let w = weights(&g, 10 + k as u64);
        let i = &g.input;
        let x: FTensor<f64> =
            Rng::new(k as u64).normal_tensor(&[2, i.channels, i.height, i.width], 1.0);
        let w64: Weights<f64> = w.iter().map(|(n, t)| (n.clone(), t.cast())).collect();
        let want = &overparam_fuse::exec::run(&g, &w64, &x).unwrap()[0].1;
        let train = as_train_spec(&g).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = OpModel::new(&vs.root(), &train, &w).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
        let xt = Tensor::from_slice(&x32)
            .reshape(x.shape.iter().map(|&d| d as i64).collect::<Vec<_>>())
            .set_requires_grad(true);
        let y = m
            .forward(&xt, false)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .remove(0);
        let shape: Vec<usize> = y.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<f32>::try_from(&y.detach().flatten(0, -1)).unwrap();
        let d = Deviation::between(&name, want, &FTensor::new(shape, data));
        if d.rel.is_nan() || d.rel > 1e-5 {
            failures.push(format!("{name}: rel {:e}", d.rel));
        }
        // The backward pass exists and is finite (the ops train).
        y.sum(tch::Kind::Float).backward();
        let gx = xt.grad();
        if !bool::try_from(gx.isfinite().all()).unwrap() {
            failures.push(format!("{name}: non-finite input gradient"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
