//! The tch layers against the pure-Rust reference: same tensors (names, shapes) as the fuse
//! layout, and in eval mode the tch forward of the overparameterised model equals the folded
//! deploy model run by the reference executor.

use overparam_fuse::RandomTensor;
use overparam_fuse::exec::run;
use overparam_fuse::init::random_weights;
use overparam_fuse::layout::train_layout;
use overparam_fuse::models::{ClassifierOptions, ModelKind, build, shared_heads_example};
use overparam_fuse::spec::{
    BatchNorm, ConvShape, INPUT, InputSpec, Node, Op, OutputSpec, TrainConv,
};
use overparam_fuse::verify::verify_fold;
use overparam_fuse::{Method, MethodConfig, MethodKind, Rng, Tensor as FTensor, TrainSpec, fold};
use overparam_train::OpModel;
use tch::{Device, Tensor, nn};

fn to_tch(t: &FTensor<f32>) -> Tensor {
    let d: Vec<i64> = t.shape.iter().map(|&x| x as i64).collect();
    Tensor::from_slice(&t.data).reshape(d)
}

fn from_tch(t: &Tensor) -> FTensor<f32> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    FTensor::new(
        shape,
        Vec::<f32>::try_from(&t.detach().flatten(0, -1)).unwrap(),
    )
}

fn grouped_spec(method: Method) -> TrainSpec {
    conv_spec(
        ConvShape {
            groups: 2,
            bias: true,
            ..ConvShape::new(4, 4, 3, 1)
        },
        method,
    )
}

/// A 1×3 conv with stride (2, 1), dilation (1, 2) and asymmetric pads (libtorch takes those
/// only as an explicit pad first).
fn general_spec(method: Method) -> TrainSpec {
    conv_spec(
        ConvShape {
            in_channels: 4,
            out_channels: 6,
            kernel: [1, 3],
            stride: [2, 1],
            padding: [0, 1, 1, 3],
            groups: 2,
            bias: true,
            dilation: [1, 2],
        },
        method,
    )
}

fn conv_spec(shape: ConvShape, method: Method) -> TrainSpec {
    TrainSpec {
        model: "grouped".into(),
        input: InputSpec {
            channels: 4,
            height: 3,
            width: 4,
            normalize: None,
        },
        nodes: vec![Node::new(
            "conv",
            &[INPUT],
            Op::Conv(TrainConv::new(
                shape,
                Some(BatchNorm::new("bn", 1e-5)),
                method,
            )),
        )],
        outputs: vec![OutputSpec::new("y", "conv")],
    }
}

fn specs() -> Vec<TrainSpec> {
    let mut out = vec![];
    for model in [ModelKind::Resnet18Cifar, ModelKind::VggSmall] {
        for kind in MethodKind::ALL {
            out.push(
                build(
                    model,
                    &ClassifierOptions {
                        width: 0.125,
                        num_classes: 10,
                        image_size: 8,
                        in_channels: 3,
                        method: MethodConfig {
                            include_1x1: true,
                            ..MethodConfig::new(kind)
                        },
                    },
                )
                .unwrap(),
            );
        }
    }
    for m in [
        Method::Plain,
        Method::Repvgg,
        Method::Qarepvgg,
        Method::Fnl { rank: 7 },
        Method::Sfo {
            rank: 20,
            share: None,
        },
    ] {
        out.push(grouped_spec(m));
    }
    for m in [
        Method::Plain,
        Method::Fnl { rank: 7 },
        Method::Sfo {
            rank: 6,
            share: None,
        },
    ] {
        out.push(general_spec(m));
    }
    out.push(shared_heads_example());
    // The multi-task net: Resize (nearest) and L2Norm against the reference executor.
    for kind in [MethodKind::Plain, MethodKind::Sfo, MethodKind::Repvgg] {
        out.push(
            overparam_fuse::models::mtl_net(&overparam_fuse::models::MtlOptions {
                width: 0.125,
                height: 36,
                width_px: 44,
                classes: 13,
                method: MethodConfig {
                    include_1x1: true,
                    ..MethodConfig::new(kind)
                },
            })
            .unwrap(),
        );
    }
    out
}

#[test]
fn tch_model_creates_exactly_the_declared_tensors() {
    for spec in specs() {
        let layout = train_layout(&spec).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let w = random_weights::<f32>(&layout, 1);
        let model = OpModel::new(&vs.root(), &spec, &w).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        let mut want: Vec<String> = layout.iter().map(|p| p.name.clone()).collect();
        want.sort();
        assert_eq!(names, want, "{}", spec.model);
        let trainable = vs.trainable_variables().len();
        assert_eq!(
            trainable,
            layout.iter().filter(|p| !p.kind.is_buffer()).count()
        );
        for p in &layout {
            let t = model.var(&p.name).unwrap();
            assert_eq!(
                t.size(),
                p.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                "{}",
                p.name
            );
        }
        // Values round-trip exactly.
        assert_eq!(model.weights().unwrap(), w);
    }
}

#[test]
fn eval_forward_matches_the_folded_reference() {
    for (i, spec) in specs().into_iter().enumerate() {
        let w = random_weights::<f32>(&train_layout(&spec).unwrap(), 10 + i as u64);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = OpModel::new(&vs.root(), &spec, &w).unwrap();
        let inp = &spec.input;
        let x: FTensor<f32> =
            Rng::new(i as u64).normal_tensor(&[2, inp.channels, inp.height, inp.width], 1.0);
        let ys = tch::no_grad(|| model.forward(&to_tch(&x), false)).unwrap();
        let (deploy, dw) = fold(&spec, &w).unwrap();
        let want = run(&deploy, &dw, &x).unwrap();
        for ((name, r), y) in want.iter().zip(&ys) {
            let got = from_tch(y);
            let rel = r.max_abs_diff(&got) / r.max_abs().max(1e-12);
            assert!(rel <= 1e-4, "{} `{name}`: rel {rel:e}", spec.model);
        }
    }
}

#[test]
fn a_training_step_updates_every_parameter_and_still_folds_exactly() {
    let spec = build(
        ModelKind::Resnet18Cifar,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            image_size: 8,
            in_channels: 3,
            method: MethodConfig::new(MethodKind::Repvgg),
        },
    )
    .unwrap();
    for spec in [spec, shared_heads_example()] {
        let w = overparam_fuse::init::init_train_weights(&spec, &Default::default()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = OpModel::new(&vs.root(), &spec, &w).unwrap();
        let inp = &spec.input;
        tch::manual_seed(0);
        let x = Tensor::randn(
            [4, inp.channels as i64, inp.height as i64, inp.width as i64],
            (tch::Kind::Float, Device::Cpu),
        );
        // A fixed random projection of each output: mean(y²) after a train-mode BN is ≈ 1
        // whatever the weights, so it would give (almost) no gradient to a 1-channel head.
        let loss = model
            .forward(&x, true)
            .unwrap()
            .iter()
            .map(|y| (y * Tensor::randn_like(y)).mean(tch::Kind::Float))
            .fold(
                Tensor::zeros([], (tch::Kind::Float, Device::Cpu)),
                |a, b| a + b,
            );
        loss.backward();
        tch::no_grad(|| {
            for mut v in vs.trainable_variables() {
                let g = v.grad();
                assert!(g.defined(), "no gradient");
                let _ = v.f_sub_(&(g * 0.1)).unwrap();
            }
        });
        let after = model.weights().unwrap();
        for (name, t) in &after {
            let before = &w[name];
            let kind = model.kind(name).unwrap();
            // A conv bias right before a train-mode BN gets exactly zero gradient (BN removes
            // the batch mean), as in PyTorch.
            let before_bn = name
                .strip_suffix(".bias")
                .and_then(|n| spec.node(n))
                .is_some_and(|n| matches!(&n.op, Op::Conv(c) if c.bn.is_some()));
            // A single-output-channel conv before a train-mode BN is scale invariant, and its
            // own U factor (1×d, spectral init with one meaningful direction) only receives a
            // gradient orthogonal to itself, through ε-small extra directions: too small to
            // move at this step size.
            let invariant_u = name
                .strip_suffix(".U")
                .and_then(|n| spec.node(n))
                .is_some_and(
                    |n| matches!(&n.op, Op::Conv(c) if c.bn.is_some() && c.shape.out_channels == 1),
                );
            if before_bn || invariant_u {
                continue;
            }
            if kind == overparam_fuse::layout::ParamKind::BnCount {
                assert_eq!(t.data, vec![1.0], "{name}");
            } else {
                assert_ne!(t, before, "{name} ({kind:?}) did not change");
            }
        }
        let (deploy, dw) = fold(&spec, &after).unwrap();
        let v = verify_fold(&spec, &after, &deploy, &dw, 2, 0).unwrap();
        assert!(v.passed(), "{:?}", v.worst_block());
    }
}

/// QAT's deploy kernels, composed in tch from every method's parameters, are the fold: with
/// fake quantisation off the QAT forward equals the folded reference, in training mode too
/// (BatchNorm frozen at its running statistics, which do not move), and gradients reach the
/// BN affine parameters through the fold.
#[test]
fn qat_forward_is_the_fold_with_bn_frozen() {
    use overparam_train::qat::Qat;
    for (i, spec) in specs().into_iter().enumerate() {
        let w = random_weights::<f32>(&train_layout(&spec).unwrap(), 30 + i as u64);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = OpModel::new(&vs.root(), &spec, &w).unwrap();
        model.set_qat(Some(
            Qat::new(
                &spec,
                overparam_train::qat::QatPlan::unit(&spec),
                Device::Cpu,
                false,
            )
            .unwrap(),
        ));
        let inp = &spec.input;
        let x: FTensor<f32> =
            Rng::new(i as u64).normal_tensor(&[2, inp.channels, inp.height, inp.width], 1.0);
        let (deploy, dw) = fold(&spec, &w).unwrap();
        let want = run(&deploy, &dw, &x).unwrap();
        for train in [false, true] {
            let ys = model.forward(&to_tch(&x), train).unwrap();
            for ((name, r), y) in want.iter().zip(&ys) {
                let got = from_tch(y);
                let rel = r.max_abs_diff(&got) / r.max_abs().max(1e-12);
                assert!(
                    rel <= 1e-4,
                    "{} `{name}` train={train}: rel {rel:e}",
                    spec.model
                );
            }
            if train {
                let loss = ys
                    .iter()
                    .map(|y| y.square().sum(tch::Kind::Float))
                    .reduce(|a, b| a + b)
                    .unwrap();
                loss.backward();
            }
        }
        let after = model.weights().unwrap();
        for (name, t) in &w {
            let kind = model.kind(name).unwrap();
            if kind.is_buffer() {
                assert_eq!(&after[name], t, "{} `{name}` moved", spec.model);
            }
        }
        let bn_grads = model
            .names()
            .filter(|n| model.kind(n) == Some(overparam_fuse::layout::ParamKind::BnWeight))
            .filter(|n| model.var(n).unwrap().grad().defined())
            .count();
        assert!(bn_grads > 0, "{}: no gradient reached a BN", spec.model);
    }
}

/// QAT refuses a model it cannot quantise, and a plan it cannot apply.
#[test]
fn qat_refuses_what_it_cannot_quantise() {
    use overparam_train::qat::Qat;
    let spec = grouped_spec(Method::Plain);
    let mut no_conv = spec.clone();
    no_conv.nodes = vec![Node::new(
        "flat",
        &[INPUT],
        Op::Flatten(overparam_fuse::ops::Flatten {}),
    )];
    no_conv.outputs = vec![OutputSpec::new("y", "flat")];
    let e = Qat::new(
        &no_conv,
        overparam_train::qat::QatPlan::unit(&spec),
        Device::Cpu,
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs a conv"), "{e}");
    let mut p = overparam_train::qat::QatPlan::unit(&spec);
    p.thresholds.remove(INPUT);
    let e = Qat::new(&spec, p, Device::Cpu, true).unwrap_err();
    assert!(e.to_string().contains("`input`"), "{e}");
    let mut p = overparam_train::qat::QatPlan::unit(&spec);
    p.thresholds.insert(INPUT.into(), f32::NAN);
    let e = Qat::new(&spec, p, Device::Cpu, true).unwrap_err();
    assert!(e.to_string().contains("must be positive"), "{e}");
    let mut p = overparam_train::qat::QatPlan::unit(&spec);
    p.layers = Some(["nope".to_string()].into());
    let e = Qat::new(&spec, p, Device::Cpu, true).unwrap_err();
    assert!(e.to_string().contains("`nope`"), "{e}");
}

/// QAT's start in deploy units computes the same function (decided in f64: only the f32
/// storage of the moved tensors differs), and every BN that scales a kernel of its own is then
/// the identity scale, so that kernel moves in the deploy net at the rate it is given.
#[test]
fn deploy_units_keep_the_fold_and_unit_the_branch_scales() {
    use overparam_train::qat::in_deploy_units;
    let f64s = |w: &overparam_fuse::Weights<f32>| -> overparam_fuse::Weights<f64> {
        w.iter().map(|(k, t)| (k.clone(), t.cast())).collect()
    };
    let mut moved = 0;
    for (i, spec) in specs().into_iter().enumerate() {
        let w = random_weights::<f32>(&train_layout(&spec).unwrap(), 50 + i as u64);
        let u = in_deploy_units(&spec, &w).unwrap();
        let (_, a) = fold(&spec, &f64s(&w)).unwrap();
        let (_, b) = fold(&spec, &f64s(&u)).unwrap();
        for (name, t) in &a {
            let rel = t.max_abs_diff(&b[name]) / t.max_abs().max(1e-12);
            assert!(rel <= 1e-6, "{} `{name}`: rel {rel:e}", spec.model);
        }
        for n in &spec.nodes {
            let Op::Conv(c) = &n.op else { continue };
            let p = n.prefix();
            let bn = match (&c.method, &c.bn) {
                (Method::Plain, Some(bn)) => bn.name.clone(),
                (Method::Repvgg | Method::Qarepvgg, _) => format!("{p}.rbr_dense.bn"),
                _ => continue,
            };
            let eps = c.bn.as_ref().map_or(1e-5, |b| b.eps);
            let (g, v) = (
                &u[&format!("{bn}.weight")],
                &u[&format!("{bn}.running_var")],
            );
            for (g, v) in g.data.iter().zip(&v.data) {
                let t = *g as f64 / (*v as f64 + eps).sqrt();
                assert!((t - 1.0).abs() <= 1e-6, "{} `{bn}`: scale {t}", spec.model);
            }
            assert!(
                u[&format!("{bn}.running_mean")]
                    .data
                    .iter()
                    .all(|&m| m == 0.0)
            );
            moved += 1;
        }
    }
    assert!(moved > 10, "only {moved} BNs checked");
}
