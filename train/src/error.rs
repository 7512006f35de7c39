/// Errors of the train crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Fuse(#[from] overparam_fuse::Error),
    #[error("model: {0}")]
    Model(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
