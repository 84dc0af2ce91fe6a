//! Run time of a loaded program, for benchmarks that charge the forwarder's
//! per-packet work to the front role. The kernel counts it only while
//! someone holds a `BPF_ENABLE_STATS` descriptor (it costs two clock reads
//! per run, so it is off by default).

use std::os::fd::OwnedFd;
use std::time::Duration;

use aya::programs::loaded_programs;
use aya::sys::{enable_stats, Stats};

/// Counting is on while this lives (for every program on the machine).
#[derive(Debug)]
pub struct RunStatsGuard {
    _fd: OwnedFd,
}

/// Turns run-time counting on until the guard drops. Needs CAP_SYS_ADMIN.
pub fn enable_run_time_stats() -> std::io::Result<RunStatsGuard> {
    enable_stats(Stats::RunTime)
        .map(|fd| RunStatsGuard { _fd: fd })
        .map_err(|e| e.io_error)
}

/// What the kernel counted for one program since it was loaded (only while
/// counting was on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunTime {
    /// Time spent in the program.
    pub total: Duration,
    /// Runs (one per packet for a tc program).
    pub runs: u64,
}

/// The run time of the loaded program with this id, if it is still loaded.
pub fn program_run_time(id: u32) -> std::io::Result<Option<RunTime>> {
    for info in loaded_programs() {
        let info = info.map_err(std::io::Error::other)?;
        if info.id() == id {
            return Ok(Some(RunTime {
                total: info.run_time(),
                runs: info.run_count(),
            }));
        }
    }
    Ok(None)
}
