//! tch's link arguments do not propagate to binaries that depend on it (tch-rs #980, #907), so
//! this crate — a direct dependent of torch-sys — adds them to its own tests, and passes the
//! lib dir on (`links` metadata) so the `overparam` binary's build.rs can do the same:
//! an rpath to libtorch's lib dir (no LD_LIBRARY_PATH needed) and `-ltorch` under
//! `--no-as-needed`, without which `libtorch_cuda.so` is dropped and CUDA stays silently
//! unavailable on GPU machines.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        Some(dir) => {
            let dir = dir.to_string_lossy();
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            println!("cargo:rustc-link-search=native={dir}");
            // For dependents' build scripts (link args only reach this package's own targets).
            println!("cargo:libtorch_lib={dir}");
        }
        None => println!(
            "cargo:warning=torch-sys did not report libtorch's lib dir; run scripts/setup.sh \
             (it installs torch==2.11.0 into .venv and links .venv/libtorch)"
        ),
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
