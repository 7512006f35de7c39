/// Errors of the train crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
