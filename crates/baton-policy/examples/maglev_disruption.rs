//! Measures Maglev's disruption when one back-end leaves: the fraction of
//! lookup-table slots that change owner, against the ideal 1/N.
#![allow(clippy::unwrap_used)]
use baton_policy::{BackendView, Maglev};
fn main() {
    let mut worst_extra: f64 = 0.0;
    for n in 2usize..=64 {
        let mut worst: f64 = 0.0;
        for gone in 0..n {
            let mut m = Maglev::default();
            let mut c = vec![
                BackendView {
                    up: true,
                    draining: false,
                    load: 0,
                    weight: 1
                };
                n
            ];
            m.refresh(&c);
            let before = m.table().to_vec();
            c[gone].up = false;
            m.refresh(&c);
            let moved = before.iter().zip(m.table()).filter(|(a, b)| a != b).count();
            worst = worst.max(moved as f64 / before.len() as f64);
        }
        let extra = worst - 1.0 / n as f64;
        worst_extra = worst_extra.max(extra);
        println!(
            "n {n:3}: worst moved {worst:.4}  1/N {:.4}  extra {extra:.4}",
            1.0 / n as f64
        );
    }
    println!("worst extra over n in 2..=64: {worst_extra:.4}");
}
