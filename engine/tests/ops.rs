//! Every op against ONNX Runtime: each case of `overparam_fuse::ops::examples` exported by the
//! ONNX writer and run by ONNX Runtime equals the f64 reference executor (the third way, the
//! reference against libtorch, is `overparam-train`'s `tests/ops.rs`).

use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
use overparam_engine::runtime::OrtRuntime;
use overparam_fuse::ops::examples::{cases, weights};
use overparam_fuse::verify::Deviation;
use overparam_fuse::{RandomTensor, Rng, Tensor, Weights};

#[test]
fn every_op_exported_runs_in_onnx_runtime_as_the_reference_computes_it() {
    let mut failures = vec![];
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for (k, (name, g)) in cases().into_iter().enumerate() {
        let w = weights(&g, 10 + k as u64);
        let i = &g.input;
        let x: Tensor<f64> =
            Rng::new(k as u64).normal_tensor(&[2, i.channels, i.height, i.width], 1.0);
        let w64: Weights<f64> = w.iter().map(|(n, t)| (n.clone(), t.cast())).collect();
        let want = &overparam_fuse::exec::run(&g, &w64, &x).unwrap()[0].1;
        let model = export(
            &g,
            &w,
            &ExportOptions {
                batch: 2,
                ..ExportOptions::new(Precision::Fp32)
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let path = dir.path().join(format!("op{k}.onnx"));
        std::fs::write(&path, to_bytes(&model)).unwrap();
        files.push(path);
        let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
        let out = OrtRuntime::new(&to_bytes(&model), Some(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .run(&x32)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = Tensor::new(out[0].1.clone(), out[0].2.clone());
        let d = Deviation::between(&name, want, &got);
        // fp32 against f64: a few ulps of the largest value.
        if d.rel.is_nan() || d.rel > 1e-5 {
            failures.push(format!(
                "{name}: rel {:e} (shape {:?} vs {:?})",
                d.rel, want.shape, got.shape
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // And every exported op passes the ONNX checker (full check, with shape inference).
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg("import onnx,sys\nfor p in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(p), full_check=True)")
        .args(&files)
        .output()
        .expect("run the virtualenv's python (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
