//! Link arguments from dependencies' build scripts do not reach the binary, so they are added
//! here from what those crates report:
//! - with `train`, libtorch from the lib dir `overparam-train` reports: an rpath (no
//!   LD_LIBRARY_PATH) and `-ltorch` under `--no-as-needed` (keeps libtorch_cuda.so);
//! - with `tensorrt`, an rpath to a TensorRT library directory outside the system paths (a
//!   tarball install), which `overparam-engine` reports.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_OVERPARAM_TRAIN_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=DEP_OVERPARAM_ENGINE_TRT_LIB");
    if let Some(dir) = std::env::var_os("DEP_OVERPARAM_ENGINE_TRT_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.to_string_lossy());
    }
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    if let Some(dir) = std::env::var_os("DEP_OVERPARAM_TRAIN_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.to_string_lossy());
        println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
