//! overparam-data: dataset readers (CIFAR-10/100 binary, the MNIST family's IDX, NYUv2 as
//! MTAN's `.npy` files), synthetic generators that write the same formats, augmentation, a
//! prefetching deterministic loader, metrics (top-k; mIoU, depth and normal errors, Δm), and
//! PNG plots.

pub mod cifar;
pub mod dataset;
pub mod error;
pub mod idx;
pub mod loader;
pub mod metrics;
pub mod npy;
pub mod nyuv2;
pub mod plot;
pub mod png;
pub mod scenes;
pub mod synth;

pub use error::{Error, Result};
