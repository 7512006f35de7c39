//! The multi-task network: every method folds to the same plain network, exactly, for all
//! three outputs, and shared SFO heads declare their shared factors once.

use overparam_fuse::fold::deploy_spec;
use overparam_fuse::init::random_weights;
use overparam_fuse::layout::{deploy_layout, param_count, train_layout};
use overparam_fuse::models::{MtlOptions, mtl_net};
use overparam_fuse::verify::verify_fold;
use overparam_fuse::{MethodConfig, MethodKind, fold};

fn mtl(kind: MethodKind, include_1x1: bool) -> overparam_fuse::TrainSpec {
    mtl_net(&MtlOptions {
        width: 0.125,
        height: 36,
        width_px: 44,
        classes: 13,
        method: MethodConfig {
            include_1x1,
            ..MethodConfig::new(kind)
        },
    })
    .unwrap()
}

#[test]
fn every_method_folds_the_mtl_net_exactly_and_deploys_to_the_plain_one() {
    let plain = deploy_spec(&mtl(MethodKind::Plain, false)).unwrap();
    assert_eq!(
        plain
            .outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["segmentation", "depth", "normals"]
    );
    let shapes = plain.infer_shapes().unwrap();
    assert_eq!(
        shapes["heads.segmentation.1"],
        vec![13, 36, 44],
        "full resolution, odd sizes restored by Resize"
    );
    for kind in MethodKind::ALL {
        for include_1x1 in [false, true] {
            let t = mtl(kind, include_1x1);
            let w = random_weights::<f32>(&train_layout(&t).unwrap(), 2);
            let (d, dw) = fold(&t, &w).unwrap();
            assert_eq!(d, plain, "{kind:?}");
            assert_eq!(
                param_count(&deploy_layout(&d)),
                param_count(&deploy_layout(&plain))
            );
            assert_eq!(d.total_macs().unwrap(), plain.total_macs().unwrap());
            let v = verify_fold(&t, &w, &d, &dw, 1, 0).unwrap();
            assert_eq!(v.outputs.len(), 3);
            assert!(
                v.passed(),
                "{kind:?} 1x1={include_1x1}: {:?} {:?}",
                v.worst_block(),
                v.worst_output()
            );
        }
    }
}

#[test]
fn sfo_heads_share_u_and_v_with_per_task_m() {
    let t = mtl(MethodKind::Sfo, true);
    let names: Vec<String> = train_layout(&t)
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    for n in [
        "heads.hidden.U",
        "heads.hidden.V",
        "heads.output.V",
        "heads.segmentation.0.M",
        "heads.depth.0.M",
        "heads.normals.1.U",
    ] {
        assert_eq!(names.iter().filter(|x| *x == n).count(), 1, "{n}");
    }
    assert!(!names.iter().any(|n| n == "heads.depth.0.U"));
    // The spectral init reproduces each task's plain head kernel.
    let w = overparam_fuse::init::init_train_weights(&t, &Default::default()).unwrap();
    let w64 = w
        .iter()
        .map(|(k, v)| (k.clone(), v.cast::<f64>()))
        .collect();
    for task in ["segmentation", "depth", "normals"] {
        for i in 0..2 {
            let node = format!("heads.{task}.{i}");
            let overparam_fuse::spec::Op::Conv(c) = &t.node(&node).unwrap().op else {
                unreachable!()
            };
            let k = overparam_fuse::fold::compose_kernel(&node, c, &w64).unwrap();
            let plain = overparam_fuse::init::plain_kernel(&node, &c.shape, 0);
            assert!(k.max_abs_diff(&plain) <= 1e-5 * plain.max_abs(), "{node}");
        }
    }
}
