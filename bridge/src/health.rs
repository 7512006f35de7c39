//! The bridge's health over the last second, the fields `/diagnostics` and the native status
//! message share: processing time and pipeline latency (p50 and max), input and output rates,
//! skipped and refused frames, and what runs (model, precision, runtime).
//!
//! Autoware's debug topics call the two times `processing_time_ms` (here: inference start to
//! the outputs handed to zenoh) and `pipeline_latency_ms` (now − header.stamp, the camera's
//! capture time); the names below follow them.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::counters::CounterSnapshot;
use crate::msgs::{DiagnosticStatus, KeyValue};

/// What runs, as the reports name it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model file.
    pub model: String,
    /// `fp32`, `fp16` or `int8`, read from the graph.
    pub precision: String,
    /// The runtime and execution provider (`onnxruntime CPU EP`).
    pub runtime: String,
}

/// `diagnostic_msgs/DiagnosticStatus` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warn,
    Error,
    Stale,
}

impl Level {
    pub fn code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Error => 2,
            Level::Stale => 3,
        }
    }
}

/// One window's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Stale: no frame was published in the window; warn: a camera frame was refused in it.
    pub level: Level,
    pub message: String,
    /// The window's length, seconds (about 1).
    pub window_s: f64,
    /// `None` when no frame was published in the window.
    pub processing_time_ms_p50: Option<f64>,
    pub processing_time_ms_max: Option<f64>,
    pub pipeline_latency_ms_p50: Option<f64>,
    pub pipeline_latency_ms_max: Option<f64>,
    /// Camera frames in per second: those a subscribing source received, else those taken.
    pub input_hz: f64,
    /// Frames published per second.
    pub output_hz: f64,
    /// Totals since the start: camera frames replaced by a newer one, and refused.
    pub frames_skipped: u64,
    pub frames_refused: u64,
    #[serde(flatten)]
    pub info: ModelInfo,
}

impl HealthReport {
    /// As one `DiagnosticStatus`, every field a key/value (times in ms with 3 decimals,
    /// rates in Hz with 2; `n/a` for a window without frames).
    pub fn to_status(&self, name: &str, hardware_id: &str) -> DiagnosticStatus {
        let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
        let kv = |k: &str, v: String| KeyValue {
            key: k.into(),
            value: v,
        };
        DiagnosticStatus {
            level: self.level.code(),
            name: name.into(),
            message: self.message.clone(),
            hardware_id: hardware_id.into(),
            values: vec![
                kv("processing_time_ms_p50", ms(self.processing_time_ms_p50)),
                kv("processing_time_ms_max", ms(self.processing_time_ms_max)),
                kv("pipeline_latency_ms_p50", ms(self.pipeline_latency_ms_p50)),
                kv("pipeline_latency_ms_max", ms(self.pipeline_latency_ms_max)),
                kv("input_hz", format!("{:.2}", self.input_hz)),
                kv("output_hz", format!("{:.2}", self.output_hz)),
                kv("frames_skipped", self.frames_skipped.to_string()),
                kv("frames_refused", self.frames_refused.to_string()),
                kv("model", self.info.model.clone()),
                kv("precision", self.info.precision.clone()),
                kv("runtime", self.info.runtime.clone()),
                kv("window_s", format!("{:.3}", self.window_s)),
            ],
        }
    }
}

#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    input: u64,
    output: u64,
    refused: u64,
}

struct Inner {
    processing_ms: Vec<f64>,
    latency_ms: Vec<f64>,
    published: u64,
    mark: Mark,
    latest: Option<HealthReport>,
}

/// The frames of the current window; [`Health::report`] closes it.
pub struct Health {
    info: ModelInfo,
    inner: Mutex<Inner>,
}

fn median_and_max(v: &mut [f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    v.sort_by(f64::total_cmp);
    (
        Some(overparam_base::stats::percentile(v, 50.0)),
        v.last().copied(),
    )
}

impl Health {
    pub fn new(info: ModelInfo, now: Instant) -> Self {
        Health {
            info,
            inner: Mutex::new(Inner {
                processing_ms: vec![],
                latency_ms: vec![],
                published: 0,
                mark: Mark {
                    at: now,
                    input: 0,
                    output: 0,
                    refused: 0,
                },
                latest: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One published frame: its processing time and its pipeline latency, ms.
    pub fn record(&self, processing_ms: f64, latency_ms: f64) {
        let mut g = self.lock();
        g.processing_ms.push(processing_ms);
        g.latency_ms.push(latency_ms);
        g.published += 1;
    }

    /// Closes the window at `now`, with the counters as they are now, and keeps the report as
    /// [`Health::latest`].
    pub fn report(&self, now: Instant, c: &CounterSnapshot) -> HealthReport {
        let mut g = self.lock();
        let dt = now.saturating_duration_since(g.mark.at).as_secs_f64();
        let input = c.input_received.max(g.published);
        let rate = |n: u64, before: u64| {
            if dt > 0.0 {
                n.saturating_sub(before) as f64 / dt
            } else {
                0.0
            }
        };
        let (p_p50, p_max) = median_and_max(&mut g.processing_ms);
        let (l_p50, l_max) = median_and_max(&mut g.latency_ms);
        let frames = g.processing_ms.len();
        let refused = c.input_invalid.saturating_sub(g.mark.refused);
        let (level, message) = if frames == 0 {
            (
                Level::Stale,
                format!("no frame published in the last {dt:.1} s"),
            )
        } else if refused > 0 {
            (
                Level::Warn,
                format!("{refused} camera frames refused in the last {dt:.1} s"),
            )
        } else {
            (Level::Ok, format!("{frames} frames in {dt:.1} s"))
        };
        let r = HealthReport {
            level,
            message,
            window_s: dt,
            processing_time_ms_p50: p_p50,
            processing_time_ms_max: p_max,
            pipeline_latency_ms_p50: l_p50,
            pipeline_latency_ms_max: l_max,
            input_hz: rate(input, g.mark.input),
            output_hz: rate(g.published, g.mark.output),
            frames_skipped: c.input_skipped,
            frames_refused: c.input_invalid,
            info: self.info.clone(),
        };
        g.processing_ms.clear();
        g.latency_ms.clear();
        g.mark = Mark {
            at: now,
            input,
            output: g.published,
            refused: c.input_invalid,
        };
        g.latest = Some(r.clone());
        r
    }

    /// The last closed window's report (`None` before the first).
    pub fn latest(&self) -> Option<HealthReport> {
        self.lock().latest.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_window_reports_its_frames_rates_and_level() {
        let t0 = Instant::now();
        let h = Health::new(
            ModelInfo {
                model: "m.onnx".into(),
                precision: "int8".into(),
                runtime: "onnxruntime CPU EP".into(),
            },
            t0,
        );
        assert!(h.latest().is_none());
        for (p, l) in [(3.0, 10.0), (1.0, 30.0), (2.0, 20.0), (9.0, 12.0)] {
            h.record(p, l);
        }
        let mut c = CounterSnapshot {
            input_received: 10,
            input_skipped: 6,
            ..Default::default()
        };
        let r = h.report(t0 + Duration::from_secs(2), &c);
        assert_eq!(r.level, Level::Ok, "{r:?}");
        assert_eq!(r.processing_time_ms_max, Some(9.0));
        assert_eq!(r.pipeline_latency_ms_max, Some(30.0));
        let p50 = r.processing_time_ms_p50.unwrap();
        assert!((2.0..=3.0).contains(&p50), "{p50}");
        assert_eq!((r.input_hz, r.output_hz), (5.0, 2.0));
        assert_eq!(h.latest().as_ref(), Some(&r));

        // A window with a refused frame warns; the next, with no frame, is stale and empty.
        h.record(1.0, 1.0);
        c.input_received = 12;
        c.input_invalid = 1;
        let r = h.report(t0 + Duration::from_secs(3), &c);
        assert_eq!((r.level, r.input_hz, r.output_hz), (Level::Warn, 2.0, 1.0));
        assert!(
            r.message.contains("1 camera frames refused"),
            "{}",
            r.message
        );
        let r = h.report(t0 + Duration::from_secs(4), &c);
        assert_eq!(r.level, Level::Stale);
        assert_eq!((r.processing_time_ms_p50, r.output_hz), (None, 0.0));
        assert_eq!(r.frames_refused, 1);

        // A pulled source (no subscription counts): input is what was published.
        let pulled = Health::new(h.info.clone(), t0);
        pulled.record(1.0, 1.0);
        pulled.record(1.0, 1.0);
        let r = pulled.report(t0 + Duration::from_secs(2), &CounterSnapshot::default());
        assert_eq!((r.input_hz, r.output_hz), (1.0, 1.0));

        let s = r.to_status("overparam: cam0", "cam0");
        assert_eq!(s.level, 0);
        let get = |k: &str| {
            s.values
                .iter()
                .find(|kv| kv.key == k)
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(get("precision"), "int8");
        assert_eq!(get("output_hz"), "1.00");
        assert_eq!(get("processing_time_ms_p50"), "1.000");
    }
}
