//! `overparam import` of a 25M-parameter ONNX: wall time and peak memory against the file's
//! size (goal: ≤ 2 s, peak ≤ 2× the file). The model is our own FP32 export of ResNet-50 at
//! width 1.04 (24.9M parameters at 32×32; the importer reads it as any exporter's), written with
//! its weights inline and as external data. Each import runs in a child process (this bench
//! re-executed) so its peak resident memory (VmHWM) is its own:
//!     cargo bench --bench import

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
use overparam_fuse::init::random_weights;
use overparam_fuse::layout::train_layout;
use overparam_fuse::models::{ClassifierOptions, ModelKind, build};
use overparam_fuse::{MethodConfig, MethodKind, fold};

/// Peak resident memory of this process, bytes.
fn vm_hwm() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The child: import `model` into `out`, print "seconds peak_bytes baseline_bytes".
fn child(model: &Path, out: &Path) {
    let base = vm_hwm();
    let t = Instant::now();
    let (imported, _) = overparam_lab::import::read(model, &Default::default()).unwrap();
    let after_read = vm_hwm();
    overparam_fuse::checkpoint::save(
        out,
        &overparam_fuse::AnySpec::Deploy(imported.spec),
        &imported.weights,
    )
    .unwrap();
    println!(
        "{} {} {} {after_read}",
        t.elapsed().as_secs_f64(),
        vm_hwm(),
        base
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = build(
        ModelKind::Resnet50Cifar,
        &ClassifierOptions {
            width: 1.04,
            ..ClassifierOptions::new(MethodConfig::new(MethodKind::Plain))
        },
    )
    .unwrap();
    let (dspec, dw) = fold(
        &spec,
        &random_weights::<f32>(&train_layout(&spec).unwrap(), 0),
    )
    .unwrap();
    let params: usize = dw.values().map(|t| t.numel()).sum();
    let onnx = to_bytes(&export(&dspec, &dw, &ExportOptions::new(Precision::Fp32)).unwrap());
    let inline = dir.path().join("r50.onnx");
    std::fs::write(&inline, &onnx).unwrap();
    // The same model with its weights as external data, as the dynamo exporter writes it.
    let external = dir.path().join("r50x.onnx");
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(py)
        .args([
            "-c",
            "import onnx,sys\nm=onnx.load(sys.argv[1])\nonnx.save(m,sys.argv[2],save_as_external_data=True,location='r50x.onnx.data')",
            inline.to_str().unwrap(),
            external.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    println!(
        "import of a {:.1}M-parameter ONNX ({:.1} MB), best of 3 runs, each in its own process:",
        params as f64 / 1e6,
        onnx.len() as f64 / 1e6
    );
    let mut cases = vec![("inline", inline.clone())];
    if ok {
        cases.push(("external data", external));
    }
    let me = std::env::current_exe().unwrap();
    for (what, model) in cases {
        let (mut best_t, mut best_peak, mut base, mut read_peak) =
            (f64::INFINITY, u64::MAX, 0u64, u64::MAX);
        for _ in 0..3 {
            let out = Command::new(&me)
                .args([
                    "--child",
                    model.to_str().unwrap(),
                    dir.path().join("out.safetensors").to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let v: Vec<f64> = line
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            best_t = best_t.min(v[0]);
            best_peak = best_peak.min(v[1] as u64);
            base = v[2] as u64;
            read_peak = read_peak.min(v[3] as u64);
        }
        let file = onnx.len() as f64;
        println!(
            "  {what:<14} {best_t:.2} s (goal ≤ 2 s); peak RSS {:.0} MB, {:.2}× the file ({:.2}× above the process's {:.0} MB before; goal ≤ 2×; reading and importing alone {:.2}×)",
            best_peak as f64 / 1e6,
            best_peak as f64 / file,
            (best_peak.saturating_sub(base)) as f64 / file,
            base as f64 / 1e6,
            (read_peak.saturating_sub(base)) as f64 / file,
        );
    }
}
