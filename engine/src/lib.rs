//! overparam-engine: ONNX export of deploy models (FP32, FP16, INT8 Q/DQ), calibration, ONNX
//! Runtime as the CPU runtime, TensorRT engine builds with manifests, latency benchmarks.

pub mod accuracy;
pub mod calib;
pub mod dense;
pub mod error;
pub mod export;
pub mod latency;
pub mod onnx;
pub mod runtime;
pub mod trt;
#[cfg(feature = "tensorrt")]
pub mod trt_native;

pub use error::{Error, Result};

/// ONNX protobuf types, generated at build time from onnx.proto.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
