//! Exports of every method's folded model: the FP32 ONNX run by ONNX Runtime equals the fuse
//! reference executor, FP16 and INT8 stay close, and every variant passes the ONNX checker.

use overparam_base::Silent;
use std::path::Path;
use std::process::Command;

use overparam_data::loader::Normalize;
use overparam_engine::calib::{Candidate, calibration_batches, collect, plan};
use overparam_engine::export::{ActivationEncoding, ExportOptions, Precision, export, to_bytes};
use overparam_engine::runtime::OrtRuntime;
use overparam_fuse::RandomTensor;
use overparam_fuse::exec::run;
use overparam_fuse::init::random_weights;
use overparam_fuse::layout::train_layout;
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{DeploySpec, MethodConfig, MethodKind, Rng, Tensor, Weights, fold};

fn deploy(model: ModelKind, kind: MethodKind) -> (DeploySpec, Weights) {
    let t = build(
        model,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            ..ClassifierOptions::new(MethodConfig::new(kind))
        },
    )
    .unwrap();
    let w = random_weights::<f32>(&train_layout(&t).unwrap(), 4);
    fold(&t, &w).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64 / scale as f64
}

fn synthetic_set() -> overparam_data::cifar::ImageSet {
    overparam_data::synth::image_set(64, 0, "train")
}

/// Runs `onnx.checker.check_model(full_check=True)` on every file (one Python start-up).
fn check_with_onnx_checker(paths: &[std::path::PathBuf]) {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let o = Command::new(py)
        .args([
            "-c",
            "import onnx,sys\nfor p in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(p), full_check=True)\nprint(len(sys.argv)-1)",
        ])
        .args(paths)
        .output()
        .expect("run the virtualenv's python (scripts/setup.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        paths.len().to_string()
    );
}

#[test]
fn fp32_matches_the_reference_and_every_variant_passes_the_checker() {
    let dir = tempfile::tempdir().unwrap();
    let set = synthetic_set();
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let mut files = vec![];
    for model in [ModelKind::Resnet18Cifar, ModelKind::VggSmall] {
        for kind in MethodKind::ALL {
            let (spec, w) = deploy(model, kind);
            let batch = 2;
            let x: Tensor<f32> = Rng::new(1).normal_tensor(&[batch, 3, 32, 32], 1.0);
            let want = &run(&spec, &w, &x).unwrap()[0].1;

            let mut o = ExportOptions::new(Precision::Fp32);
            o.batch = batch;
            let fp32 = to_bytes(&export(&spec, &w, &o).unwrap());
            let got = OrtRuntime::new(&fp32, Some(1))
                .unwrap()
                .run(&x.data)
                .unwrap();
            assert_eq!(got[0].0, "logits");
            assert_eq!(got[0].1, vec![batch, 10]);
            let r = rel(&want.data, &got[0].2);
            assert!(r <= 1e-4, "{model:?} {kind:?} fp32: {r:e}");

            o.precision = Precision::Fp16;
            let fp16 = to_bytes(&export(&spec, &w, &o).unwrap());
            let got = OrtRuntime::new(&fp16, Some(1))
                .unwrap()
                .run(&x.data)
                .unwrap();
            let r = rel(&want.data, &got[0].2);
            assert!(r <= 3e-2, "{model:?} {kind:?} fp16: {r:e}");

            let batches = calibration_batches(&set, &norm, 32, batch, 0).unwrap();
            let hists = collect(&spec, &w, &batches, &Silent).unwrap();
            let mut variants = vec![("fp32", fp32), ("fp16", fp16)];
            for enc in [
                ActivationEncoding::SignedSymmetric,
                ActivationEncoding::UnsignedOffset,
            ] {
                o.precision = Precision::Int8;
                o.quant = Some(plan(&hists, Candidate::Entropy, enc));
                let int8 = to_bytes(&export(&spec, &w, &o).unwrap());
                let out = OrtRuntime::new(&int8, Some(1))
                    .unwrap()
                    .run(&x.data)
                    .unwrap();
                assert!(out[0].2.iter().all(|v| v.is_finite()));
                variants.push(("int8", int8));
            }
            for (i, (name, bytes)) in variants.into_iter().enumerate() {
                let p = dir
                    .path()
                    .join(format!("{model:?}-{kind:?}-{name}-{i}.onnx"));
                std::fs::write(&p, bytes).unwrap();
                files.push(p);
            }
        }
    }
    check_with_onnx_checker(&files);
}

/// A folded vgg_small with calibration histograms, its FP32 ONNX and that model's output on
/// the first calibration batch.
struct Int8Case {
    spec: DeploySpec,
    w: Weights,
    batches: Vec<Vec<f32>>,
    hists: std::collections::BTreeMap<String, overparam_engine::calib::Histogram>,
    fp32: Vec<u8>,
    want: Vec<f32>,
}

fn int8_case(kind: MethodKind) -> Int8Case {
    let (spec, w) = deploy(ModelKind::VggSmall, kind);
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let batches = calibration_batches(&synthetic_set(), &norm, 16, 1, 0).unwrap();
    let hists = collect(&spec, &w, &batches, &Silent).unwrap();
    let fp32 = to_bytes(&export(&spec, &w, &ExportOptions::new(Precision::Fp32)).unwrap());
    let want = OrtRuntime::new(&fp32, Some(1))
        .unwrap()
        .run(&batches[0])
        .unwrap()
        .remove(0)
        .2;
    Int8Case {
        spec,
        w,
        batches,
        hists,
        fp32,
        want,
    }
}

/// Both INT8 encodings stay close to FP32; the CPU encoding also quantises conv outputs (so
/// ONNX Runtime can run QLinearConv) and uses the full uint8 range on post-ReLU tensors.
#[test]
fn int8_encodings_track_fp32() {
    let Int8Case {
        spec,
        w,
        batches,
        hists,
        want,
        ..
    } = int8_case(MethodKind::Plain);
    let mut o = ExportOptions::new(Precision::Int8);
    for enc in [
        ActivationEncoding::SignedSymmetric,
        ActivationEncoding::UnsignedOffset,
    ] {
        o.quant = Some(plan(&hists, Candidate::Max, enc));
        let m = export(&spec, &w, &o).unwrap();
        let quantised_outputs = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| {
                n.op_type.as_deref() == Some("QuantizeLinear") && n.input[0] == "features.0"
            })
            .count();
        assert_eq!(
            quantised_outputs,
            (enc == ActivationEncoding::UnsignedOffset) as usize,
            "{enc:?}"
        );
        let got = OrtRuntime::new(&to_bytes(&m), Some(1))
            .unwrap()
            .run(&batches[0])
            .unwrap()
            .remove(0)
            .2;
        let r = rel(&want, &got);
        assert!(r < 0.1, "{enc:?}: {r:e}");
    }
}

#[test]
fn bad_inputs_are_refused() {
    let (spec, mut w) = deploy(ModelKind::VggSmall, MethodKind::Sfo);
    let set = synthetic_set();
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    // INT8 without scales.
    let e = export(&spec, &w, &ExportOptions::new(Precision::Int8))
        .unwrap_err()
        .to_string();
    assert!(e.contains("calibrated"), "{e}");
    // A calibration batch of the wrong shape.
    let mut b = calibration_batches(&set, &norm, 4, 2, 0).unwrap();
    b[1].pop();
    let e = collect(&spec, &w, &b, &Silent).unwrap_err().to_string();
    assert!(e.contains("does not match the model input"), "{e}");
    // NaN weights.
    w.get_mut("features.0.weight").unwrap().data[0] = f32::NAN;
    let e = export(&spec, &w, &ExportOptions::new(Precision::Fp32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("features.0.weight"), "{e}");
}

/// The multi-task net's Resize (nearest, PyTorch semantics) and L2Norm export as ONNX that
/// ONNX Runtime runs exactly like the reference, for all three outputs.
#[test]
fn mtl_exports_match_the_reference() {
    use overparam_fuse::models::{MtlOptions, mtl_net};
    for kind in [MethodKind::Plain, MethodKind::Sfo] {
        let t = mtl_net(&MtlOptions {
            width: 0.125,
            height: 36,
            width_px: 44,
            classes: 13,
            method: MethodConfig::new(kind),
        })
        .unwrap();
        let w = random_weights::<f32>(&train_layout(&t).unwrap(), 6);
        let (spec, dw) = fold(&t, &w).unwrap();
        let x: Tensor<f32> = Rng::new(2).normal_tensor(&[1, 3, 36, 44], 1.0);
        let want = run(&spec, &dw, &x).unwrap();
        for p in [Precision::Fp32, Precision::Fp16] {
            let m = to_bytes(&export(&spec, &dw, &ExportOptions::new(p)).unwrap());
            let got = OrtRuntime::new(&m, Some(1)).unwrap().run(&x.data).unwrap();
            for ((name, r), (gname, shape, g)) in want.iter().zip(&got) {
                assert_eq!(name, gname);
                assert_eq!(&r.shape, shape);
                let tol = if p == Precision::Fp32 { 1e-4 } else { 3e-2 };
                assert!(
                    rel(&r.data, g) <= tol,
                    "{kind:?} {p:?} {name}: {:e}",
                    rel(&r.data, g)
                );
            }
        }
    }
}

/// Partial INT8: layers left out of the plan run in the plan's kept precision. FP16 (what
/// TensorRT's encoding keeps) puts FP16 weights and casts around exactly those layers; the
/// model stays close to FP32, closer than full INT8, and passes the checker.
#[test]
fn partial_int8_keeps_the_chosen_layers_in_fp16() {
    use overparam_engine::export::{KeptPrecision, quantizable_layers};
    use overparam_engine::pb::tensor_proto::DataType;
    let Int8Case {
        spec,
        w,
        batches,
        hists,
        fp32,
        want,
    } = int8_case(MethodKind::Repvgg);
    let layers: Vec<String> = quantizable_layers(&spec).into_iter().map(|l| l.0).collect();
    let kept = [layers[0].clone(), layers[layers.len() - 1].clone()];
    let mut p = plan(
        &hists,
        Candidate::Entropy,
        ActivationEncoding::SignedSymmetric,
    );
    assert_eq!(
        p.kept,
        KeptPrecision::Fp16,
        "TensorRT's encoding keeps FP16"
    );
    p.layers = Some(
        layers
            .iter()
            .filter(|l| !kept.contains(l))
            .cloned()
            .collect(),
    );
    let mut o = ExportOptions::new(Precision::Int8);
    o.quant = Some(p.clone());
    let m = export(&spec, &w, &o).unwrap();
    let g = m.graph.as_ref().unwrap();
    let dtype = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .and_then(|t| t.data_type)
    };
    for l in &layers {
        let weight = format!("{l}.weight");
        if kept.contains(l) {
            assert_eq!(dtype(&weight), Some(DataType::Float16 as i32), "{l}");
            assert_eq!(dtype(&format!("{l}.bias")), Some(DataType::Float16 as i32));
            assert!(dtype(&format!("{weight}_quantized")).is_none(), "{l}");
        } else {
            assert!(dtype(&weight).is_none(), "{l} has a float weight");
            assert_eq!(
                dtype(&format!("{weight}_quantized")),
                Some(DataType::Int8 as i32)
            );
        }
    }
    let casts = g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Cast"))
        .count();
    assert_eq!(
        casts,
        2 * kept.len(),
        "one cast in and one out per kept layer"
    );
    let run_model = |bytes: &[u8]| {
        OrtRuntime::new(bytes, Some(1))
            .unwrap()
            .run(&batches[0])
            .unwrap()
            .remove(0)
            .2
    };
    let partial = to_bytes(&m);
    // The TensorRT execution provider enables exactly the precisions the graph uses.
    use overparam_engine::runtime::graph_precisions;
    assert_eq!(graph_precisions(&partial).unwrap(), (true, true));
    assert_eq!(graph_precisions(&fp32).unwrap(), (false, false));
    assert!(graph_precisions(b"not onnx at all").is_err());
    let r_partial = rel(&want, &run_model(&partial));
    o.quant = Some(plan(
        &hists,
        Candidate::Entropy,
        ActivationEncoding::SignedSymmetric,
    ));
    let r_full = rel(
        &want,
        &run_model(&to_bytes(&export(&spec, &w, &o).unwrap())),
    );
    assert!(r_partial < 0.1, "{r_partial:e}");
    assert!(
        r_partial < r_full,
        "partial {r_partial:e} vs full {r_full:e}"
    );
    // The CPU encoding keeps FP32: no FP16 anywhere.
    let mut p32 = plan(
        &hists,
        Candidate::Entropy,
        ActivationEncoding::UnsignedOffset,
    );
    assert_eq!(p32.kept, KeptPrecision::Fp32);
    p32.layers = p.layers.clone();
    o.quant = Some(p32);
    let m32 = export(&spec, &w, &o).unwrap();
    let g32 = m32.graph.as_ref().unwrap();
    assert!(
        g32.initializer
            .iter()
            .all(|t| t.data_type != Some(DataType::Float16 as i32))
    );
    let dir = tempfile::tempdir().unwrap();
    let files = [
        dir.path().join("partial16.onnx"),
        dir.path().join("partial32.onnx"),
    ];
    std::fs::write(&files[0], &partial).unwrap();
    std::fs::write(&files[1], to_bytes(&m32)).unwrap();
    check_with_onnx_checker(&files);
}

/// A 1-channel 28×28 classifier (the MNIST family) exports, calibrates on 1-channel images and
/// is evaluated per precision; a 3-channel set for it is refused, not silently misread.
#[test]
fn one_channel_models_export_calibrate_and_evaluate() {
    use overparam_engine::accuracy::evaluate;
    use overparam_engine::quant::{Quantization, calibrate};
    let (spec, dw) = one_channel_model(MethodKind::Sfo, 4);
    let set = overparam_data::idx::synthetic_set(40, 28, 10, 2, "test");
    let norm = Quantization::default().normalization(&spec).unwrap();
    assert_eq!(norm.mean, [0.3]);
    let mut o = ExportOptions::new(Precision::Fp32);
    o.batch = 8;
    let fp32 = to_bytes(&export(&spec, &dw, &o).unwrap());
    let top = evaluate(&fp32, &set, &norm).unwrap();
    assert_eq!(top.seen, 40);
    // The ONNX model agrees with the reference executor on a prepared 1-channel batch.
    let batches = calibration_batches(&set, &norm, 8, 8, 0).unwrap();
    let x = Tensor::new(vec![8, 1, 28, 28], batches[0].clone());
    let want = run(&spec, &dw, &x).unwrap().remove(0).1;
    let got = OrtRuntime::new(&fp32, None)
        .unwrap()
        .run(&batches[0])
        .unwrap()
        .remove(0)
        .2;
    assert!(rel(&want.data, &got) < 1e-4);
    let q = Quantization {
        calibrator: overparam_engine::calib::Calibrator::Entropy,
        images: 32,
        ..Default::default()
    };
    let c = calibrate(&spec, &dw, &set, &q, 8, &Silent).unwrap();
    assert_eq!(c.record.images, 32);
    assert!(c.record.choice.values().all(|r| *r == Candidate::Entropy));
    o.precision = Precision::Int8;
    o.quant = Some(c.plan);
    let int8 = to_bytes(&export(&spec, &dw, &o).unwrap());
    assert_eq!(evaluate(&int8, &set, &norm).unwrap().seen, 40);
    // CIFAR images for a 1-channel model: refused with both shapes named.
    let cifar = synthetic_set();
    let e = evaluate(&fp32, &cifar, &norm).unwrap_err().to_string();
    assert!(e.contains("3×32×32") && e.contains("1×28×28"), "{e}");
}

/// The CPU encoding quantises conv outputs so ONNX Runtime runs QLinearConv, but not a conv
/// that is a model output (the multi-task heads): rounding the prediction itself to 8 bits and
/// clipping it at a calibrated threshold wrecked the depth head (abs error 0.84 → 3.36 m in
/// the demo pipeline). Every other conv output keeps its Q/DQ.
#[test]
fn cpu_encoding_leaves_output_convs_in_float() {
    use overparam_fuse::models::{MtlOptions, mtl_net};
    use overparam_fuse::spec::Op;
    let t = mtl_net(&MtlOptions {
        width: 0.125,
        height: 36,
        width_px: 44,
        classes: 13,
        method: MethodConfig::new(MethodKind::Plain),
    })
    .unwrap();
    let w = random_weights::<f32>(&train_layout(&t).unwrap(), 6);
    let (spec, dw) = fold(&t, &w).unwrap();
    let x: Tensor<f32> = Rng::new(2).normal_tensor(&[1, 3, 36, 44], 1.0);
    let hists = collect(&spec, &dw, std::slice::from_ref(&x.data), &Silent).unwrap();
    let mut o = ExportOptions::new(Precision::Int8);
    o.quant = Some(plan(
        &hists,
        Candidate::Max,
        ActivationEncoding::UnsignedOffset,
    ));
    let m = export(&spec, &dw, &o).unwrap();
    let quantised: Vec<&str> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("QuantizeLinear"))
        .map(|n| n.input[0].as_str())
        .collect();
    let outputs: Vec<&str> = spec.outputs.iter().map(|o| o.node.as_str()).collect();
    let convs: Vec<&str> = spec
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_)))
        .map(|n| n.name.as_str())
        .collect();
    let mut output_convs = 0;
    for c in &convs {
        if outputs.contains(c) {
            output_convs += 1;
            assert!(!quantised.contains(c), "output conv `{c}` was quantised");
        } else {
            assert!(quantised.contains(c), "inner conv `{c}` lost its Q/DQ");
        }
    }
    assert!(output_convs > 0, "the multi-task net's heads end in convs");
    // And it still runs.
    OrtRuntime::new(&to_bytes(&m), Some(1))
        .unwrap()
        .run(&x.data)
        .unwrap();
}

/// Auto calibration: the rule it keeps per tensor gives an INT8 model whose outputs on the
/// held-out images are at least as close to FP32 as those of the best single rule, measured
/// here independently of the library; the held-out images are not calibration images; and
/// the record says which rule each tensor got.
#[test]
fn auto_calibration_is_never_worse_than_the_best_single_rule_on_held_out_images() {
    use overparam_engine::calib::{AUTO_CANDIDATES, seeded_batches};
    use overparam_engine::quant::{CalibRecord, Quantization, calibrate, model_sha256};
    let (spec, dw) = one_channel_model(MethodKind::Plain, 9);
    let set = overparam_data::idx::synthetic_set(96, 28, 10, 3, "train");
    let q = Quantization {
        images: 48,
        heldout: 32,
        ..Default::default()
    };
    let c = calibrate(&spec, &dw, &set, &q, 16, &Silent).unwrap();
    let auto = c
        .record
        .auto
        .clone()
        .expect("auto records its measurements");
    assert_eq!((c.record.images, auto.heldout_images), (48, 32));
    assert_eq!(auto.uniform.len(), AUTO_CANDIDATES.len());
    assert_eq!(c.record.choice.len(), c.plan.thresholds.len());
    let best_uniform = auto
        .uniform
        .iter()
        .map(|u| u.1)
        .fold(f64::INFINITY, f64::min);
    assert!(
        auto.error <= best_uniform,
        "{} > {best_uniform}",
        auto.error
    );

    // The same measurement, made here: normalised squared error of the logits on the
    // held-out images (positions 48..80 of the seeded draw).
    let norm = q.normalization(&spec).unwrap();
    let calib = seeded_batches(&set, &norm, 0..48, 16, 0).unwrap();
    let heldout = seeded_batches(&set, &norm, 48..80, 16, 0).unwrap();
    assert!(
        calib.iter().all(|b| !heldout.contains(b)),
        "held-out images were calibrated on"
    );
    let outputs = |quant: Option<overparam_engine::export::QuantPlan>| -> Vec<f32> {
        let mut o = ExportOptions::new(if quant.is_some() {
            Precision::Int8
        } else {
            Precision::Fp32
        });
        o.batch = 16;
        o.quant = quant;
        let mut rt = OrtRuntime::new(&to_bytes(&export(&spec, &dw, &o).unwrap()), None).unwrap();
        heldout
            .iter()
            .flat_map(|b| rt.run(b).unwrap().remove(0).2)
            .collect()
    };
    let fp32 = outputs(None);
    let mean = fp32.iter().map(|v| *v as f64).sum::<f64>() / fp32.len() as f64;
    let spread: f64 = fp32.iter().map(|v| (*v as f64 - mean).powi(2)).sum();
    let err = |got: &[f32]| -> f64 {
        got.iter()
            .zip(&fp32)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / spread
    };
    let chosen = err(&outputs(Some(c.plan.clone())));
    assert!(
        (chosen - auto.error).abs() <= 1e-6 * chosen.max(1e-30),
        "{chosen} vs {}",
        auto.error
    );
    let start = overparam_engine::calib::plan(&c.hists, auto.start, q.encoding);
    assert!(chosen <= err(&outputs(Some(start))));

    // The record round-trips, belongs to this model, and is refused for another.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("m.calib.json");
    std::fs::write(&path, c.record.to_json().unwrap()).unwrap();
    let back = CalibRecord::read(&path, &spec, &dw).unwrap();
    assert_eq!(back, c.record);
    assert_eq!(back.model_sha256, model_sha256(&spec, &dw));
    let mut other = dw.clone();
    other.values_mut().next().unwrap().data[0] += 1.0;
    let e = CalibRecord::read(&path, &spec, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m.calib.json") && e.contains("another model"),
        "{e}"
    );
    let old = c
        .record
        .to_json()
        .unwrap()
        .replace("\"version\": 2", "\"version\": 1");
    std::fs::write(&path, old).unwrap();
    let e = CalibRecord::read(&path, &spec, &dw)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("version 1") && e.contains("calibrate again"),
        "{e}"
    );
}

/// A 1-channel 28×28 vgg_small at width 0.125 (the MNIST family) with random weights, folded,
/// recording the normalisation mean 0.3, std 0.35.
fn one_channel_model(
    method: MethodKind,
    seed: u64,
) -> (overparam_fuse::DeploySpec, overparam_fuse::Weights) {
    use overparam_fuse::spec::Normalization;
    let t = build(
        ModelKind::VggSmall,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            image_size: 28,
            in_channels: 1,
            ..ClassifierOptions::new(MethodConfig::new(method))
        },
    )
    .unwrap();
    let w = random_weights::<f32>(&train_layout(&t).unwrap(), seed);
    let (mut spec, dw) = fold(&t, &w).unwrap();
    spec.input.normalize = Some(Normalization {
        mean: vec![0.3],
        std: vec![0.35],
    });
    (spec, dw)
}
