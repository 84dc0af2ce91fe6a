//! baton-sim: a trace-driven simulator of a Baton cluster under each
//! distribution policy, after the simulation study of Pai et al.,
//! "Locality-Aware Request Distribution in Cluster-based Network Servers",
//! ASPLOS 1998, section 4.
//!
//! Layer: a library under `baton sim`. The model is pure and deterministic:
//! the same [`SimConfig`] (seed included) gives the same [`SimReport`], bit
//! for bit. Time is simulated (integer nanoseconds); the only randomness is
//! a seeded generator that draws the Zipf workload. The policies are the
//! very `baton-policy` code the front runs. File I/O happens only in the
//! explicit [`read_trace`] and [`write_svg`].
//!
//! The model, per back-end node: an LRU cache of C bytes, a CPU and a disk
//! (FIFO queues, working in parallel), costs from [`CostModel`]. The front
//! keeps a fixed number of requests in flight (by default Pai's admission
//! limit S for the node count), dispatching a new one as soon as one
//! completes: throughput is measured at saturation. Policies see each
//! node's load as its number of requests in flight.
//!
//! Invariants: a node's cache never holds more than C bytes; every request
//! of the stream is served exactly once; results are a function of the
//! config.
#![forbid(unsafe_code)]

mod cache;
mod chart;
mod model;
mod rng;
mod workload;

use std::path::Path;

use baton_policy::{LardConfig, LardReplicatedConfig, PolicyConfig};
use serde::Serialize;

pub use chart::render_svg;
pub use workload::{parse_trace, SizeDist, Trace};

use model::Run;
use workload::Stream;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A parameter is out of range.
    #[error("simulator config: {0}")]
    Config(String),
    /// A policy name `baton-policy` does not know.
    #[error("unknown policy {0:?}")]
    UnknownPolicy(String),
    /// A policy's parameters were refused.
    #[error("policy {name}: {source}")]
    Policy {
        /// The policy.
        name: String,
        /// Why.
        source: baton_policy::ConfigError,
    },
    /// A policy found no back-end although all were up (a policy bug).
    #[error("policy {0} picked no back-end in a healthy cluster")]
    NoBackend(&'static str),
    /// A trace line could not be read.
    #[error("trace line {line}: {reason}")]
    Trace {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a trace or writing a chart failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The chart could not be drawn.
    #[error("drawing the chart: {0}")]
    Chart(String),
}

/// Service costs of one node, in nanoseconds.
///
/// The defaults are the constants of Pai et al.'s simulation model
/// (section 4.1), for the 300 MHz Pentium II nodes of 1998: a hit costs CPU
/// time only (connection setup and teardown, plus transmit processing per
/// 512 bytes); a miss first costs a disk read (an initial seek and rotation,
/// a transfer time per 4 KB, and another seek and rotation for every further
/// 44 KB), then the same CPU time. Modern hardware has other constants; the
/// ratio of miss to hit cost is what matters for comparing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CostModel {
    /// CPU per request (connection establishment and teardown): 145 us.
    pub cpu_per_request_ns: u64,
    /// CPU per `cpu_unit_bytes` sent: 40 us.
    pub cpu_per_unit_ns: u64,
    /// 512 bytes.
    pub cpu_unit_bytes: u64,
    /// Disk latency of a read (2 seeks and rotational latency): 28 ms.
    pub disk_latency_ns: u64,
    /// Disk transfer per `disk_unit_bytes`: 410 us.
    pub disk_per_unit_ns: u64,
    /// 4 KB.
    pub disk_unit_bytes: u64,
    /// Extra seek and rotation per `disk_seek_span_bytes` beyond the first:
    /// 14 ms.
    pub disk_extra_seek_ns: u64,
    /// 44 KB.
    pub disk_seek_span_bytes: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            cpu_per_request_ns: 145_000,
            cpu_per_unit_ns: 40_000,
            cpu_unit_bytes: 512,
            disk_latency_ns: 28_000_000,
            disk_per_unit_ns: 410_000,
            disk_unit_bytes: 4096,
            disk_extra_seek_ns: 14_000_000,
            disk_seek_span_bytes: 44 * 1024,
        }
    }
}

impl CostModel {
    /// CPU time to serve `size` bytes from memory.
    pub fn cpu_ns(&self, size: u64) -> u64 {
        self.cpu_per_request_ns.saturating_add(
            size.div_ceil(self.cpu_unit_bytes.max(1))
                .saturating_mul(self.cpu_per_unit_ns),
        )
    }

    /// Disk time to read `size` bytes.
    pub fn disk_ns(&self, size: u64) -> u64 {
        let span = self.disk_seek_span_bytes.max(1);
        let extra_seeks = size.saturating_sub(span).div_ceil(span);
        self.disk_latency_ns
            .saturating_add(
                size.div_ceil(self.disk_unit_bytes.max(1))
                    .saturating_mul(self.disk_per_unit_ns),
            )
            .saturating_add(extra_seeks.saturating_mul(self.disk_extra_seek_ns))
    }

    fn validate(&self) -> Result<(), SimError> {
        if self.cpu_unit_bytes == 0 || self.disk_unit_bytes == 0 || self.disk_seek_span_bytes == 0 {
            return Err(SimError::Config(
                "cost units must be at least 1 byte".into(),
            ));
        }
        if self.cpu_ns(0) == 0 {
            return Err(SimError::Config("a request must cost some CPU time".into()));
        }
        Ok(())
    }
}

/// The policies [`SimConfig::default`] compares (the names `baton-policy`
/// and the `baton sim` JSON use).
pub const DEFAULT_POLICIES: [&str; 6] = [
    "lard",
    "lard-r",
    "wrr",
    "least-conn",
    "maglev",
    "bounded-ch",
];

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Simulate every cluster size from `min_nodes` to this.
    pub nodes: usize,
    /// The smallest cluster simulated (1: the whole curve).
    pub min_nodes: usize,
    /// Zipf exponent of target popularity (generated workload).
    pub zipf_alpha: f64,
    /// Number of distinct targets (generated workload).
    pub targets: usize,
    /// Target sizes (generated workload).
    pub sizes: SizeDist,
    /// Replay this trace instead of generating a workload.
    pub trace: Option<Trace>,
    /// Requests per run: generated, or replayed from the trace (cycling).
    /// `None`: 100 000 generated, or the trace's length.
    pub requests: Option<usize>,
    /// Fraction of the requests (the first ones) that only warm the caches.
    pub warmup_fraction: f64,
    /// One node's cache as a fraction of the working set (the sum of all
    /// targets' sizes).
    pub cache_ratio: f64,
    /// One node's cache in bytes; overrides `cache_ratio`.
    pub cache_bytes: Option<u64>,
    /// Service costs.
    pub costs: CostModel,
    /// LARD and LARD/R thresholds (T_low, T_high).
    pub lard: LardConfig,
    /// LARD/R's K.
    pub lard_k_ms: u64,
    /// Requests in flight; `None`: LARD's admission limit S for the node
    /// count, (n-1)*T_high + T_low - 1, the load Pai et al. drive at. Every
    /// policy sees the same number, capped by its own admission limit.
    pub concurrency: Option<u64>,
    /// Policies to compare, by name (see `baton_policy::POLICY_NAMES`).
    pub policies: Vec<String>,
    /// Seed of the workload generator.
    pub seed: u64,
}

impl Default for SimConfig {
    /// 8 nodes; 2000 targets, Zipf alpha 1.0, SURGE-like sizes; each node's
    /// cache a quarter of the working set (the issue's target setting).
    fn default() -> Self {
        Self {
            nodes: 8,
            min_nodes: 1,
            zipf_alpha: 1.0,
            targets: 2000,
            sizes: SizeDist::default(),
            trace: None,
            requests: None,
            warmup_fraction: 0.2,
            cache_ratio: 0.25,
            cache_bytes: None,
            costs: CostModel::default(),
            lard: LardConfig::default(),
            lard_k_ms: 20_000,
            concurrency: None,
            policies: DEFAULT_POLICIES.iter().map(|&p| p.to_owned()).collect(),
            seed: 1,
        }
    }
}

/// The result of one policy on one cluster size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimResult {
    /// Policy name.
    pub policy: String,
    /// Number of back-end nodes.
    pub nodes: usize,
    /// Requests completed per simulated second, at saturation.
    pub throughput: f64,
    /// Fraction of measured requests served from a node's cache.
    pub hit_rate: f64,
    /// max/mean over nodes of the measured requests each served.
    pub imbalance_requests: f64,
    /// max/mean over nodes of the CPU plus disk time each spent.
    pub imbalance_busy: f64,
    /// Requests kept in flight.
    pub concurrency: u64,
    /// Requests measured (after warm-up).
    pub measured_requests: u64,
    /// Simulated time of the whole run, seconds.
    pub sim_seconds: f64,
}

/// Everything a simulation produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// The seed used.
    pub seed: u64,
    /// `"zipf"` or `"trace"`.
    pub workload: &'static str,
    /// Zipf exponent, for a generated workload.
    pub zipf_alpha: Option<f64>,
    /// Distinct targets.
    pub targets: usize,
    /// Sum of the distinct targets' sizes, bytes.
    pub working_set_bytes: u64,
    /// One node's cache, bytes.
    pub cache_bytes_per_node: u64,
    /// Requests per run, warm-up included.
    pub requests: usize,
    /// Warm-up requests per run.
    pub warmup_requests: usize,
    /// The cost model used.
    pub costs: CostModel,
    /// One record per (policy, node count), policies in config order.
    pub results: Vec<SimResult>,
}

impl SimReport {
    /// The result of `policy` on `nodes` nodes.
    pub fn get(&self, policy: &str, nodes: usize) -> Option<&SimResult> {
        self.results
            .iter()
            .find(|r| r.policy == policy && r.nodes == nodes)
    }

    /// The policies, in the order they were run.
    pub fn policies(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.results {
            if !out.contains(&r.policy.as_str()) {
                out.push(&r.policy);
            }
        }
        out
    }
}

impl SimConfig {
    fn policy_config(&self, name: &str) -> Result<PolicyConfig, SimError> {
        let mut lard = self.lard;
        // The simulator must not forget targets: that would be a different
        // policy than the one studied.
        lard.max_targets = lard
            .max_targets
            .max(self.targets)
            .max(self.trace.as_ref().map_or(0, |t| t.requests.len()));
        Ok(
            match PolicyConfig::from_name(name)
                .ok_or_else(|| SimError::UnknownPolicy(name.to_owned()))?
            {
                PolicyConfig::Lard(_) => PolicyConfig::Lard(lard),
                PolicyConfig::LardReplicated(_) => {
                    PolicyConfig::LardReplicated(LardReplicatedConfig {
                        lard,
                        k_ms: self.lard_k_ms,
                    })
                }
                other => other,
            },
        )
    }

    fn stream(&self) -> Result<Stream, SimError> {
        match &self.trace {
            Some(t) => Stream::from_trace(t, self.requests),
            None => Stream::zipf(
                self.zipf_alpha,
                self.targets,
                &self.sizes,
                self.requests.unwrap_or(100_000),
                self.seed,
            ),
        }
    }
}

/// Runs every policy of `cfg` on `cfg.min_nodes..=cfg.nodes` nodes.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimError> {
    if cfg.nodes == 0 || cfg.nodes > 1024 {
        return Err(SimError::Config(format!(
            "nodes must be in 1..=1024, got {}",
            cfg.nodes
        )));
    }
    if cfg.min_nodes == 0 || cfg.min_nodes > cfg.nodes {
        return Err(SimError::Config(format!(
            "min_nodes must be in 1..=nodes, got {}",
            cfg.min_nodes
        )));
    }
    if cfg.policies.is_empty() {
        return Err(SimError::Config("no policy to simulate".into()));
    }
    if !(0.0..1.0).contains(&cfg.warmup_fraction) {
        return Err(SimError::Config(format!(
            "warmup_fraction must be in [0, 1), got {}",
            cfg.warmup_fraction
        )));
    }
    cfg.costs.validate()?;
    let policies: Vec<(String, PolicyConfig)> = cfg
        .policies
        .iter()
        .map(|name| {
            let pc = cfg.policy_config(name)?;
            pc.validate().map_err(|source| SimError::Policy {
                name: name.clone(),
                source,
            })?;
            Ok((pc.name().to_owned(), pc))
        })
        .collect::<Result<_, SimError>>()?;
    let stream = cfg.stream()?;
    let working_set = stream.working_set();
    let cache_bytes = match cfg.cache_bytes {
        Some(b) => b,
        None if cfg.cache_ratio.is_finite() && cfg.cache_ratio > 0.0 => {
            (working_set as f64 * cfg.cache_ratio).round() as u64
        }
        None => {
            return Err(SimError::Config(format!(
                "cache_ratio must be > 0, got {}",
                cfg.cache_ratio
            )))
        }
    };
    let total = stream.requests.len();
    let warmup = (total as f64 * cfg.warmup_fraction) as usize;
    let mut results = Vec::with_capacity(policies.len() * cfg.nodes);
    for (name, pc) in &policies {
        for n in cfg.min_nodes..=cfg.nodes {
            let concurrency = cfg.concurrency.unwrap_or_else(|| {
                (n as u64 - 1) * u64::from(cfg.lard.t_high) + u64::from(cfg.lard.t_low) - 1
            });
            let run = Run {
                stream: &stream,
                nodes: n,
                cache_bytes,
                costs: &cfg.costs,
                concurrency,
                warmup,
            };
            let mut policy = pc.build().map_err(|source| SimError::Policy {
                name: name.clone(),
                source,
            })?;
            let s = run.simulate(policy.as_mut())?;
            results.push(SimResult {
                policy: name.clone(),
                nodes: n,
                throughput: s.throughput,
                hit_rate: s.hit_rate,
                imbalance_requests: s.imbalance_requests,
                imbalance_busy: s.imbalance_busy,
                concurrency: s.concurrency,
                measured_requests: s.measured,
                sim_seconds: s.sim_ns as f64 / 1e9,
            });
        }
    }
    Ok(SimReport {
        seed: cfg.seed,
        workload: if cfg.trace.is_some() { "trace" } else { "zipf" },
        zipf_alpha: cfg.trace.is_none().then_some(cfg.zipf_alpha),
        targets: stream.names.len(),
        working_set_bytes: working_set,
        cache_bytes_per_node: cache_bytes,
        requests: total,
        warmup_requests: warmup,
        costs: cfg.costs,
        results,
    })
}

/// Reads and parses a trace file (see [`parse_trace`]).
pub fn read_trace(path: &Path) -> Result<Trace, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_trace(&text)
}

/// Writes [`render_svg`]'s chart to `path`.
pub fn write_svg(report: &SimReport, path: &Path) -> Result<(), SimError> {
    let svg = render_svg(report)?;
    std::fs::write(path, svg).map_err(|source| SimError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A plain-text table: throughput, hit rate and busy-time imbalance, one
/// row per node count, one column per policy.
pub fn render_table(report: &SimReport) -> String {
    use std::fmt::Write as _;
    let policies = report.policies();
    let max_nodes = report.results.iter().map(|r| r.nodes).max().unwrap_or(0);
    let min_nodes = report.results.iter().map(|r| r.nodes).min().unwrap_or(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workload: {}{}, {} targets, working set {} B, cache {} B per node ({:.2} of the working set), {} requests ({} warm-up), seed {}",
        report.workload,
        report.zipf_alpha.map(|a| format!(" alpha {a}")).unwrap_or_default(),
        report.targets,
        report.working_set_bytes,
        report.cache_bytes_per_node,
        report.cache_bytes_per_node as f64 / report.working_set_bytes.max(1) as f64,
        report.requests,
        report.warmup_requests,
        report.seed,
    );
    type Cell = fn(&SimResult) -> String;
    let sections: [(&str, Cell); 3] = [
        ("throughput (requests/s)", |r| {
            format!("{:.0}", r.throughput)
        }),
        ("hit rate (%)", |r| format!("{:.1}", r.hit_rate * 100.0)),
        ("imbalance (max/mean busy time)", |r| {
            format!("{:.2}", r.imbalance_busy)
        }),
    ];
    for (title, cell) in sections {
        let _ = writeln!(out, "\n{title}");
        let _ = write!(out, "{:>5}", "nodes");
        for p in &policies {
            let _ = write!(out, " {p:>10}");
        }
        out.push('\n');
        for n in min_nodes..=max_nodes {
            let _ = write!(out, "{n:>5}");
            for p in &policies {
                let c = report.get(p, n).map(cell).unwrap_or_else(|| "-".into());
                let _ = write!(out, " {c:>10}");
            }
            out.push('\n');
        }
    }
    out
}

/// A Zipf request stream for live benchmarks: `len` target indices in
/// `0..targets`, index `i` drawn with probability proportional to
/// `1 / (i+1)^alpha`; a pure function of the seed (the simulator draws its
/// streams the same way).
pub fn zipf_indices(
    alpha: f64,
    targets: usize,
    len: usize,
    seed: u64,
) -> Result<Vec<usize>, SimError> {
    let s = workload::Stream::zipf(alpha, targets, &SizeDist::Fixed { bytes: 1 }, len, seed)?;
    Ok(s.requests.iter().map(|&i| i as usize).collect())
}
