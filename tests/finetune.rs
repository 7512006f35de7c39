//! Fine-tuning a trained network (`model.from`, `pipeline --from`): the run starts from the
//! exact expansion (its `start.json` shows the imported and the expanded model equal on the
//! test split before the first step), trains every method, folds exactly; refusals name what
//! to change.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, run, text};

fn write(path: &Path, s: &str) -> PathBuf {
    std::fs::write(path, s).unwrap();
    path.to_path_buf()
}

const DATA_OPTIM: &str = r#"[data]
synthetic_train = 200
synthetic_test = 100
classes = 10
[optim]
epochs = 1
batch_size = 20
lr = 0.02
schedule = { kind = "cosine" }
"#;

#[test]
fn a_finished_run_fine_tunes_with_every_method_from_its_exact_expansion() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A trained plain network: a short run's deploy checkpoint (it records its normalisation).
    let base = write(
        &dir.path().join("base.toml"),
        &format!(
            "[run]\nname = \"base\"\ndir = \"{d}\"\nthreads = 1\n[model]\nkind = \"vgg_small\"\nwidth = 0.125\nmethod = {{ kind = \"plain\" }}\n{DATA_OPTIM}"
        ),
    );
    ok(&run(&["train", "--config", base.to_str().unwrap()]));
    let deploy = dir.path().join("base/model.deploy.safetensors");
    for method in ["plain", "repvgg", "qarepvgg", "fnl", "sfo"] {
        let cfg = write(
            &dir.path().join(format!("{method}.toml")),
            &format!(
                "[run]\nname = \"ft-{method}\"\ndir = \"{d}\"\nthreads = 1\n[model]\nfrom = \"{}\"\nmethod = {{ kind = \"{method}\" }}\n{DATA_OPTIM}",
                deploy.display()
            ),
        );
        let t = ok(&run(&["train", "--config", cfg.to_str().unwrap()]));
        assert!(
            t.contains("expanded exactly") && t.contains("fold exact in f64"),
            "{method}: {t}"
        );
        let start: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("ft-{method}/start.json"))).unwrap(),
        )
        .unwrap();
        // Before the first step the expansion is the imported network.
        assert_eq!(start["imported"], start["expanded"], "{method}: {start}");
        assert_eq!(start["prediction_mismatches"], 0, "{method}");
        assert!(
            start["max_output_rel_diff"].as_f64().unwrap() < 1e-5,
            "{method}: {start}"
        );
        assert!(
            dir.path()
                .join(format!("ft-{method}/model.deploy.safetensors"))
                .exists()
        );
        // The fine-tuned model deploys to the same network as the one it started from.
        let a = ok(&run(&["inspect", deploy.to_str().unwrap(), "--json"]));
        let b = ok(&run(&[
            "inspect",
            dir.path()
                .join(format!("ft-{method}/model.deploy.safetensors"))
                .to_str()
                .unwrap(),
            "--json",
        ]));
        let total = |s: &str| -> u64 {
            let v: serde_json::Value = serde_json::from_str(&s[s.find('{').unwrap()..]).unwrap();
            v["total_params"].as_u64().unwrap()
        };
        assert_eq!(total(&a), total(&b), "{method}");
    }
}

#[test]
fn fine_tuning_refusals_name_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A deploy checkpoint without a recorded normalisation (folded straight from init).
    let op = dir.path().join("m.op.safetensors");
    ok(&run(&[
        "init",
        "--model",
        "vgg_small",
        "--width",
        "0.125",
        "--num-classes",
        "10",
        "-o",
        op.to_str().unwrap(),
    ]));
    let deploy = dir.path().join("m.deploy.safetensors");
    ok(&run(&[
        "fuse",
        op.to_str().unwrap(),
        "-o",
        deploy.to_str().unwrap(),
    ]));
    let cfg = |name: &str, model: &str| {
        write(
            &dir.path().join(format!("{name}.toml")),
            &format!(
                "[run]\nname = \"{name}\"\ndir = \"{d}\"\nthreads = 1\n[model]\n{model}\n{DATA_OPTIM}"
            ),
        )
    };
    let refused = |c: &Path, want: &[&str]| {
        let o = run(&["train", "--config", c.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        for w in want {
            assert!(t.contains(w), "`{w}` not in: {t}");
        }
    };
    let from = format!("from = \"{}\"", deploy.display());
    refused(
        &cfg("nonorm", &format!("{from}\nmethod = {{ kind = \"sfo\" }}")),
        &["records no input normalisation", "--mean"],
    );
    refused(
        &cfg(
            "both",
            &format!("kind = \"vgg_small\"\n{from}\nmethod = {{ kind = \"sfo\" }}"),
        ),
        &["model.kind", "model.from", "give one"],
    );
    refused(
        &cfg("neither", "method = { kind = \"sfo\" }"),
        &["model.kind", "model.from"],
    );
    refused(
        &cfg(
            "width",
            &format!("{from}\nwidth = 0.5\nmethod = {{ kind = \"sfo\" }}"),
        ),
        &["model.width", "no meaning with model.from"],
    );
    refused(
        &cfg(
            "train-ck",
            &format!("from = \"{}\"\nmethod = {{ kind = \"sfo\" }}", op.display()),
        ),
        &["train-time checkpoint", "overparam fuse"],
    );
}

#[test]
fn pipeline_from_an_onnx_decoder_fine_tunes_folds_and_publishes_its_dense_outputs() {
    let dir = tempfile::tempdir().unwrap();
    common::import_blocks(dir.path());
    let runs = dir.path().join("runs");
    let t = ok(&run(&[
        "pipeline",
        "--from",
        dir.path().join("decoder_dynamo18.onnx").to_str().unwrap(),
        "--method",
        "sfo",
        "--iters",
        "3",
        "--frames",
        "3",
        "--calib-images",
        "4",
        "--set",
        &format!("run.dir=\"{}\"", runs.display()),
        "--set",
        "data.synthetic_train=16",
        "--set",
        "data.synthetic_test=4",
        "--set",
        "optim.epochs=1",
    ]));
    let report = std::fs::read_to_string(runs.join("finetune/report.md")).unwrap();
    assert!(
        report.contains("## Import") && report.contains("segmentation_logits"),
        "{report}"
    );
    assert!(
        report.contains("--from") && report.contains("--method sfo"),
        "{report}"
    );
    let start: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("finetune/start.json")).unwrap()).unwrap();
    assert_eq!(start["prediction_mismatches"], 0, "{start}");
    // Two dense outputs, so two topics, every frame received.
    assert!(t.contains("report:"), "{t}");
    assert!(runs.join("finetune/model.int8.onnx").exists());
}

/// QAT through the fold on an imported network (#23): a PyTorch ResNet block at CIFAR-100's
/// size (`residual32`, TorchScript-exported), imported with its normalisation, fine-tuned as
/// SFO, then `qat`: the INT8 ONNX ONNX Runtime runs reproduces the QAT model (every logit
/// within 2 output steps, the decided top-1 classes equal), with learned thresholds.
#[test]
fn qat_fine_tunes_an_imported_pytorch_network_through_the_fold() {
    let dir = tempfile::tempdir().unwrap();
    common::import_blocks(dir.path());
    let imp = dir.path().join("imp.safetensors");
    ok(&run(&[
        "import",
        dir.path().join("residual32_ts13.onnx").to_str().unwrap(),
        "-o",
        imp.to_str().unwrap(),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
    ]));
    let d = dir.path().display();
    let cfg = write(
        &dir.path().join("ft.toml"),
        &format!(
            "[run]\nname = \"ft\"\ndir = \"{d}\"\nthreads = 1\n[model]\nfrom = \"{}\"\nmethod = {{ kind = \"sfo\" }}\n{DATA_OPTIM}",
            imp.display()
        ),
    );
    let t = ok(&run(&["train", "--config", cfg.to_str().unwrap()]));
    assert!(t.contains("expanded exactly"), "{t}");
    let ft = dir.path().join("ft");
    let o = run(&[
        "qat",
        "--run",
        ft.to_str().unwrap(),
        "--epochs",
        "1",
        "--calib-images",
        "64",
        "--batch",
        "20",
        "--json",
    ]);
    let t = ok(&o);
    let r: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {t}"));
    let rep = &r["reproduction"];
    // Untrained logits are near-ties; where the top-1 is decided it must agree.
    assert_eq!(rep["decided_top1_agreement"], 1.0, "{r}");
    assert_eq!(rep["within_2_steps"], 1.0, "{r}");
    assert!(r["thresholds_moved"].as_u64().unwrap() > 0, "{r}");
    assert!(r["qat"]["steps"].as_u64().unwrap() > 0, "{r}");
    assert!(ft.join("model.qat.int8.onnx").exists());
    assert!(ft.join("model.qat.int8.calib.json").exists());
}
