//! overparam-engine: ONNX export of deploy models (FP32, FP16, INT8 Q/DQ), calibration, ONNX
//! Runtime as the CPU runtime, TensorRT engine builds with manifests, latency benchmarks.

pub mod accuracy;
pub mod calib;
pub mod compare;
pub mod dense;
pub mod error;
pub mod export;
pub mod latency;
pub mod onnx;
pub mod onnx_file;
pub mod quant;
pub mod runtime;
pub mod trt;
#[cfg(feature = "tensorrt")]
pub mod trt_native;

pub use error::{Error, Result};

/// ONNX protobuf types: prost code generated from onnx.proto (onnx 1.23.2, Apache-2.0) and
/// committed, so no build needs Python or protoc. `scripts/gen_onnx.sh` regenerates it;
/// `tests/onnx_pb.rs` fails when it is stale. (`include!`, so rustfmt leaves it as generated.)
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!("pb/onnx.rs");
}
