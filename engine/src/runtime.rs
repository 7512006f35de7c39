//! ONNX Runtime as the CPU runtime (the `ort` crate with `load-dynamic`): the library is found
//! at run time (`ORT_DYLIB_PATH`, else the project's `.venv/libonnxruntime.so`), and a missing
//! library is an error, never a panic. ORT runs Q/DQ models with real int8 kernels.
//!
//! The same runtime runs on a GPU through ONNX Runtime's TensorRT execution provider
//! ([`Provider::TensorRt`]) where the loaded library has it (onnxruntime-gpu builds; the CPU
//! wheel does not): TensorRT builds engines for the subgraphs it supports (cached on disk) and
//! ONNX Runtime runs the rest.

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

/// Where ONNX Runtime runs the model.
#[derive(Clone, Debug, Default)]
pub enum Provider {
    /// The CPU execution provider (every ONNX Runtime build).
    #[default]
    Cpu,
    /// The TensorRT execution provider, falling back to CPU for unsupported nodes.
    TensorRt(TrtEpOptions),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Cpu => "CPU EP",
            Provider::TensorRt(_) => "TensorRT EP",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrtEpOptions {
    pub device_id: i32,
    /// Engine and timing caches (TensorRT builds take seconds to minutes; reuse them).
    pub cache_dir: Option<PathBuf>,
    /// Deep-learning accelerator core (Jetson), with GPU fallback.
    pub dla_core: Option<u32>,
    pub workspace_mib: usize,
}

impl Default for TrtEpOptions {
    fn default() -> Self {
        Self {
            device_id: 0,
            cache_dir: None,
            dla_core: None,
            workspace_mib: 2048,
        }
    }
}

pub const TRT_EP_HINT: &str = "this ONNX Runtime library was built without the TensorRT execution provider (the PyPI `onnxruntime` wheel is CPU-only): install `onnxruntime-gpu` on a machine with CUDA and TensorRT, or build ONNX Runtime with --use_tensorrt, and set ORT_DYLIB_PATH to its libonnxruntime.so (libonnxruntime_providers_tensorrt.so must sit beside it)";

/// Which reduced precisions the model's graph uses, so the TensorRT EP enables exactly those
/// (an FP32 export must not be run in FP16 behind the user's back).
pub fn graph_precisions(model: &[u8]) -> Result<(bool, bool)> {
    use crate::pb::tensor_proto::DataType;
    let m: crate::pb::ModelProto = prost::Message::decode(model)
        .map_err(|e| Error::Runtime(format!("not an ONNX model: {e}")))?;
    let g = m.graph.unwrap_or_default();
    let fp16 = g
        .initializer
        .iter()
        .any(|t| t.data_type == Some(DataType::Float16 as i32))
        || g.node.iter().any(|n| {
            n.op_type.as_deref() == Some("Cast")
                && n.attribute.iter().any(|a| {
                    a.name.as_deref() == Some("to") && a.i == Some(DataType::Float16 as i64)
                })
        });
    let int8 = g.node.iter().any(|n| {
        n.op_type.as_deref() == Some("QuantizeLinear")
            || n.op_type.as_deref() == Some("DequantizeLinear")
    });
    Ok((fp16, int8))
}

/// One loaded model.
pub struct OrtRuntime {
    session: Session,
    input_name: String,
    /// The first input's dimensions as the model declares them (−1: symbolic).
    input_dims: Vec<i64>,
    /// The symbol of each dimension (empty for static ones).
    input_symbols: Vec<String>,
    /// The shape `run` feeds: the declared one, symbolic dimensions as 0 until
    /// [`OrtRuntime::set_input_shape`] fixes them.
    input_shape: Vec<usize>,
}

/// A named output: shape and data.
pub type Output = (String, Vec<usize>, Vec<f32>);

impl OrtRuntime {
    /// The model on the CPU execution provider.
    pub fn new(model: &[u8], threads: Option<usize>) -> Result<Self> {
        Self::with_provider(model, threads, &Provider::Cpu)
    }

    pub fn with_provider(
        model: &[u8],
        threads: Option<usize>,
        provider: &Provider,
    ) -> Result<Self> {
        let env = environment()?;
        let map =
            |e: ort::Error<ort::session::builder::SessionBuilder>| Error::Runtime(e.to_string());
        let mut b = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(map)?;
        if let Some(t) = threads {
            b = b.with_intra_threads(t).map_err(map)?;
        }
        if let Provider::TensorRt(o) = provider {
            use ort::ep::{ExecutionProvider, TensorRT};
            if !TensorRT::is_available()? {
                return Err(Error::TensorRt(format!(
                    "{}: {TRT_EP_HINT}",
                    library_path().display()
                )));
            }
            let (fp16, int8) = graph_precisions(model)?;
            let mut ep = TensorRT::default()
                .with_device_id(o.device_id)
                .with_fp16(fp16)
                .with_int8(int8)
                .with_max_workspace_size(o.workspace_mib << 20)
                .with_timing_cache(true);
            if let Some(d) = &o.cache_dir {
                std::fs::create_dir_all(d).map_err(|e| Error::Io {
                    path: d.clone(),
                    source: e,
                })?;
                let d = d.display().to_string();
                ep = ep
                    .with_engine_cache(true)
                    .with_engine_cache_path(&d)
                    .with_timing_cache_path(&d);
            }
            if let Some(c) = o.dla_core {
                ep = ep.with_dla(true).with_dla_core(c);
            }
            b = b
                .with_execution_providers([ep.build().error_on_failure()])
                .map_err(|e| {
                    Error::TensorRt(format!(
                        "ONNX Runtime could not start its TensorRT execution provider (is CUDA and TensorRT's libnvinfer on the library path?): {e}"
                    ))
                })?;
        }
        let session = b.commit_from_memory(model)?;
        let (input_name, input_dims, input_symbols) = match session.inputs().first() {
            Some(i) => match i.dtype() {
                ort::value::ValueType::Tensor {
                    shape,
                    dimension_symbols,
                    ..
                } => (
                    i.name().to_string(),
                    shape.to_vec(),
                    dimension_symbols.to_vec(),
                ),
                _ => return Err(Error::Runtime("the model has no tensor input".into())),
            },
            None => return Err(Error::Runtime("the model has no tensor input".into())),
        };
        let input_shape = input_dims.iter().map(|&d| d.max(0) as usize).collect();
        Ok(Self {
            session,
            input_name,
            input_dims,
            input_symbols,
            input_shape,
        })
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The name of the (first) input.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// The input's dimensions as the model declares them: −1 for a symbolic dimension. Empty
    /// for a scalar input or one of unknown rank.
    pub fn input_dims(&self) -> &[i64] {
        &self.input_dims
    }

    /// The symbol of each input dimension (`""` for static ones, and for unnamed symbolic ones).
    pub fn input_symbols(&self) -> &[String] {
        &self.input_symbols
    }

    /// Sets the shape `run` feeds, for inputs with symbolic dimensions: same rank, and every
    /// static dimension as declared.
    pub fn set_input_shape(&mut self, shape: &[usize]) -> Result<()> {
        let fits = shape.len() == self.input_dims.len()
            && shape
                .iter()
                .zip(&self.input_dims)
                .all(|(&s, &d)| d < 0 || s as i64 == d);
        if !fits {
            return Err(Error::Runtime(format!(
                "input `{}` is declared {:?} (−1: symbolic); it cannot be fed as {shape:?}",
                self.input_name, self.input_dims
            )));
        }
        self.input_shape = shape.to_vec();
        Ok(())
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
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => t])?;
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
