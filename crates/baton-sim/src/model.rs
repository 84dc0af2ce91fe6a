//! The cluster model: one closed-loop run of one policy on `n` nodes.
//!
//! Each node has a CPU and a disk, each a FIFO single server (so each is
//! fully described by the time it next becomes free), and an LRU cache.
//! A request that hits goes to the CPU; one that misses reads from the disk
//! first (the object enters the cache at once, with the time its read
//! completes: a later request for it waits for that read, it does not issue
//! another). The front dispatches a new request the moment one completes
//! (zero think time), so the number in flight stays constant: the cluster
//! runs at saturation. Events at the same instant are handled in the order
//! they were scheduled, so a run is a pure function of its inputs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use baton_policy::{BackendView, Policy, Request};

use crate::cache::{Lookup, Lru};
use crate::workload::Stream;
use crate::{CostModel, SimError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The request's object is in memory: queue for the CPU.
    Cpu,
    /// The CPU is done: the response is sent, the connection closes.
    Done,
}

#[derive(Debug)]
struct Node {
    cache: Lru,
    cpu_free: u64,
    disk_free: u64,
    served: u64,
    busy_ns: u64,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunStats {
    pub(crate) throughput: f64,
    pub(crate) hit_rate: f64,
    pub(crate) imbalance_requests: f64,
    pub(crate) imbalance_busy: f64,
    pub(crate) concurrency: u64,
    pub(crate) measured: u64,
    pub(crate) sim_ns: u64,
}

pub(crate) struct Run<'a> {
    pub(crate) stream: &'a Stream,
    pub(crate) nodes: usize,
    pub(crate) cache_bytes: u64,
    pub(crate) costs: &'a CostModel,
    pub(crate) concurrency: u64,
    /// Requests (in dispatch order) below this index warm the caches and
    /// are not measured.
    pub(crate) warmup: usize,
}

type Event = Reverse<(u64, u64, Kind, u32, u32)>;

/// The mutable state of one run.
struct State<'r> {
    run: &'r Run<'r>,
    nodes: Vec<Node>,
    views: Vec<BackendView>,
    events: BinaryHeap<Event>,
    seq: u64,
    hits: u64,
}

impl State<'_> {
    fn push(&mut self, t: u64, kind: Kind, req: usize, node: usize) {
        self.seq += 1;
        // Request and node numbers fit: both are checked against u32 when
        // the run is set up.
        self.events
            .push(Reverse((t, self.seq, kind, req as u32, node as u32)));
    }

    /// The front hands request `idx` to the node the policy picks, at `t`.
    fn dispatch(&mut self, policy: &mut dyn Policy, t: u64, idx: usize) -> Result<(), SimError> {
        let stream = self.run.stream;
        let target = stream.requests[idx] as usize;
        let size = stream.sizes[target];
        let req = Request {
            method: "GET",
            host: None,
            path: &stream.names[target],
        };
        let i = policy
            .pick(&req, &self.views, t / 1_000_000)
            .filter(|&i| i < self.nodes.len())
            .ok_or(SimError::NoBackend(policy.name()))?;
        self.views[i].load += 1;
        let measured = idx >= self.run.warmup;
        let node = &mut self.nodes[i];
        if measured {
            node.served += 1;
        }
        let ready = match node.cache.lookup(target as u32) {
            Lookup::Hit { ready_at } => {
                self.hits += u64::from(measured);
                ready_at.max(t)
            }
            Lookup::Miss => {
                let d = self.run.costs.disk_ns(size);
                node.disk_free = node.disk_free.max(t) + d;
                node.cache.insert(target as u32, size, node.disk_free);
                if measured {
                    node.busy_ns += d;
                }
                node.disk_free
            }
        };
        self.push(ready, Kind::Cpu, idx, i);
        Ok(())
    }

    /// Request `idx`'s object is in node `i`'s memory at `t`: queue for the CPU.
    fn cpu(&mut self, t: u64, idx: usize, i: usize) {
        let stream = self.run.stream;
        let c = self
            .run
            .costs
            .cpu_ns(stream.sizes[stream.requests[idx] as usize]);
        let node = &mut self.nodes[i];
        node.cpu_free = node.cpu_free.max(t) + c;
        if idx >= self.run.warmup {
            node.busy_ns += c;
        }
        let done = node.cpu_free;
        self.push(done, Kind::Done, idx, i);
    }
}

impl Run<'_> {
    pub(crate) fn simulate(&self, policy: &mut dyn Policy) -> Result<RunStats, SimError> {
        let n = self.nodes;
        let total = self.stream.requests.len();
        if n == 0 || n > u32::MAX as usize || total > u32::MAX as usize {
            return Err(SimError::Config(
                "nodes and requests must fit in u32".into(),
            ));
        }
        let views = vec![
            BackendView {
                up: true,
                draining: false,
                load: 0,
                weight: 1,
            };
            n
        ];
        // The front never has more in flight than the policy admits (Pai's S
        // for LARD), nor than there are requests.
        let concurrency = self
            .concurrency
            .min(policy.admission_limit(&views).unwrap_or(u64::MAX))
            .clamp(1, total.max(1) as u64) as usize;
        let mut st = State {
            run: self,
            nodes: (0..n)
                .map(|_| Node {
                    cache: Lru::new(self.cache_bytes),
                    cpu_free: 0,
                    disk_free: 0,
                    served: 0,
                    busy_ns: 0,
                })
                .collect(),
            views,
            events: BinaryHeap::new(),
            seq: 0,
            hits: 0,
        };

        // The measured window opens when the first measured request is
        // dispatched and closes with the last completion; every completion
        // inside it counts.
        let mut t_start: Option<u64> = None;
        let mut t_end = 0u64;
        let mut completed = 0u64;
        let mut next = 0usize;
        while next < concurrency.min(total) {
            if next == self.warmup {
                t_start = Some(0);
            }
            st.dispatch(policy, 0, next)?;
            next += 1;
        }
        while let Some(Reverse((t, _, kind, req, i))) = st.events.pop() {
            let (req, i) = (req as usize, i as usize);
            match kind {
                Kind::Cpu => st.cpu(t, req, i),
                Kind::Done => {
                    st.views[i].load -= 1;
                    if t_start.is_some() {
                        completed += 1;
                        t_end = t;
                    }
                    if next < total {
                        if next == self.warmup {
                            t_start = Some(t);
                        }
                        st.dispatch(policy, t, next)?;
                        next += 1;
                    }
                }
            }
        }

        let measured = total.saturating_sub(self.warmup) as u64;
        let span = t_end.saturating_sub(t_start.unwrap_or(t_end));
        let throughput = if span == 0 {
            0.0
        } else {
            completed as f64 * 1e9 / span as f64
        };
        Ok(RunStats {
            throughput,
            hit_rate: if measured == 0 {
                0.0
            } else {
                st.hits as f64 / measured as f64
            },
            imbalance_requests: max_over_mean(st.nodes.iter().map(|n| n.served)),
            imbalance_busy: max_over_mean(st.nodes.iter().map(|n| n.busy_ns)),
            concurrency: concurrency as u64,
            measured,
            sim_ns: t_end,
        })
    }
}

/// max/mean of `xs` (1 when all are zero).
fn max_over_mean(xs: impl Iterator<Item = u64> + Clone) -> f64 {
    let count = xs.clone().count().max(1) as f64;
    let max = xs.clone().max().unwrap_or(0) as f64;
    let mean = xs.sum::<u64>() as f64 / count;
    if mean > 0.0 {
        max / mean
    } else {
        1.0
    }
}
