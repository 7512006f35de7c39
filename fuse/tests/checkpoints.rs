//! Checkpoint round trips and bad input: every error names the file and the tensor.

use std::path::Path;

use overparam_fuse::checkpoint::{self, SPEC_KEY, VERSION_KEY};
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{AnySpec, Error, MethodConfig, MethodKind, fold};

fn tiny(kind: MethodKind) -> (overparam_fuse::TrainSpec, overparam_fuse::Weights) {
    let t = build(
        ModelKind::Resnet18Cifar,
        &ClassifierOptions {
            width: 0.125,
            num_classes: 10,
            ..ClassifierOptions::new(MethodConfig::new(kind))
        },
    )
    .unwrap();
    let w = init_train_weights(
        &t,
        &InitOptions {
            seed: 1,
            random_bn: true,
        },
    )
    .unwrap();
    (t, w)
}

#[test]
fn save_load_fold_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    for kind in MethodKind::ALL {
        let (t, w) = tiny(kind);
        let p = dir.path().join("a.safetensors");
        checkpoint::save(&p, &AnySpec::Train(t.clone()), &w).unwrap();
        let (t2, w2) = checkpoint::load_train(&p).unwrap();
        assert_eq!(t2, t);
        assert_eq!(w2, w);
        let (d1, dw1) = fold(&t, &w).unwrap();
        let (d2, dw2) = fold(&t2, &w2).unwrap();
        assert_eq!(d1, d2);
        for (k, v) in &dw1 {
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v.data), bits(&dw2[k].data), "{kind:?} {k}");
        }
        // Saving what was loaded writes the same bytes.
        let p2 = dir.path().join("b.safetensors");
        checkpoint::save(&p2, &AnySpec::Train(t2), &w2).unwrap();
        assert!(
            std::fs::read(&p).unwrap() == std::fs::read(&p2).unwrap(),
            "{kind:?}: re-saved bytes differ"
        );
    }
}

#[test]
fn deploy_checkpoints_are_not_folded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (t, w) = tiny(MethodKind::Repvgg);
    let (d, dw) = fold(&t, &w).unwrap();
    let p = dir.path().join("deploy.safetensors");
    checkpoint::save(&p, &AnySpec::Deploy(d), &dw).unwrap();
    let err = checkpoint::load_train(&p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongStage {
                found: "deploy",
                ..
            }
        ),
        "{err}"
    );
    assert!(checkpoint::load_deploy(&p).is_ok());
}

fn expect_err(path: &Path, needles: &[&str]) {
    let msg = checkpoint::load(path).unwrap_err().to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "no file name in: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
}

#[test]
fn bad_checkpoints_get_errors_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (t, w) = tiny(MethodKind::Sfo);
    let spec = AnySpec::Train(t.clone());
    let good = checkpoint::to_bytes(&spec, &w).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Truncated file.
    expect_err(
        &write("trunc.safetensors", &good[..good.len() - 100]),
        &["safetensors"],
    );
    // Not even a header.
    expect_err(&write("garbage.safetensors", b"hello"), &["safetensors"]);

    // Missing tensor: serialise without the layout check by going through the raw crate.
    let raw = |w: &overparam_fuse::Weights, meta: Option<String>| {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        let meta = meta.map(|m| std::collections::HashMap::from([(SPEC_KEY.to_string(), m)]));
        safetensors::serialize(views, meta).unwrap()
    };
    let json = serde_json::to_string(&spec).unwrap();
    let mut missing = w.clone();
    missing.remove("layer1.0.conv1.M");
    expect_err(
        &write("missing.safetensors", &raw(&missing, Some(json.clone()))),
        &["layer1.0.conv1.M", "missing"],
    );

    let mut shape = w.clone();
    shape.get_mut("layer1.0.bn1.weight").unwrap().shape =
        vec![1, shape["layer1.0.bn1.weight"].numel()];
    expect_err(
        &write("shape.safetensors", &raw(&shape, Some(json.clone()))),
        &["layer1.0.bn1.weight", "shape"],
    );

    let mut nan = w.clone();
    nan.get_mut("layer2.0.conv2.V").unwrap().data[3] = f32::NAN;
    expect_err(
        &write("nan.safetensors", &raw(&nan, Some(json.clone()))),
        &["layer2.0.conv2.V", "non-finite"],
    );

    expect_err(
        &write("nometa.safetensors", &raw(&w, None)),
        &["not an overparam checkpoint"],
    );
    expect_err(
        &write(
            "badmeta.safetensors",
            &raw(&w, Some("{\"stage\":\"train\"}".into())),
        ),
        &["not an overparam spec"],
    );

    // Saving refuses invalid weights and leaves an existing file untouched.
    let target = write("target.safetensors", &good);
    let err = checkpoint::save(&target, &spec, &nan).unwrap_err();
    assert!(err.to_string().contains("layer2.0.conv2.V"), "{err}");
    assert!(
        std::fs::read(&target).unwrap() == good,
        "existing file changed"
    );
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
            .count(),
        0
    );
}

#[test]
fn checkpoints_of_an_unknown_format_version_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (t, w) = tiny(MethodKind::Plain);
    let spec = AnySpec::Train(t);
    let good = checkpoint::to_bytes(&spec, &w).unwrap();
    let p = dir.path().join("v1.safetensors");
    std::fs::write(&p, &good).unwrap();
    checkpoint::load(&p).unwrap();
    // The same file with another version in its metadata (the header is JSON).
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap();
    let needle = format!("\"{VERSION_KEY}\":\"1\"");
    assert!(header.contains(&needle), "{header}");
    for version in ["99", "2"] {
        let mut header = header.replace(&needle, &format!("\"{VERSION_KEY}\":\"{version}\""));
        // Keep the data 8-byte aligned, as the writer does (JSON allows trailing blanks).
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&good[8 + n..]);
        let p = dir.path().join(format!("v{version}.safetensors"));
        std::fs::write(&p, &bytes).unwrap();
        expect_err(
            &p,
            &[
                &format!("version `{version}`"),
                VERSION_KEY,
                "reads version 1",
            ],
        );
    }
}

/// An ONNX model, a TensorRT plan or a config given where a checkpoint is expected is named as
/// what it is, with the command that takes it; anything else keeps the safetensors message.
#[test]
fn other_files_are_named_as_what_they_are() {
    use std::path::Path;
    let onnx = [
        0x08u8, 0x08, 0x12, 0x07, b'p', b'y', b't', b'o', b'r', b'c', b'h',
    ];
    let e = overparam_fuse::checkpoint::from_bytes(Path::new("m.bin"), &onnx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("m.bin") && e.contains("ONNX model") && e.contains("overparam import"),
        "{e}"
    );
    let e = overparam_fuse::checkpoint::from_bytes(Path::new("m.plan"), b"ftrt\0\0\0\0\0\0\0\0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("TensorRT engine"), "{e}");
    let e = overparam_fuse::checkpoint::from_bytes(Path::new("x"), b"\x05\0\0\0\0\0\0\0{}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid safetensors file"), "{e}");
}
