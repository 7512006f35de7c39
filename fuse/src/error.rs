use std::path::PathBuf;

/// Errors of the fuse crate. Messages name the file and the tensor or node at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid model spec: {0}")]
    Spec(String),
    /// The memory estimate exceeds what the machine has ([`crate::memory::check`]).
    #[error("{0}")]
    TooLarge(String),
    #[error("method `{method}` cannot be applied to conv `{node}`: {reason}")]
    Method {
        node: String,
        method: String,
        reason: String,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("weights: tensor `{tensor}`: {message}")]
    Weights { tensor: String, message: String },
    #[error(
        "{path}: already a deploy checkpoint (no BatchNorm, no method); there is nothing to fold"
    )]
    AlreadyDeployed { path: PathBuf },
    #[error("{path}: expected a {expected} checkpoint, found a {found} checkpoint")]
    WrongStage {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    /// An ONNX node the importer cannot take as it is.
    #[error("ONNX node `{node}` ({op_type}): {message}")]
    Import {
        node: String,
        op_type: String,
        message: String,
    },
    #[error("ONNX node `{node}`: op `{op_type}` is not supported (import takes: {supported})")]
    Unsupported {
        node: String,
        op_type: String,
        supported: String,
    },
    /// The ONNX graph as a whole (inputs, outputs, opset).
    #[error("ONNX graph: {0}")]
    ImportGraph(String),
    #[error("executor: node `{node}`: {message}")]
    Exec { node: String, message: String },
    /// The cause is the source (error reports print the chain), not part of this message.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn weights(tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Weights {
            tensor: tensor.into(),
            message: message.into(),
        }
    }
}
