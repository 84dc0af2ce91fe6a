//! The chart: throughput against node count, one line per policy, drawn
//! with plotters' SVG backend (text as SVG `<text>`: no font files needed).

use plotters::prelude::*;

use crate::{SimError, SimReport};

/// Tableau's ten colours (the matplotlib default): distinct on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The throughput-vs-nodes chart as an SVG document.
pub fn render_svg(report: &SimReport) -> Result<String, SimError> {
    let chart_err = |e: &dyn std::fmt::Display| SimError::Chart(e.to_string());
    let max_nodes = report.results.iter().map(|r| r.nodes).max().unwrap_or(1);
    let max_y = report
        .results
        .iter()
        .map(|r| r.throughput)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| chart_err(&e))?;
        let caption = format!(
            "Throughput vs nodes ({}, cache {:.0}% of the working set)",
            match report.zipf_alpha {
                Some(a) => format!("Zipf alpha {a}, {} targets", report.targets),
                None => format!("trace, {} targets", report.targets),
            },
            100.0 * report.cache_bytes_per_node as f64 / report.working_set_bytes.max(1) as f64
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(90)
            .build_cartesian_2d(0.5f64..max_nodes as f64 + 0.5, 0.0f64..max_y * 1.1)
            .map_err(|e| chart_err(&e))?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .x_desc("back-end nodes")
            .y_desc("requests per second")
            .x_labels(max_nodes.min(16) + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| chart_err(&e))?;
        for (k, policy) in report.policies().into_iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()].to_rgba();
            let points: Vec<(f64, f64)> = report
                .results
                .iter()
                .filter(|r| r.policy == policy)
                .map(|r| (r.nodes as f64, r.throughput))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| chart_err(&e))?
                .label(policy)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| chart_err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| chart_err(&e))?;
        root.present().map_err(|e| chart_err(&e))?;
    }
    Ok(svg)
}
