//! `overparam import` on networks PyTorch itself built and exported (fixtures made at test
//! time by `tests/python/import_blocks.py` with the virtualenv's torch: a residual block with a
//! downsample, MobileNetV2's inverted residual, a squeeze-excite block with HardSigmoid·Mul and
//! SiLU, dilated and 1×3/3×1 convs, and a ConvTranspose + Concat + bilinear Resize decoder with
//! two heads; each from both exporters at opsets 13–21). For each: the import against the
//! original (ONNX Runtime), the exact expansion with every method (f64 verdict), the fold
//! back (the imported weights, bit for bit), and the fp32 export against PyTorch's own outputs.
//! Then bad input: a clear error, a non-zero exit, and nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{ok, run, text};
use overparam_engine::runtime::OrtRuntime;

/// The fixtures, made once per test process.
fn fixtures() -> &'static (tempfile::TempDir, Vec<serde_json::Value>) {
    static F: OnceLock<(tempfile::TempDir, Vec<serde_json::Value>)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::import_blocks(dir.path());
        let manifest: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap())
                .unwrap();
        (dir, manifest)
    })
}

fn npy(path: &Path) -> overparam_data::npy::Array {
    overparam_data::npy::read(path).unwrap()
}

fn rel(want: &[f32], got: &[f32]) -> f64 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    want.iter()
        .zip(got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64
        / scale as f64
}

fn weights(path: &Path) -> overparam_fuse::Weights<f32> {
    overparam_fuse::checkpoint::load(path).unwrap().weights
}

#[test]
fn pytorch_blocks_import_expand_exactly_fold_back_and_export_as_pytorch_computes() {
    let (dir, manifest) = fixtures();
    let work = tempfile::tempdir().unwrap();
    let mut exporters = std::collections::BTreeSet::new();
    let mut expanded = std::collections::BTreeSet::new();
    for m in manifest {
        let model = dir.path().join(m["model"].as_str().unwrap());
        let block = m["block"].as_str().unwrap();
        exporters.insert((
            m["exporter"].as_str().unwrap().to_string(),
            m["opset"].as_i64().unwrap(),
        ));
        let stem = model.file_stem().unwrap().to_string_lossy().into_owned();
        let deploy = work.path().join(format!("{stem}.deploy.safetensors"));
        // Import from another working directory: external data is found beside the model.
        let out = common::bin()
            .current_dir(work.path())
            .args([
                "import",
                model.to_str().unwrap(),
                "-o",
                deploy.to_str().unwrap(),
                "--json",
            ])
            .output()
            .unwrap();
        let t = ok(&out);
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{t}: {e}"));
        let checks = report["checks"].as_array().unwrap();
        assert_eq!(
            checks.len(),
            2 * m["outputs"].as_array().unwrap().len(),
            "{t}"
        );
        for c in checks {
            let r = c["deviation"]["rel"].as_f64().unwrap();
            assert!(r < 1e-4, "{stem}: {} {r:e}", c["against"]);
        }
        // Every method expands exactly (the command gates on the f64 verdict) and folds back
        // to the imported weights bit for bit: once per block (the exporters' graphs import
        // to the same network).
        let imported = weights(&deploy);
        let methods: &[&str] = if expanded.insert(block.to_string()) {
            &["plain", "repvgg", "qarepvgg", "fnl", "sfo"]
        } else {
            &[]
        };
        for method in methods {
            let op = work.path().join(format!("{stem}.{method}.op.safetensors"));
            let back = work
                .path()
                .join(format!("{stem}.{method}.back.safetensors"));
            let t = ok(&run(&[
                "init",
                "--from",
                deploy.to_str().unwrap(),
                "--method",
                method,
                "--include-1x1",
                "-o",
                op.to_str().unwrap(),
            ]));
            assert!(t.contains("PASS: exact in f64"), "{stem} {method}: {t}");
            ok(&run(&[
                "fuse",
                op.to_str().unwrap(),
                "-o",
                back.to_str().unwrap(),
                "--measure",
                "fp32",
            ]));
            let folded = weights(&back);
            assert_eq!(
                folded.keys().collect::<Vec<_>>(),
                imported.keys().collect::<Vec<_>>()
            );
            for (k, v) in &imported {
                assert!(
                    folded[k]
                        .data
                        .iter()
                        .zip(&v.data)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{stem} {method}: `{k}` differs after the round trip"
                );
            }
        }
        // Our fp32 export computes what PyTorch computed.
        let onnx = work.path().join(format!("{stem}.fp32.onnx"));
        ok(&run(&[
            "export",
            deploy.to_str().unwrap(),
            "--precision",
            "fp32",
            "-o",
            onnx.to_str().unwrap(),
        ]));
        let x = npy(&dir.path().join(format!("{block}.input.npy")));
        let outs = OrtRuntime::new(&std::fs::read(&onnx).unwrap(), Some(1))
            .unwrap()
            .run(&x.data)
            .unwrap();
        for o in m["outputs"].as_array().unwrap() {
            let o = o.as_str().unwrap();
            let want = npy(&dir.path().join(format!("{block}.{o}.npy")));
            let got = outs
                .iter()
                .find(|g| g.0 == o)
                .unwrap_or_else(|| panic!("{stem}: no output {o}"));
            assert_eq!(got.1, want.shape, "{stem} {o}");
            let r = rel(&want.data, &got.2);
            assert!(r < 1e-4, "{stem} `{o}`: rel {r:e} against PyTorch");
        }
    }
    // Both exporters, at opsets across 13–21.
    let opsets: Vec<i64> = exporters.iter().map(|e| e.1).collect();
    assert!(exporters.iter().any(|e| e.0 == "ts") && exporters.iter().any(|e| e.0 == "dynamo"));
    assert!(opsets.contains(&13) && opsets.contains(&21), "{opsets:?}");
}

#[test]
fn roles_and_depthwise_convs_show_in_inspect() {
    let (dir, _) = fixtures();
    let work = tempfile::tempdir().unwrap();
    let deploy = work.path().join("d.safetensors");
    // The decoder's outputs imply their roles; --output sets one.
    ok(&run(&[
        "import",
        dir.path().join("decoder_ts17.onnx").to_str().unwrap(),
        "-o",
        deploy.to_str().unwrap(),
        "--output",
        "depth=raw",
    ]));
    let t = ok(&run(&["inspect", deploy.to_str().unwrap()]));
    assert!(
        t.contains("`segmentation`") && t.contains("segmentation_logits"),
        "{t}"
    );
    assert!(t.contains("`depth` (") && t.contains(": raw,"), "{t}");
    // A depthwise conv stays plain under SFO, and inspect says why.
    let deploy = work.path().join("inv.safetensors");
    ok(&run(&[
        "import",
        dir.path().join("inverted_dynamo19.onnx").to_str().unwrap(),
        "-o",
        deploy.to_str().unwrap(),
    ]));
    let op = work.path().join("inv.op.safetensors");
    ok(&run(&[
        "init",
        "--from",
        deploy.to_str().unwrap(),
        "--method",
        "sfo",
        "-o",
        op.to_str().unwrap(),
    ]));
    let t = ok(&run(&["inspect", op.to_str().unwrap()]));
    assert!(
        t.contains("stays plain: sfo factorises") && t.contains("depthwise"),
        "{t}"
    );
}

/// A command that must fail with `want` in its message, leaving `out` unwritten.
fn refused(args: &[&str], out: &Path, want: &[&str]) {
    let o = run(args);
    let t = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {t}");
    for w in want {
        assert!(t.contains(w), "{args:?}: `{w}` not in: {t}");
    }
    assert!(!out.exists(), "{args:?} wrote {}", out.display());
}

#[test]
fn bad_onnx_is_refused_by_name_and_nothing_is_written() {
    let (dir, _) = fixtures();
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name);
    let out = w("never.safetensors");
    let o = out.to_str().unwrap();
    let copy = |src: &str, dst: &str| -> PathBuf {
        std::fs::copy(dir.path().join(src), w(dst)).unwrap();
        w(dst)
    };
    // Truncated.
    let ts = std::fs::read(dir.path().join("residual_ts13.onnx")).unwrap();
    std::fs::write(w("trunc.onnx"), &ts[..ts.len() / 2]).unwrap();
    refused(
        &["import", w("trunc.onnx").to_str().unwrap(), "-o", o],
        &out,
        &["trunc.onnx", "not an ONNX model"],
    );
    // A missing initializer: the first conv's weight removed.
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let edit = |script: &str, src: &Path, dst: &Path| {
        let s = std::process::Command::new(&py)
            .args(["-c", script, src.to_str().unwrap(), dst.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    };
    let src = dir.path().join("residual_ts13.onnx");
    edit(
        "import onnx,sys\nm=onnx.load(sys.argv[1])\nw=m.graph.node[0].input[1]\nkeep=[t for t in m.graph.initializer if t.name!=w]\ndel m.graph.initializer[:]\nm.graph.initializer.extend(keep)\nonnx.save(m,sys.argv[2])",
        &src,
        &w("noinit.onnx"),
    );
    refused(
        &["import", w("noinit.onnx").to_str().unwrap(), "-o", o],
        &out,
        &["missing initializer", "/conv1/Conv"],
    );
    // An unsupported op: a Relu turned into an Elu.
    edit(
        "import onnx,sys\nm=onnx.load(sys.argv[1])\nn=[n for n in m.graph.node if n.op_type=='Relu'][0]\nn.op_type='Elu'\nonnx.save(m,sys.argv[2])",
        &src,
        &w("elu.onnx"),
    );
    refused(
        &["import", w("elu.onnx").to_str().unwrap(), "-o", o],
        &out,
        &["op `Elu` is not supported", "Conv", "HardSwish"],
    );
    // Inconsistent shapes: the fc weight's width no longer matches its input.
    edit(
        "import onnx,sys,numpy as np\nfrom onnx import numpy_helper as h\nm=onnx.load(sys.argv[1])\nfor i,t in enumerate(m.graph.initializer):\n    if t.name=='fc.weight':\n        m.graph.initializer[i].CopyFrom(h.from_array(np.zeros((7,9),np.float32),'fc.weight'))\nonnx.save(m,sys.argv[2])",
        &src,
        &w("shapes.onnx"),
    );
    refused(
        &["import", w("shapes.onnx").to_str().unwrap(), "-o", o],
        &out,
        &["/fc/Gemm", "features"],
    );
    // A dynamic input shape without --input-shape, then with it.
    edit(
        "import onnx,sys\nm=onnx.load(sys.argv[1])\nm.graph.input[0].type.tensor_type.shape.dim[0].dim_param='N'\nm.graph.input[0].type.tensor_type.shape.dim[2].dim_param='H'\nonnx.save(m,sys.argv[2])",
        &src,
        &w("dynamic.onnx"),
    );
    refused(
        &["import", w("dynamic.onnx").to_str().unwrap(), "-o", o],
        &out,
        &["dynamic dimension", "--input-shape"],
    );
    let t = ok(&run(&[
        "import",
        w("dynamic.onnx").to_str().unwrap(),
        "-o",
        w("dyn.safetensors").to_str().unwrap(),
        "--input-shape",
        "1,3,17,15",
    ]));
    assert!(t.contains("wrote"), "{t}");
    // External data: missing, then truncated (the model copied without, then with half its data).
    let m = copy("residual_dynamo18.onnx", "ext.onnx");
    refused(
        &["import", m.to_str().unwrap(), "-o", o],
        &out,
        &["residual_dynamo18.onnx.data", "beside the model"],
    );
    let data = std::fs::read(dir.path().join("residual_dynamo18.onnx.data")).unwrap();
    std::fs::write(w("residual_dynamo18.onnx.data"), &data[..data.len() / 3]).unwrap();
    refused(
        &["import", m.to_str().unwrap(), "-o", o],
        &out,
        &["truncated"],
    );
    // A checkpoint where an ONNX is expected.
    refused(
        &["import", w("dyn.safetensors").to_str().unwrap(), "-o", o],
        &out,
        &["safetensors checkpoint, not an ONNX model"],
    );
    // An --output naming no output of the model, or a role the shape cannot carry.
    refused(
        &[
            "import",
            src.to_str().unwrap(),
            "-o",
            o,
            "--output",
            "nope=depth",
        ],
        &out,
        &["`nope`", "logits"],
    );
    refused(
        &[
            "import",
            src.to_str().unwrap(),
            "-o",
            o,
            "--output",
            "logits=depth",
        ],
        &out,
        &["role depth needs 1×H×W"],
    );
}
