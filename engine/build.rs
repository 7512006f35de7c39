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
///
/// Where TensorRT is looked for: `TENSORRT_INCLUDE` and `TENSORRT_LIB` (each on its own, e.g.
/// headers from one package and libraries from another), else `TENSORRT_ROOT`'s `include/` and
/// `lib/` (a tarball), else the Debian/JetPack system paths of the target architecture. A
/// library directory outside the system paths is recorded (`links` metadata `trt_lib`) so the
/// binary's build script adds an rpath and it runs without LD_LIBRARY_PATH.
#[cfg(feature = "tensorrt")]
mod tensorrt {
    use std::path::{Path, PathBuf};

    fn first_with(candidates: &[PathBuf], file: &str) -> Option<PathBuf> {
        candidates.iter().find(|d| d.join(file).exists()).cloned()
    }

    fn env_path(name: &str) -> Option<PathBuf> {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    pub fn build(manifest: &Path) {
        for v in [
            "TENSORRT_ROOT",
            "TENSORRT_INCLUDE",
            "TENSORRT_LIB",
            "CUDA_ROOT",
            "CUDA_HOME",
        ] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        let shim = manifest.join("cpp/trt_shim.cpp");
        println!("cargo:rerun-if-changed={}", shim.display());
        let root = env_path("TENSORRT_ROOT");
        // The target's architecture (cfg!(target_arch) here would be the build machine's).
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
        let triple_dir = |base: &str| PathBuf::from(format!("{base}/{arch}-linux-gnu"));
        let system_incs = [triple_dir("/usr/include"), PathBuf::from("/usr/include")];
        let system_libs = [triple_dir("/usr/lib"), PathBuf::from("/usr/lib")];
        // An explicit TENSORRT_INCLUDE / TENSORRT_LIB is the only candidate for its kind: a
        // wrong one must fail loudly rather than fall back to some other TensorRT.
        let incs: Vec<PathBuf> = match env_path("TENSORRT_INCLUDE") {
            Some(d) => vec![d],
            None => root
                .iter()
                .map(|r| r.join("include"))
                .chain(system_incs.iter().cloned())
                .collect(),
        };
        let libs: Vec<PathBuf> = match env_path("TENSORRT_LIB") {
            Some(d) => vec![d],
            None => root
                .iter()
                .flat_map(|r| [r.join("lib"), r.join("lib64")])
                .chain(system_libs.iter().cloned())
                .collect(),
        };
        let cuda = env_path("CUDA_ROOT")
            .or_else(|| env_path("CUDA_HOME"))
            .unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
        let cuda_incs = [
            cuda.join("include"),
            cuda.join(format!("targets/{arch}-linux/include")),
            PathBuf::from("/usr/include"),
        ];
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let missing = |what: String| {
            println!(
                "cargo:warning=feature `tensorrt`: {what}; the native TensorRT builder and runtime will report that they are unavailable. Set TENSORRT_ROOT (a TensorRT >= 10 tarball with include/NvInfer.h and lib/libnvinfer.so), or TENSORRT_INCLUDE and TENSORRT_LIB, and CUDA_ROOT, then rebuild."
            );
        };
        let Some(inc) = first_with(&incs, "NvInfer.h") else {
            return missing(format!("NvInfer.h not found in {}", list(&incs)));
        };
        let Some(cuda_inc) = first_with(&cuda_incs, "cuda_runtime_api.h") else {
            return missing(format!(
                "cuda_runtime_api.h not found in {}",
                list(&cuda_incs)
            ));
        };
        let Some(lib) = first_with(&libs, "libnvinfer.so") else {
            return missing(format!("libnvinfer.so not found in {}", list(&libs)));
        };
        // -isystem: TensorRT's and CUDA's own headers may warn; only our code's warnings count
        // (.ci/run compiles the shim with -Werror against each release's headers).
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file(&shim)
            .flag("-isystem")
            .flag(inc.to_string_lossy().as_ref())
            .flag("-isystem")
            .flag(cuda_inc.to_string_lossy().as_ref())
            .warnings(true)
            .extra_warnings(true)
            .compile("overparam_trt_shim");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=nvinfer");
        println!("cargo:rustc-link-lib=dylib=nvonnxparser");
        println!("cargo:rustc-link-lib=dylib=stdc++");
        println!("cargo:rustc-cfg=trt_native");
        if !system_libs.contains(&lib) {
            // This crate's own tests and benches get the rpath here; the `overparam` binary's
            // build script reads `trt_lib` (DEP_OVERPARAM_ENGINE_TRT_LIB) and adds it there.
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
            println!("cargo:trt_lib={}", lib.display());
        }
    }
}
