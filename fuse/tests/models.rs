//! Model builders, deploy parity across methods, and exact spectral initialisation.

use overparam_fuse::RandomTensor;
use overparam_fuse::fold::deploy_spec;
use overparam_fuse::init::{InitOptions, init_train_weights, plain_kernel};
use overparam_fuse::layout::{deploy_layout, param_count, train_layout};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::spec::Op;
use overparam_fuse::verify::verify_fold;
use overparam_fuse::{MethodConfig, MethodKind, Tensor, fold};

fn spec(model: ModelKind, kind: MethodKind, width: f64) -> overparam_fuse::TrainSpec {
    build(
        model,
        &ClassifierOptions {
            width,
            ..ClassifierOptions::new(MethodConfig::new(kind))
        },
    )
    .unwrap()
}

#[test]
fn every_method_deploys_to_exactly_the_plain_resnet50() {
    let plain = deploy_spec(&spec(ModelKind::Resnet50Cifar, MethodKind::Plain, 1.0)).unwrap();
    let params = param_count(&deploy_layout(&plain));
    let macs = plain.total_macs().unwrap();
    // methods.md §3.1: ≈23.7 M parameters (with BN; folded BN leaves one bias per channel)
    // and ≈1.30 GMACs at 32×32.
    assert!((23.6e6..23.75e6).contains(&(params as f64)), "{params}");
    assert!((1.29e9..1.31e9).contains(&(macs as f64)), "{macs}");
    let train_plain = param_count(
        &train_layout(&spec(ModelKind::Resnet50Cifar, MethodKind::Plain, 1.0)).unwrap(),
    );
    assert!(
        (train_plain as f64 - 23.71e6).abs() < 0.01e6,
        "{train_plain}"
    );
    for kind in MethodKind::ALL {
        let t = spec(ModelKind::Resnet50Cifar, kind, 1.0);
        let d = deploy_spec(&t).unwrap();
        assert_eq!(d, plain, "{kind:?}");
        assert_eq!(param_count(&deploy_layout(&d)), params);
        assert_eq!(d.total_macs().unwrap(), macs);
        let train_params = param_count(&train_layout(&t).unwrap());
        if kind != MethodKind::Plain {
            assert!(
                train_params > train_plain,
                "{kind:?} adds training parameters"
            );
        }
    }
}

#[test]
fn method_replaces_kxk_convs_by_default_and_1x1_on_request() {
    let t = spec(ModelKind::Resnet50Cifar, MethodKind::Sfo, 0.25);
    let method_of = |t: &overparam_fuse::TrainSpec, n: &str| match &t.node(n).unwrap().op {
        Op::Conv(c) => c.method.name(),
        _ => unreachable!(),
    };
    assert_eq!(method_of(&t, "layer1.0.conv2"), "sfo");
    assert_eq!(method_of(&t, "layer1.0.conv1"), "plain");
    assert_eq!(method_of(&t, "layer1.0.downsample.0"), "plain");
    let all = build(
        ModelKind::Resnet50Cifar,
        &ClassifierOptions {
            width: 0.25,
            ..ClassifierOptions::new(MethodConfig {
                include_1x1: true,
                ..MethodConfig::new(MethodKind::Sfo)
            })
        },
    )
    .unwrap();
    assert_eq!(method_of(&all, "layer1.0.conv1"), "sfo");
    assert_eq!(method_of(&all, "layer1.0.downsample.0"), "sfo");
}

/// FNL and SFO start from the plain network's function: the composed kernel equals the plain
/// init kernel (same seed) to fp32 rounding.
#[test]
fn factorised_inits_reproduce_the_plain_kernel() {
    for kind in [MethodKind::Fnl, MethodKind::Sfo] {
        for expand in [1, 2] {
            let method = MethodConfig {
                include_1x1: true,
                sfo_expand: expand,
                fnl_rank_scale: expand as f64,
                ..MethodConfig::new(kind)
            };
            let t = build(
                ModelKind::Resnet18Cifar,
                &ClassifierOptions {
                    width: 0.125,
                    ..ClassifierOptions::new(method)
                },
            )
            .unwrap();
            let w = init_train_weights(&t, &InitOptions::default()).unwrap();
            for n in &t.nodes {
                let Op::Conv(c) = &n.op else { continue };
                let composed: Tensor<f64> = overparam_fuse::fold::compose_kernel(
                    &n.name,
                    c,
                    &w.iter().map(|(k, v)| (k.clone(), v.cast())).collect(),
                )
                .unwrap();
                let plain = plain_kernel(&n.name, &c.shape, 0);
                let err = composed.max_abs_diff(&plain);
                // fp32 storage of three factors: a few ulps of the kernel's scale.
                assert!(
                    err <= 4.0 * f32::EPSILON as f64 * plain.max_abs(),
                    "{kind:?} e={expand} {}: {err:e} vs {:e}",
                    n.name,
                    plain.max_abs()
                );
            }
        }
    }
}

/// Whole tiny networks of every model and method fold within the fp32 bounds.
#[test]
fn tiny_models_fold_and_verify_for_every_method() {
    for model in ModelKind::ALL {
        for kind in MethodKind::ALL {
            let t = spec(model, kind, 0.125);
            let w = overparam_fuse::init::random_weights::<f32>(&train_layout(&t).unwrap(), 7);
            let (d, dw) = fold(&t, &w).unwrap();
            let v = verify_fold(&t, &w, &d, &dw, 2, 3).unwrap();
            assert!(
                v.passed(),
                "{model:?} {kind:?}: {:?} {:?}",
                v.worst_block(),
                v.worst_output()
            );
        }
    }
}

/// R3: a trained-looking plain network expanded by SVD computes the same function (fp32
/// rounding), and collapsing the factorised network keeps its function too.
#[test]
fn r3_expand_and_collapse_preserve_the_function() {
    use overparam_fuse::exec::run;
    use overparam_fuse::reparam::{collapse, expand};
    let plain = spec(ModelKind::Resnet18Cifar, MethodKind::Plain, 0.125);
    let w = overparam_fuse::init::random_weights::<f32>(&train_layout(&plain).unwrap(), 9);
    let x: Tensor<f32> = overparam_fuse::Rng::new(1).normal_tensor(&[2, 3, 32, 32], 1.0);
    let y0 = &run(&plain, &w, &x).unwrap()[0].1;
    for kind in [MethodKind::Sfo, MethodKind::Fnl] {
        let target = spec(ModelKind::Resnet18Cifar, kind, 0.125);
        let we = expand(&plain, &w, &target, 0).unwrap();
        let y1 = &run(&target, &we, &x).unwrap()[0].1;
        let rel = y0.max_abs_diff(y1) / y0.max_abs();
        assert!(rel < 1e-5, "{kind:?} expand: {rel:e}");
        let (back, wb) = collapse(&target, &we).unwrap();
        assert_eq!(back, plain);
        let y2 = &run(&back, &wb, &x).unwrap()[0].1;
        assert!(
            y1.max_abs_diff(y2) / y1.max_abs() < 1e-5,
            "{kind:?} collapse"
        );
    }
    let rep = spec(ModelKind::Resnet18Cifar, MethodKind::Repvgg, 0.125);
    assert!(expand(&plain, &w, &rep, 0).is_err());
}

/// 1-channel 28×28 input (the MNIST family): the stem takes the data's channels, the spec
/// records them, and every classifier folds exactly for every method.
#[test]
fn one_channel_28px_classifiers_take_the_datas_input_and_fold() {
    for model in [ModelKind::Resnet18Cifar, ModelKind::VggSmall] {
        for kind in MethodKind::ALL {
            let t = build(
                model,
                &ClassifierOptions {
                    width: 0.125,
                    num_classes: 10,
                    image_size: 28,
                    in_channels: 1,
                    ..ClassifierOptions::new(MethodConfig::new(kind))
                },
            )
            .unwrap();
            assert_eq!(
                (t.input.channels, t.input.height, t.input.width),
                (1, 28, 28)
            );
            let stem = t
                .nodes
                .iter()
                .find_map(|n| match &n.op {
                    Op::Conv(c) => Some(c.shape.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(stem.in_channels, 1, "{model:?} {kind:?}");
            let w = overparam_fuse::init::random_weights::<f32>(&train_layout(&t).unwrap(), 7);
            let (d, dw) = fold(&t, &w).unwrap();
            assert_eq!(d.input.channels, 1);
            let v = verify_fold(&t, &w, &d, &dw, 2, 3).unwrap();
            assert!(
                v.passed(),
                "{model:?} {kind:?}: {:?} {:?}",
                v.worst_block(),
                v.worst_output()
            );
        }
    }
    // The multi-task net is RGB only: asking it for 1 channel is an error, not a silent 3.
    let e = build(
        ModelKind::Mtl,
        &ClassifierOptions {
            in_channels: 1,
            ..ClassifierOptions::new(MethodConfig::new(MethodKind::Plain))
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("3-channel"), "{e}");
}
