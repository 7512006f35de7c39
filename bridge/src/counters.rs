//! Counters both sides keep, readable while the other threads write them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handed to zenoh.
    pub sent: AtomicU64,
    /// Of those, sent while no subscriber matched the key (nobody could receive them).
    pub sent_unmatched: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages that decoded and validated.
    pub received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Frames missing between consecutive frame ids of one stream (one per lost message).
    pub dropped: AtomicU64,
    /// Payloads that failed to decode or validate.
    pub decode_errors: AtomicU64,
    /// Streams that began again (a restarted publisher).
    pub stream_restarts: AtomicU64,
    /// Camera frames that arrived at a subscribing source (`ros2:TOPIC`).
    pub input_received: AtomicU64,
    /// Of those, replaced by a newer frame before the model took them (the source keeps only
    /// the newest, so a slow model never builds a queue).
    pub input_skipped: AtomicU64,
    /// Of those, refused: undecodable, inconsistent, or in an unsupported encoding.
    pub input_invalid: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub sent: u64,
    pub sent_unmatched: u64,
    pub bytes_sent: u64,
    pub received: u64,
    pub bytes_received: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    pub stream_restarts: u64,
    // Absent in the status JSON of older bridges.
    #[serde(default)]
    pub input_received: u64,
    #[serde(default)]
    pub input_skipped: u64,
    #[serde(default)]
    pub input_invalid: u64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    /// Copies a frame source's own counts in (the source counts; the run loop reports).
    pub fn set_input(&self, s: &crate::source::SourceStats) {
        self.input_received.store(s.received, Relaxed);
        self.input_skipped.store(s.skipped, Relaxed);
        self.input_invalid.store(s.invalid, Relaxed);
    }
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            sent: self.sent.load(Relaxed),
            sent_unmatched: self.sent_unmatched.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            received: self.received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            stream_restarts: self.stream_restarts.load(Relaxed),
            input_received: self.input_received.load(Relaxed),
            input_skipped: self.input_skipped.load(Relaxed),
            input_invalid: self.input_invalid.load(Relaxed),
        }
    }
}
