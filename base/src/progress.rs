//! How a library reports long work and notable events. Libraries never print: they call a
//! [`Progress`], and the CLI renders it (indicatif bars, lines on stderr). Tests pass [`Silent`]
//! or a recorder.

/// One bar at a time (an epoch, a calibration pass) plus log lines. Every method has a no-op
/// default, so an implementation renders only what it cares about.
pub trait Progress: Send + Sync {
    /// Starts a bar of `len` steps (0: unknown, a counter); `label` names the work
    /// ("epoch 3/8 r1", "calibrating").
    fn start(&self, _label: &str, _len: u64) {}
    /// Advances the current bar by `n` steps.
    fn inc(&self, _n: u64) {}
    /// Sets the current bar's message (a running loss, a throughput).
    fn message(&self, _msg: &str) {}
    /// Ends the current bar and clears it.
    fn finish(&self) {}
    /// A line worth keeping in the log: an epoch's metrics, a resume, a fold verdict.
    fn event(&self, _line: &str) {}
    /// Where the work that holds the bars stands (a grid's cells, the pipeline's stages):
    /// `pos` of `len` done, `label` the current part. `pos == len` ends it.
    fn outer(&self, _label: &str, _pos: u64, _len: u64) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

/// Keeps every event line and outer position (for tests and for callers that want the log
/// as data).
#[derive(Debug, Default)]
pub struct Recorder {
    lines: std::sync::Mutex<Vec<String>>,
    outer: std::sync::Mutex<Vec<(String, u64, u64)>>,
}

impl Recorder {
    /// The event lines so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The outer positions so far: (label, pos, len).
    pub fn outer_positions(&self) -> Vec<(String, u64, u64)> {
        self.outer.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Progress for Recorder {
    fn event(&self, line: &str) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(line.to_string());
        }
    }
    fn outer(&self, label: &str, pos: u64, len: u64) {
        if let Ok(mut l) = self.outer.lock() {
            l.push((label.to_string(), pos, len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_events_in_order_and_silent_ignores_everything() {
        let r = Recorder::default();
        let p: &dyn Progress = &r;
        p.start("epoch 1/2", 10);
        p.inc(3);
        p.message("loss 0.1");
        p.event("first");
        p.finish();
        p.event("second");
        p.outer("cell a", 0, 2);
        assert_eq!(r.lines(), ["first", "second"]);
        assert_eq!(r.outer_positions(), [("cell a".to_string(), 0, 2)]);
        let s: &dyn Progress = &Silent;
        s.event("dropped");
    }
}
