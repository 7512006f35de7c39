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
pub use overparam_lab::deploy::NATIVE_MISSING;

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

/// How INT8 is calibrated (`export`, `bench`, `engine accuracy`, `pipeline`): one set of flags
/// that becomes the one [`overparam_engine::quant::Quantization`] every path takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CalibArgs {
    /// INT8 calibrator: auto (each tensor gets whichever of max, percentile 99.9/99.99/99.999,
    /// entropy and mse brings the INT8 model's outputs closest to FP32 on held-out training
    /// images), or one rule for every tensor: max, percentile, entropy (TensorRT's default),
    /// mse.
    #[arg(long, default_value = "auto")]
    pub calibrator: overparam_engine::calib::Calibrator,
    /// The percentile of |x| that `--calibrator percentile` clips at, in (0, 100].
    #[arg(long, default_value_t = 99.99, value_parser = percentile)]
    pub percentile: f64,
    /// Images (scenes) of the train split in the seeded calibration set [default: 512; the
    /// pipeline's 64].
    #[arg(long, value_parser = count::<usize>)]
    pub calib_images: Option<usize>,
    /// `--calibrator auto`: held-out train images (drawn after the calibration ones, never
    /// from the test split) on which the rules are compared.
    #[arg(long, default_value_t = 256, value_parser = count::<usize>)]
    pub heldout_images: usize,
    /// Seed of the calibration draw.
    #[arg(long, default_value_t = 0)]
    pub calib_seed: u64,
}

impl CalibArgs {
    /// The recipe, with the command's default image count, encoding and normalisation.
    pub fn recipe(
        &self,
        default_images: usize,
        encoding: ActivationEncoding,
        normalization: overparam_engine::quant::NormSource,
    ) -> overparam_engine::quant::Quantization {
        overparam_engine::quant::Quantization {
            calibrator: self.calibrator,
            percentile: self.percentile,
            images: self.calib_images.unwrap_or(default_images),
            heldout: self.heldout_images,
            seed: self.calib_seed,
            encoding,
            keep: vec![],
            kept_precision: None,
            normalization,
        }
    }
}

/// The input normalisation of a model that records none (e.g. an ONNX imported without
/// `--mean/--std`); a model that records one uses its own unless these are given.
#[derive(clap::Args, Clone, Debug)]
pub struct NormArgs {
    /// Per-channel mean the network's inputs were normalised with, in the (x/255 − mean)/std
    /// convention, comma-separated (with --std).
    #[arg(long, value_delimiter = ',', requires = "std", value_parser = finite)]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (with --mean).
    #[arg(long, value_delimiter = ',', requires = "mean", value_parser = positive_f32)]
    pub std: Vec<f32>,
}

impl NormArgs {
    pub fn source(&self) -> Result<overparam_engine::quant::NormSource> {
        use overparam_engine::quant::NormSource;
        if self.mean.is_empty() {
            return Ok(NormSource::Model);
        }
        if self.mean.len() != self.std.len() {
            bail!(
                "--mean has {} values and --std {}: give one of each per channel",
                self.mean.len(),
                self.std.len()
            );
        }
        Ok(NormSource::Given(overparam_data::loader::Normalize {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }))
    }
}

/// `--percentile`: in (0, 100].
pub fn percentile(s: &str) -> std::result::Result<f64, String> {
    number::PERCENTILE.parse(s)
}
