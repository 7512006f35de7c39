//! Property tests: every method's fold reproduces the unfolded layer in eval mode, on random
//! shapes (kernel 1/3/5 and non-square kh×kw, stride 1/2 per axis, dilation 1/2, asymmetric
//! padding for the factorised methods, groups 1/2/4, identity present/absent, conv bias
//! on/off), randomised BN statistics and affine parameters, and spatial sizes down to 3×3.

use overparam_fuse::RandomTensor;
use overparam_fuse::exec::run;
use overparam_fuse::init::random_weights;
use overparam_fuse::layout::train_layout;
use overparam_fuse::method::{Method, has_identity};
use overparam_fuse::spec::{
    BatchNorm, ConvShape, INPUT, InputSpec, Node, Op, OutputSpec, TrainConv, TrainSpec,
};
use overparam_fuse::verify::verify_fold;
use overparam_fuse::{Real, Rng, Tensor, fold};

fn single_conv(shape: ConvShape, bn: bool, method: Method, hw: usize) -> TrainSpec {
    TrainSpec {
        model: "single".into(),
        input: InputSpec {
            channels: shape.in_channels,
            height: hw,
            width: hw + 1,
            normalize: None,
        },
        nodes: vec![Node::new(
            "block.conv",
            &[INPUT],
            Op::Conv(TrainConv::new(
                shape,
                bn.then(|| BatchNorm::new("block.bn", 1e-5)),
                method,
            )),
        )],
        outputs: vec![OutputSpec::new("y", "block.conv")],
    }
}

fn random_case(rng: &mut Rng, method_ix: usize) -> TrainSpec {
    let odd = [1, 3, 5];
    let repvgg_like = method_ix == 1 || method_ix == 2;
    // A third of the cases get a non-square kernel, per-axis strides and dilation.
    let general = rng.below(3) == 0;
    let kernel = if general {
        [odd[rng.below(3)], [1, 2, 3][rng.below(3)]]
    } else {
        [odd[rng.below(3)]; 2]
    };
    let kernel = if repvgg_like {
        kernel.map(|k| k | 1)
    } else {
        kernel
    };
    let stride = if general {
        [1 + rng.below(2), 1 + rng.below(2)]
    } else {
        [1 + rng.below(2); 2]
    };
    let dilation = if general {
        [1 + rng.below(2), 1 + rng.below(2)]
    } else {
        [1, 1]
    };
    let groups = [1, 2, 4][rng.below(3)];
    let cin = groups * (1 + rng.below(3));
    let cout = if rng.below(2) == 0 {
        cin
    } else {
        groups * (1 + rng.below(3))
    };
    let same = |a: usize| dilation[a] * (kernel[a] - 1) / 2;
    let padding = if repvgg_like || rng.below(2) == 0 {
        [same(0), same(1), same(0), same(1)]
    } else {
        [
            rng.below(same(0) + 1),
            rng.below(same(1) + 2),
            rng.below(same(0) + 2),
            rng.below(same(1) + 1),
        ]
    };
    let shape = ConvShape {
        in_channels: cin,
        out_channels: cout,
        kernel,
        stride,
        padding,
        groups,
        bias: rng.below(2) == 0,
        dilation,
    };
    let bn = repvgg_like || rng.below(4) != 0;
    let (o, i) = (cout / groups, cin / groups);
    let taps = kernel[0] * kernel[1];
    let method = match method_ix {
        0 => Method::Plain,
        1 => Method::Repvgg,
        2 => Method::Qarepvgg,
        3 => Method::Fnl {
            rank: o * kernel[0] + rng.below(3),
        },
        _ => Method::Sfo {
            rank: o.min(i * taps) * (1 + rng.below(2)) + rng.below(2),
            share: None,
        },
    };
    // Spatial sizes from 3 so border pixels dominate; large enough for the dilated kernel.
    let need =
        |a: usize| (dilation[a] * (kernel[a] - 1) + 1).saturating_sub(padding[a] + padding[a + 2]);
    let h = (3 + rng.below(5)).max(need(0));
    let mut spec = single_conv(shape, bn, method, h);
    spec.input.width = spec.input.width.max(need(1));
    spec
}

fn check_cases<F: Real>(cases: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut identity_seen = [0usize; 2];
    for case in 0..cases {
        let method_ix = case % 5;
        let spec = random_case(&mut rng, method_ix);
        let Op::Conv(c) = &spec.nodes[0].op else {
            unreachable!()
        };
        if method_ix == 1 {
            identity_seen[has_identity(&c.shape) as usize] += 1;
        }
        let w = random_weights::<F>(&train_layout(&spec).unwrap(), seed + case as u64);
        let (deploy, dw) = fold(&spec, &w).unwrap_or_else(|e| panic!("case {case}: {e}"));
        let v = verify_fold(&spec, &w, &deploy, &dw, 2, case as u64).unwrap();
        let worst = v.worst_block().unwrap();
        assert!(
            v.passed(),
            "case {case} ({}, {:?}, bn {}): max|Δ| {:e} vs max|y| {:e} (rel {:e} > {:e})",
            c.method.name(),
            c.shape,
            c.bn.is_some(),
            worst.max_abs,
            worst.max_ref,
            worst.rel,
            v.block_tolerance
        );
    }
    assert!(
        identity_seen[0] > 0 && identity_seen[1] > 0,
        "both RepVGG identity cases must be covered: {identity_seen:?}"
    );
}

#[test]
fn every_method_folds_exactly_fp32() {
    check_cases::<f32>(300, 11);
}

#[test]
fn every_method_folds_exactly_fp64() {
    check_cases::<f64>(300, 12);
}

/// A wrong fold must be caught: perturbing one BN statistic after folding breaks the check.
#[test]
fn verification_detects_a_wrong_fold() {
    let spec = single_conv(ConvShape::new(4, 4, 3, 1), true, Method::Repvgg, 5);
    let mut w = random_weights::<f64>(&train_layout(&spec).unwrap(), 3);
    let (deploy, dw) = fold(&spec, &w).unwrap();
    w.get_mut("block.conv.rbr_identity.running_var")
        .unwrap()
        .data[0] += 0.5;
    let v = verify_fold(&spec, &w, &deploy, &dw, 1, 0).unwrap();
    assert!(!v.passed());
}

/// Multi-task heads: U and V shared, M per task (equal shapes), and V shared with per-task U
/// (different output widths). Each head folds to its own plain conv, exactly.
#[test]
fn shared_sfo_heads_fold_exactly() {
    let spec = overparam_fuse::models::shared_heads_example();
    let layout = train_layout(&spec).unwrap();
    let names: Vec<&str> = layout.iter().map(|p| p.name.as_str()).collect();
    for n in [
        "pred.U",
        "pred.V",
        "seg.M",
        "depth.M",
        "last.V",
        "out_seg.U",
        "out_depth.U",
    ] {
        assert_eq!(
            names.iter().filter(|x| **x == n).count(),
            1,
            "{n} declared once"
        );
    }
    assert!(!names.contains(&"seg.U") && !names.contains(&"last.U"));
    let w = random_weights::<f64>(&layout, 5);
    let (deploy, dw) = fold(&spec, &w).unwrap();
    let v = verify_fold(&spec, &w, &deploy, &dw, 2, 1).unwrap();
    assert!(v.passed(), "{:?}", v.worst_output());
    // Four plain heads come out, each of the baseline head's shape.
    assert_eq!(dw["seg.weight"].shape, vec![6, 6, 3, 3]);
    assert_eq!(dw["out_depth.weight"].shape, vec![1, 6, 3, 3]);

    // The spectral init of shared heads reproduces each task's plain kernel.
    let w0 = overparam_fuse::init::init_train_weights(&spec, &Default::default()).unwrap();
    let (_, dw0) = fold(&spec, &w0).unwrap();
    for (node, c) in spec.nodes.iter().filter_map(|n| match &n.op {
        Op::Conv(c) => Some((n.name.as_str(), c)),
        _ => None,
    }) {
        let plain = overparam_fuse::init::plain_kernel(node, &c.shape, 0);
        let folded: Tensor<f64> = dw0[&format!("{node}.weight")].cast();
        // Fresh BN (γ=1, μ=0, σ²=1) scales the kernel by 1/√(1+ε).
        let scale = 1.0 / (1.0f64 + 1e-5).sqrt();
        let err = folded
            .data
            .iter()
            .zip(&plain.data)
            .map(|(a, b)| (a - b * scale).abs())
            .fold(0.0, f64::max);
        assert!(err <= 2e-6 * plain.max_abs(), "{node}: {err:e}");
    }
}

/// The reference conv agrees with a direct evaluation of the cross-correlation formula.
#[test]
#[allow(clippy::needless_range_loop)] // indices mirror the formula
fn reference_conv_matches_the_formula() {
    let mut rng = Rng::new(2);
    let s = ConvShape {
        groups: 2,
        bias: true,
        ..ConvShape::new(4, 6, 3, 2)
    };
    let x: Tensor<f64> = rng.normal_tensor(&[2, 4, 5, 4], 1.0);
    let w: Tensor<f64> = rng.normal_tensor(&s.weight_shape(), 1.0);
    let b: Vec<f64> = (0..6).map(|_| rng.normal()).collect();
    let y = overparam_fuse::exec::conv2d(&x, &w, Some(&b), &s);
    let (ho, wo) = s.out_size(5, 4).unwrap();
    assert_eq!(y.shape, vec![2, 6, ho, wo]);
    for n in 0..2 {
        for o in 0..6 {
            let g = o / 3;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b[o];
                    for ci in 0..2 {
                        for u in 0..3 {
                            for v in 0..3 {
                                let (iy, ix) =
                                    ((oy * 2 + u) as isize - 1, (ox * 2 + v) as isize - 1);
                                if (0..5).contains(&iy) && (0..4).contains(&ix) {
                                    acc += w.data[((o * 2 + ci) * 3 + u) * 3 + v]
                                        * x.data[((n * 4 + g * 2 + ci) * 5 + iy as usize) * 4
                                            + ix as usize];
                                }
                            }
                        }
                    }
                    let got = y.data[((n * 6 + o) * ho + oy) * wo + ox];
                    assert!((got - acc).abs() < 1e-12);
                }
            }
        }
    }
    let _ = run::<f64, overparam_fuse::spec::DeployConv>;
}

/// The same for a 2×3 kernel with stride (1, 2), dilation (2, 1) and pads top 1, left 0,
/// bottom 0, right 2 (what ONNX's asymmetric pads and dilation mean).
#[test]
#[allow(clippy::needless_range_loop)] // indices mirror the formula
fn reference_conv_matches_the_formula_for_any_geometry() {
    let mut rng = Rng::new(3);
    let s = ConvShape {
        in_channels: 3,
        out_channels: 2,
        kernel: [2, 3],
        stride: [1, 2],
        padding: [1, 0, 0, 2],
        groups: 1,
        bias: false,
        dilation: [2, 1],
    };
    let (h, w_) = (6, 7);
    let x: Tensor<f64> = rng.normal_tensor(&[1, 3, h, w_], 1.0);
    let w: Tensor<f64> = rng.normal_tensor(&s.weight_shape(), 1.0);
    let y = overparam_fuse::exec::conv2d(&x, &w, None, &s);
    // H: 6 + 1 − 2·1 − 1 + 1 = 5; W: (7 + 2 − 2 − 1)/2 + 1 = 4.
    let (ho, wo) = s.out_size(h, w_).unwrap();
    assert_eq!((ho, wo), (5, 4));
    assert_eq!(y.shape, vec![1, 2, ho, wo]);
    for o in 0..2 {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = 0.0;
                for ci in 0..3 {
                    for u in 0..2 {
                        for v in 0..3 {
                            let iy = (oy + 2 * u) as isize - 1;
                            let ix = (2 * ox + v) as isize;
                            if (0..h as isize).contains(&iy) && (0..w_ as isize).contains(&ix) {
                                acc += w.data[((o * 3 + ci) * 2 + u) * 3 + v]
                                    * x.data[(ci * h + iy as usize) * w_ + ix as usize];
                            }
                        }
                    }
                }
                let got = y.data[(o * ho + oy) * wo + ox];
                assert!((got - acc).abs() < 1e-12, "{o} {oy} {ox}");
            }
        }
    }
}
