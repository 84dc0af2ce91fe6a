//! Running the external tools the lab is built with (`ip`, `sysctl`, `curl`).
//!
//! Every invocation goes through [`run`], so every failure names the command
//! line and carries its stderr.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::LabError;

/// Where to look for tools when `PATH` lacks them (`sudo` and cron often drop the sbin dirs).
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn cached(cell: &'static OnceLock<Option<PathBuf>>, name: &str) -> Option<&'static Path> {
    cell.get_or_init(|| find(name)).as_deref()
}

/// The `ip` binary (iproute2); a bare `ip` if it cannot be found, so the
/// spawn error names it.
pub(crate) fn ip() -> &'static Path {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    cached(&CELL, "ip").unwrap_or(Path::new("ip"))
}

/// The `sysctl` binary, run inside namespaces.
pub(crate) fn sysctl() -> &'static Path {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    cached(&CELL, "sysctl").unwrap_or(Path::new("sysctl"))
}

/// The `curl` binary the readiness checks use, if installed.
pub(crate) fn curl() -> Option<&'static Path> {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    cached(&CELL, "curl")
}

/// The `tc` binary (iproute2), needed only to limit a link's rate.
pub(crate) fn tc() -> Option<&'static Path> {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    cached(&CELL, "tc")
}

/// The `bird` binary (BIRD 2), needed only for labs with several fronts.
pub(crate) fn bird() -> Option<&'static Path> {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    cached(&CELL, "bird")
}

/// The `birdc` binary, BIRD's own client (readiness checks).
pub(crate) fn birdc() -> Option<&'static Path> {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    cached(&CELL, "birdc")
}

fn display(program: &Path, args: &[&OsStr]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `program args`, returns its stdout; a non-zero exit is an error
/// carrying the stderr.
pub(crate) fn run(program: &Path, args: &[&OsStr]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: display(program, args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip args`.
pub(crate) fn ip_run(args: &[&str]) -> Result<String, LabError> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run(ip(), &args)
}

/// Runs `sysctl -q -w settings...` inside namespace `netns`.
pub(crate) fn sysctl_in(netns: &str, settings: &[String]) -> Result<(), LabError> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("netns"),
        OsStr::new("exec"),
        OsStr::new(netns),
        sysctl().as_os_str(),
        OsStr::new("-q"),
        OsStr::new("-w"),
    ];
    args.extend(settings.iter().map(OsStr::new));
    run(ip(), &args).map(drop)
}

/// Whether `curl` (run in `netns`) gets a 2xx from `url` within one second.
/// Proxies are switched off: lab traffic must never leave the lab.
pub(crate) fn http_ok(netns: &str, curl: &Path, url: &str) -> Result<bool, LabError> {
    curl_succeeds(netns, curl, url, true)
}

/// Whether `curl` (run in `netns`) gets any HTTP response from `url` within
/// one second: a server is up even if `url` names nothing it has.
pub(crate) fn http_answers(netns: &str, curl: &Path, url: &str) -> Result<bool, LabError> {
    curl_succeeds(netns, curl, url, false)
}

/// The body of a 2xx answer of `url` to `curl` (run in `netns`) within one
/// second; `None` for any other outcome.
pub(crate) fn http_get(netns: &str, curl: &Path, url: &str) -> Result<Option<String>, LabError> {
    let out = Command::new(ip())
        .args(["netns", "exec", netns])
        .arg(curl)
        .args(["-sf", "--noproxy", "*", "--max-time", "1", url])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: ip().display().to_string(),
            source,
        })?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn curl_succeeds(netns: &str, curl: &Path, url: &str, need_2xx: bool) -> Result<bool, LabError> {
    let status = Command::new(ip())
        .args(["netns", "exec", netns])
        .arg(curl)
        .args([
            if need_2xx { "-sf" } else { "-s" },
            "--noproxy",
            "*",
            "--max-time",
            "1",
            "-o",
            "/dev/null",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| LabError::Spawn {
            program: ip().display().to_string(),
            source,
        })?;
    Ok(status.success())
}

/// The namespaces that exist, by name (`ip netns list`).
pub(crate) fn netns_list() -> Result<Vec<String>, LabError> {
    let out = ip_run(&["netns", "list"])?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The processes living in namespace `netns` (`ip netns pids`).
pub(crate) fn netns_pids(netns: &str) -> Result<Vec<u32>, LabError> {
    let out = ip_run(&["netns", "pids", netns])?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}
