//! Deployment from the command line: export refusals, the FP32 ONNX against the tch eval
//! forward, latency budgets, and TensorRT builds through a stand-in trtexec.

mod common;
use overparam_fuse::RandomTensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_overparam"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn deploy(dir: &Path, method: &str) -> (PathBuf, PathBuf) {
    let op = dir.join(format!("{method}.op.safetensors"));
    let d = dir.join(format!("{method}.deploy.safetensors"));
    let o = run(
        &[
            "init",
            "--model",
            "vgg_small",
            "--width",
            "0.25",
            "--method",
            method,
            "--random-bn",
            "-o",
            op.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &["fuse", op.to_str().unwrap(), "-o", d.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    (op, d)
}

#[test]
fn export_refuses_train_checkpoints_and_writes_valid_models() {
    let dir = tempfile::tempdir().unwrap();
    let (op, d) = deploy(dir.path(), "repvgg");
    let out = dir.path().join("m.onnx");
    std::fs::write(&out, b"old").unwrap();
    let o = run(
        &["export", op.to_str().unwrap(), "-o", out.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("fold it first"), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    // A model that records no normalisation cannot be calibrated until it is given.
    let ds = d.to_str().unwrap();
    let os = out.to_str().unwrap();
    let o = run(&["export", ds, "--precision", "int8", "-o", os], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("records no input normalisation")
            && text(&o).contains("--mean and --std"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let norm = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"];
    for p in ["fp32", "fp16", "int8"] {
        let mut args = vec!["export", ds, "--precision", p, "-o", os];
        if p == "int8" {
            args.extend(norm);
        }
        let o = run(&args, &[]);
        assert!(o.status.success(), "{p}: {}", text(&o));
        if p == "int8" {
            assert!(
                text(&o).contains("synthetic"),
                "says it calibrated on synthetic data"
            );
            assert!(text(&o).contains("auto calibration"), "{}", text(&o));
        }
    }
    // The record: typed, versioned, of this model, auto by default with a rule per tensor.
    let record = out.with_extension("calib.json");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(r["version"], 2);
    assert_eq!(r["calibrator"], "auto");
    assert_eq!(r["model_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(r["normalization"]["source"], "flags");
    let thresholds = r["thresholds"].as_object().unwrap();
    assert_eq!(r["choice"].as_object().unwrap().len(), thresholds.len());
    assert_eq!(r["auto"]["uniform"].as_array().unwrap().len(), 6);
    // Exported again from the record, at another batch and encoding: the same thresholds,
    // no calibration.
    let again = dir.path().join("again.onnx");
    let o = run(
        &[
            "export",
            ds,
            "--precision",
            "int8",
            "--calib-record",
            record.to_str().unwrap(),
            "--batch",
            "2",
            "--encoding",
            "cpu",
            "-o",
            again.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("synthetic"), "{}", text(&o));
    let r2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.with_extension("calib.json")).unwrap())
            .unwrap();
    assert_eq!(r2["thresholds"], r["thresholds"]);
    assert_eq!(r2["encoding"], "unsigned_offset");
    // Calibration images of another size and channel count (1×28×28 IDX for a 3×32×32
    // model) are refused with both shapes named, and nothing is written.
    let idx = dir.path().join("idx");
    std::fs::create_dir(&idx).unwrap();
    for split in ["train", "t10k"] {
        let n = 20u32;
        let mut images = [0x0803u32, n, 28, 28].map(u32::to_be_bytes).concat();
        images.extend((0..n * 28 * 28).map(|i| (i % 251) as u8));
        std::fs::write(idx.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
        let mut labels = [0x0801u32, n].map(u32::to_be_bytes).concat();
        labels.extend((0..n).map(|i| (i % 10) as u8));
        std::fs::write(idx.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
    }
    let fresh = dir.path().join("fresh.onnx");
    let mut args = vec![
        "export",
        ds,
        "--precision",
        "int8",
        "--calib",
        idx.to_str().unwrap(),
    ];
    args.extend(norm);
    args.extend(["-o", fresh.to_str().unwrap()]);
    let o = run(&args, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("1×28×28") && text(&o).contains("3×32×32"),
        "{}",
        text(&o)
    );
    assert!(!fresh.exists() && !fresh.with_extension("calib.json").exists());
    // A percentile outside (0, 100] is a usage error naming the flag.
    let o = run(
        &[
            "export",
            ds,
            "--precision",
            "int8",
            "--percentile",
            "0",
            "-o",
            os,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--percentile") && text(&o).contains("(0, 100]"),
        "{}",
        text(&o)
    );
}

/// Item 4: the FP32 ONNX through ONNX Runtime equals the tch eval forward of the
/// overparameterised model (≤ 1e-4 relative), for the methods with extra training structure.
#[test]
fn onnx_runtime_matches_the_tch_eval_forward() {
    use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
    use overparam_engine::runtime::OrtRuntime;
    use overparam_fuse::checkpoint;
    let dir = tempfile::tempdir().unwrap();
    for method in ["repvgg", "sfo", "fnl", "qarepvgg"] {
        let (op, d) = deploy(dir.path(), method);
        let (spec, w) = checkpoint::load_train(&op).unwrap();
        let (dspec, dw) = checkpoint::load_deploy(&d).unwrap();
        let mut o = ExportOptions::new(Precision::Fp32);
        o.batch = 2;
        let mut rt =
            OrtRuntime::new(&to_bytes(&export(&dspec, &dw, &o).unwrap()), Some(1)).unwrap();
        let x: overparam_fuse::Tensor<f32> =
            overparam_fuse::Rng::new(3).normal_tensor(&[2, 3, 32, 32], 1.0);
        let got = rt.run(&x.data).unwrap().remove(0).2;
        let model = overparam_train::OpModel::new(
            &tch::nn::VarStore::new(tch::Device::Cpu).root(),
            &spec,
            &w,
        )
        .unwrap();
        let xt = tch::Tensor::from_slice(&x.data).reshape([2, 3, 32, 32]);
        let y = tch::no_grad(|| model.forward(&xt, false))
            .unwrap()
            .remove(0);
        let want = Vec::<f32>::try_from(&y.flatten(0, -1)).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff / scale <= 1e-4, "{method}: {:e}", diff / scale);
    }
}

#[test]
fn latency_bench_reports_percentiles_and_enforces_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = deploy(dir.path(), "plain");
    let o = run(
        &[
            "bench",
            d.to_str().unwrap(),
            "--iters",
            "20",
            "--warmup",
            "2",
            "--json",
            "--budget-ms",
            "10000",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["p50_ms"].as_f64().unwrap() <= v["p99_ms"].as_f64().unwrap());
    assert_eq!(v["within_budget"], true);
    assert!(v["runtime"].as_str().unwrap().contains("1.31.1"));
    let o = run(
        &[
            "bench",
            d.to_str().unwrap(),
            "--iters",
            "5",
            "--warmup",
            "1",
            "--budget-ms",
            "0.000001",
            "--enforce",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("OVER"));
    // ONNX Runtime's TensorRT execution provider: the CPU wheel lacks it, and says so.
    let o = run(&["bench", d.to_str().unwrap(), "--runtime", "ort-trt"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("built without the TensorRT execution provider")
            && text(&o).contains("onnxruntime-gpu"),
        "{}",
        text(&o)
    );
}

/// A stand-in trtexec (a shell script printing TensorRT 10.3's banner and device lines, and
/// writing the plan) checks the flags, the manifest, and the refusal of a mismatched plan.
/// One scenario from build to refusal, so it stays one test.
#[cfg(unix)]
#[test]
fn trt_builds_write_manifests_and_mismatched_plans_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = deploy(dir.path(), "plain");
    let onnx = dir.path().join("m.onnx");
    assert!(
        run(
            &[
                "export",
                d.to_str().unwrap(),
                "--precision",
                "fp16",
                "-o",
                onnx.to_str().unwrap()
            ],
            &[]
        )
        .status
        .success()
    );
    let args_log = dir.path().join("args.txt");
    let fake = dir.path().join("trtexec");
    std::fs::write(
        &fake,
        format!(
            r#"#!/bin/sh
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec $*"
echo "$*" >> {log}
echo "[I] Selected Device: Orin"
echo "[I] Compute Capability: 8.7"
echo "[I] TensorRT version: 10.3.0"
for a in "$@"; do
  case "$a" in
    --saveEngine=*) echo plan > "${{a#--saveEngine=}}" ;;
    --loadEngine=*) echo "[I] Latency: min = 1.0 ms, max = 2.0 ms, mean = 1.2 ms, median = 1.1 ms, percentile(90%) = 1.5 ms, percentile(95%) = 1.6 ms, percentile(99%) = 1.9 ms"
                    echo "[I] H2D Latency: min = 0.1 ms, max = 0.2 ms, mean = 0.15 ms, median = 0.1 ms"
                    echo "[I] GPU Compute Time: min = 0.8 ms, max = 1.5 ms, mean = 0.9 ms, median = 0.9 ms"
                    echo "[I] D2H Latency: min = 0.01 ms, max = 0.02 ms, mean = 0.015 ms, median = 0.01 ms" ;;
  esac
done
"#,
            log = args_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let smi = dir.path().join("nvidia-smi");
    let write_smi = |gpu: &str| {
        std::fs::write(&smi, format!("#!/bin/sh\necho '{gpu}'\n")).unwrap();
        std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let env = [
        ("TRTEXEC", fake.to_str().unwrap()),
        ("NVIDIA_SMI", smi.to_str().unwrap()),
    ];
    let plan = dir.path().join("m.plan");
    let o = run(
        &[
            "engine",
            "build",
            onnx.to_str().unwrap(),
            "--precision",
            "fp16",
            "-o",
            plan.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let args = std::fs::read_to_string(&args_log).unwrap();
    assert!(
        args.contains("--stronglyTyped")
            && args.contains("--timingCacheFile=")
            && !args.contains("--fp16"),
        "{args}"
    );
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("m.plan.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["gpu"], "Orin");
    assert_eq!(m["compute_capability"], "8.7");
    assert_eq!(m["tensorrt"], "10.3.0");
    assert_eq!(m["input_shapes"][0][1], serde_json::json!([1, 3, 32, 32]));
    assert_eq!(m["onnx_sha256"].as_str().unwrap().len(), 64);

    write_smi("Orin, 8.7");
    let o = run(
        &[
            "bench",
            plan.to_str().unwrap(),
            "--runtime",
            "trt",
            "--json",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["p99_ms"].as_f64(), v["compute_ms"].as_f64()),
        (Some(1.9), Some(0.9))
    );

    write_smi("NVIDIA A100-SXM4-80GB, 8.0");
    let o = run(&["bench", plan.to_str().unwrap(), "--runtime", "trt"], &env);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("refusing to run") && text(&o).contains("Orin"),
        "{}",
        text(&o)
    );

    // Without trtexec, the command says what is missing.
    let o = run(
        &[
            "engine",
            "build",
            onnx.to_str().unwrap(),
            "-o",
            plan.to_str().unwrap(),
        ],
        &[("TRTEXEC", "/nonexistent"), ("PATH", "/usr/bin:/bin")],
    );
    assert!(
        !o.status.success() && text(&o).contains("trtexec was not found"),
        "{}",
        text(&o)
    );

    // The native builder and runtime need the `tensorrt` feature; this build says so.
    let before = std::fs::read(&plan).unwrap();
    for args in [
        vec![
            "engine",
            "build",
            onnx.to_str().unwrap(),
            "--native",
            "-o",
            plan.to_str().unwrap(),
        ],
        vec!["bench", plan.to_str().unwrap(), "--runtime", "trt-native"],
    ] {
        let o = run(&args, &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("--features tensorrt"), "{}", text(&o));
    }
    assert_eq!(
        std::fs::read(&plan).unwrap(),
        before,
        "the plan is untouched"
    );
}

/// `engine accuracy` on a trained RepVGG model: the three precisions, the sensitivity scan,
/// and a partial-INT8 model written with its calibration record; `export --keep` keeps the
/// named layers in FP16 and refuses names the model does not have.
#[test]
fn accuracy_scan_writes_partial_int8_models() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"r\"\ndir = \"{}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 0.125\nmethod = {{ kind = \"repvgg\" }}\n[data]\nsynthetic_train = 200\nsynthetic_test = 100\n[optim]\nepochs = 1\nbatch_size = 20\nlr = 0.05\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = run(&["train", "--config", cfg.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let d = dir.path().join("r/model.deploy.safetensors");
    let data = dir.path().join("_data/synth-cifar100-200-100-seed0");
    let partial = dir.path().join("partial.onnx");
    let o = run(
        &[
            "engine",
            "accuracy",
            d.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--encoding",
            "trt",
            "--calib-images",
            "40",
            "--batch",
            "20",
            "--sensitivity",
            "--budget",
            "100",
            "--partial-output",
            partial.to_str().unwrap(),
        ],
        &[],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in ["fp32", "fp16", "int8", "INT8 sensitivity", "kept in FP16"] {
        assert!(t.contains(want), "{want}: {t}");
    }
    assert!(partial.exists());
    let calib: serde_json::Value =
        serde_json::from_slice(&std::fs::read(partial.with_extension("calib.json")).unwrap())
            .unwrap();
    assert_eq!(calib["kept_precision"], "fp16");

    let out = dir.path().join("keep.onnx");
    let export = |keep: &str| {
        run(
            &[
                "export",
                d.to_str().unwrap(),
                "--precision",
                "int8",
                "--calib",
                data.to_str().unwrap(),
                "--calib-images",
                "40",
                "--keep",
                keep,
                "-o",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let o = export("features.0,fc");
    assert!(o.status.success(), "{}", text(&o));
    let calib: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("calib.json")).unwrap()).unwrap();
    assert_eq!(
        calib["kept_layers"],
        serde_json::json!(["fc", "features.0"])
    );
    assert_eq!(calib["kept_precision"], "fp16");
    let before = std::fs::read(&out).unwrap();
    let o = export("features.0,no_such_layer");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("`no_such_layer` is not a conv or linear layer"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the old model is kept"
    );
}

/// A one-node (Relu) ONNX model whose input `x` is declared `dims`: `Some(n)` a static size,
/// `None` a symbolic one; `shape: None` leaves the rank unknown.
fn relu_onnx(path: &Path, dims: Option<&[Option<i64>]>) {
    use overparam_engine::onnx::{IR_VERSION, OPSET, node};
    use overparam_engine::pb::{
        GraphProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
        tensor_proto::DataType, tensor_shape_proto, type_proto,
    };
    let info = |name: &str| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: dims.map(|d| TensorShapeProto {
                    dim: d
                        .iter()
                        .enumerate()
                        .map(|(i, v)| tensor_shape_proto::Dimension {
                            value: Some(match v {
                                Some(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                                None => {
                                    tensor_shape_proto::dimension::Value::DimParam(format!("d{i}"))
                                }
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        graph: Some(GraphProto {
            name: Some("relu".into()),
            node: vec![node("Relu", "relu", &["x"], &["y"], vec![])],
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, prost::Message::encode_to_vec(&m)).unwrap();
}

/// `bench` on models it cannot run, and on flags that do nothing: each refused with a message
/// naming the file (and the input), never a panic, an abort or a report of nothing.
#[test]
fn bench_refuses_inputs_and_flags_it_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let bench = |model: &Path, extra: &[&str]| {
        let mut args = vec!["bench", model.to_str().unwrap(), "--iters", "2"];
        args.extend(["--warmup", "1"]);
        args.extend(extra);
        run(&args, &[])
    };
    let refused = |o: &Output, needles: &[&str]| {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        for n in needles {
            assert!(text(o).contains(n), "wants {n}: {}", text(o));
        }
        assert!(!text(o).contains("panicked"), "{}", text(o));
    };
    // Scalar and unknown-rank inputs (used to index out of bounds).
    relu_onnx(&p("scalar.onnx"), Some(&[]));
    relu_onnx(&p("norank.onnx"), None);
    for m in ["scalar.onnx", "norank.onnx"] {
        refused(&bench(&p(m), &[]), &[m, "input `x`", "scalar"]);
    }
    // A static input far too large to allocate (used to abort).
    relu_onnx(
        &p("huge.onnx"),
        Some(&[Some(1), Some(3), Some(100_000), Some(100_000)]),
    );
    refused(&bench(&p("huge.onnx"), &[]), &["huge.onnx", "too large"]);
    // A symbolic batch runs at --batch (default 1), not at batch 0.
    relu_onnx(&p("dyn.onnx"), Some(&[None, Some(3), Some(8), Some(8)]));
    for (extra, batch) in [(vec![], 1), (vec!["--batch", "4"], 4)] {
        let mut args = vec!["--json"];
        args.extend(extra);
        let o = bench(&p("dyn.onnx"), &args);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["batch"], batch, "{v}");
        assert!(v["throughput"].as_f64().unwrap() > 0.0, "{v}");
    }
    let o = bench(&p("dyn.onnx"), &["--batch", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--batch"), "{}", text(&o));
    // Other symbolic dimensions, and --batch against a static batch.
    relu_onnx(&p("dynhw.onnx"), Some(&[Some(1), Some(3), None, Some(8)]));
    refused(
        &bench(&p("dynhw.onnx"), &[]),
        &["dynhw.onnx", "dimension 2", "`d2`"],
    );
    relu_onnx(
        &p("static.onnx"),
        Some(&[Some(1), Some(3), Some(8), Some(8)]),
    );
    refused(
        &bench(&p("static.onnx"), &["--batch", "2"]),
        &["static.onnx", "static batch of 1"],
    );
    // --precision is the ONNX file's own; --calib has nothing to calibrate.
    refused(
        &bench(&p("static.onnx"), &["--precision", "fp16"]),
        &["static.onnx", "--precision", "deploy checkpoints"],
    );
    refused(
        &bench(
            &p("static.onnx"),
            &["--calib", dir.path().to_str().unwrap()],
        ),
        &["static.onnx", "--calib"],
    );
    // Not ONNX at all.
    std::fs::write(p("text.onnx"), "not a model\n").unwrap();
    std::fs::write(
        p("noise.bin"),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for m in ["text.onnx", "noise.bin"] {
        refused(&bench(&p(m), &[]), &[m]);
    }
    // --enforce needs a budget; a budget is a positive, finite number of milliseconds.
    let o = bench(&p("static.onnx"), &["--enforce"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--budget-ms"), "{}", text(&o));
    for b in ["0", "-1", "NaN", "inf"] {
        let o = bench(&p("static.onnx"), &[&format!("--budget-ms={b}")]);
        assert_eq!(o.status.code(), Some(2), "{b}: {}", text(&o));
        assert!(text(&o).contains("positive"), "{b}: {}", text(&o));
    }
    // A deploy checkpoint at INT8 calibrates on --calib, which exists and is checked.
    let o = run(&["bench", "--help"], &[]);
    assert!(text(&o).contains("--calib"), "{}", text(&o));
    let (_, d) = deploy(dir.path(), "plain");
    let missing = p("no_such_calib_dir");
    refused(
        &bench(
            &d,
            &["--precision", "int8", "--calib", missing.to_str().unwrap()],
        ),
        &["no_such_calib_dir"],
    );
    // A model with two inputs: named, in our message, with nothing of ONNX Runtime's raw log.
    {
        use overparam_engine::pb::ModelProto;
        let mut m: ModelProto =
            prost::Message::decode(std::fs::read(p("static.onnx")).unwrap().as_slice()).unwrap();
        let g = m.graph.as_mut().unwrap();
        let mut z = g.input[0].clone();
        z.name = Some("z".into());
        g.input.push(z);
        g.node[0].op_type = Some("Add".into());
        g.node[0].input = vec!["x".into(), "z".into()];
        std::fs::write(p("two.onnx"), prost::Message::encode_to_vec(&m)).unwrap();
    }
    let o = bench(&p("two.onnx"), &[]);
    refused(&o, &["two.onnx", "2 inputs: x, z", "feeds one"]);
    assert!(!text(&o).contains("onnxruntime:"), "{}", text(&o));
    // A TensorRT engine where ONNX is expected, and a checkpoint given to `engine build`
    // (named before any builder is looked for).
    std::fs::write(p("m.plan"), b"ftrt\x00\x01junk").unwrap();
    refused(
        &bench(&p("m.plan"), &[]),
        &["m.plan", "TensorRT engine", "--runtime trt"],
    );
    let plan = p("d.plan");
    let o = run(
        &[
            "engine",
            "build",
            d.to_str().unwrap(),
            "-o",
            plan.to_str().unwrap(),
        ],
        &[],
    );
    refused(&o, &["safetensors checkpoint", "export"]);
    assert!(!plan.exists());
}

/// `export --precision fp16` refuses weights FP16 cannot hold (naming them), and a failed INT8
/// export leaves an earlier model and its calibration record exactly as they were.
#[test]
fn export_refuses_fp16_overflow_and_a_failed_int8_export_keeps_the_old_pair() {
    use overparam_fuse::{AnySpec, checkpoint};
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = deploy(dir.path(), "plain");
    // The same model with its first conv scaled beyond FP16's range.
    let big = dir.path().join("big.deploy.safetensors");
    let (spec, mut w) = checkpoint::load_deploy(&d).unwrap();
    w.get_mut("features.0.weight")
        .unwrap()
        .data
        .iter_mut()
        .for_each(|v| *v *= 1e6);
    checkpoint::save(&big, &AnySpec::Deploy(spec), &w).unwrap();
    let fp16 = dir.path().join("big.fp16.onnx");
    let o = run(
        &[
            "export",
            big.to_str().unwrap(),
            "--precision",
            "fp16",
            "-o",
            fp16.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("features.0.weight") && text(&o).contains("65504"),
        "{}",
        text(&o)
    );
    assert!(!fp16.exists());
    // A good INT8 export, then failing ones to the same output.
    let out = dir.path().join("m.int8.onnx");
    let calib = dir.path().join("m.int8.calib.json");
    let export = |model: &Path, extra: &[&str]| {
        let mut args = vec!["export", model.to_str().unwrap(), "--precision", "int8"];
        args.extend(["--calib-images", "64", "-o", out.to_str().unwrap()]);
        args.extend(["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]);
        args.extend(extra);
        run(&args, &[])
    };
    let o = export(&d, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let pair = || (std::fs::read(&out).unwrap(), std::fs::read(&calib).unwrap());
    let before = pair();
    // Fails after calibrating: the layer kept in FP16 cannot hold its weights.
    let o = export(&big, &["--keep", "features.0", "--kept-precision", "fp16"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("features.0.weight"), "{}", text(&o));
    assert!(pair() == before, "the old model and calib.json changed");
    // Fails before calibrating: no such calibration directory.
    let o = export(
        &d,
        &["--calib", dir.path().join("nothing").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(pair() == before, "the old model and calib.json changed");
    // The record of another model is refused, and nothing is written.
    let copy = dir.path().join("d.calib.json");
    std::fs::copy(&calib, &copy).unwrap();
    let o = export(&big, &["--calib-record", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("another model"), "{}", text(&o));
    assert!(pair() == before, "the old model and calib.json changed");
    // No temporary files left behind.
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// `compare`: a model against itself passes; a copy with one conv's weights perturbed fails
/// (exit 3), and `--layerwise` names that conv as the first layer out of tolerance, every
/// layer before it matching; models with different inputs are refused.
#[test]
fn compare_localises_an_injected_error_to_its_layer() {
    use overparam_fuse::checkpoint;
    use overparam_fuse::spec::Op;
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = deploy(dir.path(), "plain");
    let a = dir.path().join("a.onnx");
    let o = run(
        &["export", d.to_str().unwrap(), "-o", a.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ok = run(&["compare", a.to_str().unwrap(), d.to_str().unwrap()], &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(text(&ok).contains("verdict: PASS"), "{}", text(&ok));

    // The third conv gets a perturbed kernel.
    let (spec, mut w) = checkpoint::load_deploy(&d).unwrap();
    let convs: Vec<String> = spec
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_)))
        .map(|n| n.name.clone())
        .collect();
    let target = convs[2].clone();
    for v in w
        .get_mut(&format!("{target}.weight"))
        .unwrap()
        .data
        .iter_mut()
        .step_by(7)
    {
        *v += 0.5;
    }
    let bad = dir.path().join("bad.deploy.safetensors");
    checkpoint::save(&bad, &overparam_fuse::AnySpec::Deploy(spec), &w).unwrap();
    let o = run(
        &[
            "compare",
            bad.to_str().unwrap(),
            a.to_str().unwrap(),
            "--layerwise",
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["first_over"], target.as_str(), "{c}");
    let layers = c["layers"].as_array().unwrap();
    assert!(layers.len() >= convs.len(), "{c}");
    for l in layers.iter().take_while(|l| l["name"] != target.as_str()) {
        assert_eq!(l["mismatched"], 0, "{l}");
    }
    assert_eq!(c["worst"].as_array().unwrap().len(), 5.min(layers.len()));
    // Text mode says the same.
    let o = run(
        &[
            "compare",
            bad.to_str().unwrap(),
            a.to_str().unwrap(),
            "--layerwise",
        ],
        &[],
    );
    assert!(
        text(&o).contains(&format!("first layer out of tolerance: {target}"))
            && text(&o).contains("verdict: FAIL"),
        "{}",
        text(&o)
    );

    // Different inputs: refused, naming both shapes.
    let relu = dir.path().join("relu.onnx");
    relu_onnx(&relu, Some(&[Some(1), Some(3), Some(8), Some(8)]));
    let o = run(
        &["compare", a.to_str().unwrap(), relu.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("different inputs") && text(&o).contains("[1, 3, 8, 8]"),
        "{}",
        text(&o)
    );
    // A plan is refused with what to do instead.
    let plan = dir.path().join("m.plan");
    std::fs::write(&plan, b"plan").unwrap();
    let o = run(
        &["compare", plan.to_str().unwrap(), a.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("TensorRT plan"), "{}", text(&o));
}

/// The FP32 and FP16 ONNX exports of deploy checkpoint `d`, written into `dir`.
fn fp32_fp16(d: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (a32, a16) = (dir.join("a.onnx"), dir.join("a16.onnx"));
    for (p, prec) in [(&a32, "fp32"), (&a16, "fp16")] {
        let o = run(
            &[
                "export",
                d.to_str().unwrap(),
                "--precision",
                prec,
                "-o",
                p.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    (a32, a16)
}

/// `compare --data`: both classifiers on a test split. An FP32 export against its checkpoint
/// agrees on every image with a zero delta; the FP16 export is measured the same way; two ONNX
/// models without a normalisation are refused, naming the flags.
#[test]
fn compare_with_data_reports_each_top1_and_their_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = deploy(dir.path(), "plain");
    let data = dir.path().join("data");
    let o = run(
        &[
            "data",
            "synth-cifar",
            "-o",
            data.to_str().unwrap(),
            "--train",
            "10",
            "--test",
            "200",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let (a32, a16) = fp32_fp16(&d, dir.path());
    let norm = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"];
    let cmp = |a: &Path, extra: &[&str]| {
        let mut args = vec!["compare", a.to_str().unwrap(), d.to_str().unwrap()];
        args.extend([
            "--data",
            data.to_str().unwrap(),
            "--json",
            "--atol",
            "1",
            "--rtol",
            "1",
        ]);
        args.extend(extra);
        run(&args, &[])
    };
    let o = cmp(&a32, &norm);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["data"];
    assert_eq!(g["images"], 200, "{g}");
    assert_eq!(g["top1_agreement"], 100.0, "{g}");
    assert_eq!(g["delta_points"], 0.0, "{g}");
    assert_eq!(g["a_top1_err"], g["b_top1_err"]);
    assert!(
        v["outputs"].is_array(),
        "the golden comparison is still there: {v}"
    );

    let o = cmp(&a16, &norm);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let agree = v["data"]["top1_agreement"].as_f64().unwrap();
    assert!((90.0..=100.0).contains(&agree), "{v}");
    let delta = v["data"]["delta_points"].as_f64().unwrap();
    assert!(
        (delta
            - (v["data"]["a_top1_err"].as_f64().unwrap()
                - v["data"]["b_top1_err"].as_f64().unwrap()))
        .abs()
            < 1e-9
    );

    // Two ONNX models record no normalisation.
    let o = run(
        &[
            "compare",
            a32.to_str().unwrap(),
            a16.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--mean and --std"), "{}", text(&o));
}

/// `compare --data` on multi-task models: the val scenes of an NYUv2-layout directory. An FP32
/// export against its checkpoint agrees on every pixel with zero deltas; FP16 is measured the
/// same way (close, not equal); a multi-task model against a classifier, and a normalisation
/// for scenes that carry none, are refused by name.
#[test]
fn compare_with_data_on_multi_task_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::deploy_mtl(dir.path());
    let data = dir.path().join("nyu");
    let o = run(
        &[
            "data",
            "synth-nyuv2",
            "-o",
            data.to_str().unwrap(),
            "--train",
            "1",
            "--val",
            "3",
            "--height",
            "48",
            "--width",
            "64",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let (a32, a16) = fp32_fp16(&d, dir.path());
    let cmp = |a: &Path, b: &Path, json: bool| {
        let mut args = vec![
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--atol",
            "1",
            "--rtol",
            "1",
        ];
        if json {
            args.push("--json");
        }
        run(&args, &[])
    };
    let o = cmp(&a32, &d, true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["data"];
    assert_eq!(g["scenes"], 3, "{g}");
    assert_eq!(g["segmentation_pixel_agreement_pct"], 100.0, "{g}");
    assert!(g["depth_mean_abs_diff"].as_f64().unwrap() < 1e-5, "{g}");
    assert!(g["normals_mean_angle_deg"].as_f64().unwrap() < 0.05, "{g}");
    assert_eq!(g["metrics"][0], "mIoU");
    for k in 0..9 {
        assert!(g["a_minus_b"][k].as_f64().unwrap().abs() < 1e-4, "{g}");
        assert!(g["a"][k].as_f64().is_some(), "every task is there: {g}");
    }

    let o = cmp(&a16, &a32, false);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("on 3 val scenes") && t.contains("class maps agree on"),
        "{t}"
    );
    assert!(
        t.contains("mIoU") && t.contains("normals") && t.contains("° apart"),
        "{t}"
    );

    // A classifier against a multi-task model.
    let (_, c) = deploy(dir.path(), "plain");
    let o = cmp(&a32, &c, false);
    assert!(!o.status.success());
    assert!(text(&o).contains("multi-task model and"), "{}", text(&o));
    // Scenes carry no normalisation to replace.
    let o = run(
        &[
            "compare",
            a32.to_str().unwrap(),
            d.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("as they are"), "{}", text(&o));
}
