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

/// An output that would destroy an input: the same file (through any symlink or `..`), or a
/// path inside an input directory.
#[derive(Debug)]
pub struct Clobber {
    pub output: PathBuf,
    pub input: PathBuf,
    /// The input is a directory the output lies in.
    pub inside: bool,
}

impl std::fmt::Display for Clobber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.inside {
            write!(
                f,
                "{}: the output lies inside the input directory {} and could replace its files; write it elsewhere",
                self.output.display(),
                self.input.display()
            )
        } else {
            write!(
                f,
                "{}: the output is the input {} and would replace it; give another output path",
                self.output.display(),
                self.input.display()
            )
        }
    }
}

impl std::error::Error for Clobber {}

/// The absolute path `p` names with symlinks resolved, also when `p` does not exist yet (its
/// nearest existing ancestor is resolved and the rest appended).
fn resolved(p: &Path) -> Option<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(p)
    };
    let mut rest = vec![];
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => out.push(c.as_os_str()),
                }
            }
            return Some(out);
        }
        let mut comps = cur.components();
        rest.push(comps.next_back()?);
        cur = comps.as_path();
    }
}

/// Refuses an output path that resolves to one of `inputs` (files) or lies inside one of them
/// (directories): every command that writes checks its outputs with this before reading.
pub fn check_output(output: &Path, inputs: &[&Path]) -> Result<(), Clobber> {
    let Some(out) = resolved(output) else {
        return Ok(());
    };
    for input in inputs {
        let Some(inp) = resolved(input) else { continue };
        let inside = out != inp && inp.is_dir();
        if out.starts_with(&inp) && (out == inp || inside) {
            return Err(Clobber {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
                inside,
            });
        }
    }
    Ok(())
}

/// A name that becomes one directory under another (a run, an experiment, a grid cell): not
/// empty, no path separator, not `.` or `..`, so it can never lead out of its parent.
pub fn is_plain_name(s: &str) -> bool {
    !(matches!(s, "" | "." | "..") || s.contains(['/', '\\']))
}

/// The advisory lock file of a run directory.
pub const LOCK_FILE: &str = ".lock";

/// An advisory lock (`flock`) on a directory, held until dropped: a second process that wants
/// the same directory is refused instead of silently sharing it. The lock file holds the
/// holder's PID for the message; the kernel releases the lock when its holder dies, so a lock
/// file left by a dead process is simply taken over.
#[derive(Debug)]
pub struct DirLock {
    file: std::fs::File,
    /// The PID named by a lock file whose process had died (taken over).
    pub stale: Option<u32>,
}

impl Drop for DirLock {
    /// A clean release empties the file, so only a dead holder leaves its PID behind.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// Why a directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another live process holds it.
    Busy {
        dir: PathBuf,
        pid: Option<u32>,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Busy { dir, pid } => write!(
                f,
                "{} is in use by {}",
                dir.display(),
                pid.map_or("another process".to_string(), |p| format!("PID {p}"))
            ),
            LockError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LockError {}

/// Takes the lock of `dir` (which must exist) without waiting.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    use std::io::{Read, Seek};
    let path = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(LockError::Io)?;
    // The PID the file names (empty after a clean release), read once the lock's fate is
    // known, so it is the holder's or a dead one's.
    let holder = |f: &mut std::fs::File| {
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        text.trim().parse::<u32>().ok()
    };
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(LockError::Busy {
                dir: dir.to_path_buf(),
                pid: holder(&mut f),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    let stale = holder(&mut f).filter(|&p| p != std::process::id());
    f.set_len(0).map_err(LockError::Io)?;
    f.rewind().map_err(LockError::Io)?;
    f.write_all(std::process::id().to_string().as_bytes())
        .map_err(LockError::Io)?;
    Ok(DirLock { file: f, stale })
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

    /// A second lock on a held directory is refused naming the holder; once the holder lets
    /// go, the lock is taken again and the old PID reported as stale.
    #[test]
    fn a_held_directory_is_refused_and_a_released_one_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let first = lock_dir(d.path()).unwrap();
        assert!(first.stale.is_none());
        // flock locks belong to the open file, so a second open in this process is refused too.
        match lock_dir(d.path()) {
            Err(LockError::Busy { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(first);
        assert_eq!(std::fs::read(d.path().join(LOCK_FILE)).unwrap(), b"");
        assert!(lock_dir(d.path()).unwrap().stale.is_none());
        // What a killed holder leaves: its PID, and no lock.
        std::fs::write(d.path().join(LOCK_FILE), "4000000").unwrap();
        let again = lock_dir(d.path()).unwrap();
        assert_eq!(again.stale, Some(4_000_000));
    }

    /// The same file through a symlink, `..` or a path that does not exist yet is refused, and
    /// so is a path inside an input directory; a sibling is not.
    #[cfg(unix)]
    #[test]
    fn outputs_that_resolve_to_an_input_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("model.safetensors");
        std::fs::write(&f, b"x").unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&f, d.path().join("link")).unwrap();
        let e = check_output(&d.path().join("link"), &[&f]).unwrap_err();
        assert!(
            !e.inside && e.to_string().contains("model.safetensors"),
            "{e}"
        );
        assert!(check_output(&data.join("../model.safetensors"), &[&f]).is_err());
        let e = check_output(&data.join("new/x.npy"), &[&f, &data]).unwrap_err();
        assert!(
            e.inside && e.to_string().contains("inside the input directory"),
            "{e}"
        );
        assert!(check_output(&data, &[&data]).is_err());
        check_output(&d.path().join("other.onnx"), &[&f, &data]).unwrap();
        check_output(&d.path().join("datax/y"), &[&data]).unwrap();
    }

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
