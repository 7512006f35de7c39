use std::path::PathBuf;

/// Errors of the engine crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
    #[error(transparent)]
    Data(#[from] overparam_data::Error),
    #[error("export: {0}")]
    Export(String),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error(
        "ONNX Runtime library not found ({0}): run scripts/setup.sh (installs onnxruntime==1.31.1 into .venv) or set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    RuntimeMissing(String),
    #[error("TensorRT: {0}")]
    TensorRt(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}
