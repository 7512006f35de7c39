/// Errors of the lab crate: its own (a grid file, a run directory) and those of the crates it
/// drives, kept as sources so a report prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that could not be read or written; the cause is the source.
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that was read but is wrong (not an experiment file, an empty grid, a bad cell).
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    /// Something a run or grid produced that makes no sense (no finished cells, a fold that is
    /// not exact, a bridge that lost messages).
    #[error("{0}")]
    Run(String),
    /// What was being done when `source` failed (e.g. the cell and its base config).
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    Config(#[from] overparam_config::Error),
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
    #[error(transparent)]
    Data(#[from] overparam_data::Error),
    #[error(transparent)]
    Engine(#[from] overparam_engine::Error),
    #[error(transparent)]
    Bridge(#[from] overparam_bridge::Error),
    #[cfg(feature = "train")]
    #[error(transparent)]
    Train(#[from] overparam_train::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>) -> Error {
        Error::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// This error with `context` in front of it.
    pub(crate) fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}
