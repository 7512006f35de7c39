/// Errors of the train crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libtorch's message is part of this one, so it is not also a `source` (which would print
    /// it twice in error chains).
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
    #[error(transparent)]
    Data(#[from] overparam_data::Error),
    #[error("model: {0}")]
    Model(String),
    #[error("config: {0}")]
    Config(String),
    #[error("run {dir}: {message}")]
    Run {
        dir: std::path::PathBuf,
        message: String,
    },
    /// The cause is the source (error reports print the chain), not part of this message.
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A config error keeps its message (`config: …`); a method error inside it stays a fuse error.
impl From<overparam_config::Error> for Error {
    fn from(e: overparam_config::Error) -> Self {
        match e {
            overparam_config::Error::Config(m) => Error::Config(m),
            overparam_config::Error::Fuse(f) => Error::Fuse(f),
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e)
    }
}
