//! Runs the default comparison (8 nodes, Zipf, cache = 1/4 of the working
//! set), prints the table and writes the chart:
//! `cargo run --release -p baton-sim --example sweep -- [OUT.svg] [SEED]`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "sim.svg".into()));
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let cfg = baton_sim::SimConfig {
        seed,
        ..baton_sim::SimConfig::default()
    };
    let t0 = std::time::Instant::now();
    let report = baton_sim::run(&cfg)?;
    eprintln!("simulated in {:?}", t0.elapsed());
    print!("{}", baton_sim::render_table(&report));
    baton_sim::write_svg(&report, &out)?;
    eprintln!("chart: {}", out.display());
    Ok(())
}
