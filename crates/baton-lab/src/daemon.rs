//! Starting the lab's daemons and ending them again, from this or another process.
//!
//! A process is identified by its pid *and* its start time (from
//! `/proc/PID/stat`), so a stale state file can never make `down` signal an
//! unrelated process that got a recycled pid.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::sys::{self, Target};
use crate::LabError;

/// How often liveness is polled while waiting for processes to exit.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait after SIGKILL before giving up on a process.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A process, pinned to one incarnation of its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// The pid.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot at which it started.
    pub start_time: u64,
}

impl ProcId {
    /// The process with this pid as it is now, if it exists.
    pub(crate) fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|(_, start_time)| ProcId { pid, start_time })
    }

    /// Whether this very process still runs (a zombie does not count, and is reaped if it is ours).
    pub(crate) fn alive(&self) -> bool {
        match stat(self.pid) {
            Some((state, start)) if start == self.start_time => {
                if state == 'Z' || state == 'X' {
                    sys::reap(self.pid);
                    false
                } else {
                    true
                }
            }
            _ => false,
        }
    }
}

/// State letter and start time of `pid` from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may itself contain spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields after `comm` start at 3 (state); start time is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// Something `terminate` should end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Victim {
    id: ProcId,
    group: bool,
}

impl Victim {
    /// The process group led by the daemon `id`, if that daemon still runs.
    pub(crate) fn group(id: ProcId) -> Option<Victim> {
        id.alive().then_some(Victim { id, group: true })
    }

    /// The process `pid`, if it runs.
    pub(crate) fn process(pid: u32) -> Option<Victim> {
        ProcId::of(pid).map(|id| Victim { id, group: false })
    }

    fn send(&self, sig: libc::c_int) {
        let target = if self.group {
            Target::Group(self.id.pid)
        } else {
            Target::Process(self.id.pid)
        };
        // ESRCH (already gone) is the goal; anything else shows up as a survivor.
        let _ = sys::signal(target, sig);
    }
}

/// SIGTERM to every victim, up to `grace` for them to exit, then SIGKILL.
/// Returns a description of every process that survived.
pub(crate) fn terminate(victims: &[Victim], grace: Duration) -> Vec<String> {
    stop(victims, libc::SIGTERM, grace).survivors
}

/// How [`stop`] went.
#[derive(Debug, Default)]
pub(crate) struct Stopped {
    /// Some victim outlived the first signal and its grace, and got SIGKILL.
    pub escalated: bool,
    /// A description of every process that survived SIGKILL too.
    pub survivors: Vec<String>,
}

/// `sig` to every victim, up to `grace` for them to exit, then SIGKILL to
/// the rest (up to [`KILL_WAIT`] more).
pub(crate) fn stop(victims: &[Victim], sig: libc::c_int, grace: Duration) -> Stopped {
    let mut left: Vec<Victim> = victims.iter().copied().filter(|v| v.id.alive()).collect();
    if left.is_empty() {
        return Stopped::default();
    }
    for v in &left {
        v.send(sig);
    }
    left = wait_gone(left, grace);
    if left.is_empty() {
        return Stopped::default();
    }
    for v in &left {
        v.send(libc::SIGKILL);
    }
    left = wait_gone(left, KILL_WAIT);
    Stopped {
        escalated: sig != libc::SIGKILL,
        survivors: left
            .iter()
            .map(|v| format!("process {} did not exit after SIGKILL", v.id.pid))
            .collect(),
    }
}

/// SIGKILL to every victim, up to [`KILL_WAIT`] for them to be gone.
/// Returns a description of every process that survived.
pub(crate) fn kill(victims: &[Victim]) -> Vec<String> {
    stop(victims, libc::SIGKILL, KILL_WAIT).survivors
}

fn wait_gone(mut left: Vec<Victim>, limit: Duration) -> Vec<Victim> {
    let deadline = Instant::now() + limit;
    loop {
        left.retain(|v| v.id.alive());
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

/// Starts `argv` in namespace `netns` as the leader of a new session, with
/// stdin from /dev/null and stdout and stderr appended to `log`.
pub(crate) fn spawn(
    netns: &str,
    argv: &[&std::ffi::OsStr],
    log: &Path,
) -> Result<(Child, ProcId), LabError> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io("open log", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io("open log", log, e))?;
    let mut command = Command::new(cmd::ip());
    command
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    sys::detach(&mut command);
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        program: cmd::ip().display().to_string(),
        source,
    })?;
    // `ip netns exec` execs in place, so this pid becomes the daemon's.
    match ProcId::of(child.id()) {
        Some(id) => Ok((child, id)),
        None => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(LabError::DaemonExited {
                host: netns.to_owned(),
                status,
                log: log.to_owned(),
                tail: log_tail(log),
            })
        }
    }
}

/// The last lines (at most 20, from the last 4 KiB) of a log file.
pub(crate) fn log_tail(log: &Path) -> String {
    const BYTES: u64 = 4096;
    const LINES: usize = 20;
    let Ok(mut f) = File::open(log) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(BYTES).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
    if tail.trim().is_empty() {
        String::from("(log is empty)")
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcId::of(std::process::id()).expect("own /proc entry");
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
    }

    #[test]
    fn refuses_to_signal_itself_or_everyone() {
        assert!(sys::signal(Target::Process(std::process::id()), 0).is_err());
        assert!(sys::signal(Target::Group(0), 0).is_err());
        assert!(sys::signal(Target::Process(1), 0).is_err());
        assert!(sys::signal(Target::Group(u32::MAX), 0).is_err());
    }

    #[test]
    fn terminate_ends_and_reaps_a_child() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let v = Victim::process(child.id()).expect("sleep runs");
        let left = terminate(&[v], Duration::from_secs(5));
        assert!(left.is_empty(), "{left:?}");
        // terminate reaps its own children, so the pid is gone, not a zombie.
        assert_eq!(ProcId::of(child.id()), None);
        assert!(child.wait().is_err(), "already reaped");
    }
}
