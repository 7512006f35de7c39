//! overparam-base: what every crate of the workspace shares and none owns, with no
//! dependencies: the seeded, version-stable [`Rng`], [`write_file_atomic`], the [`number`] rules
//! every flag and config key is checked by, and the statistics
//! the experiment summaries and latency reports use ([`stats`]), [`Progress`], the one way a
//! library reports long work and events (it never prints), and the multi-task vocabulary
//! ([`Task`], [`Role`], [`NYU_METRICS`]). Datasets (`data`) and models
//! (`fuse`) both build on it without depending on each other.

pub mod fs;
pub mod number;
pub mod progress;
pub mod rng;
pub mod stats;
pub mod task;

pub use fs::{
    Clobber, DirLock, LOCK_FILE, LockError, check_output, is_plain_name, lock_dir,
    write_dir_atomic, write_file_atomic,
};
pub use number::{NumberError, Rule};
pub use progress::{Progress, Recorder, Silent};
pub use rng::Rng;
pub use task::{NYU_METRICS, NyuMetric, Role, Task};

/// Memory this process may still take, in bytes: Linux's `MemAvailable` (free memory plus
/// what the kernel can reclaim), lowered to the cgroup v2 limit's headroom when the process
/// runs in a container with one. `None` where neither can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mut avail = kib * 1024;
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // "max" (no limit) does not parse and leaves MemAvailable.
    if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
        avail = avail.min(max.saturating_sub(current));
    }
    Some(avail)
}
