//! overparam-fuse: the model spec (train-time and deploy-time graphs) and its ops as units
//! ([`ops`]: shape rule, reference kernel, MACs, ONNX import, one forward for every backend),
//! ONNX import into a deploy spec ([`import`]), the parameter layout of every
//! overparameterisation method, exact folding, safetensors checkpoints, and a naive reference
//! executor so folds are testable without libtorch.
//!
//! The weight-naming convention is documented in [`layout`].

pub mod checkpoint;
pub mod error;
pub mod exec;
pub mod expand;
pub mod fold;
pub mod import;
pub mod init;
pub mod inspect;
pub mod layout;
pub mod linalg;
pub mod memory;
pub mod method;
pub mod models;
pub mod ops;
pub mod reparam;
pub mod spec;
pub mod tensor;
pub mod verify;

pub use error::{Error, Result};
pub use fold::{Weights, fold};
pub use method::{Method, MethodConfig, MethodKind};
pub use spec::{AnySpec, DeploySpec, TrainSpec};
pub use tensor::{RandomTensor, Real, Rng, Tensor};
