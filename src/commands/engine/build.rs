//! `overparam engine build`: a TensorRT plan from an ONNX model (trtexec, or the native
//! builder with the `tensorrt` feature) and its manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use overparam_engine::export::Precision;
use overparam_engine::trt::{BuildOptions, build, find_trtexec};

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model (from `overparam export`).
    onnx: PathBuf,
    /// The precision the ONNX was exported in (recorded; decides flags on TensorRT < 10).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Deep-learning accelerator core (Jetson), with GPU fallback.
    #[arg(long)]
    dla: Option<u32>,
    /// Builder workspace in MiB.
    #[arg(long, default_value_t = 2048, value_parser = crate::args::count::<usize>)]
    workspace: usize,
    /// Build with the native TensorRT library (cargo feature `tensorrt`) instead of trtexec.
    #[arg(long)]
    native: bool,
    /// CUDA device index for --native (as `bench --device-id`).
    #[arg(long, visible_alias = "device", default_value_t = 0)]
    device_id: u32,
    /// The plan to write (its manifest goes beside it).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    for out in overparam_engine::trt::build_outputs(&a.output) {
        overparam_base::check_output(&out, &[&a.onnx])?;
    }
    // The input's kind first: a checkpoint or a plan is named as such, whether or not a
    // builder is installed.
    overparam_engine::onnx_file::model_bytes(&a.onnx)?;
    let (m, builder) = if a.native {
        let m = build_native(
            &a.onnx,
            &a.output,
            a.precision,
            a.workspace,
            a.dla,
            a.device_id as usize,
        )?;
        (m, "native builder")
    } else {
        let t = find_trtexec()?;
        eprintln!(
            "engine: trtexec {} (TensorRT {})",
            t.path.display(),
            t.version
        );
        let o = BuildOptions {
            precision: a.precision,
            dla_core: a.dla,
            workspace_mib: a.workspace,
        };
        (build(&t, &a.onnx, &a.output, &o)?, "trtexec")
    };
    println!(
        "wrote {} for {} (SM {}), TensorRT {} ({builder}), {}",
        a.output.display(),
        m.gpu.as_deref().unwrap_or("unknown GPU"),
        m.compute_capability.as_deref().unwrap_or("?"),
        m.tensorrt,
        m.precision.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// `engine build --native`: the native builder where the `tensorrt` feature is compiled in.
fn build_native(
    onnx: &Path,
    out: &Path,
    precision: Precision,
    workspace: usize,
    dla: Option<u32>,
    device: usize,
) -> Result<overparam_engine::trt::Manifest> {
    #[cfg(feature = "tensorrt")]
    return Ok(overparam_engine::trt_native::build(
        onnx, out, precision, workspace, dla, device,
    )?);
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = (onnx, out, precision, workspace, dla, device);
        anyhow::bail!("{}", crate::args::NATIVE_MISSING)
    }
}
