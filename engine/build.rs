//! The engine's build script only matters for feature `tensorrt` (the native shim). The ONNX
//! protobuf types are committed (src/pb/onnx.rs) and the ONNX Runtime library is found at run
//! time, so a deploy build needs neither Python nor a virtualenv.
#[cfg(feature = "tensorrt")]
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(trt_native)");
    #[cfg(feature = "tensorrt")]
    {
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        tensorrt::build(&manifest);
    }
}

/// Feature `tensorrt`: compiles cpp/trt_shim.cpp against TensorRT's headers and links
/// libnvinfer and libnvonnxparser, then sets `cfg(trt_native)`. Without the headers the crate
/// still builds (a warning says why) and the native calls report what is missing at run time.
#[cfg(feature = "tensorrt")]
mod tensorrt {
    use std::path::{Path, PathBuf};

    fn first_with(candidates: &[PathBuf], file: &str) -> Option<PathBuf> {
        candidates.iter().find(|d| d.join(file).exists()).cloned()
    }

    pub fn build(manifest: &Path) {
        for v in ["TENSORRT_ROOT", "CUDA_ROOT", "CUDA_HOME"] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        let shim = manifest.join("cpp/trt_shim.cpp");
        println!("cargo:rerun-if-changed={}", shim.display());
        let root = std::env::var_os("TENSORRT_ROOT").map(PathBuf::from);
        let arch = if cfg!(target_arch = "aarch64") {
            "aarch64-linux-gnu"
        } else {
            "x86_64-linux-gnu"
        };
        // $TENSORRT_ROOT (tarball installs), else the Debian/JetPack locations.
        let mut incs: Vec<PathBuf> = root.iter().map(|r| r.join("include")).collect();
        incs.extend([
            PathBuf::from(format!("/usr/include/{arch}")),
            PathBuf::from("/usr/include"),
        ]);
        let mut libs: Vec<PathBuf> = root
            .iter()
            .flat_map(|r| [r.join("lib"), r.join("lib64")])
            .collect();
        libs.extend([
            PathBuf::from(format!("/usr/lib/{arch}")),
            PathBuf::from("/usr/lib"),
        ]);
        let cuda = std::env::var_os("CUDA_ROOT")
            .or_else(|| std::env::var_os("CUDA_HOME"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
        let cuda_incs = [cuda.join("include"), PathBuf::from("/usr/include")];
        let missing = |what: &str| {
            println!(
                "cargo:warning=feature `tensorrt`: {what}; the native TensorRT builder and runtime will report that they are unavailable. Set TENSORRT_ROOT (a TensorRT >= 10 install with include/NvInfer.h and lib/libnvinfer.so) and CUDA_ROOT, then rebuild."
            );
        };
        let Some(inc) = first_with(&incs, "NvInfer.h") else {
            return missing("NvInfer.h not found under $TENSORRT_ROOT/include or /usr/include");
        };
        let Some(cuda_inc) = first_with(&cuda_incs, "cuda_runtime_api.h") else {
            return missing("cuda_runtime_api.h not found under $CUDA_ROOT/include");
        };
        let Some(lib) = first_with(&libs, "libnvinfer.so") else {
            return missing("libnvinfer.so not found under $TENSORRT_ROOT/lib");
        };
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file(&shim)
            .include(&inc)
            .include(&cuda_inc)
            .warnings(false)
            .compile("overparam_trt_shim");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=nvinfer");
        println!("cargo:rustc-link-lib=dylib=nvonnxparser");
        println!("cargo:rustc-link-lib=dylib=stdc++");
        println!("cargo:rustc-cfg=trt_native");
    }
}
