//! Latency measurement: warm-up excluded, percentiles, throughput, and a budget verdict.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::runtime::{OrtRuntime, Provider};

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub runtime: String,
    pub device: String,
    pub threads: Option<usize>,
    pub batch: usize,
    pub iters: usize,
    pub warmup: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
    /// Images per second at the mean latency.
    pub throughput: f64,
    /// Host-to-device / compute / device-to-host split, where the runtime reports it.
    pub h2d_ms: Option<f64>,
    pub compute_ms: Option<f64>,
    pub d2h_ms: Option<f64>,
    pub budget_ms: Option<f64>,
    pub within_budget: Option<bool>,
    /// Every timed iteration (ms, sorted), for histograms.
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

use overparam_base::stats::percentile;

/// The CPU model name, for the record.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

impl LatencyReport {
    pub fn from_samples(
        mut ms: Vec<f64>,
        batch: usize,
        warmup: usize,
        budget_ms: Option<f64>,
    ) -> Self {
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        let p99 = percentile(&ms, 99.0);
        Self {
            runtime: String::new(),
            device: String::new(),
            threads: None,
            batch,
            iters: ms.len(),
            warmup,
            mean_ms: mean,
            p50_ms: percentile(&ms, 50.0),
            p90_ms: percentile(&ms, 90.0),
            p99_ms: p99,
            max_ms: *ms.last().unwrap_or(&f64::NAN),
            min_ms: *ms.first().unwrap_or(&f64::NAN),
            throughput: batch as f64 / (mean / 1e3),
            h2d_ms: None,
            compute_ms: None,
            d2h_ms: None,
            budget_ms,
            // The budget is judged on the 99th percentile: a perception deadline is per frame.
            within_budget: budget_ms.map(|b| p99 <= b),
            samples_ms: ms,
        }
    }
}

/// The fixed random input every latency measurement feeds (seeded, so runs compare).
pub fn bench_input(n: usize) -> Vec<f32> {
    let mut rng = overparam_fuse::Rng::new(0);
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// The most input values a latency measurement allocates (1 GiB of f32): a model declaring a
/// bigger input is refused before anything is allocated.
pub const MAX_INPUT_VALUES: usize = 1 << 28;

/// The shape a latency measurement feeds an input declared `dims` (−1: symbolic, `symbols`
/// naming them): a symbolic first (batch) dimension becomes `batch` (default 1); a static one
/// must equal `batch` where given; every other dimension must be static and non-zero, and the
/// whole input at most [`MAX_INPUT_VALUES`] values.
pub fn bench_shape(
    name: &str,
    dims: &[i64],
    symbols: &[String],
    batch: Option<usize>,
) -> Result<Vec<usize>> {
    let bad = |m: String| Err(Error::Latency(format!("input `{name}` {m}")));
    if dims.is_empty() {
        return bad(
            "is a scalar or has no declared shape; a latency benchmark feeds batches of images (N×C×H×W), so the input needs a declared rank and static sizes".into(),
        );
    }
    if batch == Some(0) {
        return bad("cannot be fed a batch of 0".into());
    }
    if let Some(b) = batch
        && dims[0] >= 0
        && dims[0] as usize != b
    {
        return bad(format!(
            "has a static batch of {} in {dims:?}; it cannot run at batch {b} (only a symbolic batch dimension takes a batch size)",
            dims[0]
        ));
    }
    let batch = batch.unwrap_or(1);
    let mut shape = Vec::with_capacity(dims.len());
    for (i, &d) in dims.iter().enumerate() {
        let symbol = symbols
            .get(i)
            .filter(|s| !s.is_empty())
            .map_or(String::new(), |s| format!(" (`{s}`)"));
        shape.push(match d {
            d if d < 0 && i == 0 => batch,
            d if d < 0 => {
                return bad(format!(
                    "has a symbolic dimension {i}{symbol} in {dims:?}; only the batch (dimension 0) may be symbolic, export the model with static sizes"
                ));
            }
            0 => {
                return bad(format!(
                    "declares dimension {i} as 0 in {dims:?}; nothing to run"
                ));
            }
            d => d as usize,
        });
    }
    let values = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_INPUT_VALUES);
    if values.is_none() {
        return bad(format!(
            "of shape {shape:?} is too large to benchmark ({:.3e} values; at most {MAX_INPUT_VALUES}, 1 GiB of f32)",
            shape.iter().map(|&d| d as f64).product::<f64>()
        ));
    }
    Ok(shape)
}

/// A budget must be a positive, finite number of milliseconds.
pub fn check_budget(budget_ms: Option<f64>) -> Result<()> {
    match budget_ms {
        Some(b) if !(b.is_finite() && b > 0.0) => Err(Error::Latency(format!(
            "budget {b} ms: must be a positive, finite number of milliseconds"
        ))),
        _ => Ok(()),
    }
}

/// Times a model on ONNX Runtime (CPU or TensorRT execution provider) with a fixed random
/// input; the first warm-up run includes any TensorRT engine build. A symbolic batch
/// dimension runs at batch 1 ([`measure_ort_batch`] chooses another).
///
/// Inputs of no rank, with other symbolic or zero dimensions, or too large to allocate
/// ([`bench_shape`]) are refused before anything is allocated.
pub fn measure_ort(
    model: &[u8],
    threads: Option<usize>,
    provider: &Provider,
    warmup: usize,
    iters: usize,
    budget_ms: Option<f64>,
) -> Result<LatencyReport> {
    measure_ort_batch(model, threads, provider, None, warmup, iters, budget_ms)
}

/// [`measure_ort`] with a symbolic batch dimension fed as `batch` (default 1); a static batch
/// dimension must equal `batch` where it is given.
pub fn measure_ort_batch(
    model: &[u8],
    threads: Option<usize>,
    provider: &Provider,
    batch: Option<usize>,
    warmup: usize,
    iters: usize,
    budget_ms: Option<f64>,
) -> Result<LatencyReport> {
    let mut rt = OrtRuntime::with_provider(model, threads, provider)?;
    let shape = bench_shape(rt.input_name(), rt.input_dims(), rt.input_symbols(), batch)?;
    rt.set_input_shape(&shape)?;
    let n: usize = shape.iter().product();
    let x = bench_input(n);
    for _ in 0..warmup {
        rt.run(&x)?;
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        rt.run(&x)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mut r = LatencyReport::from_samples(ms, shape[0], warmup, budget_ms);
    r.runtime = format!(
        "onnxruntime {} ({})",
        crate::runtime::version()?,
        provider.name()
    );
    r.device = match provider {
        Provider::Cpu => cpu_name(),
        Provider::TensorRt(o) => format!("CUDA device {} (host {})", o.device_id, cpu_name()),
    };
    r.threads = threads;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_budget() {
        let r =
            LatencyReport::from_samples((1..=100).map(|v| v as f64).collect(), 2, 5, Some(99.5));
        assert_eq!(
            (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(r.within_budget, Some(true));
        assert!((r.throughput - 2.0 / 0.0505).abs() < 1e-9);
        let r = LatencyReport::from_samples(vec![5.0; 10], 1, 0, Some(4.0));
        assert_eq!(r.within_budget, Some(false));
    }

    #[test]
    fn bench_shapes_take_the_batch_and_refuse_what_cannot_run() {
        let none: Vec<String> = vec![];
        let syms = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            bench_shape("x", &[1, 3, 32, 32], &none, None).unwrap(),
            vec![1, 3, 32, 32]
        );
        assert_eq!(
            bench_shape("x", &[2, 3, 32, 32], &none, Some(2)).unwrap(),
            vec![2, 3, 32, 32]
        );
        assert_eq!(
            bench_shape("x", &[-1, 3, 32, 32], &syms(&["N", "", "", ""]), Some(4)).unwrap(),
            vec![4, 3, 32, 32]
        );
        assert_eq!(
            bench_shape("x", &[-1, 3, 32, 32], &none, None).unwrap(),
            vec![1, 3, 32, 32]
        );
        let err = |dims: &[i64], symbols: &[String], batch| {
            bench_shape("images", dims, symbols, batch)
                .unwrap_err()
                .to_string()
        };
        let e = err(&[], &none, None);
        assert!(e.contains("`images`") && e.contains("scalar"), "{e}");
        let e = err(&[-1, 3, -1, 32], &syms(&["N", "", "H", ""]), None);
        assert!(e.contains("dimension 2") && e.contains("`H`"), "{e}");
        let e = err(&[-1, 3, 32, 32], &none, Some(0));
        assert!(e.contains("batch of 0"), "{e}");
        let e = err(&[1, 3, 32, 32], &none, Some(4));
        assert!(e.contains("static batch of 1"), "{e}");
        let e = err(&[0, 3, 32, 32], &none, None);
        assert!(e.contains("dimension 0 as 0"), "{e}");
        let e = err(&[1, 3, 100_000, 100_000], &none, None);
        assert!(e.contains("too large"), "{e}");
        // Overflowing usize is refused the same way, not wrapped.
        let e = err(&[i64::MAX, i64::MAX, 2], &none, None);
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn budgets_must_be_positive_and_finite() {
        assert!(check_budget(None).is_ok());
        assert!(check_budget(Some(20.0)).is_ok());
        for b in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(check_budget(Some(b)).is_err(), "{b}");
        }
    }
}
