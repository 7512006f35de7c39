//! ONNX Runtime as the CPU runtime (the `ort` crate with `load-dynamic`): the library is found
//! at run time ([`library_path`]: `ORT_DYLIB_PATH`, else the system's library directories,
//! else the project's `.venv`), and a missing library is an error that says how to get one,
//! never a panic. ORT runs Q/DQ models with real int8 kernels.
//!
//! The same runtime runs on a GPU through ONNX Runtime's TensorRT execution provider
//! ([`Provider::TensorRt`]) where the loaded library has it (onnxruntime-gpu builds; the CPU
//! wheel does not): TensorRT builds engines for the subgraphs it supports (cached on disk) and
//! ONNX Runtime runs the rest.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor as OrtTensor;

use crate::error::{Error, Result};

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();
static LIBRARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// What to do when no library is found; shared by every "not found" message.
pub const ORT_HINT: &str = "get one with `scripts/setup.sh --deploy` (installs only onnxruntime==1.31.1 into the project's .venv; x86_64 and aarch64 wheels exist), or `pip install onnxruntime==1.31.1` anywhere and set ORT_DYLIB_PATH to its onnxruntime/capi/libonnxruntime.so.1.31.1, or unpack an ONNX Runtime release (lib/libonnxruntime.so) into /usr/local; on Jetson use the onnxruntime-gpu build for your JetPack and set ORT_DYLIB_PATH";

/// The places [`library_path`] searches, in order (a struct so tests can point it elsewhere).
#[derive(Clone, Debug, Default)]
pub struct LibrarySearch {
    /// `ORT_DYLIB_PATH`: when set, it is the answer or the error; nothing else is tried.
    pub env: Option<PathBuf>,
    /// System library directories (`LD_LIBRARY_PATH`, /usr/local/lib, /usr/lib/<arch>-linux-gnu, ...).
    pub dirs: Vec<PathBuf>,
    /// Libraries the dynamic loader's cache knows (`ldconfig -p`).
    pub ldconfig: Vec<PathBuf>,
    /// Project roots whose `.venv/libonnxruntime.so` (scripts/setup.sh's link) may be used.
    pub projects: Vec<PathBuf>,
}

impl LibrarySearch {
    /// This process's places: the environment, the usual directories for this architecture,
    /// the loader cache, and the repositories above the executable and above this crate's
    /// sources (a development checkout).
    pub fn from_system() -> Self {
        let arch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        dirs.extend(
            [
                "/usr/local/lib",
                "/usr/local/lib64",
                &arch,
                "/usr/lib64",
                "/usr/lib",
            ]
            .map(PathBuf::from),
        );
        let mut projects: Vec<PathBuf> = std::env::current_exe()
            .and_then(|e| e.canonicalize())
            .map(|e| e.ancestors().skip(1).map(Path::to_path_buf).collect())
            .unwrap_or_default();
        projects.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        Self {
            env: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
            dirs,
            ldconfig: ldconfig_libraries(),
            projects,
        }
    }

    /// The first library found, or a message naming every place looked at and how to get one.
    pub fn find(&self) -> std::result::Result<PathBuf, String> {
        if let Some(p) = &self.env {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(format!(
                    "ORT_DYLIB_PATH={} is not a file; point it at libonnxruntime.so, or unset it to search the system and the project's .venv",
                    p.display()
                ))
            };
        }
        for d in &self.dirs {
            if let Some(p) = library_in(d) {
                return Ok(p);
            }
        }
        if let Some(p) = self.ldconfig.iter().find(|p| p.is_file()) {
            return Ok(p.clone());
        }
        for root in &self.projects {
            let p = root.join(".venv/libonnxruntime.so");
            if p.is_file() {
                return Ok(p);
            }
        }
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "no libonnxruntime.so: ORT_DYLIB_PATH is unset, none in {} or the loader cache (ldconfig -p), and no .venv/libonnxruntime.so in a directory above the executable or in the source tree it was built from; {ORT_HINT}",
            dirs.join(", ")
        ))
    }
}

/// `libonnxruntime.so` in `dir`, else its highest versioned name (`libonnxruntime.so.1.31.1`).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                && p.is_file()
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// ONNX Runtime libraries in the dynamic loader's cache (`ldconfig -p`), if ldconfig is there.
fn ldconfig_libraries() -> Vec<PathBuf> {
    for exe in ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"] {
        let Ok(out) = std::process::Command::new(exe)
            .arg("-p")
            .stderr(std::process::Stdio::null())
            .output()
        else {
            continue;
        };
        return parse_ldconfig(&String::from_utf8_lossy(&out.stdout));
    }
    vec![]
}

/// Lines like `\tlibonnxruntime.so.1 (libc6,AArch64) => /usr/lib/libonnxruntime.so.1`.
fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("libonnxruntime.so"))
        .filter_map(|l| l.split_once(" => ").map(|(_, p)| PathBuf::from(p.trim())))
        .collect()
}

/// The ONNX Runtime shared library this process uses (searched once; see [`LibrarySearch`]).
pub fn library_path() -> Result<PathBuf> {
    LIBRARY
        .get_or_init(|| LibrarySearch::from_system().find())
        .clone()
        .map_err(Error::RuntimeMissing)
}

/// ONNX Runtime's own warnings and errors, the latest few, kept instead of printed: its
/// default logger writes raw lines to stderr, our messages carry their content instead
/// ([`take_log`], used by the `ort::Error` conversion).
static LOG: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn keep_log(level: ort::logging::LogLevel, message: &str) {
    if level >= ort::logging::LogLevel::Warning {
        let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == 8 {
            log.pop_front();
        }
        log.push_back(message.trim().to_string());
    }
}

/// The warnings and errors ONNX Runtime logged since the last call, oldest first.
pub fn take_log() -> Vec<String> {
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.drain(..).collect()
}

fn environment() -> Result<&'static ort::environment::Environment> {
    let path = library_path()?;
    ENV.get_or_init(|| {
        ort::init_from(&path)
            .map_err(|e| format!("{}: {e}; {ORT_HINT}", path.display()))?
            .with_logger(std::sync::Arc::new(
                |level, _category, _id, _location, message| keep_log(level, message),
            ))
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
    let from_name = library_path()?.canonicalize().ok().and_then(|p| {
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
            .with_log_level(ort::logging::LogLevel::Warning)
            .map_err(map)?
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
                    library_path()?.display()
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
        // Only the first input is fed (an image batch); name them all rather than let
        // ONNX Runtime fail on the first run.
        if session.inputs().len() > 1 {
            let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
            return Err(Error::Runtime(format!(
                "the model has {} inputs: {}; overparam feeds one (the image batch)",
                names.len(),
                names.join(", ")
            )));
        }
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

    /// One run on an all-zero input: the outputs' names and shapes, in model order.
    pub fn probe(&mut self) -> Result<Vec<Output>> {
        let n: usize = self.input_shape.iter().product();
        self.run(&vec![0.0; n])
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

#[cfg(test)]
mod library_search_tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn ort_dylib_path_wins_and_a_wrong_one_is_an_error_not_a_fallback() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        touch(&sys.join("libonnxruntime.so"));
        let mine = d.path().join("mine/libonnxruntime.so.1.31.1");
        touch(&mine);
        let mut s = LibrarySearch {
            env: Some(mine.clone()),
            dirs: vec![sys.clone()],
            ..Default::default()
        };
        assert_eq!(s.find().unwrap(), mine);
        s.env = Some(d.path().join("nope.so"));
        let e = s.find().unwrap_err();
        assert!(
            e.contains("ORT_DYLIB_PATH=") && e.contains("nope.so"),
            "{e}"
        );
    }

    #[test]
    fn system_directories_come_before_the_virtualenv() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        touch(&b.join("libonnxruntime.so.1.24.4"));
        touch(&b.join("libonnxruntime.so.1.31.1"));
        let repo = d.path().join("repo");
        touch(&repo.join(".venv/libonnxruntime.so"));
        let mut s = LibrarySearch {
            env: None,
            dirs: vec![a.clone(), b.clone()],
            ldconfig: vec![],
            projects: vec![repo.clone()],
        };
        // No plain name in b: the highest versioned one.
        assert_eq!(s.find().unwrap(), b.join("libonnxruntime.so.1.31.1"));
        s.dirs = vec![a];
        assert_eq!(s.find().unwrap(), repo.join(".venv/libonnxruntime.so"));
        // The loader cache sits between the directories and the virtualenv.
        let cached = d.path().join("cache/libonnxruntime.so.1");
        touch(&cached);
        s.ldconfig = vec![d.path().join("gone.so"), cached.clone()];
        assert_eq!(s.find().unwrap(), cached);
    }

    #[test]
    fn nothing_found_says_where_it_looked_and_how_to_get_one() {
        let d = tempfile::tempdir().unwrap();
        let s = LibrarySearch {
            env: None,
            dirs: vec![d.path().join("lib")],
            ldconfig: vec![],
            projects: vec![d.path().to_path_buf()],
        };
        let e = s.find().unwrap_err();
        for want in [
            "ORT_DYLIB_PATH",
            "scripts/setup.sh --deploy",
            "ldconfig",
            &d.path().join("lib").display().to_string(),
        ] {
            assert!(e.contains(want), "`{want}` missing from: {e}");
        }
    }

    #[test]
    fn ldconfig_lines_are_parsed() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\tlibonnxruntime.so.1 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libonnxruntime.so.1\n\tlibm.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libm.so.6\n";
        assert_eq!(
            parse_ldconfig(text),
            vec![PathBuf::from(
                "/usr/lib/aarch64-linux-gnu/libonnxruntime.so.1"
            )]
        );
    }
}
