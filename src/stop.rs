//! SIGINT (Ctrl-C) and SIGTERM as a request to stop: long-running commands (`bridge run`,
//! `bridge listen`) poll [`requested`], finish cleanly and print their report. A second signal
//! ends the process at once (exit status 128 + signal), for a loop that does not come back.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked to stop; 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, and _exit on a repeat.
    if SIGNAL.swap(sig, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Installs the handlers for SIGINT and SIGTERM (where the platform has them).
pub fn install() -> anyhow::Result<()> {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe;
        // `signal` on Linux installs it with SA_RESTART, so blocking calls are resumed.
        let prev = unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            anyhow::bail!(
                "cannot install a handler for signal {sig}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The name of the signal that asked to stop, if one has.
pub fn requested() -> Option<&'static str> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        #[cfg(unix)]
        libc::SIGINT => Some("SIGINT"),
        #[cfg(unix)]
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}

/// Whether a signal has asked to stop (the check library loops take).
pub fn stop_requested() -> bool {
    requested().is_some()
}
