//! QAT through the fold (#23 §2) reproduces in ONNX Runtime: a network of every method is
//! fine-tuned a few steps with fake quantisation (weights, BN's affine parameters and the
//! thresholds all move), folded, and exported INT8 with the learned thresholds written as they
//! are; ONNX Runtime then computes what the QAT model computed, in both encodings.
//!
//! "Within 2 steps of the output scale": the logits are float, so their step is defined as
//! the grid an int8 tensor of the same range would have, max|logit|/127 over the test images.

use overparam_base::Silent;
use overparam_data::loader::Normalize;
use overparam_engine::calib::{Candidate, calibration_batches, collect, plan};
use overparam_engine::export::{
    ActivationEncoding, ExportOptions, Precision, export, nonnegative_tensors, to_bytes,
};
use overparam_engine::runtime::OrtRuntime;
use overparam_fuse::init::random_weights;
use overparam_fuse::layout::train_layout;
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind, fold};
use overparam_train::OpModel;
use overparam_train::qat::{Qat, QatPlan};
use tch::{Device, Kind, Tensor, nn};

const BATCH: usize = 8;

fn batch_tensor(b: &[f32]) -> Tensor {
    Tensor::from_slice(b).reshape([BATCH as i64, 3, 32, 32])
}

/// What a case measured: the largest logit difference in output steps, and how many of the
/// test images' top-1 classes agree.
struct Agreement {
    /// The largest logit difference, and the share of logits within 2 steps.
    max_steps: f64,
    within_2: f64,
    agree: usize,
    images: usize,
    thresholds_moved: usize,
    /// The first block's largest difference: relative to its largest output on the signed
    /// grid, in steps of the conv output's grid in the CPU encoding.
    first_block: f64,
}

fn case(kind: MethodKind, encoding: ActivationEncoding) -> Agreement {
    let spec = build(
        ModelKind::VggSmall,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            method: MethodConfig {
                include_1x1: true,
                ..MethodConfig::new(kind)
            },
            ..ClassifierOptions::new(MethodConfig::new(kind))
        },
    )
    .unwrap();
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let train_set = overparam_data::synth::image_set(64, 1, "train");
    let calib = calibration_batches(&train_set, &norm, 32, BATCH, 0).unwrap();
    // Random weights with randomised BatchNorm statistics, so a wrong fold shows; a few
    // training-mode passes then move the statistics part of the way towards the data's, so
    // the activations keep a trained network's scale instead of growing layer by layer.
    let w = random_weights::<f32>(&train_layout(&spec).unwrap(), 7);
    let w = {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = OpModel::new(&vs.root(), &spec, &w).unwrap();
        for b in calib.iter().cycle().take(3 * calib.len()) {
            tch::no_grad(|| m.forward(&batch_tensor(b), true)).unwrap();
        }
        m.weights().unwrap()
    };
    let (deploy, dw) = fold(&spec, &w).unwrap();
    let hists = collect(&deploy, &dw, &calib, &Silent).unwrap();
    // MSE clips, so the learned thresholds start inside the range of their tensors.
    let start = plan(&hists, Candidate::Mse, encoding);
    let nonneg = nonnegative_tensors(&deploy);
    let qat = Qat::new(
        &spec,
        QatPlan {
            thresholds: start.thresholds.clone(),
            layers: start.layers.clone(),
            unsigned: encoding == ActivationEncoding::UnsignedOffset,
            nonneg: nonneg.clone(),
        },
        Device::Cpu,
        true,
    )
    .unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = OpModel::new(&vs.root(), &spec, &w).unwrap();
    model.set_qat(Some(qat));

    // A few SGD steps on every trainable tensor and every threshold.
    let weights: Vec<Tensor> = model
        .names()
        .filter(|n| model.kind(n).is_some_and(|k| !k.is_buffer()))
        .map(|n| model.var(n).unwrap().shallow_clone())
        .collect();
    let amax: Vec<Tensor> = model
        .qat()
        .unwrap()
        .params()
        .into_iter()
        .map(|(_, t)| t.shallow_clone())
        .collect();
    for b in &calib {
        let y = model.forward(&batch_tensor(b), true).unwrap().remove(0);
        // Targets: the network's own classes (a fine-tune towards what it already predicts,
        // as QAT of a trained network is; random labels would shrink the logits instead).
        let t = y.detach().argmax(1, false);
        let loss = y.cross_entropy_for_logits(&t);
        for p in weights.iter().chain(&amax) {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        tch::no_grad(|| {
            for (group, lr) in [(&weights, 0.01), (&amax, 0.01)] {
                for p in group {
                    let g = p.grad();
                    if g.defined() {
                        let mut p = p.shallow_clone();
                        let _ = p.f_sub_(&(g * lr)).unwrap();
                    }
                }
            }
        });
        model.qat().unwrap().clamp().unwrap();
    }
    let learned = model.qat().unwrap().thresholds().unwrap();
    let thresholds_moved = learned
        .iter()
        .filter(|(k, v)| start.thresholds[*k] != **v)
        .count();

    // Fold the fine-tuned weights; export INT8 with the learned thresholds as they are.
    let (deploy, dw) = fold(&spec, &model.weights().unwrap()).unwrap();
    let mut thresholds = start.thresholds.clone();
    thresholds.extend(learned);
    let mut o = ExportOptions::new(Precision::Int8);
    o.batch = BATCH;
    o.quant = Some(overparam_engine::export::QuantPlan {
        thresholds,
        ..start
    });
    let m = export(&deploy, &dw, &o).unwrap();
    // Every activation scale in the file is the learned threshold's, bit for bit.
    let inits = &m.graph.as_ref().unwrap().initializer;
    let mut scales = 0;
    for (k, v) in &model.qat().unwrap().thresholds().unwrap() {
        let div = if encoding == ActivationEncoding::UnsignedOffset && nonneg.contains(k) {
            255.0
        } else {
            127.0
        };
        let name = format!("{k}_act_scale");
        if let Some(t) = inits.iter().find(|t| t.name.as_deref() == Some(&name)) {
            let raw = t.raw_data.as_deref().unwrap();
            assert_eq!(raw, (v / div).to_le_bytes(), "{kind:?} {encoding:?} `{k}`");
            scales += 1;
        }
    }
    assert!(scales > 0);
    let test = calibration_batches(
        &overparam_data::synth::image_set(64, 2, "test"),
        &norm,
        64,
        BATCH,
        3,
    )
    .unwrap();
    let (want, got) = outputs(&model, &to_bytes(&m), &test);
    let rep = overparam_lab::qat::reproduction(&want, &got, 10);

    // The first block alone (conv, BN, ReLU), where no earlier layer can flip a rounding:
    // QAT and the export agree to fp32 rounding on the signed grid, and within one step of
    // the conv output's grid in the CPU encoding (QLinearConv requantises in integers, with
    // the bias rounded to int32).
    let cut = first_block(&spec);
    let layout: std::collections::BTreeSet<String> = train_layout(&cut)
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let cw: overparam_fuse::Weights = model
        .weights()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| layout.contains(k))
        .collect();
    let (cdeploy, cdw) = fold(&cut, &cw).unwrap();
    let mut cut_thresholds = model.qat().unwrap().thresholds().unwrap();
    cut_thresholds.retain(|k, _| k == "input" || cut.nodes.iter().any(|n| &n.name == k));
    let cut_qat = Qat::new(
        &cut,
        QatPlan {
            thresholds: cut_thresholds.clone(),
            layers: None,
            unsigned: encoding == ActivationEncoding::UnsignedOffset,
            nonneg: nonnegative_tensors(&cdeploy),
        },
        Device::Cpu,
        true,
    )
    .unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut cut_model = OpModel::new(&vs.root(), &cut, &cw).unwrap();
    cut_model.set_qat(Some(cut_qat));
    let mut co = ExportOptions::new(Precision::Int8);
    co.batch = BATCH;
    co.quant = Some(overparam_engine::export::QuantPlan {
        thresholds: cut_thresholds.clone(),
        layers: None,
        ..o.quant.clone().unwrap()
    });
    let (cw_, cg) = outputs(
        &cut_model,
        &to_bytes(&export(&cdeploy, &cdw, &co).unwrap()),
        &test,
    );
    let conv = &cut.nodes[0].name;
    let first_block = cw_
        .iter()
        .zip(&cg)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64))
        / if encoding == ActivationEncoding::UnsignedOffset {
            (cut_thresholds[conv] / 127.0) as f64
        } else {
            cw_.iter().fold(0f32, |m, v| m.max(v.abs())) as f64
        };
    Agreement {
        max_steps: rep.max_steps,
        within_2: rep.within_2_steps,
        agree: (rep.top1_agreement * (want.len() / 10) as f64).round() as usize,
        images: want.len() / 10,
        thresholds_moved,
        first_block,
    }
}

/// The QAT model's eval outputs and the INT8 ONNX's in ONNX Runtime, on the same batches.
fn outputs(model: &OpModel, int8: &[u8], batches: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let mut ort = OrtRuntime::new(int8, Some(1)).unwrap();
    let (mut want, mut got) = (vec![], vec![]);
    for b in batches {
        let y = tch::no_grad(|| model.forward(&batch_tensor(b), false))
            .unwrap()
            .remove(0);
        want.extend(Vec::<f32>::try_from(&y.to_kind(Kind::Float).flatten(0, -1)).unwrap());
        got.extend(ort.run(b).unwrap().remove(0).2);
    }
    (want, got)
}

/// `spec` up to its first ReLU, which becomes the output.
fn first_block(spec: &overparam_fuse::TrainSpec) -> overparam_fuse::TrainSpec {
    let mut cut = spec.clone();
    let relu = cut
        .nodes
        .iter()
        .position(|n| n.name == "features.2")
        .expect("vgg_small's first ReLU");
    cut.nodes.truncate(relu + 1);
    cut.outputs = vec![overparam_fuse::spec::OutputSpec::new("y", "features.2")];
    cut
}

/// Why the whole network agrees only statistically: libtorch's and ONNX Runtime's fp32 convs
/// sum in different orders, so an activation that lands within ~1e-6 of a rounding tie can
/// round to the neighbouring level in one and not the other, and the one-level difference
/// travels on. The first block, where no such flip can happen before the quantised conv,
/// agrees to fp32 rounding; the whole network is held to 2 output steps on 99% of its logits
/// (all of them on the machine this was written on) and 62 of 64 top-1 classes on random,
/// barely separated logits (the trained networks'
/// agreement on the real test split is measured by `overparam qat` and recorded in
/// docs/results/fashion-mnist-int8).
#[test]
fn the_int8_onnx_reproduces_the_qat_model_for_every_method_and_encoding() {
    let mut report = vec![];
    for kind in MethodKind::ALL {
        for encoding in [
            ActivationEncoding::SignedSymmetric,
            ActivationEncoding::UnsignedOffset,
        ] {
            let r = case(kind, encoding);
            report.push(format!(
                "{kind:?} {encoding:?}: first block {:.2e}, logits max {:.2} steps, {:.2}% within 2, top-1 {}/{}, {} thresholds learned",
                r.first_block,
                r.max_steps,
                100.0 * r.within_2,
                r.agree,
                r.images,
                r.thresholds_moved
            ));
            let all = report.join("\n");
            assert!(r.thresholds_moved > 0, "{all}");
            let first = if encoding == ActivationEncoding::UnsignedOffset {
                1.0 + 1e-3
            } else {
                1e-5
            };
            assert!(r.first_block <= first, "{all}");
            assert!(r.within_2 >= 0.99, "{all}");
            assert!(r.agree >= 62, "{all}");
        }
    }
    println!("{}", report.join("\n"));
}

/// `[quant] qat_epochs` in a train config, and `overparam qat` on the finished run: calibrates, fine-tunes with and without fake
/// quantisation, writes the INT8 model with a record whose thresholds are the learned ones
/// (and whose hash is the fine-tuned model's, saved beside it), and reports how ONNX Runtime
/// reproduces the QAT model. Bad requests are refused with nothing written.
#[test]
fn qat_fine_tunes_a_finished_run_and_writes_the_learned_thresholds() {
    #[path = "common/mod.rs"]
    mod common;
    use common::{ok, run, text};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("base.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"base\"\ndir = \"{d}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 0.125\nmethod = {{ kind = \"repvgg\" }}\n[data]\nsynthetic_train = 200\nsynthetic_test = 100\nclasses = 10\n[optim]\nepochs = 1\nbatch_size = 20\nlr = 0.05\n[quant]\nqat_epochs = 1\nencoding = \"cpu\"\n"
        ),
    )
    .unwrap();
    // `[quant] qat_epochs`: training ends with the QAT fine-tune and its INT8 model.
    let t = ok(&run(&["train", "--config", cfg.to_str().unwrap()]));
    assert!(
        t.contains("QAT (1 epoch(s), UnsignedOffset encoding)"),
        "{t}"
    );
    let run_dir = dir.path().join("base");
    assert!(run_dir.join("model.qat.int8.onnx").exists());
    let r = run_dir.to_str().unwrap();
    let small = [
        "--calib-images",
        "40",
        "--heldout-images",
        "20",
        "--batch",
        "20",
    ];
    let mut args = vec!["qat", "--run", r, "--pair", "--json", "--encoding", "cpu"];
    args.extend(small);
    let out = ok(&run(&args));
    let json = &out[out.find('{').unwrap()..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["test_images"], 100);
    assert_eq!(v["encoding"], "unsigned_offset");
    assert!(v["qat"]["steps"].as_u64().unwrap() == 10, "{v}");
    assert!(v["pair"]["steps"].as_u64().unwrap() == 10, "{v}");
    assert!(v["thresholds_moved"].as_u64().unwrap() > 0, "{v}");
    let rep = &v["reproduction"];
    // This 1-epoch model's logits are near-ties, where the class can flip on a machine's
    // rounding (91% top-1 agreement on an AVX2-only EPYC, ≥ 97% on AVX-512 hosts); where the
    // top-1 is decided by more than 4 steps it must never differ.
    assert_eq!(rep["decided_top1_agreement"], 1.0, "{v}");
    assert!(rep["top1_agreement"].as_f64().unwrap() >= 0.8, "{v}");
    assert!(rep["within_2_steps"].as_f64().unwrap() >= 0.99, "{v}");
    let drop = v["int8_drop"].as_f64().unwrap();
    let (q, p) = (
        v["qat"]["onnx_top1_err"].as_f64().unwrap(),
        v["pair"]["onnx_top1_err"].as_f64().unwrap(),
    );
    assert!((drop - (q - p)).abs() < 1e-9);

    // The record: QAT's, from the calibration it started at, of the fine-tuned model saved
    // beside it (export --calib-record reads it back against that checkpoint).
    let model = run_dir.join("model.qat.int8.onnx");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("model.qat.int8.calib.json")).unwrap(),
    )
    .unwrap();
    let qat = &record["qat"];
    assert_eq!(qat["epochs"], 1);
    assert_ne!(record["thresholds"], qat["start"]);
    let deploy = run_dir.join("model.qat.int8.deploy.safetensors");
    let again = dir.path().join("again.onnx");
    let t = ok(&run(&[
        "export",
        deploy.to_str().unwrap(),
        "--precision",
        "int8",
        "--encoding",
        "cpu",
        "--calib-record",
        run_dir.join("model.qat.int8.calib.json").to_str().unwrap(),
        "--batch",
        "20",
        "-o",
        again.to_str().unwrap(),
    ]));
    assert!(t.contains("QAT: thresholds learned over 1 epoch(s)"), "{t}");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&model).unwrap()
    );

    // Refusals: no run there; an unreadable checkpoint (nothing is replaced).
    let before = std::fs::read(&model).unwrap();
    let o = run(&["qat", "--run", dir.path().join("nope").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope"), "{}", text(&o));
    let ckpt = run_dir.join("model.op.safetensors");
    let good = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &good[..good.len() / 2]).unwrap();
    let mut args = vec!["qat", "--run", r, "--encoding", "cpu"];
    args.extend(small);
    let o = run(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("model.op.safetensors"), "{}", text(&o));
    assert_eq!(std::fs::read(&model).unwrap(), before);
    let o = run(&["qat", "--run", r, "--epochs", "0"]);
    assert!(!o.status.success());
}
