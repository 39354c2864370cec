//! Self-contained HTML report pages: verdicts, every expectation with what was observed, and
//! plots drawn as inline SVG by `plotters` (no script, no stylesheet or font from elsewhere:
//! the page opens offline and can be attached to a CI run as one file).
use std::fmt::Write as _;

use plotters::prelude::*;

use super::collect::{Collector, Points, cdf, histogram_bins};
use crate::scenario::TestCase;
use crate::scenario::run::TestResult;

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f0f0f0}.pass{color:#176f2c;font-weight:bold}\
.fail{color:#b00020;font-weight:bold}pre{margin:0;font-size:90%}figure{margin:1em 0}\
h1{overflow-wrap:anywhere}h2{margin-top:1.5em;border-bottom:1px solid #ddd}.meta td:first-child{font-weight:bold}";

/// Escape text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A complete page with `title` and `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "<span class=\"pass\">pass</span>"
    } else {
        "<span class=\"fail\">FAIL</span>"
    }
}

/// How a chart's axes are labelled.
pub struct Axes<'a> {
    /// Chart title.
    pub title: &'a str,
    /// X axis.
    pub x: &'a str,
    /// Y axis.
    pub y: &'a str,
}

fn range(points: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (
            lo - 0.5_f64.max(lo.abs() * 0.1),
            hi + 0.5_f64.max(hi.abs() * 0.1),
        );
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// A line chart of named series, as an SVG element. `step` draws each series as a staircase.
pub fn line_chart(axes: &Axes<'_>, series: &[(String, Points)], step: bool) -> String {
    let mut svg = String::new();
    let drawn = draw_lines(&mut svg, axes, series, step);
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p>(plot failed: {})</p>", escape(&e)),
    }
}

fn draw_lines(
    svg: &mut String,
    axes: &Axes<'_>,
    series: &[(String, Points)],
    step: bool,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let (x0, x1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|v| v.0)));
    let (y0, y1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|v| v.1)));
    let root = SVGBackend::with_string(svg, (900, 300)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(axes.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = if step {
            let mut out = Vec::with_capacity(points.len() * 2);
            for w in points.windows(2) {
                out.push(w[0]);
                out.push((w[1].0, w[0].1));
            }
            out.extend(points.last());
            out
        } else {
            points.clone()
        };
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
    }
    if series.len() > 1 || series.first().is_some_and(|s| !s.0.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// A histogram: bars of `(low, high, count)`.
pub fn bar_chart(axes: &Axes<'_>, bins: &[(f64, f64, u64)]) -> String {
    let mut svg = String::new();
    let drawn = (|| -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
        let x0 = bins.first().map_or(0.0, |b| b.0);
        let x1 = bins.last().map_or(1.0, |b| b.1).max(x0 + 1e-9);
        let y1 = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64 * 1.05;
        let root = SVGBackend::with_string(&mut svg, (440, 280)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(bins.iter().map(|&(lo, hi, n)| {
                Rectangle::new([(lo, 0.0), (hi, n as f64)], BLUE.mix(0.6).filled())
            }))
            .map_err(e)?;
        root.present().map_err(e)?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p>(plot failed: {})</p>", escape(&e)),
    }
}

fn figure(out: &mut String, svg: &str, caption: &str) {
    let _ = writeln!(
        out,
        "<figure>{svg}<figcaption>{}</figcaption></figure>",
        escape(caption)
    );
}

/// The one value every point has, if they all have the same.
fn constant(points: &Points) -> Option<f64> {
    let first = points.first()?.1;
    points.iter().all(|p| p.1 == first).then_some(first)
}

fn unit_of(metric: &str) -> &'static str {
    if metric.ends_with("_us") {
        "µs"
    } else if metric.ends_with("_ms") {
        "ms"
    } else if metric.ends_with("_s") {
        "s"
    } else if metric.ends_with("_ml") {
        "ml"
    } else if metric.ends_with("_w") {
        "W"
    } else {
        "value"
    }
}

/// The report page of one run.
pub fn run_page(case: &TestCase, result: &TestResult, data: &Collector) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>{}</h1>\n<table class=\"meta\">\
         <tr><td>file</td><td>{}</td></tr>\
         <tr><td>verdict</td><td>{}{}</td></tr>\
         <tr><td>seed</td><td>{}</td></tr>\
         <tr><td>virtual time</td><td>{} ms</td></tr>\
         <tr><td>wall time</td><td>{} ms</td></tr>\
         <tr><td>trace hash</td><td><code>{:016x}</code></td></tr></table>\n",
        escape(&result.name),
        escape(&case.file.display().to_string()),
        verdict(result.passed),
        if case.is_variant() {
            " (a variant: passes when the expectations it breaks fail)"
        } else {
            ""
        },
        result.seed,
        result.virtual_ms,
        result.wall_ms,
        result.trace_hash
    );
    b.push_str("<h2>Expectations</h2>\n<table><tr><th>label</th><th>held</th><th>observed</th><th>as written</th></tr>\n");
    for (e, v) in case.expects.iter().zip(&result.verdicts) {
        let written: Vec<&str> = case
            .source
            .lines()
            .skip(e.line.saturating_sub(1))
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('['))
            .map(|(_, l)| l)
            .filter(|l| !l.trim().is_empty())
            .collect();
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            escape(&v.label),
            verdict(v.passed),
            escape(&v.observed),
            escape(&written.join("\n"))
        );
    }
    b.push_str("</table>\n");
    if !result.errors.is_empty() {
        b.push_str("<h2>Errors</h2>\n<ul>\n");
        for e in &result.errors {
            let _ = writeln!(b, "<li>{}</li>", escape(e));
        }
        b.push_str("</ul>\n");
    }
    plots(&mut b, data);
    page(&result.name, &b)
}

fn plots(b: &mut String, data: &Collector) {
    let bin = data.bin_width().to_string();
    let loads = data.core_load();
    if !loads.is_empty() {
        b.push_str("<h2>Core utilisation</h2>\n");
        let series: Vec<(String, Points)> = loads
            .into_iter()
            .map(|(n, p)| (n, p.into_iter().map(|(x, y)| (x, y * 100.0)).collect()))
            .collect();
        figure(
            b,
            &line_chart(
                &Axes {
                    title: "busy share of each simulated core",
                    x: "virtual time (s)",
                    y: "busy %",
                },
                &series,
                false,
            ),
            &format!("per {bin} bin"),
        );
    }
    let queues: Vec<&String> = data
        .metrics
        .keys()
        .filter(|n| {
            n.contains("queue")
                || n.contains("depth")
                || n.contains("high_water")
                || n.contains("_q.")
                || n.contains("net.")
        })
        .collect();
    if !queues.is_empty() {
        b.push_str("<h2>Queues</h2>\n");
        let (flat, varying): (Vec<&String>, Vec<&String>) = queues
            .into_iter()
            .partition(|n| constant(&data.metric_max(n)).is_some());
        if !flat.is_empty() {
            b.push_str("<p>Constant throughout: ");
            let items: Vec<String> = flat
                .iter()
                .map(|n| {
                    let v = constant(&data.metric_max(n)).unwrap_or_default();
                    format!("<code>{}</code> = {v}", escape(n))
                })
                .collect();
            b.push_str(&items.join(", "));
            b.push_str("</p>\n");
        }
        for name in varying {
            figure(
                b,
                &line_chart(
                    &Axes {
                        title: name,
                        x: "virtual time (s)",
                        y: "max per bin",
                    },
                    &[(name.clone(), data.metric_max(name))],
                    false,
                ),
                &format!("{name}: largest sample per {bin} bin"),
            );
        }
    }
    let latencies: Vec<(&String, &super::collect::MetricSeries)> = data
        .metrics
        .iter()
        .filter(|(_, m)| m.histogram.as_ref().is_some_and(|h| !h.is_empty()))
        .collect();
    if !latencies.is_empty() {
        b.push_str("<h2>Latencies and intervals</h2>\n");
        for (name, m) in latencies {
            let Some(h) = &m.histogram else { continue };
            let unit = unit_of(name);
            let _ = writeln!(
                b,
                "<h3>{}</h3><p>{} samples; p50 {} · p99 {} · max {} {unit}</p>",
                escape(name),
                m.count,
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            );
            b.push_str("<div style=\"display:flex;flex-wrap:wrap\">");
            figure(
                b,
                &bar_chart(
                    &Axes {
                        title: "histogram",
                        x: unit,
                        y: "samples",
                    },
                    &histogram_bins(h, 30),
                ),
                &format!("{name}: histogram"),
            );
            figure(
                b,
                &line_chart(
                    &Axes {
                        title: "CDF",
                        x: unit,
                        y: "fraction ≤ x",
                    },
                    &[("CDF".to_owned(), cdf(h))],
                    false,
                ),
                &format!("{name}: cumulative distribution"),
            );
            b.push_str("</div>\n");
            figure(
                b,
                &line_chart(
                    &Axes {
                        title: name,
                        x: "virtual time (s)",
                        y: unit,
                    },
                    &[
                        ("max".to_owned(), data.metric_max(name)),
                        (
                            "mean".to_owned(),
                            data.metric_points(name, |b| b.sum / b.count as f64),
                        ),
                    ],
                    false,
                ),
                &format!("{name} over time (max and mean per {bin} bin)"),
            );
        }
    }
    for (device, channels) in data.relay_states() {
        let _ = writeln!(b, "<h2>Relays of {}</h2>", escape(&device));
        let series: Vec<(String, Points)> = channels
            .into_iter()
            .enumerate()
            .map(|(ch, pts)| {
                let offset = ch as f64 * 1.5;
                (
                    format!("CH{}", ch + 1),
                    pts.into_iter().map(|(x, y)| (x, offset + y)).collect(),
                )
            })
            .collect();
        figure(
            b,
            &line_chart(
                &Axes {
                    title: "relay contacts (each channel: low = open, high = closed)",
                    x: "virtual time (s)",
                    y: "channel",
                },
                &series,
                true,
            ),
            &format!("state at the end of each {bin} bin"),
        );
    }
    let mut groups: std::collections::BTreeMap<(String, &str), Vec<(String, Points)>> =
        Default::default();
    for (key, pts) in data.readings() {
        let (device, rest) = key.split_once('.').unwrap_or((key, ""));
        let what = if rest.starts_with("meter.") {
            "meter power (W)"
        } else {
            "dispensed (ml)"
        };
        groups
            .entry((device.to_owned(), what))
            .or_default()
            .push((rest.to_owned(), pts.clone()));
    }
    for ((device, what), series) in groups {
        // A channel that read zero throughout says nothing.
        let series: Vec<_> = series
            .into_iter()
            .filter(|(_, p)| p.iter().any(|v| v.1 != 0.0))
            .collect();
        if series.is_empty() {
            continue;
        }
        let _ = writeln!(b, "<h2>{} of {}</h2>", escape(what), escape(&device));
        figure(
            b,
            &line_chart(
                &Axes {
                    title: what,
                    x: "virtual time (s)",
                    y: what,
                },
                &series,
                false,
            ),
            &format!("read at the end of each {bin} bin"),
        );
    }
    let others: Vec<&String> = data
        .metrics
        .iter()
        .filter(|(n, m)| {
            m.histogram.is_none()
                && !(n.contains("queue")
                    || n.contains("depth")
                    || n.contains("high_water")
                    || n.contains("_q.")
                    || n.contains("net."))
        })
        .map(|(n, _)| n)
        .collect();
    if !others.is_empty() {
        b.push_str("<h2>Other metrics</h2>\n");
        for name in others {
            figure(
                b,
                &line_chart(
                    &Axes {
                        title: name,
                        x: "virtual time (s)",
                        y: unit_of(name),
                    },
                    &[(name.clone(), data.metric_points(name, |b| b.last))],
                    false,
                ),
                &format!("{name}: last sample per {bin} bin"),
            );
        }
    }
}

/// One row of the index page.
pub struct IndexRow {
    /// The test's full name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// Whether it passed.
    pub passed: bool,
    /// The page's file name, relative to the index.
    pub page: String,
}

/// The index page: every run with its verdict and a link to its page.
pub fn index_page(rows: &[IndexRow]) -> String {
    let passed = rows.iter().filter(|r| r.passed).count();
    let mut b = format!(
        "<h1>Scenario report</h1>\n<p>{passed} passed, {} failed</p>\n<table><tr><th>file</th><th>test</th><th>verdict</th></tr>\n",
        rows.len() - passed
    );
    for r in rows {
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td>{}</td></tr>",
            escape(&r.file),
            escape(&r.page),
            escape(&r.name),
            verdict(r.passed)
        );
    }
    b.push_str("</table>\n");
    page("Scenario report", &b)
}

/// `twin compare`'s page: the table, and per metric a bar per option (mean) with its 95 %
/// confidence interval drawn as a whisker.
pub fn compare_page(
    title: &str,
    metrics: &[(&str, &str, &str)],
    options: &[&str],
    summary: &[Vec<(f64, f64)>],
) -> String {
    let mut b = format!("<h1>{}</h1>\n<table><tr><th>metric</th>", escape(title));
    for o in options {
        let _ = write!(b, "<th>{}</th>", escape(o));
    }
    b.push_str("</tr>\n");
    for (mi, (_, label, unit)) in metrics.iter().enumerate() {
        let _ = write!(b, "<tr><td>{} ({})</td>", escape(label), escape(unit));
        for s in summary {
            let (m, ci) = s.get(mi).copied().unwrap_or_default();
            let _ = write!(b, "<td>{m:.2} ± {ci:.2}</td>");
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</table>\n<div style=\"display:flex;flex-wrap:wrap\">");
    for (mi, (_, label, unit)) in metrics.iter().enumerate() {
        let bars: Vec<(f64, f64)> = summary
            .iter()
            .map(|s| s.get(mi).copied().unwrap_or_default())
            .collect();
        figure(&mut b, &ci_chart(label, unit, options, &bars), label);
    }
    b.push_str("</div>\n");
    page(title, &b)
}

fn ci_chart(title: &str, unit: &str, options: &[&str], bars: &[(f64, f64)]) -> String {
    let mut svg = String::new();
    let drawn = (|| -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
        let top = bars
            .iter()
            .map(|(m, c)| m + c)
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.15;
        let root = SVGBackend::with_string(&mut svg, (440, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 13))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..options.len() as f64, 0.0..top)
            .map_err(e)?;
        let names: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        chart
            .configure_mesh()
            .y_desc(unit)
            .x_labels(options.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (m, _))| {
                let x = i as f64;
                Rectangle::new([(x + 0.2, 0.0), (x + 0.8, *m)], Palette99::pick(i).filled())
            }))
            .map_err(e)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (m, c))| {
                let x = i as f64 + 0.5;
                PathElement::new(
                    vec![(x, (m - c).max(0.0)), (x, m + c)],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(e)?;
        root.present().map_err(e)?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p>(plot failed: {})</p>", escape(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compare_page_has_the_table_and_a_chart_per_metric() {
        let metrics = [("a", "latency", "ms"), ("b", "drops", "count")];
        let summary = vec![vec![(1.5, 0.2), (3.0, 1.0)], vec![(2.5, 0.1), (0.0, 0.0)]];
        let html = compare_page("t", &metrics, &["option1", "option2"], &summary);
        assert!(html.contains("<td>1.50 ± 0.20</td>") && html.contains("<td>0.00 ± 0.00</td>"));
        assert_eq!(html.matches("<svg").count(), 2);
        // One filled bar per option and metric.
        assert!(html.matches("<rect").count() >= 4, "{html}");
        assert!(!html.contains("<script"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
