//! One writer per output: every command that writes results takes an exclusive lock on what it
//! writes before it reads or writes anything there, and a second process naming the same
//! output is refused with the holder's process id.
//!
//! The lock is an OS file lock (`flock`, through std's `File::try_lock`) on a small file beside
//! the output: `DIR/.sift-lab.lock` for a run directory, `.NAME.lock` beside a single file or a
//! shard file (so shards of one grid never contend). The kernel drops the lock when the process
//! ends, however it ends, so a lock file left behind by a killed process is stale by
//! construction and the next run simply takes it. While held, the file names the holder
//! (process id and command line); it is emptied on release. The file itself is never removed:
//! removing it while another process has it open would let two processes lock two different
//! files of the same name.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The lock file of a run directory.
pub const DIR_LOCK_FILE: &str = ".sift-lab.lock";

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks the run directory `dir` (created if missing) for this process.
    pub fn dir(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Self::acquire(&dir.join(DIR_LOCK_FILE), dir)
    }

    /// Locks the single output file `path` (its folder is created if missing): the lock file is
    /// `.NAME.lock` beside it.
    pub fn file(path: &Path) -> Result<RunLock> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file name", path.display()))?;
        let mut lock_name = std::ffi::OsString::from(".");
        lock_name.push(name);
        lock_name.push(".lock");
        Self::acquire(&parent.join(lock_name), path)
    }

    fn acquire(lock_path: &Path, output: &Path) -> Result<RunLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .with_context(|| format!("creating the lock file {}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder
                };
                bail!(
                    "{} is in use: {holder} is writing it (lock {}). Wait for it to finish, stop \
                     it, or choose another output",
                    output.display(),
                    lock_path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()))
            }
        }
        // Name the holder for whoever is refused next.
        let command: Vec<String> = std::env::args().collect();
        let text = format!("process {} ({})\n", std::process::id(), command.join(" "));
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(text.as_bytes())?;
        file.flush()?;
        Ok(RunLock {
            file,
            path: lock_path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty it first, so a finished run leaves the same (empty) file however it was run.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The holder's line from a lock file held by someone else. The holder writes it just after
/// taking the lock, so a refusal that comes in between finds the file empty: wait for the line
/// briefly (up to a second) rather than name no one.
fn read_holder(file: &mut File) -> String {
    for _ in 0..100 {
        let mut holder = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut holder).is_ok() {
            let holder = holder.trim();
            if !holder.is_empty() {
                return holder.to_string();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    String::new()
}

/// Whether `path` is a lock file this module writes (callers that list or hash a directory's
/// results leave them out).
pub fn is_lock_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_taken_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::dir(&run).unwrap();
        let held = std::fs::read_to_string(first.path()).unwrap();
        assert!(
            held.starts_with(&format!("process {} (", std::process::id())),
            "{held}"
        );
        // flock locks belong to the open file description: a second open in the same process
        // conflicts exactly like another process would.
        let err = format!("{:#}", RunLock::dir(&run).unwrap_err());
        assert!(
            err.contains("is in use") && err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert_eq!(
            std::fs::read_to_string(run.join(DIR_LOCK_FILE)).unwrap(),
            ""
        );
        let again = RunLock::dir(&run).unwrap();
        drop(again);

        // Shard files lock separately.
        let a = RunLock::file(&run.join("landscape.shard-1-of-2.parquet")).unwrap();
        let b = RunLock::file(&run.join("landscape.shard-2-of-2.parquet")).unwrap();
        assert!(RunLock::file(&run.join("landscape.shard-1-of-2.parquet")).is_err());
        assert!(is_lock_file(a.path()) && is_lock_file(b.path()));
        assert!(!is_lock_file(&run.join("landscape.parquet")));
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed run leaves: the file with its holder's line, but no lock on it.
        std::fs::write(
            dir.path().join(DIR_LOCK_FILE),
            "process 999999 (sift-lab train)\n",
        )
        .unwrap();
        let lock = RunLock::dir(dir.path()).unwrap();
        let held = std::fs::read_to_string(lock.path()).unwrap();
        assert!(
            held.starts_with(&format!("process {}", std::process::id())),
            "{held}"
        );
    }

    #[test]
    fn a_refusal_between_the_holders_lock_and_its_line_waits_for_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join(DIR_LOCK_FILE);
        // The holder has the lock but has not written its line yet (what the CI race hit).
        let holder = File::create(&lock_path).unwrap();
        holder.try_lock().unwrap();
        let writer = {
            let lock_path = lock_path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                std::fs::write(&lock_path, "process 4242 (sift-lab train)\n").unwrap();
            })
        };
        let err = format!("{:#}", RunLock::dir(dir.path()).unwrap_err());
        writer.join().unwrap();
        assert!(err.contains("process 4242 (sift-lab train)"), "{err}");
    }
}
