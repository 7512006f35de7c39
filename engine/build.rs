//! Generates the ONNX protobuf types at build time from the `onnx.proto` that the `onnx` PyPI
//! package installs in the project virtualenv (scripts/setup.sh links it as `.venv/onnx.proto`),
//! with protox (pure Rust; no protoc). Nothing third-party is committed.
//! `ONNX_PROTO=/path/to/onnx.proto` overrides the location.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=ONNX_PROTO");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let proto = std::env::var_os("ONNX_PROTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../.venv/onnx.proto"));
    println!("cargo:rerun-if-changed={}", proto.display());
    // The ONNX Runtime library the setup script links; used as the run-time default.
    let ort = manifest.join("../.venv/libonnxruntime.so");
    println!("cargo:rustc-env=OVERPARAM_DEFAULT_ORT={}", ort.display());
    let proto = match proto.canonicalize() {
        Ok(p) => p,
        Err(_) => panic!(
            "onnx.proto not found at {}: run scripts/setup.sh (it installs the `onnx` package into \
             .venv and links .venv/onnx.proto), or set ONNX_PROTO to an onnx.proto file",
            proto.display()
        ),
    };
    let dir = proto.parent().expect("file has a parent");
    let fds =
        protox::compile([&proto], [dir]).unwrap_or_else(|e| panic!("{}: {e}", proto.display()));
    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating ONNX types: {e}"));
}
