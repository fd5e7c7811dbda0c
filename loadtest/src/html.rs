//! The self-contained HTML report: summary tables, latency percentile plots and
//! series over time, drawn with plotters as SVG and embedded inline (no scripts, no
//! external files), plus the raw JSON.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::report::{number, LatencySummary, Report, Section, Series};

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
td:first-child,th:first-child{text-align:left}.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}\
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}pre{background:#f6f8fa;padding:1em;overflow:auto;max-height:30em}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn plot_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Report(format!("drawing a plot: {e}"))
}

/// Renders the whole report.
pub fn render(report: &Report) -> Result<String> {
    let mut h = String::new();
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let class = if report.passed { "pass" } else { "fail" };
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{} — flowhub load test</title><style>{STYLE}</style></head><body>",
        esc(&report.name)
    );
    let _ = write!(
        h,
        "<h1>{} <span class=\"{class}\">{verdict}</span></h1>",
        esc(&report.name)
    );
    let m = &report.machine;
    let _ = write!(
        h,
        "<table><tr><th>scenario</th><td>{}</td></tr><tr><th>wall time</th><td>{:.1} s</td></tr>\
         <tr><th>machine</th><td>{} × {}, {:.1} GiB, Linux {}</td></tr>\
         <tr><th>load average before / after</th><td>{:?} / {:?}</td></tr><tr><th>harness CPU</th><td>{:.1} s</td></tr>\
         <tr><th>targets</th><td>{}</td></tr>\
         <tr><th>parameters</th><td><code>{}</code></td></tr></table>",
        esc(&report.scenario),
        report.wall_seconds,
        m.nproc,
        esc(&m.cpu_model),
        m.mem_total_bytes as f64 / (1u64 << 30) as f64,
        esc(&m.kernel),
        m.load_average,
        report.load_average_after,
        report.harness_cpu_seconds,
        esc(&report.targets.join(", ")),
        esc(&report.parameters.to_string())
    );
    if !report.checks.is_empty() {
        h.push_str("<h2>Checks</h2><table><tr><th>check</th><th>verdict</th><th>detail</th></tr>");
        for c in &report.checks {
            let (v, cl) = if c.passed {
                ("PASS", "pass")
            } else {
                ("FAIL", "fail")
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{cl}\">{v}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&c.name),
                esc(&c.detail)
            );
        }
        h.push_str("</table>");
    }
    for s in &report.sections {
        section(&mut h, s)?;
    }
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::Report(e.to_string()))?;
    let _ = write!(
        h,
        "<h2>Raw result</h2><details><summary>JSON</summary><pre>{}</pre></details></body></html>",
        esc(&json)
    );
    Ok(h)
}

fn section(h: &mut String, s: &Section) -> Result<()> {
    let _ = write!(h, "<h2>{}</h2>", esc(&s.name));
    if !s.latencies.is_empty() {
        h.push_str("<table><tr><th>latency (ms)</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
        for l in &s.latencies {
            let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.name),
                l.count,
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us)
            );
        }
        h.push_str("</table>");
        let plotted: Vec<&LatencySummary> = s.latencies.iter().filter(|l| l.count > 0).collect();
        if !plotted.is_empty() {
            h.push_str(&latency_svg(&s.name, &plotted)?);
        }
    }
    if !s.values.is_empty() {
        h.push_str("<table><tr><th>measure</th><th>value</th><th>unit</th></tr>");
        for v in &s.values {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&v.name),
                number(v.value),
                esc(&v.unit)
            );
        }
        h.push_str("</table>");
    }
    // One chart per unit.
    let mut units: Vec<&str> = s.series.iter().map(|x| x.unit.as_str()).collect();
    units.dedup();
    for unit in units {
        let group: Vec<&Series> = s
            .series
            .iter()
            .filter(|x| x.unit == unit && !x.values.is_empty())
            .collect();
        if !group.is_empty() {
            h.push_str(&series_svg(&s.name, unit, &group)?);
        }
    }
    for n in &s.notes {
        let _ = write!(h, "<p><em>{}</em></p>", esc(n));
    }
    Ok(())
}

/// x in "1 / (1 − quantile)" on a log axis: the usual HDR percentile plot.
fn latency_svg(title: &str, series: &[&LatencySummary]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let max_ms = series.iter().map(|l| l.max_us).max().unwrap_or(1) as f64 / 1000.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{title}: latency by percentile"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (1f64..100_000f64).log_scale(),
                0f64..(max_ms * 1.1).max(0.01),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("ms")
            .x_label_formatter(&|v| {
                let p = 100.0 * (1.0 - 1.0 / v);
                format!("{p:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_owned()
                    + "%"
            })
            .draw()
            .map_err(plot_err)?;
        for (i, l) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = l
                .curve
                .iter()
                .map(|(q, us)| ((1.0 / (1.0 - q)).clamp(1.0, 100_000.0), us / 1000.0))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(l.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn series_svg(title: &str, unit: &str, series: &[&Series]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let x_min = series.iter().map(|s| s.start_s).fold(f64::MAX, f64::min);
        let x_max = series
            .iter()
            .map(|s| s.start_s + s.values.len() as f64)
            .fold(0.0, f64::max);
        let y_max = series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{title}: {unit} over time"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                x_min..(x_max.max(x_min + 1.0)),
                0f64..(y_max * 1.1).max(1.0),
            )
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc(unit)
            .draw()
            .map_err(plot_err)?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = s
                .values
                .iter()
                .enumerate()
                .map(|(k, v)| (s.start_s + k as f64, *v))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::report::{Check, Series};
    use crate::stats::Latency;

    #[test]
    fn renders_a_self_contained_page_with_inline_svg() {
        let mut l = Latency::new();
        for v in 1..1000 {
            l.record(v * 10);
        }
        let mut s = Section::new("edit");
        s.latencies.push(l.summary("a <b>"));
        s.value("x", 1.5, "u");
        s.series.push(Series {
            name: "edits".into(),
            unit: "per second".into(),
            start_s: 2.0,
            values: vec![1.0, 5.0, 3.0],
        });
        let report = Report {
            name: "t".into(),
            scenario: "edit".into(),
            started_at_unix_ms: 0,
            wall_seconds: 1.0,
            machine: Machine::detect(),
            load_average_after: vec![],
            harness_cpu_seconds: 0.0,
            targets: vec![],
            parameters: serde_json::json!({"a": 1}),
            sections: vec![s],
            checks: vec![Check::new("c", true, "ok")],
            passed: true,
        };
        let html = render(&report).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(
            html.matches("<svg").count(),
            2,
            "one latency and one series plot"
        );
        assert!(html.contains("a &lt;b&gt;"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=\"http"));
    }
}
