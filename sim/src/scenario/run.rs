//! Running one test: build its devices on a fresh kernel, play the timeline, read states at
//! their instants, then judge every expectation against the trace.
use std::collections::BTreeMap;

use firmware_core::time::{Duration, Instant};

use super::{Expect, ExpectKind, Stat, TestCase, Window};
use crate::devices::{Device, StateValue};
use crate::kernel::trace::fmt_time;
use crate::kernel::{Event, Kernel};

/// What one expectation found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The expectation's label.
    pub label: String,
    /// Whether it held.
    pub passed: bool,
    /// What was observed, in words (`count = 3`, `max = 412`, `value = true`).
    pub observed: String,
    /// The instant the evidence points at, for showing the trace around it.
    pub focus: Option<Instant>,
}

/// The outcome of one test.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// `name` or `name/variant`.
    pub name: String,
    /// Seed used.
    pub seed: u64,
    /// Whether the test passed (for a variant: whether it failed as required).
    pub passed: bool,
    /// Virtual time covered, ms.
    pub virtual_ms: u64,
    /// Wall time taken, ms (reports only; never judged).
    pub wall_ms: u64,
    /// FNV-1a hash of the event trace.
    pub trace_hash: u64,
    /// One verdict per expectation.
    pub verdicts: Vec<Verdict>,
    /// Errors raised while running (a failed action, a panicking task).
    pub errors: Vec<String>,
    /// The trace, for printing mismatches.
    pub events: Vec<Event>,
}

/// Run `case` with `seed` (the case's own seed unless overridden).
pub fn run_test(case: &TestCase, seed: Option<u64>) -> TestResult {
    let seed = seed.unwrap_or(case.seed);
    let wall = std::time::Instant::now();
    let mut kernel = Kernel::new(seed);
    let mut devices: BTreeMap<String, Box<dyn Device>> = BTreeMap::new();
    for (name, spec) in &case.devices {
        devices.insert(name.clone(), spec.build(name, &mut kernel));
    }
    let end = Instant::ZERO + case.duration;

    // Instants where the runner must act: steps, and state reads.
    let mut instants: Vec<Instant> = case.steps.iter().map(|s| s.at).collect();
    for e in &case.expects {
        if let ExpectKind::State { at: Some(t), .. } = e.kind {
            instants.push(t);
        }
    }
    instants.sort();
    instants.dedup();

    let mut errors = Vec::new();
    let mut states: BTreeMap<usize, Option<StateValue>> = BTreeMap::new();
    let read_states = |kernel: &Kernel,
                       devices: &BTreeMap<String, Box<dyn Device>>,
                       t: Option<Instant>,
                       states: &mut BTreeMap<usize, Option<StateValue>>| {
        for (i, e) in case.expects.iter().enumerate() {
            if let ExpectKind::State {
                device, key, at, ..
            } = &e.kind
                && *at == t
            {
                states.insert(i, read_state(kernel, devices, device, key));
            }
        }
    };
    for t in instants {
        kernel.run_until(t);
        for s in case.steps.iter().filter(|s| s.at == t) {
            let what = match &s.label {
                Some(l) => format!("{} ({l})", s.verb),
                None => s.verb.clone(),
            };
            kernel.record("scenario", format!("step {what} -> {}", s.device));
            if let Some(d) = devices.get_mut(&s.device)
                && let Err(m) = d.act(&s.verb, &s.params)
            {
                errors.push(format!("line {}: do = \"{}\": {m}", s.line, s.verb));
            }
        }
        // Let what the steps started at this instant happen before reading states.
        kernel.run_until(t);
        read_states(&kernel, &devices, Some(t), &mut states);
    }
    kernel.run_until(end);
    read_states(&kernel, &devices, None, &mut states);
    errors.extend(kernel.panics().iter().cloned());

    let verdicts: Vec<Verdict> = case
        .expects
        .iter()
        .enumerate()
        .map(|(i, e)| judge(e, &kernel, states.get(&i).cloned().flatten()))
        .collect();
    let held = errors.is_empty() && verdicts.iter().all(|v| v.passed);
    let passed = if case.is_variant() {
        // A variant passes when the behaviour it breaks is caught.
        if case.must_break.is_empty() {
            !held
        } else {
            case.must_break
                .iter()
                .all(|l| verdicts.iter().any(|v| &v.label == l && !v.passed))
        }
    } else {
        held
    };
    TestResult {
        name: case.full_name(),
        seed,
        passed,
        virtual_ms: kernel.now().as_millis(),
        wall_ms: wall.elapsed().as_millis() as u64,
        trace_hash: kernel.with_trace(|t| t.hash()),
        verdicts,
        errors,
        events: kernel.with_trace(|t| t.events().to_vec()),
    }
}

fn read_state(
    kernel: &Kernel,
    devices: &BTreeMap<String, Box<dyn Device>>,
    device: &str,
    key: &str,
) -> Option<StateValue> {
    if device == "kernel" {
        return kernel_state(kernel, key);
    }
    devices.get(device)?.state(key)
}

fn kernel_state(kernel: &Kernel, key: &str) -> Option<StateValue> {
    let us = |d: Duration| StateValue::Int(d.as_micros() as i64);
    if let Some(rest) = key.strip_prefix("task.") {
        let (name, field) = rest.rsplit_once('.')?;
        let s = kernel.task_stats().into_iter().find(|s| s.name == name)?;
        return match field {
            "polls" => Some(StateValue::Int(s.polls as i64)),
            "run_us" => Some(us(s.run)),
            "wait_us" => Some(us(s.wait)),
            "max_wait_us" => Some(us(s.max_wait)),
            _ => None,
        };
    }
    let rest = key.strip_prefix("core.")?;
    let name = rest.strip_suffix(".busy_us")?;
    let c = kernel.core_stats().into_iter().find(|c| c.name == name)?;
    Some(us(c.busy))
}

fn judge(e: &Expect, kernel: &Kernel, state: Option<StateValue>) -> Verdict {
    let verdict = |passed: bool, observed: String, focus: Option<Instant>| Verdict {
        label: e.label.clone(),
        passed,
        observed,
        focus,
    };
    match &e.kind {
        ExpectKind::Event {
            source,
            contains,
            window,
            min,
            max,
        } => kernel.with_trace(|t| {
            let hits: Vec<&Event> = t
                .events()
                .iter()
                .filter(|ev| in_window(ev.at, window))
                .filter(|ev| source_matches(source, &ev.source))
                .filter(|ev| ev.text.contains(contains.as_str()))
                .collect();
            let n = hits.len() as u64;
            let first = hits.first().map(|ev| ev.at);
            let observed = match first {
                Some(at) => format!("count = {n}, first at {}", fmt_time(at)),
                None => "count = 0".to_owned(),
            };
            verdict(
                n >= *min && n <= *max,
                observed,
                first.or(Some(window.from)),
            )
        }),
        ExpectKind::State {
            equals,
            min,
            max,
            at,
            ..
        } => match state {
            None => verdict(false, "no value".to_owned(), *at),
            Some(v) => {
                let mut ok = equals.as_ref().is_none_or(|x| v.matches(x));
                let n = v.as_f64();
                ok &= min.is_none_or(|m| n.is_some_and(|n| n >= m));
                ok &= max.is_none_or(|m| n.is_some_and(|n| n <= m));
                verdict(ok, format!("value = {v}"), *at)
            }
        },
        ExpectKind::Metric {
            name,
            stat,
            window,
            min,
            max,
        } => {
            let value = metric_value(kernel, name, *stat, window);
            match value {
                Err(m) => verdict(false, m, Some(window.from)),
                Ok((v, focus)) => {
                    let ok = min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m);
                    verdict(ok, format!("{} = {v}", stat.name()), focus)
                }
            }
        }
    }
}

fn in_window(t: Instant, w: &Window) -> bool {
    t >= w.from && t <= w.to
}

fn source_matches(pattern: &str, source: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => source.starts_with(prefix),
        None => pattern == source,
    }
}

fn metric_value(
    kernel: &Kernel,
    name: &str,
    stat: Stat,
    window: &Window,
) -> Result<(f64, Option<Instant>), String> {
    if let Some(core) = name
        .strip_prefix("cpu.")
        .and_then(|n| n.strip_suffix(".utilisation"))
    {
        let c = kernel
            .core_stats()
            .into_iter()
            .find(|c| c.name == core)
            .ok_or_else(|| format!("no core `{core}`"))?;
        return Ok((c.utilisation(window.from, window.to), None));
    }
    kernel.with_trace(|t| {
        let series = t.series(name).ok_or_else(|| {
            let known: Vec<&str> = t.metric_names().collect();
            format!("no samples of `{name}` (metrics: {})", known.join(", "))
        })?;
        let inside: Vec<(Instant, f64)> = series
            .iter()
            .copied()
            .filter(|(at, _)| in_window(*at, window))
            .collect();
        if inside.is_empty() && stat != Stat::Count && stat != Stat::Sum {
            return Err(format!("no samples of `{name}` in the window"));
        }
        let pick = |better: fn(f64, f64) -> bool| {
            inside
                .iter()
                .copied()
                .fold(None, |acc: Option<(Instant, f64)>, s| match acc {
                    Some(a) if !better(s.1, a.1) => Some(a),
                    _ => Some(s),
                })
                .map(|(at, v)| (v, Some(at)))
                .unwrap_or((0.0, None))
        };
        Ok(match stat {
            Stat::Max => pick(|a, b| a > b),
            Stat::Min => pick(|a, b| a < b),
            Stat::Mean => (
                inside.iter().map(|s| s.1).sum::<f64>() / inside.len() as f64,
                None,
            ),
            Stat::Count => (inside.len() as f64, None),
            Stat::Sum => (inside.iter().map(|s| s.1).sum(), None),
            Stat::Last => inside
                .last()
                .map(|(at, v)| (*v, Some(*at)))
                .unwrap_or((0.0, None)),
        })
    })
}

/// Run every case, collecting results (used by the CLI and the cargo test harness).
pub fn run_all(cases: &[TestCase], seed: Option<u64>) -> Vec<TestResult> {
    cases.iter().map(|c| run_test(c, seed)).collect()
}
