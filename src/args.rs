//! Argument types that several subcommands share, so commands never import each other.

use std::path::PathBuf;

use anyhow::{Result, bail};
use overparam_base::number::{self, Number};
use overparam_engine::export::ActivationEncoding;

/// `--encoding` as users name it: by where the INT8 model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// TensorRT's: int8 activations with zero point 0 (symmetric Q/DQ).
    Trt,
    /// ONNX Runtime's fast CPU path: the same grid as uint8 with zero point 128.
    Cpu,
}

impl From<Encoding> for ActivationEncoding {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Trt => ActivationEncoding::SignedSymmetric,
            Encoding::Cpu => ActivationEncoding::UnsignedOffset,
        }
    }
}

/// Where a model runs (`--runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// ONNX Runtime's TensorRT execution provider (onnxruntime-gpu builds only).
    OrtTrt,
    /// trtexec on a plan built by `overparam engine build` (`bench` only).
    Trt,
    /// The same plan on the native TensorRT runtime (cargo feature `tensorrt`; `bench` only).
    TrtNative,
}

/// Where `bench` runs a model: ONNX Runtime, or a TensorRT plan.
#[derive(clap::Args, Clone)]
pub struct RuntimeArgs {
    /// Runtime: cpu, ort-trt (ONNX Runtime's TensorRT execution provider), trt (trtexec on a
    /// plan) or trt-native (the plan on the native runtime).
    #[arg(long, value_enum, default_value_t = Runtime::Cpu)]
    pub runtime: Runtime,
    /// CUDA device index for ort-trt and trt-native (as `engine build --device-id`).
    #[arg(long, default_value_t = 0)]
    pub device_id: u32,
    /// ort-trt: directory for TensorRT engine and timing caches (builds are slow; reuse them).
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
}

impl RuntimeArgs {
    /// The ONNX Runtime provider (`trt` and `trt-native` are not: they run plans).
    pub fn provider(&self) -> Result<overparam_engine::runtime::Provider> {
        let ort = match self.runtime {
            Runtime::Cpu => OrtRuntime::Cpu,
            Runtime::OrtTrt => OrtRuntime::OrtTrt,
            Runtime::Trt | Runtime::TrtNative => {
                bail!("TensorRT plans do not run through ONNX Runtime; use cpu or ort-trt here")
            }
        };
        Ok(provider(ort, self.device_id, self.trt_cache.clone()))
    }
}

/// Where `bridge run` runs its model: ONNX Runtime's providers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OrtRuntime {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// ONNX Runtime's TensorRT execution provider (onnxruntime-gpu builds only).
    OrtTrt,
}

/// [`RuntimeArgs`] for commands that run ONNX models only (`bridge run`).
#[derive(clap::Args, Clone)]
pub struct OrtRuntimeArgs {
    /// Runtime: cpu or ort-trt (ONNX Runtime's TensorRT execution provider).
    #[arg(long, value_enum, default_value_t = OrtRuntime::Cpu)]
    pub runtime: OrtRuntime,
    /// CUDA device index for ort-trt (as `engine build --device-id`).
    #[arg(long, default_value_t = 0)]
    pub device_id: u32,
    /// ort-trt: directory for TensorRT engine and timing caches (builds are slow; reuse them).
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
}

impl OrtRuntimeArgs {
    pub fn provider(&self) -> overparam_engine::runtime::Provider {
        provider(self.runtime, self.device_id, self.trt_cache.clone())
    }
}

fn provider(
    r: OrtRuntime,
    device_id: u32,
    cache_dir: Option<PathBuf>,
) -> overparam_engine::runtime::Provider {
    use overparam_engine::runtime::{Provider, TrtEpOptions};
    match r {
        OrtRuntime::Cpu => Provider::Cpu,
        OrtRuntime::OrtTrt => Provider::TensorRt(TrtEpOptions {
            device_id: device_id as i32,
            cache_dir,
            ..Default::default()
        }),
    }
}

// Numeric flags, each through one of base's rules (the config's keys use the same ones), so
// no command accepts what its sibling refuses. clap names the flag; the rule names the value.

/// `--budget-ms`: a positive, finite number of milliseconds.
pub fn budget(s: &str) -> std::result::Result<f64, String> {
    number::POSITIVE.parse(s)
}

/// A count that must be at least 1 (iterations, frames, images, threads).
pub fn count<T: Number>(s: &str) -> std::result::Result<T, String> {
    number::COUNT.parse(s)
}

/// A size or scale that must be positive and finite (a width multiplier, a std).
pub fn positive(s: &str) -> std::result::Result<f64, String> {
    number::POSITIVE.parse(s)
}

/// A finite number (a normalisation mean).
pub fn finite(s: &str) -> std::result::Result<f32, String> {
    number::FINITE.parse(s)
}

/// A finite, positive f32 (a normalisation std).
pub fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    number::POSITIVE.parse(s)
}

/// An allowance that may be 0 (a drop budget in points).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    number::NON_NEGATIVE.parse(s)
}

/// Seconds to wait: finite and not negative (0 means not at all).
pub fn seconds(s: &str) -> std::result::Result<f64, String> {
    number::SECONDS.parse(s)
}

/// A publishing rate in frames per second.
pub fn rate(s: &str) -> std::result::Result<f64, String> {
    number::RATE.parse(s)
}

/// Why `--native` / `--runtime trt-native` cannot run in this build.
#[cfg(not(feature = "tensorrt"))]
pub const NATIVE_MISSING: &str = "this overparam was built without the `tensorrt` cargo feature: rebuild with `cargo build --release --features tensorrt` where TensorRT >= 10 is installed (set TENSORRT_ROOT for tarball installs), or use trtexec (`engine build` without --native, `bench --runtime trt`)";

/// `--output NAME=ROLE`: the role of a model output (class_logits, segmentation_logits,
/// depth, normals, raw).
pub fn output_role(s: &str) -> std::result::Result<(String, overparam_base::Role), String> {
    let (name, role) = s.split_once('=').ok_or_else(|| {
        format!("`{s}`: expected NAME=ROLE, e.g. out=depth (the file to write is -o)")
    })?;
    if name.is_empty() {
        return Err(format!("`{s}`: the output name is empty"));
    }
    let roles: Vec<&str> = overparam_base::Role::ALL.iter().map(|r| r.name()).collect();
    let r = overparam_base::Role::from_name(role)
        .ok_or_else(|| format!("`{role}` is not a role (one of {})", roles.join(", ")))?;
    Ok((name.to_string(), r))
}

/// A tensor shape given as comma-separated positive sizes (`--input-shape 1,3,224,224`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        s.split(',')
            .map(|d| match d.trim().parse::<usize>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(format!("`{d}` in `{s}` is not a positive size")),
            })
            .collect::<std::result::Result<_, _>>()
            .map(Shape)
    }
}
