//! The run directory `<out>/<run>/seed-<seed>/` and what guards it:
//!
//! - an exclusive advisory lock ([`RunLock`], `flock(2)` on `.lock`) held for the run's life, so
//!   that two processes never write into one run directory (the OS releases it when the holder
//!   dies, however it dies);
//! - stale temporary files left by a crash or a full disk, removed when the lock is taken
//!   ([`remove_stale_temps`]);
//! - the output paths checked before the first step ([`check_outputs`]), so that a file where
//!   a directory must go fails the run at once, not after hours of training;
//! - the results of a finished run: kept unless `--force`, and compared with the configuration
//!   on `--resume` ([`recorded_result`], [`result_differences`]).

use crate::checkpoint;
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::results::RunResult;
use crate::trainer::{Control, METRICS_FILE, MODEL_DIR, PROFILE_FILE, RESULTS_FILE};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file of a run directory (it holds the pid of the process that last took the lock).
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a run directory, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Take the lock of `dir` (which must exist), or fail naming the pid of the process that
    /// holds it. On platforms other than Unix no lock is taken.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        use std::io::Write;
        let path = dir.join(LOCK_FILE);
        let io = |e| Error::io(format!("opening the lock file {}", path.display()), e);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        if !try_lock_patiently(&file).map_err(|e| Error::io(format!("locking {}", path.display()), e))? {
            let holder = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
            let who = match holder {
                Some(pid) => format!("another process (pid {pid})"),
                None => "another process".to_string(),
            };
            return Err(Error::Busy(format!(
                "{} is in use: {who} holds its lock ({}); two runs must not write into one run directory. Wait for it to \
                 finish, or give this run another `out`",
                dir.display(),
                path.display()
            )));
        }
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long [`RunLock::acquire`] keeps trying before it reports the directory busy.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// [`try_lock`], retried for [`LOCK_PATIENCE`] (half a second). A `flock` is held by every descriptor of the
/// lock file's open file description, and a child process forked by any thread of this program
/// holds a copy of each until its `exec` closes it: a lock released just before such a fork
/// (another thread spawning a subprocess) stays held for that short window. A real second
/// writer holds the lock for its whole run and is still refused.
fn try_lock_patiently(f: &File) -> std::io::Result<bool> {
    let start = std::time::Instant::now();
    loop {
        if try_lock(f)? {
            return Ok(true);
        }
        if start.elapsed() >= LOCK_PATIENCE {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(unix)]
fn try_lock(f: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a file descriptor this `File` owns; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

#[cfg(not(unix))]
fn try_lock(_: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Whether a process with this pid is running (other than this one). A zombie (a killed
/// process its parent has not reaped yet, e.g. a rank of an MPI job SIGKILLed with its
/// `mpirun`) exists for `kill(pid, 0)` but runs no more: on Linux its state in
/// `/proc/<pid>/stat` says so, and it is not alive.
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let Ok(raw) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(raw, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) };
    exists && !zombie(pid)
}

/// Whether `/proc/<pid>/stat` gives the process's state as zombie (`Z`) or dead (`X`); false
/// where there is no `/proc`.
#[cfg(unix)]
fn zombie(pid: u32) -> bool {
    // The state follows the command name's closing parenthesis (the name may hold any byte).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
}

#[cfg(not(unix))]
fn alive(pid: u32) -> bool {
    pid != std::process::id()
}

/// The pid a temporary name ends in: `.<name>.tmp<pid>` or `.<name>.old<pid>` (what
/// `tram::state::write_atomic` and [`checkpoint::write`] leave behind when interrupted).
fn temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let at = name.rfind(".tmp").or_else(|| name.rfind(".old"))?;
    let digits = &name[at + 4..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Remove the temporary files and directories a crashed or failed write left in the run
/// directory, its `checkpoints/` and its `model/`; call it holding the run's [`RunLock`]. A
/// temporary of another process that is still alive is left alone (with the lock held, none of
/// this process's can be in flight). Returns what was removed.
pub fn remove_stale_temps(dir: &Path, _lock: &RunLock) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for d in [dir.to_path_buf(), checkpoint::checkpoints_dir(dir), dir.join(MODEL_DIR)] {
        removed.extend(remove_temps(&d, true)?);
    }
    Ok(removed)
}

/// Remove the temporary files in `dir` (not below it) of processes no longer alive, for a
/// directory no lock guards, such as `<out>` with its tables (this process's are kept).
pub fn remove_dead_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    remove_temps(dir, false)
}

fn remove_temps(dir: &Path, own_are_stale: bool) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(removed) };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = temp_pid(&name) else { continue };
        if pid == std::process::id() && !own_are_stale {
            continue;
        }
        if alive(pid) {
            tracing::warn!(path = %e.path().display(), pid, "leaving the temporary file of a running process");
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|err| Error::io(format!("removing the stale temporary {}", p.display()), err))?;
        tracing::info!(path = %p.display(), "removed a stale temporary file");
        removed.push(p);
    }
    Ok(removed)
}

/// Check, before any training, that every path the run writes can be written: the run
/// directory and its parents are directories (or absent), `checkpoints/` and `model/` are
/// directories, `metrics.jsonl`, `results.json` and the lock file are files.
pub fn check_outputs(dir: &Path) -> Result<()> {
    if let Some(existing) = dir.ancestors().find(|a| !a.as_os_str().is_empty() && a.symlink_metadata().is_ok()) {
        if !existing.is_dir() {
            return Err(Error::Config(format!(
                "{} is a file, but the run directory {} must go there: move the file away or choose another `out`",
                existing.display(),
                dir.display()
            )));
        }
    }
    let (checkpoints, model) = (checkpoint::checkpoints_dir(dir), dir.join(MODEL_DIR));
    let expect = [
        (checkpoints.clone(), true, "training checkpoints"),
        (checkpoints.join(checkpoint::LATEST), false, "latest-checkpoint pointer"),
        (checkpoints.join(checkpoint::TIMING_FILE), false, "training time"),
        (model.clone(), true, "selected model"),
        (model.join("model.safetensors"), false, "selected model"),
        (model.join("config.json"), false, "selected model"),
        (model.join("tokenizer.json"), false, "selected model"),
        (dir.join(METRICS_FILE), false, "metrics log"),
        (dir.join(RESULTS_FILE), false, "results"),
        (dir.join(LOCK_FILE), false, "lock file"),
    ];
    for (path, want_dir, what) in expect {
        check_kind(&path, want_dir, what)?;
    }
    Ok(())
}

/// `path`, when it exists, is a directory (`want_dir`) or a file; else an error naming it and
/// what the run writes there.
pub fn check_kind(path: &Path, want_dir: bool, what: &str) -> Result<()> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(()) };
    if meta.is_dir() != want_dir {
        let (is, must) = if want_dir { ("a file", "a directory") } else { ("a directory", "a file") };
        return Err(Error::Config(format!(
            "{} is {is}, but the run writes its {what} there as {must}: move it away or choose another `out`",
            path.display()
        )));
    }
    Ok(())
}

/// Delete what a run wrote into `dir` (checkpoints, the model, the metrics log, then the
/// results), for `--force`; call it holding the run's [`RunLock`].
pub fn discard(dir: &Path, _lock: &RunLock) -> Result<()> {
    for d in [checkpoint::checkpoints_dir(dir), dir.join(MODEL_DIR)] {
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| Error::io(format!("removing {} (--force)", d.display()), e))?;
        }
    }
    for f in [dir.join(METRICS_FILE), dir.join(RESULTS_FILE), dir.join(PROFILE_FILE)] {
        if f.exists() {
            std::fs::remove_file(&f).map_err(|e| Error::io(format!("removing {} (--force)", f.display()), e))?;
        }
    }
    Ok(())
}

/// Delete a whole directory of runs (e.g. every seed of one row), after taking the lock of
/// every run directory in it (so that a running process's directory is never deleted).
pub fn discard_tree(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mut locks = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join(LOCK_FILE).is_file() {
            locks.push(RunLock::acquire(&d)?);
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()));
        }
    }
    std::fs::remove_dir_all(root).map_err(|e| Error::io(format!("removing {}", root.display()), e))?;
    drop(locks);
    Ok(())
}

/// The results a finished run recorded in `dir`, if there are any (an unreadable
/// `results.json` is an error: it is never silently replaced).
pub fn recorded_result(dir: &Path) -> Result<Option<RunResult>> {
    let path = dir.join(RESULTS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::Data(format!(
            "{}: not a readable results file ({e}); move it away, or pass --force to discard the run and train again",
            path.display()
        ))
    })
}

/// The part of a run's configuration its results depend on: everything but where it is
/// written (`out`), its row label, where plugins are loaded from, the seed list (the one seed
/// is kept) and how often it logs, checkpoints or shows progress; only the app's own section.
pub fn result_fingerprint(app: &str, config: &Value, seed: u64) -> Value {
    // Through text, so that a recorded configuration and the current one compare alike.
    let mut v: Value = serde_json::from_str(&config.to_string()).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in ["out", "seeds", "label", "plugins"] {
            m.remove(k);
        }
        m.insert("seed".into(), json!(seed));
        if let Some(Value::Object(t)) = m.get_mut("train") {
            for k in ["checkpoint_every", "log_every", "progress"] {
                t.remove(k);
            }
        }
        // Only the app's own section matters, less its keys that change nothing computed (`lm.cache_dir`).
        crate::apps::keep_own_section(m, app);
        crate::distributed::drop_untracked(m);
    }
    v
}

/// How the recorded results of `dir` differ from what `run` with `seed` would produce (empty
/// when they are this run's results).
pub fn result_differences(app: &str, run: &RunConfig, seed: u64, recorded: &RunResult) -> Vec<String> {
    let mut diff = Vec::new();
    if recorded.app != app {
        diff.push(format!("app (results: {}, now: {app})", recorded.app));
    }
    if recorded.seed != seed {
        diff.push(format!("seed (results: {}, now: {seed})", recorded.seed));
    }
    let a = result_fingerprint(&recorded.app, &recorded.config, recorded.seed);
    let b = result_fingerprint(app, &run.config.to_json(), seed);
    diff.extend(checkpoint::differences_from(&a, &b, "results"));
    diff
}

/// What a run directory holds before a run starts, checked against the command's flags (see
/// the README's "Run directories" section): the paths' kinds; results or a checkpoint without
/// `--resume` / `--force`; results of another configuration with `--resume`; a live writer.
pub fn preflight(app: &str, run: &RunConfig, seed: u64, control: &Control) -> Result<()> {
    let dir = run.dir(seed);
    check_outputs(&dir)?;
    if control.resume && control.force {
        return Err(Error::Config("--resume keeps a run's results and --force discards them: pass one of them".into()));
    }
    if !dir.is_dir() {
        return Ok(());
    }
    // A live writer is refused now, not when this run's turn comes. (In a data-parallel job
    // only rank 0 takes the lock: the others' check would race with it.)
    if crate::distributed::launcher_rank().unwrap_or(0) == 0 {
        drop(RunLock::acquire(&dir)?);
    }
    if control.force {
        return Ok(());
    }
    match recorded_result(&dir)? {
        Some(_) if !control.resume => Err(already_finished(&dir)),
        Some(r) => {
            let diff = result_differences(app, run, seed, &r);
            if diff.is_empty() {
                Ok(())
            } else {
                Err(other_config(&dir, &diff))
            }
        }
        None => match checkpoint::latest(&dir)? {
            Some(ck) if !control.resume => Err(checkpoint_without_resume(&dir, &ck)),
            _ => Ok(()),
        },
    }
}

/// The error for results found without `--resume` / `--force`.
pub fn already_finished(dir: &Path) -> Error {
    Error::Config(format!(
        "{} already holds the results of this run; pass --resume to keep them (finished runs are skipped), --force to \
         discard them and train again, or choose another `out`",
        dir.display()
    ))
}

/// The error for results of another configuration on `--resume`.
pub fn other_config(dir: &Path, diff: &[String]) -> Error {
    Error::Config(format!(
        "{} holds the results of a run with a different configuration: {}; --resume keeps results only for the same \
         configuration. Pass --force to discard them and train again, or choose another `out`",
        dir.display(),
        diff.join("; ")
    ))
}

/// The error for a checkpoint found without `--resume` / `--force`.
pub fn checkpoint_without_resume(dir: &Path, ck: &Path) -> Error {
    Error::checkpoint(
        ck,
        format!(
            "{} already holds a checkpoint of this run; pass --resume to continue it, --force to discard it and start over, \
             or choose another `out`",
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_and_their_pids() {
        assert_eq!(temp_pid(".results.json.tmp123"), Some(123));
        assert_eq!(temp_pid(".latest.tmp7"), Some(7));
        assert_eq!(temp_pid(".step-00000004.tmp99"), Some(99));
        assert_eq!(temp_pid(".step-00000004.old99"), Some(99));
        assert_eq!(temp_pid("results.json.tmp1"), None);
        assert_eq!(temp_pid(".results.json.tmp"), None);
        assert_eq!(temp_pid(".lock"), None);
        assert_eq!(temp_pid(".notes.tmpx1"), None);
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_with_the_holders_pid() {
        let d = std::env::temp_dir().join(format!("tram-rundir-lock-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let held = RunLock::acquire(&d).unwrap();
        let err = RunLock::acquire(&d).unwrap_err().to_string();
        if cfg!(unix) {
            assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
            assert!(err.contains("another `out`"), "{err}");
        }
        drop(held);
        RunLock::acquire(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A killed child not yet reaped is a zombie: its temporaries are stale (before, they were
    /// left for "a running process" until the next run).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_temporaries_of_a_killed_unreaped_process_are_removed() {
        let d = std::env::temp_dir().join(format!("tram-rundir-zombie-{}", std::process::id()));
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        assert!(alive(pid) && !zombie(pid));
        child.kill().unwrap();
        // Not waited for: a zombie until `wait` below.
        let start = std::time::Instant::now();
        while !zombie(pid) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "the killed child never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid), "a zombie counts as running");
        let temp = d.join("checkpoints").join(format!(".latest.tmp{pid}"));
        std::fs::write(&temp, "step-00000003").unwrap();
        let lock = RunLock::acquire(&d).unwrap();
        assert_eq!(remove_stale_temps(&d, &lock).unwrap(), vec![temp.clone()]);
        assert!(!temp.exists());
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// What a subprocess spawned by another thread leaves: a copy of the lock's descriptor
    /// that outlives the released lock until the child's `exec`. The next run must wait for it,
    /// not report the directory busy (a flaky `Busy` in the resume tests before).
    #[cfg(unix)]
    #[test]
    fn a_lock_held_only_by_a_forked_copy_for_a_moment_is_taken_after_it_closes() {
        let d = std::env::temp_dir().join(format!("tram-rundir-fork-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let held = RunLock::acquire(&d).unwrap();
        let child_copy = held._file.try_clone().unwrap();
        drop(held);
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(child_copy);
        });
        let start = std::time::Instant::now();
        RunLock::acquire(&d).unwrap();
        assert!(start.elapsed() >= std::time::Duration::from_millis(150), "taken while the copy still held it");
        closer.join().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
