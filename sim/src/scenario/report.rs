//! Reports: mismatches printed in scenario syntax with the trace around them, a JSON report and
//! JUnit XML for CI.
use std::fmt::Write as _;

use firmware_core::time::{Duration, Instant};
use serde::Serialize;

use super::TestCase;
use super::run::{CONTEXT_EVENTS, TestResult};
use crate::kernel::trace::fmt_time;

/// A human explanation of a failed test: each failed expectation as it is written in the file,
/// what was observed, and the trace around the instant it points at.
pub fn explain_failure(case: &TestCase, result: &TestResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "FAIL {} :: {} (seed {}, trace {:016x})",
        case.file.display(),
        result.name,
        result.seed,
        result.trace_hash
    );
    if case.is_variant() {
        let _ = writeln!(
            out,
            "  variant `{}` must break {}, but every such expectation still held:",
            case.variant.as_deref().unwrap_or_default(),
            if case.must_break.is_empty() {
                "at least one expectation".to_owned()
            } else {
                case.must_break.join(", ")
            }
        );
    }
    for err in &result.errors {
        let _ = writeln!(out, "  error: {err}");
    }
    for (expect, verdict) in case.expects.iter().zip(&result.verdicts) {
        let relevant = if case.is_variant() {
            verdict.passed
                && (case.must_break.is_empty() || case.must_break.contains(&verdict.label))
        } else {
            !verdict.passed
        };
        if !relevant {
            continue;
        }
        let _ = writeln!(out, "\n  # {}:{}", case.file.display(), expect.line);
        for line in table_lines(&case.source, expect.line) {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  # observed: {}", verdict.observed);
        if let Some(focus) = verdict.focus {
            let _ = writeln!(out, "  # trace around {}:", fmt_time(focus));
            for ev in around(result, focus) {
                let _ = writeln!(out, "  #   {ev}");
            }
        }
    }
    out
}

/// The lines of the table whose header is on `line` (1-based), up to the next header.
fn table_lines(source: &str, line: usize) -> Vec<&str> {
    let mut lines: Vec<&str> = source
        .lines()
        .skip(line.saturating_sub(1))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('['))
        .map(|(_, l)| l)
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

fn around(result: &TestResult, focus: Instant) -> impl Iterator<Item = &crate::kernel::Event> {
    let idx = result.events.partition_point(|e| e.at < focus);
    let start = idx.saturating_sub(CONTEXT_EVENTS);
    let end = (idx + CONTEXT_EVENTS).min(result.events.len());
    result.events[start..end].iter()
}

#[derive(Serialize)]
struct JsonExpectation<'a> {
    label: &'a str,
    line: usize,
    passed: bool,
    observed: &'a str,
}

#[derive(Serialize)]
struct JsonScenario<'a> {
    file: String,
    name: &'a str,
    variant: Option<&'a str>,
    seed: u64,
    passed: bool,
    virtual_ms: u64,
    wall_ms: u64,
    trace_hash: String,
    expectations: Vec<JsonExpectation<'a>>,
    errors: &'a [String],
}

/// The JSON report: one object per test with `name`, `seed`, `passed`, `virtual_ms`,
/// `wall_ms`, `trace_hash` and each expectation with its observed value.
pub fn json_report(runs: &[(&TestCase, &TestResult)]) -> serde_json::Value {
    let scenarios: Vec<JsonScenario<'_>> = runs
        .iter()
        .map(|(case, r)| JsonScenario {
            file: case.file.display().to_string(),
            name: &r.name,
            variant: case.variant.as_deref(),
            seed: r.seed,
            passed: r.passed,
            virtual_ms: r.virtual_ms,
            wall_ms: r.wall_ms,
            trace_hash: format!("{:016x}", r.trace_hash),
            expectations: case
                .expects
                .iter()
                .zip(&r.verdicts)
                .map(|(e, v)| JsonExpectation {
                    label: &v.label,
                    line: e.line,
                    passed: v.passed,
                    observed: &v.observed,
                })
                .collect(),
            errors: &r.errors,
        })
        .collect();
    let passed = runs.iter().filter(|(_, r)| r.passed).count();
    serde_json::json!({
        "passed": passed,
        "failed": runs.len() - passed,
        "scenarios": scenarios,
    })
}

/// JUnit XML: one `<testsuite>` per file, one `<testcase>` per test or variant.
pub fn junit_report(runs: &[(&TestCase, &TestResult)]) -> String {
    let mut files: Vec<String> = runs
        .iter()
        .map(|(c, _)| c.file.display().to_string())
        .collect();
    files.dedup();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for file in files {
        let in_file: Vec<_> = runs
            .iter()
            .filter(|(c, _)| c.file.display().to_string() == file)
            .collect();
        let failures = in_file.iter().filter(|(_, r)| !r.passed).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            xml_escape(&file),
            in_file.len()
        );
        for (case, r) in in_file {
            let secs = Duration::from_millis(r.wall_ms).as_millis() as f64 / 1000.0;
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{secs:.3}\"",
                xml_escape(&file),
                xml_escape(&r.name)
            );
            if r.passed {
                out.push_str("/>\n");
            } else {
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"expectation not met\">{}</failure>\n    </testcase>",
                    xml_escape(&explain_failure(case, r))
                );
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
