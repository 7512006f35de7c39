//! ONNX Runtime as the CPU runtime (the `ort` crate with `load-dynamic`): the library is found
//! at run time (`ORT_DYLIB_PATH`, else the project's `.venv/libonnxruntime.so`), and a missing
//! library is an error, never a panic. ORT runs Q/DQ models with real int8 kernels.

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor as OrtTensor;

use crate::error::{Error, Result};

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime shared library is looked for.
pub fn library_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("OVERPARAM_DEFAULT_ORT")))
}

fn environment() -> Result<&'static ort::environment::Environment> {
    ENV.get_or_init(|| {
        let path = library_path();
        if !path.exists() {
            return Err(format!("{} does not exist", path.display()));
        }
        ort::init_from(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .with_name("overparam")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::RuntimeMissing(e.clone()))
}

/// The ONNX Runtime version of the loaded library (from its versioned file name, which the
/// wheel ships as `libonnxruntime.so.X.Y.Z`), else its build-info string.
pub fn version() -> Result<String> {
    environment()?;
    let from_name = library_path().canonicalize().ok().and_then(|p| {
        p.file_name()?
            .to_str()?
            .split_once(".so.")
            .map(|(_, v)| v.to_string())
    });
    Ok(from_name.unwrap_or_else(|| ort::info().to_string()))
}

/// One loaded model.
pub struct CpuRuntime {
    session: Session,
    input_shape: Vec<usize>,
}

/// A named output: shape and data.
pub type Output = (String, Vec<usize>, Vec<f32>);

impl CpuRuntime {
    pub fn new(model: &[u8], threads: Option<usize>) -> Result<Self> {
        let env = environment()?;
        let map =
            |e: ort::Error<ort::session::builder::SessionBuilder>| Error::Runtime(e.to_string());
        let mut b = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(map)?;
        if let Some(t) = threads {
            b = b.with_intra_threads(t).map_err(map)?;
        }
        let session = b.commit_from_memory(model)?;
        let input_shape = match session.inputs().first().map(|i| i.dtype()) {
            Some(ort::value::ValueType::Tensor { shape, .. }) => {
                shape.iter().map(|&d| d.max(0) as usize).collect()
            }
            _ => return Err(Error::Runtime("the model has no tensor input".into())),
        };
        Ok(Self {
            session,
            input_shape,
        })
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Runs one batch (its shape must be the model's static input shape).
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<Output>> {
        let n: usize = self.input_shape.iter().product();
        if input.len() != n {
            return Err(Error::Runtime(format!(
                "input has {} values, the model expects {:?} = {n}",
                input.len(),
                self.input_shape
            )));
        }
        let t = OrtTensor::from_array((self.input_shape.clone(), input.to_vec()))?;
        let name = self.session.inputs()[0].name().to_string();
        let outputs = self.session.run(ort::inputs![name => t])?;
        let mut out = Vec::new();
        for (name, v) in outputs.iter() {
            let (shape, data) = v.try_extract_tensor::<f32>()?;
            out.push((
                name.to_string(),
                shape.iter().map(|&d| d as usize).collect(),
                data.to_vec(),
            ));
        }
        Ok(out)
    }
}
