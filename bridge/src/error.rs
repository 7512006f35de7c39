use std::path::PathBuf;

/// Everything the bridge can fail on. Decoding errors are values, never panics: a subscriber
/// counts them and keeps going.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("payload too short: {got} bytes, the header alone needs {need}")]
    Truncated { got: usize, need: usize },
    #[error("bad magic {0:02x?}: not an overparam tensor message")]
    Magic([u8; 4]),
    #[error("wire format version {got} is not supported (this build reads version {supported})")]
    Version { got: u16, supported: u16 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("CDR: {0}")]
    Cdr(String),
    /// A camera Image in an encoding the bridge does not convert.
    #[error(
        "image encoding {0:?} is not supported as camera input (use rgb8, bgr8, rgba8, bgra8 or mono8)"
    )]
    UnsupportedEncoding(String),
    #[error("zenoh: {0}")]
    Zenoh(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("source: {0}")]
    Source(String),
    /// An option that cannot work (a rate of 0, no frames), refused before anything runs.
    #[error("{0}")]
    InvalidOption(String),
    #[cfg(feature = "run")]
    #[error(transparent)]
    Engine(#[from] overparam_engine::Error),
    #[error(transparent)]
    Data(#[from] overparam_data::Error),
    #[cfg(feature = "run")]
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<zenoh::Error> for Error {
    fn from(e: zenoh::Error) -> Self {
        Error::Zenoh(e.to_string())
    }
}
