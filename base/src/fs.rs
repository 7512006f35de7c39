//! Atomic file writes: every artefact of the project (checkpoints, datasets, reports, engines)
//! goes through here, so a crash or a kill never leaves a torn file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes bytes atomically: a temp file in the same directory, fsync, then rename, so a
/// reader (or a crash) sees the old file or the new one, never a torn one.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_file_atomic`] for a writer that streams its content (through a buffer), so a large
/// artefact is never held in memory whole next to what it is written from.
pub fn write_file_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        write(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (power loss, not only a killed process).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        sweep_stale_temps(dir, &file_name.to_string_lossy());
    }
    result
}

/// Removes `.<name>.<pid>.tmp` files left by writers of `name` that were killed mid-write:
/// those whose process no longer exists (Linux `/proc`; elsewhere nothing is removed, as a
/// live writer's file must never be).
fn sweep_stale_temps(dir: &Path, name: &str) {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return;
    }
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let f = e.file_name();
        let Some(pid) = f
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful write removes temp files of dead writers of the same file, and leaves
    /// those of live processes and of other files alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn writes_sweep_the_temp_files_of_dead_writers() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = d.path().join(format!(".a.json.{dead}.tmp"));
        let live = d.path().join(".a.json.1.tmp"); // pid 1 always exists
        let other = d.path().join(format!(".b.json.{dead}.tmp"));
        for f in [&stale, &live, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_file_atomic(&d.path().join("a.json"), b"{}").unwrap();
        assert!(!stale.exists(), "the dead writer's temp file is swept");
        assert!(live.exists() && other.exists());
        assert_eq!(std::fs::read(d.path().join("a.json")).unwrap(), b"{}");
    }
}
