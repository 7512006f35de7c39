//! The CLI's rendering of the libraries' [`Progress`]: one indicatif bar at a time on stderr
//! (drawn only on a terminal) and event lines printed above it.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use overparam_base::Progress;

/// Bars and lines on stderr. Bars are hidden when stderr is not a terminal (logs, CI); event
/// lines are always printed.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    draw: bool,
}

impl Bars {
    /// Draws bars when stderr is a terminal.
    pub fn stderr() -> Self {
        Self {
            bar: Mutex::new(None),
            draw: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(b);
        }
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, len: u64) {
        let b = ProgressBar::with_draw_target(
            (len > 0).then_some(len),
            if self.draw {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        // indicatif's default template has no {msg}: a message set later would never show.
        let template = if len > 0 {
            "{prefix} [{bar:30}] {pos}/{len} {msg}"
        } else {
            "{prefix} {spinner} {pos} {per_sec} {msg}"
        };
        b.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(label.to_string());
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(b)
        {
            old.finish_and_clear();
        }
    }
    fn inc(&self, n: u64) {
        self.with_bar(|b| b.inc(n));
    }
    fn message(&self, msg: &str) {
        self.with_bar(|b| b.set_message(msg.to_string()));
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish_and_clear();
        }
    }
    fn event(&self, line: &str) {
        let g = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            // Above the bar, which is redrawn below it.
            Some(b) if self.draw => b.suspend(|| eprintln!("{line}")),
            _ => eprintln!("{line}"),
        }
    }
}
