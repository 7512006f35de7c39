//! Crash-safe artefacts: a writer of each artefact kind is killed (SIGKILL) at random points
//! while it rewrites its file again and again; after every kill the file is intact, loadable
//! with the real loader, and one of the versions written. (Resume after a kill mid-run is
//! checked bit-identically in train/tests.)
//!
//! The writer is this test binary re-executed with `OVERPARAM_WRITER=<kind>:<path>`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use overparam_base::write_file_atomic;
use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
use overparam_engine::trt::Manifest;
use overparam_fuse::checkpoint;
use overparam_fuse::init::{InitOptions, init_train_weights};
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{AnySpec, MethodConfig, MethodKind, Weights, fold};

const KINDS: [&str; 6] = [
    "checkpoint",
    "train_state",
    "deploy",
    "onnx",
    "manifest",
    "report",
];

fn model(version: u64) -> (overparam_fuse::TrainSpec, Weights) {
    let mut o = ClassifierOptions::new(MethodConfig::new(MethodKind::Sfo));
    o.width = 0.25;
    let spec = build(ModelKind::VggSmall, &o).unwrap();
    let w = init_train_weights(
        &spec,
        &InitOptions {
            seed: version,
            random_bn: true,
        },
    )
    .unwrap();
    (spec, w)
}

fn manifest(version: u64) -> Manifest {
    Manifest {
        tensorrt: format!("10.{version}"),
        cuda: Some("12.6".into()),
        gpu: Some("Orin".into()),
        compute_capability: Some("8.7".into()),
        precision: Precision::Int8,
        input_shapes: vec![("input".into(), vec![1, 3, 32, 32])],
        onnx_sha256: "ab".repeat(32),
        flags: vec!["--stronglyTyped".into()],
        dla_core: None,
    }
}

/// Writes version `v` of an artefact kind with the writer the product uses.
fn write(kind: &str, path: &Path, v: u64) {
    let (spec, w) = model(v % 2);
    match kind {
        "checkpoint" => checkpoint::save(path, &AnySpec::Train(spec), &w).unwrap(),
        "train_state" => {
            let meta = [("epoch".to_string(), (v % 2).to_string())]
                .into_iter()
                .collect();
            checkpoint::save_tensors(path, &w, &meta).unwrap()
        }
        "deploy" => {
            let (d, dw) = fold(&spec, &w).unwrap();
            checkpoint::save(path, &AnySpec::Deploy(d), &dw).unwrap()
        }
        "onnx" => {
            let (d, dw) = fold(&spec, &w).unwrap();
            let b = to_bytes(&export(&d, &dw, &ExportOptions::new(Precision::Fp32)).unwrap());
            write_file_atomic(path, &b).unwrap()
        }
        "manifest" => write_file_atomic(
            path,
            serde_json::to_string_pretty(&manifest(v % 2))
                .unwrap()
                .as_bytes(),
        )
        .unwrap(),
        "report" => write_file_atomic(
            path,
            format!("# report {}\n{}", v % 2, "x".repeat(200_000)).as_bytes(),
        )
        .unwrap(),
        _ => panic!("unknown kind {kind}"),
    }
}

/// Loads the artefact with the real loader; `Err` if it is not intact.
fn check(kind: &str, path: &Path) -> Result<(), String> {
    let e = |x: String| Err(format!("{kind}: {x}"));
    match kind {
        "checkpoint" | "deploy" => checkpoint::load(path)
            .map(|_| ())
            .or_else(|x| e(x.to_string())),
        "train_state" => checkpoint::load_tensors(path)
            .map(|_| ())
            .or_else(|x| e(x.to_string())),
        "onnx" => {
            use prost::Message;
            let b = std::fs::read(path).map_err(|x| x.to_string())?;
            overparam_engine::pb::ModelProto::decode(b.as_slice())
                .map(|_| ())
                .or_else(|x| e(x.to_string()))
        }
        "manifest" => {
            let t = std::fs::read_to_string(path).map_err(|x| x.to_string())?;
            let m: Manifest = serde_json::from_str(&t).map_err(|x| x.to_string())?;
            if m == manifest(0) || m == manifest(1) {
                Ok(())
            } else {
                e("unknown version".into())
            }
        }
        "report" => {
            let t = std::fs::read_to_string(path).map_err(|x| x.to_string())?;
            if t.len() == 200_011 && (t.starts_with("# report 0") || t.starts_with("# report 1")) {
                Ok(())
            } else {
                e(format!("{} bytes", t.len()))
            }
        }
        _ => e("unknown".into()),
    }
}

/// The writer side: rewrites forever (until killed).
#[test]
fn writer_child() {
    let Ok(spec) = std::env::var("OVERPARAM_WRITER") else {
        return;
    };
    let (kind, path) = spec.split_once(':').unwrap();
    for v in 0.. {
        write(kind, Path::new(path), v);
    }
}

#[test]
fn killed_writers_leave_the_previous_file_intact() {
    let kills: u64 = if std::env::var_os("OVERPARAM_SOAK").is_some() {
        200
    } else {
        12
    };
    let d = tempfile::tempdir().unwrap();
    let mut rng = overparam_fuse::Rng::new(42);
    for kind in KINDS {
        let path: PathBuf = d.path().join(format!("artefact.{kind}"));
        write(kind, &path, 0);
        for _ in 0..kills {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "writer_child",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("OVERPARAM_WRITER", format!("{kind}:{}", path.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_micros(2_000 + rng.next_u64() % 60_000));
            child.kill().unwrap();
            child.wait().unwrap();
            check(kind, &path).unwrap_or_else(|e| panic!("after a kill: {e}"));
        }
        // Leftover temp files of killed writers do not stop the next write, which removes them.
        write(kind, &path, 1);
        check(kind, &path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| f.starts_with(&format!(".{name}.")))
            .collect();
        if cfg!(target_os = "linux") {
            assert!(left.is_empty(), "{kind}: stale temp files {left:?}");
        }
    }
}

/// Entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// An interrupted `data synth-nyuv2 -o NEW` leaves no NEW and no staging (SIGINT and SIGTERM
/// alike), a killed one's staging is removed by the next writer of NEW, and the next writer
/// then writes NEW whole. Waits for the staging to appear, never for a fixed time.
#[test]
fn interrupted_dataset_writers_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("NEW");
    let synth = |out: &Path, train: &str| {
        Command::new(env!("CARGO_BIN_EXE_overparam"))
            .args(["data", "synth-nyuv2", "--train", train, "--val", "4"])
            .args(["--height", "96", "--width", "128", "-o"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Waits until the writer's staging directory holds a file, i.e. it is mid-write.
    let wait_for_staging = |child: &mut std::process::Child| {
        let staging = d.path().join(format!(".NEW.{}.staging", child.id()));
        let t0 = std::time::Instant::now();
        while !staging.join("train").exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the writer ended before it was interrupted"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no staging appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        staging
    };
    for sig in ["-INT", "-TERM"] {
        let mut child = synth(&out, "100000");
        wait_for_staging(&mut child);
        let s = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{sig}: {err}");
        assert!(
            err.contains("NEW was not written, and nothing of it is left"),
            "{sig}: {err}"
        );
        assert!(
            entries(d.path()).is_empty(),
            "{sig}: {:?}",
            entries(d.path())
        );
    }
    // SIGKILL gives no chance to clean up: the staging stays until the next writer.
    let mut child = synth(&out, "100000");
    let staging = wait_for_staging(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(staging.exists() && !out.exists());
    let o = synth(&out, "2").wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        entries(d.path()),
        ["NEW"],
        "the dead writer's staging is swept"
    );
    assert_eq!(entries(&out.join("train").join("image")).len(), 2);
}
