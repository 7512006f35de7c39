//! The CLI's rendering of the libraries' [`Progress`] on stderr: an outer bar (a grid's cells,
//! the pipeline's stages) above one inner bar (an epoch, a calibration pass), both drawn only
//! on a terminal, with event lines printed above them.

use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use overparam_base::Progress;

/// Bars and lines on stderr. Bars are hidden when stderr is not a terminal (logs, CI); event
/// lines are always printed.
pub struct Bars {
    multi: MultiProgress,
    outer: Mutex<Option<ProgressBar>>,
    bar: Mutex<Option<ProgressBar>>,
    draw: bool,
}

/// A bar of `len` steps (0: a counter) with `template`'s `{bar}` drawn `width` wide.
fn styled(len: u64, width: usize) -> ProgressBar {
    let b = if len > 0 {
        ProgressBar::new(len)
    } else {
        ProgressBar::no_length()
    };
    // indicatif's default template has no {msg}: a message set later would never show.
    let template = if len > 0 {
        format!("{{prefix}} [{{bar:{width}}}] {{pos}}/{{len}} {{msg}}")
    } else {
        "{prefix} {spinner} {pos} {per_sec} {msg}".to_string()
    };
    b.set_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    b
}

impl Bars {
    /// Draws bars when stderr is a terminal.
    pub fn stderr() -> Self {
        let draw = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Self {
            multi: MultiProgress::with_draw_target(if draw {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            outer: Mutex::new(None),
            bar: Mutex::new(None),
            draw,
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(b);
        }
    }
}

/// A command that fails leaves no half-drawn bars above its error.
impl Drop for Bars {
    fn drop(&mut self) {
        let _ = self.multi.clear();
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, len: u64) {
        let b = self.multi.add(styled(len, 30));
        b.set_prefix(label.to_string());
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(b)
        {
            old.finish_and_clear();
            self.multi.remove(&old);
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
            self.multi.remove(&b);
        }
    }
    fn event(&self, line: &str) {
        if self.draw {
            // Above the bars, which are redrawn below it.
            self.multi.suspend(|| eprintln!("{line}"));
        } else {
            eprintln!("{line}");
        }
    }
    fn outer(&self, label: &str, pos: u64, len: u64) {
        let mut outer = self.outer.lock().unwrap_or_else(|e| e.into_inner());
        if pos >= len {
            if let Some(b) = outer.take() {
                b.finish_and_clear();
                self.multi.remove(&b);
            }
            return;
        }
        let b = outer.get_or_insert_with(|| {
            let b = self.multi.insert(0, styled(len, 20));
            b.set_prefix("overall");
            b
        });
        b.set_length(len);
        b.set_position(pos);
        b.set_message(label.to_string());
    }
}
