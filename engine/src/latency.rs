//! Latency measurement: warm-up excluded, percentiles, throughput, and a budget verdict.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
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

/// The p-th percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

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

/// Times a model on ONNX Runtime (CPU or TensorRT execution provider) with a fixed random
/// input; the first warm-up run includes any TensorRT engine build.
pub fn measure_ort(
    model: &[u8],
    threads: Option<usize>,
    provider: &Provider,
    warmup: usize,
    iters: usize,
    budget_ms: Option<f64>,
) -> Result<LatencyReport> {
    let mut rt = OrtRuntime::with_provider(model, threads, provider)?;
    let n: usize = rt.input_shape().iter().product();
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
    let mut r = LatencyReport::from_samples(ms, rt.input_shape()[0], warmup, budget_ms);
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
}
