//! Native TensorRT (cargo feature `tensorrt`): a builder and a runtime over the C++ shim in
//! `cpp/trt_shim.cpp`, with device memory, streams and events from cudarc.
//!
//! The shim is compiled only where TensorRT's headers are found at build time (`TENSORRT_ROOT`,
//! or the Debian/JetPack locations); without them, and on machines without an NVIDIA driver,
//! every entry point returns [`Error::TensorRt`] saying exactly what is missing. cudarc loads
//! libcuda at run time and panics if it is absent, so [`cuda_present`] guards every CUDA call.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::export::Precision;
use crate::runtime::Output;
use crate::trt::{Manifest, TrtVersion, read_onnx, write_manifest};

/// What a native build produced.
pub struct NativeBuild {
    pub plan: Vec<u8>,
    /// TensorRT's timing cache after the build (feed it to the next build to make it fast).
    pub timing_cache: Vec<u8>,
    pub log: String,
}

/// The CUDA device a plan runs on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: String,
    /// The driver's CUDA version, e.g. `12.4`.
    pub cuda: String,
}

/// Host-to-device, compute and device-to-host time of one inference, from CUDA events.
#[derive(Clone, Copy, Debug, Default)]
pub struct Split {
    pub h2d_ms: f64,
    pub compute_ms: f64,
    pub d2h_ms: f64,
}

#[cfg_attr(trt_native, allow(dead_code))]
fn shim_missing() -> Error {
    Error::TensorRt(
        "this overparam was built with the `tensorrt` feature but without TensorRT's headers, so the native builder and runtime are not in it: install TensorRT >= 10 (JetPack ships it; elsewhere the tarball from NVIDIA), set TENSORRT_ROOT (include/NvInfer.h, lib/libnvinfer.so) and CUDA_ROOT, and rebuild with `cargo build --release --features tensorrt`. `overparam engine build` without --native uses trtexec instead".into(),
    )
}

/// Whether libcuda (the NVIDIA driver) can be loaded; cudarc panics without it.
pub fn cuda_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn cuda_missing() -> Error {
    Error::TensorRt(
        "no NVIDIA driver on this machine (libcuda.so could not be loaded): native TensorRT runs on a Jetson, Drive or desktop GPU".into(),
    )
}

fn cuda_err(e: cudarc::driver::DriverError) -> Error {
    Error::TensorRt(format!("CUDA: {e}"))
}

/// The CUDA device `ordinal`: its name, compute capability and the driver's CUDA version.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    if !cuda_present() {
        return Err(cuda_missing());
    }
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(cuda_err)?;
    let (major, minor) = ctx.compute_capability().map_err(cuda_err)?;
    let mut v = 0;
    // SAFETY: the driver library is present (checked above); `v` is a valid out-pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    Ok(DeviceInfo {
        name: ctx.name().map_err(cuda_err)?,
        compute_capability: format!("{major}.{minor}"),
        cuda: format!("{}.{}", v / 1000, (v % 1000) / 10),
    })
}

#[cfg(trt_native)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    /// `OpmBuildOptions` in trt_shim.cpp.
    #[repr(C)]
    pub struct OpmBuildOptions {
        pub workspace_bytes: usize,
        pub dla_core: c_int,
        pub timing_cache: *const c_void,
        pub timing_cache_len: usize,
        pub verbose: c_int,
    }

    /// `OpmBuildOutput` in trt_shim.cpp.
    #[repr(C)]
    pub struct OpmBuildOutput {
        pub plan: *mut c_void,
        pub plan_len: usize,
        pub cache: *mut c_void,
        pub cache_len: usize,
        pub log: *mut c_char,
        pub log_cap: usize,
    }

    #[repr(C)]
    pub struct OpmEngine {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        pub fn opm_trt_version() -> i32;
        pub fn opm_trt_build(
            onnx: *const c_void,
            onnx_len: usize,
            opts: *const OpmBuildOptions,
            out: *mut OpmBuildOutput,
        ) -> c_int;
        pub fn opm_trt_free(p: *mut c_void);
        pub fn opm_trt_engine_load(
            plan: *const c_void,
            plan_len: usize,
            err: *mut c_char,
            err_cap: usize,
        ) -> *mut OpmEngine;
        pub fn opm_trt_engine_free(e: *mut OpmEngine);
        pub fn opm_trt_io_count(e: *const OpmEngine) -> i32;
        pub fn opm_trt_io(
            e: *const OpmEngine,
            i: i32,
            is_input: *mut c_int,
            dtype: *mut c_int,
            nb_dims: *mut c_int,
            dims: *mut i64,
        ) -> *const c_char;
        pub fn opm_trt_set_address(
            e: *mut OpmEngine,
            name: *const c_char,
            ptr: *mut c_void,
        ) -> c_int;
        pub fn opm_trt_enqueue(e: *mut OpmEngine, stream: *mut c_void) -> c_int;
    }

    /// A C string written by the shim into `buf`.
    pub fn text(buf: &[u8]) -> String {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

/// The linked TensorRT library's version.
pub fn version() -> Result<TrtVersion> {
    #[cfg(trt_native)]
    {
        // SAFETY: a plain query of the linked library.
        let v = unsafe { ffi::opm_trt_version() };
        TrtVersion::from_banner(&format!("TensorRT v{v}"))
            .ok_or_else(|| Error::TensorRt(format!("unexpected library version {v}")))
    }
    #[cfg(not(trt_native))]
    Err(shim_missing())
}

/// Builds a strongly typed plan from explicitly typed ONNX bytes (FP16 types and Q/DQ decide
/// the precisions, as on TensorRT 11; on 10 this is `--stronglyTyped`).
pub fn build_plan(
    onnx: &[u8],
    workspace_mib: usize,
    dla_core: Option<u32>,
    timing_cache: &[u8],
) -> Result<NativeBuild> {
    #[cfg(trt_native)]
    {
        use std::ffi::c_void;
        if !cuda_present() {
            return Err(cuda_missing());
        }
        let mut log = vec![0u8; 1 << 20];
        let opts = ffi::OpmBuildOptions {
            workspace_bytes: workspace_mib << 20,
            dla_core: dla_core.map_or(-1, |c| c as i32),
            timing_cache: timing_cache.as_ptr().cast(),
            timing_cache_len: timing_cache.len(),
            verbose: 0,
        };
        let mut out = ffi::OpmBuildOutput {
            plan: std::ptr::null_mut(),
            plan_len: 0,
            cache: std::ptr::null_mut(),
            cache_len: 0,
            log: log.as_mut_ptr().cast(),
            log_cap: log.len(),
        };
        // SAFETY: every pointer is valid for the lengths given; the shim copies its outputs
        // into malloc'd buffers that are freed below with opm_trt_free.
        let rc = unsafe { ffi::opm_trt_build(onnx.as_ptr().cast(), onnx.len(), &opts, &mut out) };
        let take = |p: *mut c_void, n: usize| -> Vec<u8> {
            if p.is_null() {
                return vec![];
            }
            // SAFETY: the shim allocated `n` bytes at `p`.
            let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) }.to_vec();
            unsafe { ffi::opm_trt_free(p) };
            v
        };
        let (plan, timing_cache) = (take(out.plan, out.plan_len), take(out.cache, out.cache_len));
        let log = ffi::text(&log);
        if rc != 0 || plan.is_empty() {
            return Err(Error::TensorRt(format!("the native build failed:\n{log}")));
        }
        Ok(NativeBuild {
            plan,
            timing_cache,
            log,
        })
    }
    #[cfg(not(trt_native))]
    {
        let _ = (onnx, workspace_mib, dla_core, timing_cache);
        Err(shim_missing())
    }
}

/// Builds `onnx` into `plan` with the native builder and writes the manifest, the build log
/// and the timing cache beside it, as [`crate::trt::build`] does with trtexec. The plan is
/// written atomically, so a failed build leaves an old plan intact.
pub fn build(
    onnx: &Path,
    plan: &Path,
    precision: Precision,
    workspace_mib: usize,
    dla_core: Option<u32>,
    device: usize,
) -> Result<Manifest> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::Io { path: p, source: e }
    };
    let (bytes, inputs) = read_onnx(onnx)?;
    let version = version()?;
    let dev = device_info(device)?;
    let cache_path = crate::trt::timing_cache_path(plan);
    let cache = std::fs::read(&cache_path).unwrap_or_default();
    let b = build_plan(&bytes, workspace_mib, dla_core, &cache)?;
    let _ = std::fs::write(crate::trt::build_log_path(plan), &b.log);
    if !b.timing_cache.is_empty() {
        overparam_base::write_file_atomic(&cache_path, &b.timing_cache).map_err(io(&cache_path))?;
    }
    let mut flags = vec![
        "native".to_string(),
        "stronglyTyped".into(),
        format!("workspace={workspace_mib}M"),
    ];
    if let Some(c) = dla_core {
        flags.push(format!("dla={c},gpu-fallback"));
    }
    let m = Manifest {
        tensorrt: version.to_string(),
        cuda: Some(dev.cuda),
        gpu: Some(dev.name),
        compute_capability: Some(dev.compute_capability),
        precision,
        input_shapes: inputs,
        onnx_sha256: format!("{:x}", Sha256::digest(&bytes)),
        flags,
        dla_core,
    };
    overparam_base::write_file_atomic(plan, &b.plan).map_err(io(plan))?;
    write_manifest(plan, &m)?;
    Ok(m)
}

/// One I/O tensor of a loaded plan with its device buffer.
#[cfg_attr(not(trt_native), allow(dead_code))]
struct Binding {
    name: std::ffi::CString,
    input: bool,
    shape: Vec<usize>,
    buf: cudarc::driver::CudaSlice<f32>,
}

/// A deserialized plan with one execution context, its device buffers and a stream.
#[cfg_attr(not(trt_native), allow(dead_code))]
pub struct NativeEngine {
    #[cfg(trt_native)]
    raw: *mut ffi::OpmEngine,
    bindings: Vec<Binding>,
    stream: Arc<cudarc::driver::CudaStream>,
    host_out: Vec<Vec<f32>>,
    /// The device and TensorRT the manifest was checked against.
    pub device: DeviceInfo,
    pub version: TrtVersion,
}

#[cfg(trt_native)]
impl Drop for NativeEngine {
    fn drop(&mut self) {
        // SAFETY: `raw` came from opm_trt_engine_load and is freed once.
        unsafe { ffi::opm_trt_engine_free(self.raw) };
    }
}

impl NativeEngine {
    /// Loads a plan after checking its manifest against this device and TensorRT (a plan
    /// built elsewhere is refused before TensorRT sees it).
    pub fn load(plan: &Path, device: usize) -> Result<Self> {
        let dev = device_info(device)?;
        let v = version()?;
        crate::trt::check_manifest(
            plan,
            &v,
            &(dev.name.clone(), dev.compute_capability.clone()),
        )?;
        let bytes = std::fs::read(plan).map_err(|e| Error::Io {
            path: plan.into(),
            source: e,
        })?;
        Self::from_plan(&bytes, device, dev, v)
    }

    #[cfg(trt_native)]
    fn from_plan(
        bytes: &[u8],
        device: usize,
        info: DeviceInfo,
        version: TrtVersion,
    ) -> Result<Self> {
        use std::ffi::{CStr, c_int};
        let ctx = cudarc::driver::CudaContext::new(device).map_err(cuda_err)?;
        let stream = ctx.new_stream().map_err(cuda_err)?;
        let mut err = vec![0u8; 1 << 16];
        // SAFETY: valid buffers for the given lengths.
        let raw = unsafe {
            ffi::opm_trt_engine_load(
                bytes.as_ptr().cast(),
                bytes.len(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if raw.is_null() {
            return Err(Error::TensorRt(format!(
                "cannot load the plan: {}",
                ffi::text(&err)
            )));
        }
        let mut e = NativeEngine {
            raw,
            bindings: vec![],
            stream,
            host_out: vec![],
            device: info,
            version,
        };
        // SAFETY: `raw` is a live engine.
        let n = unsafe { ffi::opm_trt_io_count(raw) };
        for i in 0..n {
            let (mut is_input, mut dtype, mut nb): (c_int, c_int, c_int) = (0, 0, 0);
            let mut dims = [0i64; 8];
            // SAFETY: out-pointers are valid; the name lives as long as the engine.
            let name = unsafe {
                ffi::opm_trt_io(
                    raw,
                    i,
                    &mut is_input,
                    &mut dtype,
                    &mut nb,
                    dims.as_mut_ptr(),
                )
            };
            if name.is_null() {
                return Err(Error::TensorRt(format!("I/O tensor {i} has no name")));
            }
            let name = unsafe { CStr::from_ptr(name) }.to_owned();
            // nvinfer1::DataType::kFLOAT is 0: our exports keep FP32 at the edges.
            if dtype != 0 {
                return Err(Error::TensorRt(format!(
                    "I/O tensor {name:?} is not FP32 (TensorRT type {dtype}); export with overparam, which casts at the edges"
                )));
            }
            let shape: Vec<usize> = dims[..nb.clamp(0, 8) as usize]
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| {
                        Error::TensorRt(format!(
                            "{name:?} has a dynamic dimension; export with static shapes"
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            let buf = e
                .stream
                .alloc_zeros::<f32>(shape.iter().product::<usize>().max(1))
                .map_err(cuda_err)?;
            e.bindings.push(Binding {
                name,
                input: is_input != 0,
                shape,
                buf,
            });
        }
        if e.bindings.iter().filter(|b| b.input).count() != 1 {
            return Err(Error::TensorRt(
                "the plan must have exactly one input".into(),
            ));
        }
        for b in &mut e.bindings {
            use cudarc::driver::DevicePtrMut;
            let (ptr, _sync) = b.buf.device_ptr_mut(&e.stream);
            // SAFETY: the buffer lives as long as the engine (both are owned by `e`).
            let rc = unsafe { ffi::opm_trt_set_address(e.raw, b.name.as_ptr(), ptr as *mut _) };
            if rc != 0 {
                return Err(Error::TensorRt(format!(
                    "setTensorAddress failed for {:?}",
                    b.name
                )));
            }
        }
        e.host_out = e
            .bindings
            .iter()
            .filter(|b| !b.input)
            .map(|b| vec![0f32; b.buf.len()])
            .collect();
        Ok(e)
    }

    #[cfg(not(trt_native))]
    fn from_plan(_: &[u8], _: usize, _: DeviceInfo, _: TrtVersion) -> Result<Self> {
        Err(shim_missing())
    }

    pub fn input_shape(&self) -> &[usize] {
        self.bindings
            .iter()
            .find(|b| b.input)
            .map(|b| b.shape.as_slice())
            .unwrap_or(&[])
    }

    /// One inference: copies `input` in, runs, copies every output back; CUDA events time the
    /// three parts.
    pub fn run(&mut self, input: &[f32]) -> Result<(Vec<Output>, Split)> {
        #[cfg(trt_native)]
        {
            use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
            let n: usize = self.input_shape().iter().product();
            if input.len() != n {
                return Err(Error::TensorRt(format!(
                    "input has {} values, the plan expects {:?} = {n}",
                    input.len(),
                    self.input_shape()
                )));
            }
            let s = self.stream.clone();
            let ev = || s.record_event(Some(CU_EVENT_DEFAULT)).map_err(cuda_err);
            let t0 = ev()?;
            let inp = self
                .bindings
                .iter_mut()
                .find(|b| b.input)
                .expect("one input, checked at load");
            s.memcpy_htod(input, &mut inp.buf).map_err(cuda_err)?;
            let t1 = ev()?;
            // SAFETY: the addresses were set at load; the stream is live.
            if unsafe { ffi::opm_trt_enqueue(self.raw, s.cu_stream() as *mut _) } != 0 {
                return Err(Error::TensorRt("enqueueV3 failed".into()));
            }
            let t2 = ev()?;
            for (b, h) in self
                .bindings
                .iter()
                .filter(|b| !b.input)
                .zip(&mut self.host_out)
            {
                s.memcpy_dtoh(&b.buf, h.as_mut_slice()).map_err(cuda_err)?;
            }
            let t3 = ev()?;
            s.synchronize().map_err(cuda_err)?;
            let ms =
                |a: &cudarc::driver::CudaEvent, b| a.elapsed_ms(b).map(f64::from).map_err(cuda_err);
            let split = Split {
                h2d_ms: ms(&t0, &t1)?,
                compute_ms: ms(&t1, &t2)?,
                d2h_ms: ms(&t2, &t3)?,
            };
            let out = self
                .bindings
                .iter()
                .filter(|b| !b.input)
                .zip(&self.host_out)
                .map(|(b, h)| {
                    (
                        b.name.to_string_lossy().into_owned(),
                        b.shape.clone(),
                        h.clone(),
                    )
                })
                .collect();
            Ok((out, split))
        }
        #[cfg(not(trt_native))]
        {
            let _ = input;
            Err(shim_missing())
        }
    }
}

/// Times a plan on the native runtime: warm-up excluded, per-iteration wall time, and the
/// mean host-to-device / compute / device-to-host split from CUDA events.
pub fn measure(
    plan: &Path,
    device: usize,
    warmup: usize,
    iters: usize,
    budget_ms: Option<f64>,
) -> Result<crate::latency::LatencyReport> {
    let mut e = NativeEngine::load(plan, device)?;
    let n: usize = e.input_shape().iter().product();
    let x = crate::latency::bench_input(n);
    for _ in 0..warmup {
        e.run(&x)?;
    }
    let (mut ms, mut sum) = (Vec::with_capacity(iters), Split::default());
    for _ in 0..iters.max(1) {
        let t0 = std::time::Instant::now();
        let (_, s) = e.run(&x)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        sum.h2d_ms += s.h2d_ms;
        sum.compute_ms += s.compute_ms;
        sum.d2h_ms += s.d2h_ms;
    }
    let k = ms.len() as f64;
    let batch = e.input_shape().first().copied().unwrap_or(1);
    let mut r = crate::latency::LatencyReport::from_samples(ms, batch, warmup, budget_ms);
    r.h2d_ms = Some(sum.h2d_ms / k);
    r.compute_ms = Some(sum.compute_ms / k);
    r.d2h_ms = Some(sum.d2h_ms / k);
    let dev = &e.device;
    r.runtime = format!("TensorRT {} (native)", e.version);
    r.device = format!(
        "{} (SM {}, CUDA {})",
        dev.name, dev.compute_capability, dev.cuda
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without TensorRT headers or an NVIDIA driver (CI, this project's dev box),
    /// every entry point fails with an error naming what is missing, and nothing panics.
    #[test]
    fn missing_pieces_are_named_not_panicked_on() {
        let no_shim = |e: Error| {
            let e = e.to_string();
            assert!(
                e.contains("TENSORRT_ROOT") && e.contains("--features tensorrt"),
                "{e}"
            );
        };
        let no_driver = |e: Error| {
            let e = e.to_string();
            assert!(e.contains("no NVIDIA driver"), "{e}");
        };
        if cfg!(trt_native) {
            version().expect("the shim is linked");
        } else {
            no_shim(version().unwrap_err());
            no_shim(build_plan(b"onnx", 64, None, &[]).err().unwrap());
        }
        if !cuda_present() {
            no_driver(device_info(0).unwrap_err());
            let dir = tempfile::tempdir().unwrap();
            let plan = dir.path().join("m.plan");
            std::fs::write(&plan, b"old plan").unwrap();
            no_driver(NativeEngine::load(&plan, 0).err().unwrap());
            let onnx = dir.path().join("m.onnx");
            std::fs::write(&onnx, b"").unwrap();
            assert!(build(&onnx, &plan, Precision::Fp32, 64, None, 0).is_err());
            assert_eq!(
                std::fs::read(&plan).unwrap(),
                b"old plan",
                "old plan intact"
            );
        }
    }
}
