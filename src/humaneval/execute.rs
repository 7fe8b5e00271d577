//! Running one completion against its problem's tests: `prompt + completion + "\n" + test +
//! "\ncheck(ENTRY_POINT)"` as a program of its own, in a separate `python3 -I` process (isolated
//! mode: no user site, no PYTHON* variables, no script directory on sys.path), in a fresh temp
//! directory, with an emptied environment, without network where the machine allows it (a new
//! user + network namespace through `unshare -rn`: only a loopback that is down), under rlimits
//! (address space, CPU seconds, file size, processes, no core dumps), in its own process group
//! that is killed whole on timeout. Generated code is untrusted: these limits contain mistakes and
//! runaway loops, they are not a security boundary against hostile code.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::humaneval::Problem;

/// The program's address-space limit.
pub const ADDRESS_SPACE_BYTES: u64 = 4 << 30;
/// The largest file the program may write.
pub const FILE_SIZE_BYTES: u64 = 16 << 20;
/// Processes (and threads) the user may have while the program runs.
pub const MAX_PROCESSES: u64 = 512;
/// How much of each of stdout and stderr is kept (the end, where a traceback's error is).
pub const KEPT_OUTPUT_BYTES: usize = 4096;

/// How a sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    TimedOut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Passed, Outcome::Failed, Outcome::TimedOut]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// What one run of a program gave.
#[derive(Debug, Clone)]
pub struct Execution {
    pub outcome: Outcome,
    /// The last non-empty line of stderr (e.g. "AssertionError", "NameError: name 'x' is not
    /// defined"), or why it stopped; empty when it passed.
    pub error: String,
    /// The end of stdout and of stderr, at most KEPT_OUTPUT_BYTES each.
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

/// How programs are kept off the network on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sandbox {
    /// The interpreter, resolved once (a pyenv shim would cost a shell per sample).
    pub python: PathBuf,
    /// Its version line.
    pub python_version: String,
    /// Whether `unshare -rn` works here (a user namespace with a network namespace).
    pub network_isolated: bool,
}

/// Finds python3 and whether `unshare -rn` works, once per process.
pub fn sandbox() -> Result<&'static Sandbox> {
    static SANDBOX: OnceLock<std::result::Result<Sandbox, String>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| detect().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn detect() -> Result<Sandbox> {
    let probe = Command::new("python3")
        .args([
            "-I",
            "-c",
            "import sys; print(sys.executable); print(sys.version.split()[0])",
        ])
        .output()
        .context("cannot run python3: HumanEval's tests need a python3 on PATH")?;
    if !probe.status.success() {
        bail!(
            "python3 -I failed: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&probe.stdout).into_owned();
    let mut lines = text.lines();
    let python = PathBuf::from(lines.next().unwrap_or("python3").trim());
    let python_version = lines.next().unwrap_or("").trim().to_string();
    let network_isolated = Command::new("unshare")
        .args(["-rn"])
        .arg(&python)
        .args(["-I", "-c", "pass"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Ok(Sandbox {
        python,
        python_version,
        network_isolated,
    })
}

/// The program a sample is judged by.
pub fn program(problem: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n{}\ncheck({})\n",
        problem.prompt, completion, problem.test, problem.entry_point
    )
}

/// Runs `completion` against `problem`'s tests within `timeout`.
pub fn check(problem: &Problem, completion: &str, timeout: Duration) -> Result<Execution> {
    run_program(&program(problem, completion), timeout)
}

/// Runs a Python program in the sandbox within `timeout` (wall clock).
pub fn run_program(source: &str, timeout: Duration) -> Result<Execution> {
    let sandbox = sandbox()?;
    let dir = TempDir::new()?;
    let script = dir.0.join("program.py");
    std::fs::write(&script, source).with_context(|| format!("writing {}", script.display()))?;
    let mut command = if sandbox.network_isolated {
        let mut c = Command::new("unshare");
        c.arg("-rn").arg(&sandbox.python);
        c
    } else {
        Command::new(&sandbox.python)
    };
    command
        .args(["-I", "program.py"])
        .current_dir(&dir.0)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &dir.0)
        .env("TMPDIR", &dir.0)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A second above the wall-clock limit: the wall clock decides, the CPU limit is a backstop.
    let cpu_seconds = timeout.as_secs_f64().ceil() as u64 + 1;
    // SAFETY: only async-signal-safe calls (setpgid, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let limits = [
                (libc::RLIMIT_AS, ADDRESS_SPACE_BYTES),
                (libc::RLIMIT_CPU, cpu_seconds),
                (libc::RLIMIT_FSIZE, FILE_SIZE_BYTES),
                (libc::RLIMIT_NPROC, MAX_PROCESSES),
                (libc::RLIMIT_CORE, 0),
            ];
            for (resource, value) in limits {
                let limit = libc::rlimit {
                    rlim_cur: value as libc::rlim_t,
                    rlim_max: value as libc::rlim_t,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", sandbox.python.display()))?;
    let pgid = child.id() as libc::pid_t;
    let stdout = keep_tail(child.stdout.take().expect("piped"));
    let stderr = keep_tail(child.stderr.take().expect("piped"));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            // SAFETY: plain syscall; the group is the child's own (setpgid above).
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Anything the program left running in its group goes too (the pipes close only then).
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let seconds = started.elapsed().as_secs_f64();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let cpu_exhausted = status.signal() == Some(libc::SIGXCPU);
    let (outcome, error) = if timed_out || cpu_exhausted {
        (
            Outcome::TimedOut,
            format!("timed out after {:.1} s", timeout.as_secs_f64()),
        )
    } else if status.success() {
        (Outcome::Passed, String::new())
    } else {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string());
        let error = match (last, status.code(), status.signal()) {
            (Some(line), _, _) => line,
            (None, Some(code), _) => format!("exit status {code}"),
            (None, None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None, None) => "failed".into(),
        };
        (Outcome::Failed, error)
    };
    Ok(Execution {
        outcome,
        error,
        stdout,
        stderr,
        seconds,
    })
}

/// Reads `pipe` to its end on a thread, keeping its last KEPT_OUTPUT_BYTES.
fn keep_tail(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        let mut dropped = false;
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * KEPT_OUTPUT_BYTES {
                kept.drain(..kept.len() - KEPT_OUTPUT_BYTES);
                dropped = true;
            }
        }
        if kept.len() > KEPT_OUTPUT_BYTES {
            kept.drain(..kept.len() - KEPT_OUTPUT_BYTES);
            dropped = true;
        }
        let text = String::from_utf8_lossy(&kept).into_owned();
        if dropped {
            format!("[... truncated]\n{text}")
        } else {
            text
        }
    })
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sift-lab-humaneval-{}-{n}", std::process::id()));
        // A folder of that name can only be a leftover of a dead process with our id.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
