//! Subscribing to a bridge's topics: decode and validate every sample, count what arrived, what
//! failed and what is missing (frame-id gaps per stream), and measure end-to-end latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use zenoh::Wait;
use zenoh::handlers::{FifoChannel, FifoChannelHandler};
use zenoh::pubsub::Subscriber;
use zenoh::sample::Sample;

use crate::counters::{CounterSnapshot, Counters};
use crate::error::{Error, Result};
use crate::ros2::{self, Ros2Names};
use crate::session::now_ns;
use crate::wire::{self, TensorMsg};

/// Latency samples kept per topic (a ring: memory stays flat in long runs).
const LATENCY_RING: usize = 100_000;

#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// Key expression to subscribe to: `<prefix>/**` natively, or a ROS 2 domain's Image keys.
    pub key: String,
    pub ros2: bool,
    /// Subscriber queue length (samples); when full, reliable + Block publishers wait.
    pub queue: usize,
    /// Copy each tensor out ([`Event::Message`]); when false, native messages are validated
    /// in place and reported as [`Event::Header`] (counting and timing need no tensor copy).
    /// ROS 2 messages are always decoded.
    pub payloads: bool,
}

impl ListenConfig {
    pub fn native(prefix: &str) -> Self {
        ListenConfig {
            key: format!("{}/**", prefix.trim_matches('/')),
            ros2: false,
            queue: 256,
            payloads: true,
        }
    }
    pub fn ros2(names: &Ros2Names) -> Self {
        ListenConfig {
            key: names.subscribe_all(),
            ros2: true,
            queue: 256,
            payloads: true,
        }
    }
}

/// Per-topic statistics.
#[derive(Debug, Default)]
pub struct TopicStats {
    pub received: u64,
    pub bytes: u64,
    pub decode_errors: u64,
    pub dropped: u64,
    pub restarts: u64,
    pub first_ns: i64,
    pub last_ns: i64,
    last: Option<(u64, u64)>,
    /// Publish → receive, ms.
    transport_ms: Vec<f64>,
    /// Capture → receive, ms.
    end_to_end_ms: Vec<f64>,
    seen: u64,
}

fn push_ring(v: &mut Vec<f64>, seen: u64, x: f64) {
    if v.len() < LATENCY_RING {
        v.push(x);
    } else {
        v[(seen as usize) % LATENCY_RING] = x;
    }
}

/// Percentile by nearest rank of unsorted samples (sorts a copy; NaN when empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    overparam_base::stats::percentile(&s, p)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TopicReport {
    pub key: String,
    pub received: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    pub restarts: u64,
    pub rate_hz: f64,
    pub mbit_s: f64,
    pub transport_ms_p50: f64,
    pub transport_ms_p99: f64,
    pub end_to_end_ms_p50: f64,
    pub end_to_end_ms_p99: f64,
}

/// What one `recv` produced.
#[derive(Debug)]
pub enum Event {
    Message {
        key: String,
        msg: TensorMsg,
    },
    /// A valid native message, not copied out (`ListenConfig::payloads` off).
    Header {
        key: String,
        header: wire::Header,
    },
    Status {
        key: String,
        json: serde_json::Value,
    },
    Invalid {
        key: String,
        error: Error,
    },
}

/// A valid native or ROS 2 sample, before it becomes an [`Event`].
enum Decoded {
    Message(TensorMsg),
    Header(wire::Header),
}

pub struct Listener {
    cfg: ListenConfig,
    sub: Subscriber<FifoChannelHandler<Sample>>,
    stats: BTreeMap<String, TopicStats>,
    counters: Arc<Counters>,
}

impl Listener {
    pub fn new(session: &zenoh::Session, cfg: ListenConfig) -> Result<Self> {
        let sub = session
            .declare_subscriber(cfg.key.clone())
            .with(FifoChannel::new(cfg.queue))
            .wait()?;
        Ok(Listener {
            cfg,
            sub,
            stats: BTreeMap::new(),
            counters: Arc::new(Counters::default()),
        })
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Waits up to `timeout` for one sample; `None` when none came.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let Some(sample) = self.sub.recv_timeout(timeout)? else {
            return Ok(None);
        };
        Ok(Some(self.handle(&sample)))
    }

    fn handle(&mut self, sample: &Sample) -> Event {
        let recv_ns = now_ns();
        let key = sample.key_expr().as_str().to_string();
        let bytes = sample.payload().to_bytes();
        let st = self.stats.entry(key.clone()).or_default();
        // The JSON topics of a native bridge: per-frame status, the 1 s health, the classes,
        // the class names.
        if !self.cfg.ros2
            && ["/status", "/health", "/classes", "/labels"]
                .iter()
                .any(|t| key.ends_with(t))
        {
            return match serde_json::from_slice(&bytes) {
                Ok(json) => Event::Status { key, json },
                Err(e) => {
                    st.decode_errors += 1;
                    Counters::add(&self.counters.decode_errors, 1);
                    Event::Invalid {
                        key,
                        error: Error::Malformed(format!("status JSON: {e}")),
                    }
                }
            };
        }
        let decoded = if self.cfg.ros2 {
            sample
                .attachment()
                .ok_or_else(|| Error::Malformed("no rmw_zenoh attachment".into()))
                .and_then(|a| ros2::parse_attachment(&a.to_bytes()))
                .and_then(|(seq, src_ns, gid)| {
                    let img = ros2::decode_image(&bytes)?;
                    let mut m = ros2::to_tensor_msg(&img, seq, src_ns)?;
                    // A publisher's GID stands for its stream.
                    m.stream_id = u64::from_le_bytes(gid[..8].try_into().expect("8 bytes"));
                    Ok(Decoded::Message(m))
                })
        } else if self.cfg.payloads {
            wire::decode(&bytes).map(Decoded::Message)
        } else {
            wire::decode_header(&bytes).map(Decoded::Header)
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err(error) => {
                st.decode_errors += 1;
                Counters::add(&self.counters.decode_errors, 1);
                return Event::Invalid { key, error };
            }
        };
        let (stream_id, frame_id, stamps) = match &decoded {
            Decoded::Message(m) => (m.stream_id, m.frame_id, m.stamps),
            Decoded::Header(h) => (h.stream_id, h.frame_id, h.stamps),
        };
        if st.received == 0 {
            st.first_ns = recv_ns;
        }
        st.received += 1;
        st.bytes += bytes.len() as u64;
        st.last_ns = recv_ns;
        Counters::add(&self.counters.received, 1);
        Counters::add(&self.counters.bytes_received, bytes.len() as u64);
        match st.last {
            Some((stream, frame)) if stream == stream_id && frame_id > frame + 1 => {
                let gap = frame_id - frame - 1;
                st.dropped += gap;
                Counters::add(&self.counters.dropped, gap);
            }
            Some((stream, _)) if stream == stream_id => {}
            Some(_) => {
                st.restarts += 1;
                Counters::add(&self.counters.stream_restarts, 1);
            }
            None => {}
        }
        st.last = Some((stream_id, frame_id));
        st.seen += 1;
        if stamps.publish_ns > 0 {
            push_ring(
                &mut st.transport_ms,
                st.seen,
                (recv_ns - stamps.publish_ns) as f64 / 1e6,
            );
        }
        if stamps.capture_ns > 0 {
            push_ring(
                &mut st.end_to_end_ms,
                st.seen,
                (recv_ns - stamps.capture_ns) as f64 / 1e6,
            );
        }
        match decoded {
            Decoded::Message(msg) => Event::Message { key, msg },
            Decoded::Header(header) => Event::Header { key, header },
        }
    }

    /// Per-topic rates, losses and latency percentiles so far.
    pub fn report(&self) -> Vec<TopicReport> {
        self.stats
            .iter()
            .filter(|(_, s)| s.received > 0 || s.decode_errors > 0)
            .map(|(k, s)| {
                let span = (s.last_ns - s.first_ns) as f64 / 1e9;
                let rate = if s.received > 1 && span > 0.0 {
                    (s.received - 1) as f64 / span
                } else {
                    0.0
                };
                TopicReport {
                    key: k.clone(),
                    received: s.received,
                    dropped: s.dropped,
                    decode_errors: s.decode_errors,
                    restarts: s.restarts,
                    rate_hz: rate,
                    mbit_s: if span > 0.0 {
                        s.bytes as f64 * 8.0 / span / 1e6
                    } else {
                        0.0
                    },
                    transport_ms_p50: percentile(&s.transport_ms, 50.0),
                    transport_ms_p99: percentile(&s.transport_ms, 99.0),
                    end_to_end_ms_p50: percentile(&s.end_to_end_ms, 50.0),
                    end_to_end_ms_p99: percentile(&s.end_to_end_ms, 99.0),
                }
            })
            .collect()
    }
}

/// `v` with `decimals` decimals, or `–` where there is no value (NaN: a statistic of no
/// samples).
pub fn fmt_value(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "–".into()
    }
}

/// A plain-text table of a report (`–` for a statistic with no samples).
pub fn format_report(r: &[TopicReport], c: &CounterSnapshot) -> String {
    let mut s = format!(
        "{:<48} {:>8} {:>7} {:>7} {:>8} {:>8} {:>10} {:>10}\n",
        "topic", "received", "dropped", "errors", "rate Hz", "Mbit/s", "e2e p50 ms", "e2e p99 ms"
    );
    for t in r {
        s += &format!(
            "{:<48} {:>8} {:>7} {:>7} {:>8.1} {:>8.1} {:>10} {:>10}\n",
            t.key,
            t.received,
            t.dropped,
            t.decode_errors,
            t.rate_hz,
            t.mbit_s,
            fmt_value(t.end_to_end_ms_p50, 2),
            fmt_value(t.end_to_end_ms_p99, 2)
        );
    }
    s += &format!(
        "total: received {}, dropped {} (sequence gaps), decode errors {}, publisher restarts {}",
        c.received, c.dropped, c.decode_errors, c.stream_restarts
    );
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), 50.0);
        assert_eq!(super::percentile(&v, 99.0), 99.0);
        assert_eq!(super::percentile(&v, 100.0), 100.0);
        assert!(super::percentile(&[], 50.0).is_nan());
    }

    /// A topic with no latency samples (only decode errors) shows '–', never NaN.
    #[test]
    fn reports_show_a_dash_for_statistics_of_nothing() {
        let t = super::TopicReport {
            key: "overparam/cam0/depth".into(),
            received: 0,
            dropped: 0,
            decode_errors: 2,
            restarts: 0,
            rate_hz: 0.0,
            mbit_s: 0.0,
            transport_ms_p50: f64::NAN,
            transport_ms_p99: f64::NAN,
            end_to_end_ms_p50: f64::NAN,
            end_to_end_ms_p99: f64::NAN,
        };
        let s = super::format_report(&[t], &Default::default());
        assert!(!s.contains("NaN") && s.contains('–'), "{s}");
        assert_eq!(super::fmt_value(1.234, 1), "1.2");
    }
}
