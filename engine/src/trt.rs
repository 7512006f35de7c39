//! TensorRT engine builds through `trtexec`, found at run time (`$TRTEXEC`, `PATH`,
//! `/usr/src/tensorrt/bin/trtexec`), with the flags its version expects, and a manifest per
//! plan (TensorRT and CUDA versions, GPU and compute capability, precision, input shapes, ONNX
//! sha256, flags) so a plan is never run on a device or TensorRT it was not built for.
//!
//! Flags by version (TensorRT 11 removed `--fp16/--int8/--calib` and is always strongly typed;
//! TensorRT 10 reads the same explicitly typed ONNX with `--stronglyTyped`; 8.x needs the
//! precision flags to allow FP16/INT8 kernels, and honours the Q/DQ scales with `--int8`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::export::Precision;

pub const INSTALL_HINT: &str = "TensorRT's trtexec was not found: set TRTEXEC=/path/to/trtexec, put it on PATH, or install \
     TensorRT (on Jetson it comes with JetPack at /usr/src/tensorrt/bin/trtexec). This machine can \
     still export the ONNX models that trtexec builds from.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrtVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl TrtVersion {
    /// From trtexec's banner `[TensorRT v100300]` (10.3.0) or `[TensorRT v8601]` (8.6.1).
    pub fn from_banner(log: &str) -> Option<Self> {
        let i = log.find("TensorRT v")? + "TensorRT v".len();
        let digits: String = log[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let v: u32 = digits.parse().ok()?;
        Some(if v >= 10000 {
            Self {
                major: v / 10000,
                minor: (v / 100) % 100,
                patch: v % 100,
            }
        } else {
            Self {
                major: v / 1000,
                minor: (v / 100) % 10,
                patch: v % 100,
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct Trtexec {
    pub path: PathBuf,
    pub version: TrtVersion,
}

/// Finds trtexec and reads its version.
pub fn find_trtexec() -> Result<Trtexec> {
    let candidates: Vec<PathBuf> = std::env::var_os("TRTEXEC")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("trtexec"))
                .collect::<Vec<_>>()
        }))
        .chain(std::iter::once(PathBuf::from(
            "/usr/src/tensorrt/bin/trtexec",
        )))
        .collect();
    let path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::TensorRt(INSTALL_HINT.into()))?;
    let out = Command::new(&path)
        .arg("--help")
        .output()
        .map_err(|e| Error::TensorRt(format!("{}: {e}", path.display())))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = TrtVersion::from_banner(&log).ok_or_else(|| {
        Error::TensorRt(format!(
            "{}: no `TensorRT vNNNN` banner in its output",
            path.display()
        ))
    })?;
    Ok(Trtexec { path, version })
}

#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub precision: Precision,
    pub dla_core: Option<u32>,
    pub workspace_mib: usize,
}

/// trtexec arguments for a build with this TensorRT version.
pub fn build_flags(
    v: TrtVersion,
    onnx: &Path,
    plan: &Path,
    cache: &Path,
    o: &BuildOptions,
) -> Vec<String> {
    let mut f = vec![
        format!("--onnx={}", onnx.display()),
        format!("--saveEngine={}", plan.display()),
        format!("--timingCacheFile={}", cache.display()),
    ];
    if (v.major, v.minor) >= (8, 4) {
        f.push(format!("--memPoolSize=workspace:{}M", o.workspace_mib));
    } else {
        f.push(format!("--workspace={}", o.workspace_mib));
    }
    match v.major {
        11.. => {} // strongly typed: the ONNX types decide
        10 => f.push("--stronglyTyped".into()),
        _ => match o.precision {
            Precision::Fp32 => {}
            Precision::Fp16 => f.push("--fp16".into()),
            Precision::Int8 => {
                f.push("--int8".into());
                f.push("--fp16".into()); // FP16 fallback for layers without Q/DQ
            }
        },
    }
    if let Some(c) = o.dla_core {
        f.push(format!("--useDLACore={c}"));
        f.push("--allowGPUFallback".into());
    }
    if (v.major, v.minor) >= (8, 6) {
        f.push("--skipInference".into());
    }
    f
}

/// What a plan was built for; written beside it as `<plan>.manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub tensorrt: String,
    pub cuda: Option<String>,
    pub gpu: Option<String>,
    pub compute_capability: Option<String>,
    pub precision: Precision,
    pub input_shapes: InputShapes,
    pub onnx_sha256: String,
    pub flags: Vec<String>,
    pub dla_core: Option<u32>,
}

pub fn manifest_path(plan: &Path) -> PathBuf {
    let mut s = plan.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// Where a plan's builds keep their timing cache: `MODEL.timing.cache` beside it.
pub fn timing_cache_path(plan: &Path) -> PathBuf {
    plan.with_extension("timing.cache")
}

/// Where a plan's build log goes: `MODEL.build.log` beside it.
pub fn build_log_path(plan: &Path) -> PathBuf {
    plan.with_extension("build.log")
}

/// Every file `engine build` writes for `plan`, the plan included (checked against its inputs).
pub fn build_outputs(plan: &Path) -> [PathBuf; 4] {
    [
        plan.to_path_buf(),
        manifest_path(plan),
        timing_cache_path(plan),
        build_log_path(plan),
    ]
}

fn after<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
}

/// Input names and static shapes of an ONNX model.
pub fn onnx_inputs(bytes: &[u8]) -> Result<InputShapes> {
    use crate::pb::{tensor_shape_proto::dimension::Value, type_proto};
    let m: crate::pb::ModelProto = prost::Message::decode(bytes)
        .map_err(|e| Error::Export(format!("not an ONNX model: {e}")))?;
    let g = m
        .graph
        .ok_or_else(|| Error::Export("ONNX model without a graph".into()))?;
    Ok(g.input
        .iter()
        .map(|i| {
            let dims = match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => t
                    .shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(Value::DimValue(v)) => v,
                                _ => -1,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => vec![],
            };
            (i.name.clone().unwrap_or_default(), dims)
        })
        .collect())
}

/// Builds a plan with trtexec and writes it with its manifest and build log. The plan is
/// written to a temporary name and renamed, so a failed build leaves any old plan intact.
pub fn build(t: &Trtexec, onnx: &Path, plan: &Path, o: &BuildOptions) -> Result<Manifest> {
    let (bytes, inputs) = read_onnx(onnx)?;
    let tmp =
        overparam_base::fs::temp_sibling(plan, overparam_base::fs::TMP).map_err(|e| Error::Io {
            path: plan.to_path_buf(),
            source: e,
        })?;
    let cache = timing_cache_path(plan);
    let flags = build_flags(t.version, onnx, &tmp, &cache, o);
    let out = Command::new(&t.path)
        .args(&flags)
        .output()
        .map_err(|e| Error::TensorRt(format!("{}: {e}", t.path.display())))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log_path = build_log_path(plan);
    let _ = std::fs::write(&log_path, &log);
    if !out.status.success() || !tmp.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::TensorRt(format!(
            "trtexec failed ({}); log: {}\n{}",
            out.status,
            log_path.display(),
            log.lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    let m = Manifest {
        tensorrt: after(&log, "TensorRT version:")
            .map(str::to_string)
            .unwrap_or_else(|| t.version.to_string()),
        cuda: after(&log, "CUDA Runtime Version:")
            .or(after(&log, "CUDA version:"))
            .map(str::to_string),
        gpu: after(&log, "Selected Device:").map(str::to_string),
        compute_capability: after(&log, "Compute Capability:").map(str::to_string),
        precision: o.precision,
        input_shapes: inputs,
        onnx_sha256: format!("{:x}", Sha256::digest(&bytes)),
        flags,
        dla_core: o.dla_core,
    };
    std::fs::rename(&tmp, plan).map_err(|e| Error::Io {
        path: plan.into(),
        source: e,
    })?;
    write_manifest(plan, &m)?;
    Ok(m)
}

/// Input names with static shapes (−1 for a dynamic dimension).
pub type InputShapes = Vec<(String, Vec<i64>)>;

/// An ONNX file's bytes and its input names and shapes (for the manifest).
/// The model's bytes (external data inlined: the native builder parses from memory) and its
/// inputs.
pub(crate) fn read_onnx(onnx: &Path) -> Result<(Vec<u8>, InputShapes)> {
    let bytes = crate::onnx_file::model_bytes(onnx)?;
    let inputs = onnx_inputs(&bytes).map_err(|e| Error::File {
        path: onnx.into(),
        message: e.to_string(),
    })?;
    Ok((bytes, inputs))
}

/// Writes `<plan>.manifest.json` atomically.
pub(crate) fn write_manifest(plan: &Path, m: &Manifest) -> Result<()> {
    let mp = manifest_path(plan);
    overparam_base::write_file_atomic(
        &mp,
        serde_json::to_string_pretty(m).expect("json").as_bytes(),
    )
    .map_err(|e| Error::Io {
        path: mp,
        source: e,
    })
}

/// The GPU this machine would run on: (name, compute capability), from nvidia-smi
/// (`$NVIDIA_SMI` overrides its path).
pub fn current_gpu() -> Result<(String, String)> {
    let smi = std::env::var_os("NVIDIA_SMI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nvidia-smi"));
    let out = Command::new(&smi)
        .args(["--query-gpu=name,compute_cap", "--format=csv,noheader"])
        .output()
        .map_err(|e| {
            Error::TensorRt(format!("cannot query the GPU with {}: {e}", smi.display()))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .ok_or_else(|| Error::TensorRt("nvidia-smi reported no GPU".into()))?;
    let (name, cc) = line
        .rsplit_once(',')
        .ok_or_else(|| Error::TensorRt(format!("unexpected nvidia-smi output `{line}`")))?;
    Ok((name.trim().to_string(), cc.trim().to_string()))
}

/// Refuses a plan whose manifest does not match this device and trtexec's TensorRT.
pub fn check_plan(plan: &Path, t: &Trtexec, gpu: &(String, String)) -> Result<Manifest> {
    check_manifest(plan, &t.version, gpu)
}

/// Refuses a plan whose manifest does not match TensorRT `version` and `gpu` (name, compute
/// capability): TensorRT plans are specific to both.
pub fn check_manifest(
    plan: &Path,
    version: &TrtVersion,
    gpu: &(String, String),
) -> Result<Manifest> {
    let mp = manifest_path(plan);
    let text = std::fs::read_to_string(&mp).map_err(|_| Error::File {
        path: plan.into(),
        message: format!("no manifest ({}): refusing to run a plan of unknown origin; rebuild it with `overparam engine build`", mp.display()),
    })?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::File {
        path: mp.clone(),
        message: format!("not a plan manifest: {e}"),
    })?;
    let mut problems = vec![];
    if m.tensorrt != version.to_string() {
        problems.push(format!(
            "built with TensorRT {}, this machine has {version}",
            m.tensorrt
        ));
    }
    if m.gpu.as_deref().is_some_and(|g| g != gpu.0) {
        problems.push(format!(
            "built for GPU `{}`, this is `{}`",
            m.gpu.as_deref().unwrap_or("?"),
            gpu.0
        ));
    }
    if m.compute_capability.as_deref().is_some_and(|c| c != gpu.1) {
        problems.push(format!(
            "built for compute capability {}, this device is {}",
            m.compute_capability.as_deref().unwrap_or("?"),
            gpu.1
        ));
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(Error::File {
            path: plan.into(),
            message: format!(
                "refusing to run: {}; rebuild the plan on this device",
                problems.join("; ")
            ),
        })
    }
}

/// Runs a plan with trtexec and parses its latency summary (host-to-device, GPU compute,
/// device-to-host and end-to-end latency) into a report.
pub fn measure(
    t: &Trtexec,
    plan: &Path,
    iters: usize,
    warmup_ms: usize,
    budget_ms: Option<f64>,
) -> Result<crate::latency::LatencyReport> {
    let gpu = current_gpu()?;
    let m = check_plan(plan, t, &gpu)?;
    let mut args = vec![
        format!("--loadEngine={}", plan.display()),
        format!("--iterations={iters}"),
        format!("--warmUp={warmup_ms}"),
        "--duration=0".to_string(),
    ];
    if let Some(c) = m.dla_core {
        args.push(format!("--useDLACore={c}"));
    }
    let out = Command::new(&t.path)
        .args(&args)
        .output()
        .map_err(|e| Error::TensorRt(e.to_string()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Error::TensorRt(format!(
            "trtexec --loadEngine failed ({})",
            out.status
        )));
    }
    let field = |line: &str, key: &str| -> Option<f64> {
        let i = line.find(key)? + key.len();
        line[i..]
            .trim_start_matches([' ', '='])
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let summary = |prefix: &str| log.lines().find(|l| l.contains(prefix)).map(str::to_string);
    let lat = summary("Latency: min")
        .ok_or_else(|| Error::TensorRt("no latency summary in trtexec's output".into()))?;
    let get = |key: &str| field(&lat, key).unwrap_or(f64::NAN);
    let batch = m
        .input_shapes
        .first()
        .and_then(|s| s.1.first())
        .copied()
        .unwrap_or(1)
        .max(1) as usize;
    let mut r = crate::latency::LatencyReport::from_samples(
        vec![get("median")],
        batch,
        warmup_ms,
        budget_ms,
    );
    r.iters = iters;
    r.min_ms = get("min");
    r.max_ms = get("max");
    r.mean_ms = get("mean");
    r.p50_ms = get("median");
    r.p90_ms = get("percentile(90%)");
    r.p99_ms = get("percentile(99%)");
    r.throughput = batch as f64 / (r.mean_ms / 1e3);
    r.within_budget = budget_ms.map(|b| r.p99_ms <= b);
    r.h2d_ms = summary("H2D Latency: min").and_then(|l| field(&l, "mean"));
    r.compute_ms = summary("GPU Compute Time: min").and_then(|l| field(&l, "mean"));
    r.d2h_ms = summary("D2H Latency: min").and_then(|l| field(&l, "mean"));
    r.runtime = format!("TensorRT {}", t.version);
    r.device = format!("{} (SM {})", gpu.0, gpu.1);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_flags() {
        let v10 = TrtVersion::from_banner("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17]")
            .unwrap();
        assert_eq!(v10.to_string(), "10.3.0");
        let v8 = TrtVersion::from_banner("[TensorRT v8601]").unwrap();
        assert_eq!(v8.to_string(), "8.6.1");
        let v11 = TrtVersion::from_banner("[TensorRT v110400]").unwrap();
        let o = BuildOptions {
            precision: Precision::Int8,
            dla_core: Some(0),
            workspace_mib: 2048,
        };
        let (p, q, c) = (
            Path::new("m.onnx"),
            Path::new("m.plan"),
            Path::new("t.cache"),
        );
        let f10 = build_flags(v10, p, q, c, &o);
        assert!(
            f10.contains(&"--stronglyTyped".to_string()) && !f10.contains(&"--int8".to_string())
        );
        assert!(f10.contains(&"--memPoolSize=workspace:2048M".to_string()));
        assert!(
            f10.contains(&"--useDLACore=0".to_string())
                && f10.contains(&"--allowGPUFallback".to_string())
        );
        let f11 = build_flags(v11, p, q, c, &o);
        assert!(
            !f11.iter()
                .any(|f| f == "--stronglyTyped" || f == "--int8" || f == "--fp16")
        );
        let f8 = build_flags(v8, p, q, c, &o);
        assert!(f8.contains(&"--int8".to_string()) && f8.contains(&"--fp16".to_string()));
    }
}
