//! Prometheus metrics: `GET /metrics` on a daemon's admin address, in the
//! OpenMetrics text format (`prometheus-client`). The values are the same
//! counters `/stats` shows, read at each scrape; the latency histograms
//! count every handoff since start (`/stats` shows recent percentiles).
//! Names follow the conventions: a `baton_` prefix, units in the name,
//! `_total` on counters; labels name a back-end, a result or a cause,
//! never a flow.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `collector` and the build information.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    registry.register_collector(Box::new(BuildInfo));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        out.clear();
        let _ = writeln!(out, "# encoding the metrics failed: {e}");
    }
    out
}

#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        gauges_by(
            &mut enc,
            "baton_build_info",
            "Baton's version (the value is always 1)",
            "version",
            &[(env!("CARGO_PKG_VERSION"), 1)],
        )
    }
}

/// One counter.
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One gauge.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label.
pub fn counters_by<L: AsRef<str>>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(L, u64)],
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        MetricType::Counter,
        label,
        values,
        ConstCounter::new,
    )
}

/// A gauge family with one label.
pub fn gauges_by<L: AsRef<str>>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(L, i64)],
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        MetricType::Gauge,
        label,
        values,
        ConstGauge::new,
    )
}

fn family<L: AsRef<str>, V: Copy, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    values: &[(L, V)],
    metric: impl Fn(V) -> M,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, value.as_ref())];
        metric(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram.
pub fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Histogram,
) -> fmt::Result {
    h.encode(enc.encode_descriptor(name, help, None, h.metric_type())?)
}

/// A count as a gauge value (saturating).
pub fn as_gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Sample;

    impl Collector for Sample {
        fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
            counter(&mut enc, "baton_test_things", "Things", 7)?;
            gauge(&mut enc, "baton_test_level", "Level", 3)?;
            counters_by(
                &mut enc,
                "baton_test_results",
                "Results",
                "result",
                &[("ok", 5), ("failed", 1)],
            )?;
            let h = Histogram::new([0.001, 0.01]);
            h.observe(0.002);
            histogram(&mut enc, "baton_test_step_seconds", "Step", &h)
        }
    }

    #[test]
    fn renders_openmetrics_text() {
        let text = render(Sample);
        for line in [
            "# TYPE baton_test_things counter",
            "baton_test_things_total 7",
            "baton_test_level 3",
            "baton_test_results_total{result=\"ok\"} 5",
            "baton_test_results_total{result=\"failed\"} 1",
            "baton_test_step_seconds_bucket{le=\"0.01\"} 1",
            "baton_test_step_seconds_count 1",
            "baton_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
