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
    let tmp = temp_sibling(path, TMP)?;
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
        sweep_stale(dir, &file_name.to_string_lossy(), TMP);
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

/// The tag of a file being written ([`write_file_atomic`]).
pub const TMP: &str = "tmp";
/// The tag of a directory being written ([`write_dir_atomic`]).
pub const STAGING: &str = "staging";
/// The tag of a replaced directory, removed once its replacement is in place.
const REPLACED: &str = "old";
/// The longest file name Linux, macOS and Windows filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// `.<name>.<pid>.<tag>`, the name of this process's temporary sibling of `name`. `name` is
/// shortened (at a character boundary) so that the temporary name is never longer than
/// NAME_MAX: a legal output name never fails for its temp file's sake.
pub fn temp_name(name: &str, pid: u32, tag: &str) -> String {
    let tail = format!(".{pid}.{tag}");
    let mut keep = name.len().min(NAME_MAX - 1 - tail.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!(".{}{tail}", &name[..keep])
}

/// [`temp_name`] of this process beside `path`.
pub fn temp_sibling(path: &Path, tag: &str) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file path", path.display())))?;
    Ok(path.with_file_name(temp_name(&name.to_string_lossy(), std::process::id(), tag)))
}

/// The process that owns `entry` if it is a [`temp_name`] of `name` with `tag`.
fn temp_owner(entry: &str, name: &str, tag: &str) -> Option<u32> {
    let (_, pid) = entry
        .strip_suffix(tag)?
        .strip_suffix('.')?
        .rsplit_once('.')?;
    let pid: u32 = pid.parse().ok()?;
    (temp_name(name, pid, tag) == entry).then_some(pid)
}

/// Removes the temporaries of `name` with `tag` in `dir` whose process no longer exists:
/// left by writers that were killed mid-write (Linux `/proc`; elsewhere nothing is removed,
/// as a live writer's must never be).
pub fn sweep_stale(dir: &Path, name: &str, tag: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|f| temp_owner(f, name, tag))
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Writes a directory whole: `write` fills this process's staging sibling of `out`
/// ([`staging_dir`]), which then takes `out`'s place. `out` may be absent, empty, or hold an
/// old version (the caller decides whether it may be replaced): the old one is moved aside
/// and removed only once the new one is in place. A failed `write` leaves `out` as it was and
/// no staging behind; so does a process killed mid-write, whose staging the next writer of
/// `out` removes. A new `out` exists only once complete.
pub fn write_dir_atomic<E: From<std::io::Error>>(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let staging = staging_dir(out)?;
    let parent = staging.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    for tag in [STAGING, REPLACED] {
        sweep_stale(parent, &name, tag);
    }
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)?;
    let result = write(&staging).and_then(|()| Ok(replace_dir(&staging, out)?));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Where this process stages `out` ([`write_dir_atomic`]); a signal handler removes it with
/// [`remove_staging`].
pub fn staging_dir(out: &Path) -> std::io::Result<PathBuf> {
    let out = match out.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new(".").join(out),
        _ => out.to_path_buf(),
    };
    temp_sibling(&out, STAGING)
}

/// Removes this process's staging of `out` while a writer may still be adding to it. The
/// staging is renamed away and a file takes its name, so the writer's next file or
/// `create_dir_all` under it fails instead of bringing it back; once `writer_done` (or after
/// 10 s, the writer stuck), that file goes too.
pub fn remove_staging(out: &Path, writer_done: impl Fn() -> bool) -> std::io::Result<()> {
    let staging = staging_dir(out)?;
    let gone = temp_sibling(&staging, REPLACED)?;
    match std::fs::rename(&staging, &gone) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let tombstone = std::fs::File::create(&staging);
    // A file already open in it may still grow: retry until the removal holds.
    let mut last = Ok(());
    for _ in 0..20 {
        last = std::fs::remove_dir_all(&gone);
        if last.is_ok() {
            break;
        }
    }
    if tombstone.is_ok() {
        let t0 = std::time::Instant::now();
        while !writer_done() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::remove_file(&staging)?;
    }
    last
}

/// Puts the complete directory `new` where `out` is: directly over an absent or empty
/// `out`, else with the old one moved aside, put back if the second rename fails, and
/// removed afterwards.
fn replace_dir(new: &Path, out: &Path) -> std::io::Result<()> {
    match std::fs::rename(new, out) {
        Ok(()) => return Ok(()),
        // Linux says ENOTEMPTY (or EEXIST) for a non-empty target directory.
        Err(e) if out.is_dir() => drop(e),
        Err(e) => return Err(e),
    }
    let old = temp_sibling(out, REPLACED)?;
    std::fs::rename(out, &old)?;
    if let Err(e) = std::fs::rename(new, out) {
        let _ = std::fs::rename(&old, out);
        return Err(e);
    }
    std::fs::remove_dir_all(&old)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that spawn a child and by the lock test: a child between fork and exec
    /// shares every open file, so it holds a flock the test just dropped (a flake seen once).
    static SPAWNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A dead process's PID (a child that has exited and been reaped).
    fn dead_pid() -> u32 {
        let _g = SPAWNS.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// A second lock on a held directory is refused naming the holder; once the holder lets
    /// go, the lock is taken again and the old PID reported as stale.
    #[test]
    fn a_held_directory_is_refused_and_a_released_one_taken_over() {
        let _g = SPAWNS.lock().unwrap_or_else(|e| e.into_inner());
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
        let dead = dead_pid();
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

    /// A name at NAME_MAX still gets a temp name within it (multi-byte characters are never
    /// split), and the sweep recognises it as the same name's.
    #[test]
    fn temp_names_of_long_names_stay_legal_and_are_recognised() {
        let long = "é".repeat(127) + "x"; // 255 bytes
        let t = temp_name(&long, 4_000_000, TMP);
        assert!(t.len() <= NAME_MAX, "{}", t.len());
        assert!(t.ends_with(".4000000.tmp"));
        assert_eq!(temp_owner(&t, &long, TMP), Some(4_000_000));
        assert_eq!(temp_owner(&t, "other", TMP), None);
        assert_eq!(temp_owner(&t, &long, STAGING), None);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(&long);
        write_file_atomic(&f, b"ok").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"ok");
    }

    /// A directory appears only complete: a failed write leaves no directory and no staging;
    /// a replacement keeps the old one until the new one is whole; a dead writer's staging is
    /// removed by the next writer.
    #[test]
    fn directories_are_written_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("set");
        let fill = |tag: &'static [u8]| {
            move |dir: &Path| -> std::io::Result<()> { std::fs::write(dir.join("f"), tag) }
        };
        let failed: std::io::Result<()> = write_dir_atomic(&out, |dir| {
            std::fs::write(dir.join("half"), b"x")?;
            Err(std::io::Error::other("interrupted"))
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing left"
        );
        write_dir_atomic(&out, fill(b"one")).unwrap();
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"one");
        let failed: std::io::Result<()> =
            write_dir_atomic(&out, |_| Err(std::io::Error::other("no")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"one", "old kept");
        write_dir_atomic(&out, fill(b"two")).unwrap();
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"two");
        let dead = dead_pid();
        let stale = d.path().join(temp_name("set", dead, STAGING));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("partial"), b"x").unwrap();
        write_dir_atomic(&out, fill(b"three")).unwrap();
        assert!(!stale.exists(), "the dead writer's staging is swept");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["set"]);
        // An empty directory is written into too (rename over it).
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_dir_atomic(&empty, fill(b"e")).unwrap();
        assert_eq!(std::fs::read(empty.join("f")).unwrap(), b"e");
        // remove_staging takes a staging away while it is being written.
        let out2 = d.path().join("s2");
        let r: std::io::Result<()> = write_dir_atomic(&out2, |dir| {
            std::fs::write(dir.join("a"), b"x")?;
            // While the writer goes on, neither a file nor a directory under the staging
            // can bring it back.
            remove_staging(&out2, || {
                assert!(std::fs::write(dir.join("b"), b"x").is_err());
                assert!(std::fs::create_dir_all(dir.join("c").join("d")).is_err());
                true
            })?;
            std::fs::write(dir.join("b"), b"x")
        });
        assert!(r.is_err(), "a write after the removal fails");
        assert!(!out2.exists());
        assert!(!staging_dir(&out2).unwrap().exists());
    }
}
