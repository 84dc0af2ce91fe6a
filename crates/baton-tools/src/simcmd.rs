//! `baton sim`: the trace-driven cluster simulator of `baton-sim`, from the
//! command line.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Options of `baton sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Simulate clusters of 1..=N nodes.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Zipf exponent of the generated workload.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_alpha: f64,
    /// Distinct targets of the generated workload.
    #[arg(long, default_value_t = 2000)]
    pub targets: usize,
    /// One node's cache as a fraction of the working set.
    #[arg(long, default_value_t = 0.25)]
    pub cache_ratio: f64,
    /// Seed of the workload and of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests to simulate (default: the simulator's).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Replay a trace (Common Log Format, or `target,size` lines) instead of
    /// generating a Zipf workload.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Only these policies (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw throughput vs nodes as an SVG chart here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Runs the simulator and prints its report.
pub fn run(a: &SimArgs) -> Result<()> {
    let mut cfg = baton_sim::SimConfig {
        nodes: a.nodes,
        zipf_alpha: a.zipf_alpha,
        targets: a.targets,
        cache_ratio: a.cache_ratio,
        seed: a.seed,
        ..Default::default()
    };
    if a.requests.is_some() {
        cfg.requests = a.requests;
    }
    if let Some(t) = &a.trace {
        cfg.trace =
            Some(baton_sim::read_trace(t).with_context(|| format!("trace {}", t.display()))?);
    }
    if !a.policies.is_empty() {
        cfg.policies = a.policies.clone();
    }
    let report = baton_sim::run(&cfg).context("simulation")?;
    if let Some(path) = &a.svg {
        baton_sim::write_svg(&report, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", baton_sim::render_table(&report));
        if let Some(path) = &a.svg {
            println!("chart: {}", path.display());
        }
    }
    Ok(())
}
