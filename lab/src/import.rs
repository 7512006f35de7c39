//! `overparam import`: a trained network from ONNX becomes a deploy checkpoint like any
//! other. The imported model is checked against the original in ONNX Runtime on seeded
//! inputs, twice: our f64 reference executor, and our own fp32 re-export. Both deviations are
//! measurements, never gates (about 1e-6 relative is fp32 rounding; above
//! [`SUSPECT_REL`] means a bug in an importer).

use std::path::{Path, PathBuf};
use std::time::Instant;

use overparam_base::{Progress, Rng};
use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
use overparam_engine::onnx_file;
use overparam_engine::runtime::{OrtRuntime, Output};
use overparam_fuse::import::{ImportOptions, Imported};
use overparam_fuse::verify::Deviation;
use overparam_fuse::{AnySpec, Tensor, checkpoint};
use serde::Serialize;

use crate::error::{Error, Result};

/// Relative deviation above which an import is suspect (fp32 rounding gives about 1e-6).
pub const SUSPECT_REL: f64 = 1e-4;

/// What `overparam import` is asked.
#[derive(Clone, Debug)]
pub struct Request {
    pub model: PathBuf,
    pub output: PathBuf,
    pub options: ImportOptions,
    /// Seed of the check inputs.
    pub seed: u64,
    /// Compare with the original in ONNX Runtime (skipped, saying so, without a runtime).
    pub check: bool,
}

/// One output of the imported model against the original.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was compared with the original: `f64 reference executor` or `fp32 re-export (ONNX Runtime)`.
    pub against: &'static str,
    pub deviation: Deviation,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: PathBuf,
    pub output: PathBuf,
    pub producer: String,
    pub opset: i64,
    pub nodes: usize,
    pub params: usize,
    pub macs: usize,
    pub batch: usize,
    /// Outputs with their roles: (name, role).
    pub outputs: Vec<(String, &'static str)>,
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
    /// Why the ONNX Runtime checks did not run, if they did not.
    pub unchecked: Option<String>,
    pub import_seconds: f64,
}

impl Report {
    /// Whether any check exceeds [`SUSPECT_REL`] (or is not finite).
    pub fn suspect(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.deviation.rel.is_nan() || c.deviation.rel > SUSPECT_REL)
    }
}

/// Who wrote an ONNX model, and at which opset.
#[derive(Clone, Debug)]
pub struct Origin {
    pub producer: String,
    pub opset: i64,
}

/// Reads and imports an ONNX model (no checks, nothing written). The decoded graph is dropped
/// before this returns: only the imported weights stay (the peak is about twice the file).
pub fn read(path: &Path, options: &ImportOptions) -> Result<(Imported, Origin)> {
    let g = onnx_file::read_graph(path)?;
    let mut options = options.clone();
    if options.model.is_empty() {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        options.model = format!("imported:{}", stem.unwrap_or_default());
    }
    let imported = overparam_fuse::import::import(&g, &options)
        .map_err(|e| Error::from(e).context(format!("importing {}", path.display())))?;
    let origin = Origin {
        producer: g.producer.clone(),
        opset: g.opset,
    };
    Ok((imported, origin))
}

/// Seeded N(0, 1) check inputs for a model (`batch` images).
pub fn check_input(spec: &overparam_fuse::DeploySpec, batch: usize, seed: u64) -> Tensor<f64> {
    use overparam_fuse::RandomTensor;
    let i = &spec.input;
    Rng::derive(seed, "import.check").normal_tensor(&[batch, i.channels, i.height, i.width], 1.0)
}

fn by_name<'a>(outs: &'a [Output], name: &str) -> Option<&'a Output> {
    outs.iter().find(|o| o.0 == name)
}

/// The imported model against the original ONNX in ONNX Runtime, per output: the f64
/// reference executor, and the fp32 re-export run by ONNX Runtime.
pub fn check(imported: &Imported, original: &[u8], seed: u64) -> Result<Vec<Check>> {
    let spec = &imported.spec;
    let batch = imported.batch;
    let x = check_input(spec, batch, seed);
    let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
    let mut ort = OrtRuntime::new(original, Some(1))?;
    if ort.input_dims().iter().any(|&d| d < 0) {
        ort.set_input_shape(&x.shape)?;
    }
    let want = ort.run(&x32)?;
    let w64: overparam_fuse::Weights<f64> = imported
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), v.cast()))
        .collect();
    let reference = overparam_fuse::exec::run(spec, &w64, &x32_as_f64(&x32, &x.shape))?;
    let reexport = export(
        spec,
        &imported.weights,
        &ExportOptions {
            batch,
            ..ExportOptions::new(Precision::Fp32)
        },
    )?;
    let ours = OrtRuntime::new(&to_bytes(&reexport), Some(1))?.run(&x32)?;
    let mut checks = vec![];
    for (name, got) in &reference {
        let o = by_name(&want, name)
            .ok_or_else(|| Error::Run(format!("the original model has no output `{name}`")))?;
        let orig = Tensor::new(o.1.clone(), o.2.clone());
        checks.push(Check {
            against: "f64 reference executor",
            deviation: Deviation::between(name, &orig, got),
        });
        if let Some(r) = by_name(&ours, name) {
            checks.push(Check {
                against: "fp32 re-export (ONNX Runtime)",
                deviation: Deviation::between(name, &orig, &Tensor::new(r.1.clone(), r.2.clone())),
            });
        }
    }
    Ok(checks)
}

/// The f32 check input widened, so the reference sees exactly what ONNX Runtime sees.
fn x32_as_f64(x: &[f32], shape: &[usize]) -> Tensor<f64> {
    Tensor::new(shape.to_vec(), x.iter().map(|&v| v as f64).collect())
}

/// Imports, checks and writes the deploy checkpoint (atomically; nothing is written when
/// import fails).
pub fn run(req: &Request, progress: &dyn Progress) -> Result<Report> {
    let t0 = Instant::now();
    progress.event(&format!("import: reading {}", req.model.display()));
    let (imported, origin) = read(&req.model, &req.options)?;
    let import_seconds = t0.elapsed().as_secs_f64();
    let (checks, unchecked) = if !req.check {
        (vec![], Some("--no-check".to_string()))
    } else {
        progress.event("import: checking against the original in ONNX Runtime");
        let bytes = onnx_file::model_bytes(&req.model)?;
        match check(&imported, &bytes, req.seed) {
            Ok(c) => (c, None),
            Err(Error::Engine(overparam_engine::Error::RuntimeMissing(m))) => {
                (vec![], Some(format!("no ONNX Runtime: {m}")))
            }
            Err(e) => return Err(e.context("checking the import against the original")),
        }
    };
    let spec = AnySpec::Deploy(imported.spec.clone());
    checkpoint::save(&req.output, &spec, &imported.weights)?;
    let summary = overparam_fuse::inspect::summarize(&spec)?;
    Ok(Report {
        model: req.model.clone(),
        output: req.output.clone(),
        producer: origin.producer,
        opset: origin.opset,
        nodes: imported.spec.nodes.len(),
        params: summary.total_params,
        macs: summary.total_macs,
        batch: imported.batch,
        outputs: imported
            .spec
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.role.name()))
            .collect(),
        notes: imported.notes.clone(),
        checks,
        unchecked,
        import_seconds,
    })
}

/// An expansion of a deploy checkpoint (`init --from`) with its f64 verdict.
pub struct Expansion {
    pub expanded: overparam_fuse::expand::Expanded,
    /// The expanded model in eval mode against the plain one, f64, 1e-9 relative.
    pub verdict: overparam_fuse::verify::Verification,
    pub seconds: f64,
}

/// Expands a deploy checkpoint exactly with a method and checks it in f64 (nothing written).
pub fn expand(from: &Path, method: &overparam_fuse::MethodConfig, seed: u64) -> Result<Expansion> {
    let t0 = Instant::now();
    let (spec, w) = overparam_fuse::checkpoint::load_deploy(from).map_err(|e| match e {
        overparam_fuse::Error::WrongStage { .. } => Error::file(
            from,
            "a train-time checkpoint; --from takes a deploy checkpoint (fold it with overparam fuse, or import one with overparam import)",
        ),
        e => e.into(),
    })?;
    let expanded = overparam_fuse::expand::expand(&spec, &w, method, seed)
        .map_err(|e| Error::from(e).context(format!("expanding {}", from.display())))?;
    let verdict = overparam_fuse::verify::verify_expansion(
        &spec,
        &w,
        &expanded.spec,
        &expanded.weights,
        2,
        seed,
    )?;
    Ok(Expansion {
        expanded,
        verdict,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
