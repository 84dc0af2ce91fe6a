//! The simulator against hand-computed cases, its determinism, its output
//! shapes, and issue 3's headline target at small scale.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use baton_sim::{parse_trace, render_svg, render_table, run, CostModel, SimConfig};

/// Round numbers so that the hand computations below stay readable:
/// a 1000-byte object costs 100 + 2 * 10 = 120 ns of CPU, and its disk read
/// 1000 + 1 * 10 = 1010 ns.
fn toy_costs() -> CostModel {
    CostModel {
        cpu_per_request_ns: 100,
        cpu_per_unit_ns: 10,
        cpu_unit_bytes: 512,
        disk_latency_ns: 1000,
        disk_per_unit_ns: 10,
        disk_unit_bytes: 4096,
        disk_extra_seek_ns: 0,
        disk_seek_span_bytes: 1 << 20,
    }
}

fn toy(trace: &str, nodes: usize, concurrency: u64, cache_bytes: u64, policy: &str) -> SimConfig {
    SimConfig {
        nodes,
        min_nodes: nodes,
        trace: Some(parse_trace(trace).unwrap()),
        warmup_fraction: 0.0,
        cache_bytes: Some(cache_bytes),
        costs: toy_costs(),
        concurrency: Some(concurrency),
        policies: vec![policy.into()],
        ..SimConfig::default()
    }
}

#[test]
fn one_node_one_at_a_time() {
    // a: miss, disk 0..1010, CPU 1010..1130. b: miss, disk 1130..2140, CPU
    // 2140..2260. a: hit, CPU 2260..2380. 3 requests in 2380 ns.
    let r = run(&toy("a,1000\nb,1000\na,1000\n", 1, 1, 10_000, "wrr")).unwrap();
    let x = r.get("wrr", 1).unwrap();
    assert_eq!(x.throughput, 3.0 * 1e9 / 2380.0);
    assert_eq!(x.hit_rate, 1.0 / 3.0);
    assert_eq!(x.measured_requests, 3);
    assert_eq!(x.sim_seconds, 2380e-9);
    assert_eq!(r.working_set_bytes, 2000);

    // A cache that holds one object: b evicts a, so all three miss:
    // 3 * (1010 + 120) ns.
    let r = run(&toy("a,1000\nb,1000\na,1000\n", 1, 1, 1000, "wrr")).unwrap();
    let x = r.get("wrr", 1).unwrap();
    assert_eq!(x.hit_rate, 0.0);
    assert_eq!(x.throughput, 3.0 * 1e9 / 3390.0);
}

#[test]
fn one_node_overlapping_disk_and_cpu() {
    // Two in flight. a: miss, disk 0..1010. a again: its read is in flight,
    // so it waits for it (a hit, no second read). CPU: 1010..1130 and
    // 1130..1250. The first completion (1130) admits b: miss, disk
    // 1130..2140 while the CPU finishes the second a, then CPU 2140..2260.
    let r = run(&toy("a,1000\na,1000\nb,1000\n", 1, 2, 10_000, "least-conn")).unwrap();
    let x = r.get("least-conn", 1).unwrap();
    assert_eq!(x.throughput, 3.0 * 1e9 / 2260.0);
    assert_eq!(x.hit_rate, 1.0 / 3.0);
}

#[test]
fn two_nodes_round_robin() {
    // WRR alternates: a -> 0, b -> 1 (both miss, in parallel, done at
    // 1130), then a -> 0 and b -> 1 hit, done at 1250.
    let r = run(&toy(
        "a,1000\nb,1000\na,1000\nb,1000\n",
        2,
        2,
        10_000,
        "wrr",
    ))
    .unwrap();
    let x = r.get("wrr", 2).unwrap();
    assert_eq!(x.throughput, 4.0 * 1e9 / 1250.0);
    assert_eq!(x.hit_rate, 0.5);
    assert_eq!(x.imbalance_requests, 1.0);
    assert_eq!(x.imbalance_busy, 1.0);
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let cfg = SimConfig {
        nodes: 3,
        targets: 300,
        requests: Some(20_000),
        ..SimConfig::default()
    };
    let a = run(&cfg).unwrap();
    assert_eq!(a, run(&cfg).unwrap());
    assert_eq!(a.results.len(), 6 * 3);
    let b = run(&SimConfig { seed: 2, ..cfg }).unwrap();
    assert_ne!(a.results, b.results);
}

#[test]
fn json_table_and_chart_shapes() {
    let cfg = SimConfig {
        nodes: 2,
        targets: 100,
        requests: Some(5_000),
        ..SimConfig::default()
    };
    let report = run(&cfg).unwrap();
    let v = serde_json::to_value(&report).unwrap();
    let results = v["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    for p in [
        "lard",
        "lard-r",
        "wrr",
        "least-conn",
        "maglev",
        "bounded-ch",
    ] {
        assert_eq!(names.iter().filter(|&&n| n == p).count(), 2, "{p}");
    }
    for r in results {
        assert!(r["nodes"].as_u64().unwrap() >= 1);
        assert!(r["throughput"].as_f64().unwrap() > 0.0);
        let h = r["hit_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&h));
    }

    let table = render_table(&report);
    assert!(table.contains("throughput (requests/s)"));
    let row = table
        .lines()
        .skip_while(|l| !l.starts_with("throughput"))
        .find(|l| l.trim_start().starts_with('2'))
        .unwrap();
    assert_eq!(row.split_whitespace().count(), 7, "{row}");

    let svg = render_svg(&report).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for p in ["lard-r", "wrr", "least-conn", "maglev", "bounded-ch"] {
        assert!(svg.contains(&format!("\n{p}\n</text>")), "legend lacks {p}");
    }
    assert!(svg.matches("<polyline").count() >= 6);
}

#[test]
fn replays_a_common_log_format_trace() {
    let line = |path: &str, bytes: u32| {
        format!("198.18.0.9 - - [01/Jan/1998:00:00:00 +0000] \"GET {path} HTTP/1.0\" 200 {bytes}\n")
    };
    // 2000 requests over 40 documents in a scrambled (LCG) order.
    let mut trace = String::new();
    let mut x: u32 = 1;
    for _ in 0..2000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        let doc = (x >> 16) % 40;
        trace += &line(&format!("/doc{doc}"), 2000 + 100 * doc);
    }
    trace += "198.18.0.9 - - [01/Jan/1998:00:00:00 +0000] \"GET /x HTTP/1.0\" 404 0\n";
    let cfg = SimConfig {
        nodes: 2,
        trace: Some(parse_trace(&trace).unwrap()),
        cache_ratio: 0.6,
        policies: vec!["lard".into(), "wrr".into()],
        ..SimConfig::default()
    };
    let r = run(&cfg).unwrap();
    assert_eq!(r.workload, "trace");
    assert_eq!(r.targets, 40);
    assert_eq!(r.requests, 2000);
    assert_eq!(r.warmup_requests, 400);
    assert!(r.results.iter().all(|x| x.measured_requests == 1600));
    // Two nodes with 60% of the working set each: LARD partitions the 40
    // documents and, warm, nearly always hits (the odd miss follows a target
    // that LARD moved off a node above T_high); under WRR each node sees
    // all of them and its LRU holds only about 60%.
    let lard = r.get("lard", 2).unwrap().hit_rate;
    assert!(lard > 0.98, "{lard}");
    let wrr = r.get("wrr", 2).unwrap().hit_rate;
    assert!((0.4..0.8).contains(&wrr), "{wrr}");
}

#[test]
fn bad_configs_are_refused() {
    let ok = SimConfig {
        requests: Some(1000),
        targets: 10,
        nodes: 1,
        ..SimConfig::default()
    };
    assert!(run(&ok).is_ok());
    for bad in [
        SimConfig {
            nodes: 0,
            ..ok.clone()
        },
        SimConfig {
            min_nodes: 2,
            ..ok.clone()
        },
        SimConfig {
            zipf_alpha: -1.0,
            ..ok.clone()
        },
        SimConfig {
            targets: 0,
            ..ok.clone()
        },
        SimConfig {
            cache_ratio: 0.0,
            ..ok.clone()
        },
        SimConfig {
            warmup_fraction: 1.0,
            ..ok.clone()
        },
        SimConfig {
            policies: vec!["nope".into()],
            ..ok.clone()
        },
        SimConfig {
            policies: vec![],
            ..ok.clone()
        },
    ] {
        assert!(run(&bad).is_err(), "{bad:?}");
    }
}

/// Issue 3's target, at the scale of the default config: 8 nodes, Zipf
/// alpha 1.0 over 2000 targets with SURGE-like sizes, each node's cache a
/// quarter of the working set, 100 000 requests (20% warm-up), seed 1.
/// Numbers seen: LARD 4416 req/s, LARD/R 4427, WRR 901, least-conn 937,
/// Maglev 2760, bounded-load CH 4373. The LARD vs bounded-load margin is
/// thin (about 1%): bounded loads spill a hot target to a second node,
/// which is a form of replication; against plain consistent hashing
/// (Maglev) LARD wins by 1.6x.
#[test]
fn lard_r_doubles_wrr_and_lard_beats_hashing_at_8_nodes() {
    let cfg = SimConfig {
        min_nodes: 8,
        ..SimConfig::default()
    };
    let r = run(&cfg).unwrap();
    let tp = |p: &str| r.get(p, 8).unwrap().throughput;
    eprintln!("{}", render_table(&r));
    assert!(
        tp("lard-r") >= 2.0 * tp("wrr"),
        "LARD/R {} vs WRR {}",
        tp("lard-r"),
        tp("wrr")
    );
    assert!(
        tp("lard") >= tp("maglev"),
        "LARD {} vs Maglev {}",
        tp("lard"),
        tp("maglev")
    );
    assert!(
        tp("lard") >= tp("bounded-ch"),
        "LARD {} vs bounded-ch {}",
        tp("lard"),
        tp("bounded-ch")
    );
    // And the reason: locality. LARD/R serves nearly all from memory.
    assert!(r.get("lard-r", 8).unwrap().hit_rate > 0.95);
    assert!(r.get("wrr", 8).unwrap().hit_rate < 0.8);
}
