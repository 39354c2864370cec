//! Running one test: build its devices on a fresh kernel, play the timeline, read states at
//! their instants, and judge every expectation as the run goes.
//!
//! The kernel keeps no history ([`History::NONE`]): each expectation is a probe that observes
//! the run and keeps only what its verdict needs (a count and the first hit, a running max or
//! sum, the busy time of a core in a window), so a test's memory does not grow with its
//! virtual duration. Only a failed test needs the trace around the instants its verdicts point
//! at; the run is deterministic, so it is played once more with those instants known and the
//! events around them captured.
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use firmware_core::time::{Duration, Instant};

use super::{Expect, ExpectKind, Stat, TestCase, Window};
use crate::devices::{Device, StateValue};
use crate::kernel::trace::fmt_time;
use crate::kernel::{BUCKET, CoreId, Event, History, Kernel, Observer, Sched};

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
    /// The events around the instants the verdicts point at (failed tests only), in trace
    /// order, for printing mismatches.
    pub events: Vec<Event>,
}
/// What else watches a run besides its expectations: a trace file, a report's collector.
#[derive(Default)]
pub struct Extras<'a> {
    /// Observers registered on the kernel before the devices are built.
    pub observers: Vec<Rc<RefCell<dyn Observer>>>,
    /// Reads device states at instants of its choosing (a report's meter readings).
    pub sampler: Option<&'a mut dyn StateSampler>,
}

/// Reads device states during a run, at instants it names before the run starts. Reading a
/// state never changes the run: the trace hash is the same with or without a sampler.
pub trait StateSampler {
    /// The instants to read at, in any order.
    fn instants(&self) -> Vec<Instant>;
    /// Read what it wants at `at`; `read(device, key)` is the state a scenario would see.
    fn sample(&mut self, at: Instant, read: &dyn Fn(&str, &str) -> Option<StateValue>);
}

/// Run `case` with `seed` (the case's own seed unless overridden).
pub fn run_test(case: &TestCase, seed: Option<u64>) -> TestResult {
    run_test_with(case, seed, Extras::default())
}

/// [`run_test`], with every event of the run in [`TestResult::events`], for short tests and
/// tools that read the whole trace (memory grows with the run's length).
pub fn run_test_keeping_events(case: &TestCase, seed: Option<u64>) -> TestResult {
    let all = Rc::new(RefCell::new(Everything::default()));
    let mut r = run_test_with(
        case,
        seed,
        Extras {
            observers: vec![all.clone()],
            sampler: None,
        },
    );
    r.events = std::mem::take(&mut all.borrow_mut().0);
    r
}

/// Keeps every event.
#[derive(Default)]
struct Everything(Vec<Event>);

impl Observer for Everything {
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        self.0.push(Event {
            at,
            source: source.to_owned(),
            text: text.to_owned(),
        });
    }
}

/// [`run_test`], with `extras` watching.
pub fn run_test_with(case: &TestCase, seed: Option<u64>, extras: Extras<'_>) -> TestResult {
    let seed = seed.unwrap_or(case.seed);
    let wall = std::time::Instant::now();
    let probes = Rc::new(RefCell::new(Probes::new(case)));
    let mut observers = extras.observers;
    observers.push(probes.clone());
    let run = play(case, seed, observers, extras.sampler);
    let verdicts: Vec<Verdict> = {
        let probes = probes.borrow();
        case.expects
            .iter()
            .enumerate()
            .map(|(i, e)| probes.judge(i, e, run.states.get(&i).cloned().flatten()))
            .collect()
    };
    let mut errors = run.errors;
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
    let mut events = Vec::new();
    if !passed {
        // Run it again, now that the instants worth showing are known.
        let foci: Vec<Instant> = verdicts.iter().filter_map(|v| v.focus).collect();
        let context = Rc::new(RefCell::new(Context::new(foci)));
        let again = play(case, seed, vec![context.clone()], None);
        if again.hash != run.hash {
            errors.push(format!(
                "the rerun for the failure's context differed (trace {:016x}, then {:016x}): the run is not deterministic",
                run.hash, again.hash
            ));
        }
        events = context.borrow_mut().take();
    }
    TestResult {
        name: case.full_name(),
        seed,
        passed,
        virtual_ms: run.end.as_millis(),
        wall_ms: wall.elapsed().as_millis() as u64,
        trace_hash: run.hash,
        verdicts,
        errors,
        events,
    }
}

/// What one pass over the timeline left behind.
struct Played {
    states: BTreeMap<usize, Option<StateValue>>,
    errors: Vec<String>,
    hash: u64,
    end: Instant,
}

/// Build the devices on a fresh kernel watched by `observers`, play the steps and read the
/// states.
fn play(
    case: &TestCase,
    seed: u64,
    observers: Vec<Rc<RefCell<dyn Observer>>>,
    mut sampler: Option<&mut dyn StateSampler>,
) -> Played {
    let mut kernel = Kernel::with_history(seed, History::NONE);
    for o in observers {
        kernel.observe(o);
    }
    let mut devices: BTreeMap<String, Box<dyn Device>> = BTreeMap::new();
    for (name, spec) in &case.devices {
        devices.insert(name.clone(), spec.build(name, &mut kernel));
    }
    let end = Instant::ZERO + case.duration;

    // Instants where the runner must act: steps, state reads and the sampler's reads.
    let mut instants: Vec<Instant> = case.steps.iter().map(|s| s.at).collect();
    for e in &case.expects {
        if let ExpectKind::State { at: Some(t), .. } = e.kind {
            instants.push(t);
        }
    }
    let sample_at: BTreeSet<Instant> = sampler
        .as_ref()
        .map(|s| s.instants().into_iter().filter(|t| *t <= end).collect())
        .unwrap_or_default();
    instants.extend(sample_at.iter().copied());
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
        if sample_at.contains(&t)
            && let Some(s) = sampler.as_deref_mut()
        {
            s.sample(t, &|d, k| read_state(&kernel, &devices, d, k));
        }
    }
    kernel.run_until(end);
    read_states(&kernel, &devices, None, &mut states);
    errors.extend(kernel.panics().iter().cloned());
    Played {
        states,
        errors,
        hash: kernel.with_trace(|t| t.hash()),
        end: kernel.now(),
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

fn in_window(t: Instant, w: &Window) -> bool {
    t >= w.from && t <= w.to
}

fn source_matches(pattern: &str, source: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => source.starts_with(prefix),
        None => pattern == source,
    }
}

/// What one expectation keeps while the run goes.
enum Probe {
    /// A state is read by the runner, not observed.
    State,
    /// Matching events: how many, and the first.
    Event { hits: u64, first: Option<Instant> },
    /// A metric's samples in the window, reduced as they come.
    Metric {
        count: u64,
        sum: f64,
        best: Option<(Instant, f64)>,
        last: Option<(Instant, f64)>,
    },
    /// The busy time of a core over the bucket-aligned window `[from_us, to_us)`.
    Cpu {
        core: String,
        id: Option<CoreId>,
        from_us: u64,
        to_us: u64,
        busy_us: u64,
    },
}

/// The expectations of one test, observing its run.
struct Probes {
    expects: Vec<(Expect, Probe)>,
    /// Every metric name seen (a missing metric's error lists them).
    metrics: BTreeSet<String>,
    cpu: bool,
}

impl Probes {
    fn new(case: &TestCase) -> Self {
        let b = BUCKET.as_micros();
        let expects: Vec<(Expect, Probe)> = case
            .expects
            .iter()
            .map(|e| {
                let probe = match &e.kind {
                    ExpectKind::State { .. } => Probe::State,
                    ExpectKind::Event { .. } => Probe::Event {
                        hits: 0,
                        first: None,
                    },
                    ExpectKind::Metric { name, window, .. } => match cpu_core(name) {
                        // Utilisation at bucket resolution, as `CoreStats::utilisation`.
                        Some(core) => Probe::Cpu {
                            core: core.to_owned(),
                            id: None,
                            from_us: window.from.as_micros() / b * b,
                            to_us: window.to.as_micros().div_ceil(b) * b,
                            busy_us: 0,
                        },
                        None => Probe::Metric {
                            count: 0,
                            sum: 0.0,
                            best: None,
                            last: None,
                        },
                    },
                };
                (e.clone(), probe)
            })
            .collect();
        let cpu = expects.iter().any(|(_, p)| matches!(p, Probe::Cpu { .. }));
        Probes {
            expects,
            metrics: BTreeSet::new(),
            cpu,
        }
    }

    fn judge(&self, i: usize, e: &Expect, state: Option<StateValue>) -> Verdict {
        let verdict = |passed: bool, observed: String, focus: Option<Instant>| Verdict {
            label: e.label.clone(),
            passed,
            observed,
            focus,
        };
        let Some((_, probe)) = self.expects.get(i) else {
            return verdict(false, "not observed".to_owned(), None);
        };
        match (&e.kind, probe) {
            (
                ExpectKind::Event {
                    window, min, max, ..
                },
                Probe::Event { hits, first },
            ) => {
                let observed = match first {
                    Some(at) => format!("count = {hits}, first at {}", fmt_time(*at)),
                    None => "count = 0".to_owned(),
                };
                verdict(
                    hits >= min && hits <= max,
                    observed,
                    first.or(Some(window.from)),
                )
            }
            (
                ExpectKind::State {
                    equals,
                    min,
                    max,
                    at,
                    ..
                },
                _,
            ) => match state {
                None => verdict(false, "no value".to_owned(), *at),
                Some(v) => {
                    let mut ok = equals.as_ref().is_none_or(|x| v.matches(x));
                    let n = v.as_f64();
                    ok &= min.is_none_or(|m| n.is_some_and(|n| n >= m));
                    ok &= max.is_none_or(|m| n.is_some_and(|n| n <= m));
                    verdict(ok, format!("value = {v}"), *at)
                }
            },
            (
                ExpectKind::Metric {
                    name,
                    stat,
                    window,
                    min,
                    max,
                },
                probe,
            ) => match self.metric_value(name, *stat, probe) {
                Err(m) => verdict(false, m, Some(window.from)),
                Ok((v, focus)) => {
                    let ok = min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m);
                    verdict(ok, format!("{} = {v}", stat.name()), focus)
                }
            },
            _ => verdict(false, "not observed".to_owned(), None),
        }
    }

    fn metric_value(
        &self,
        name: &str,
        stat: Stat,
        probe: &Probe,
    ) -> Result<(f64, Option<Instant>), String> {
        match probe {
            Probe::Cpu {
                core,
                id,
                from_us,
                to_us,
                busy_us,
            } => {
                if id.is_none() {
                    return Err(format!("no core `{core}`"));
                }
                if to_us <= from_us {
                    return Ok((0.0, None));
                }
                Ok((*busy_us as f64 / (to_us - from_us) as f64, None))
            }
            Probe::Metric {
                count,
                sum,
                best,
                last,
            } => {
                if !self.metrics.contains(name) {
                    let known: Vec<&str> = self.metrics.iter().map(String::as_str).collect();
                    return Err(format!(
                        "no samples of `{name}` (metrics: {})",
                        known.join(", ")
                    ));
                }
                if *count == 0 && stat != Stat::Count && stat != Stat::Sum {
                    return Err(format!("no samples of `{name}` in the window"));
                }
                let at = |s: &Option<(Instant, f64)>| {
                    s.map(|(at, v)| (v, Some(at))).unwrap_or((0.0, None))
                };
                Ok(match stat {
                    Stat::Max | Stat::Min => at(best),
                    Stat::Mean => (sum / *count as f64, None),
                    Stat::Count => (*count as f64, None),
                    Stat::Sum => (*sum, None),
                    Stat::Last => at(last),
                })
            }
            Probe::State | Probe::Event { .. } => Err("not observed".to_owned()),
        }
    }
}

impl Observer for Probes {
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        for (e, p) in &mut self.expects {
            if let (
                ExpectKind::Event {
                    source: pattern,
                    contains,
                    window,
                    ..
                },
                Probe::Event { hits, first },
            ) = (&e.kind, p)
                && in_window(at, window)
                && source_matches(pattern, source)
                && text.contains(contains.as_str())
            {
                *hits += 1;
                first.get_or_insert(at);
            }
        }
    }

    fn sample(&mut self, at: Instant, name: &str, value: f64) {
        if !self.metrics.contains(name) {
            self.metrics.insert(name.to_owned());
        }
        for (e, p) in &mut self.expects {
            if let (
                ExpectKind::Metric {
                    name: wanted,
                    stat,
                    window,
                    ..
                },
                Probe::Metric {
                    count,
                    sum,
                    best,
                    last,
                },
            ) = (&e.kind, p)
                && wanted == name
                && in_window(at, window)
            {
                *count += 1;
                *sum += value;
                *last = Some((at, value));
                // Ties keep the earliest sample.
                let better = match (stat, *best) {
                    (_, None) => true,
                    (Stat::Min, Some((_, b))) => value < b,
                    (_, Some((_, b))) => value > b,
                };
                if better {
                    *best = Some((at, value));
                }
            }
        }
    }

    fn wants_sched(&self) -> bool {
        self.cpu
    }

    fn sched(&mut self, at: Instant, s: &Sched<'_>) {
        match *s {
            Sched::Core { core, name } => {
                for (_, p) in &mut self.expects {
                    if let Probe::Cpu { core: c, id, .. } = p
                        && c == name
                    {
                        *id = Some(core);
                    }
                }
            }
            Sched::Poll {
                core: Some(core),
                cost,
                ..
            } if cost > Duration::ZERO => {
                // Counted from the poll's start, as the kernel's buckets count it.
                let start = at.as_micros();
                let end = start + cost.as_micros();
                for (_, p) in &mut self.expects {
                    if let Probe::Cpu {
                        id: Some(id),
                        from_us,
                        to_us,
                        busy_us,
                        ..
                    } = p
                        && *id == core
                    {
                        let lo = start.max(*from_us);
                        let hi = end.min(*to_us);
                        *busy_us += hi.saturating_sub(lo);
                    }
                }
            }
            _ => {}
        }
    }
}

fn cpu_core(metric: &str) -> Option<&str> {
    metric
        .strip_prefix("cpu.")
        .and_then(|n| n.strip_suffix(".utilisation"))
}

/// Events shown on each side of a failure's focus.
pub const CONTEXT_EVENTS: usize = 6;

type Focus = (Instant, VecDeque<(u64, Event)>, Vec<(u64, Event)>);

/// Captures the events around known instants: for each, the [`CONTEXT_EVENTS`] before it and
/// the [`CONTEXT_EVENTS`] from it on.
struct Context {
    /// Per focus: the events before it (the last few) and from it on (the first few), each
    /// with its sequence number in the trace.
    foci: Vec<Focus>,
    seen: u64,
}

impl Context {
    fn new(mut foci: Vec<Instant>) -> Self {
        foci.sort();
        foci.dedup();
        Context {
            foci: foci
                .into_iter()
                .map(|f| (f, VecDeque::new(), Vec::new()))
                .collect(),
            seen: 0,
        }
    }

    /// The captured events, each once, in trace order.
    fn take(&mut self) -> Vec<Event> {
        let mut all: BTreeMap<u64, Event> = BTreeMap::new();
        for (_, before, after) in &mut self.foci {
            all.extend(before.drain(..));
            all.extend(after.drain(..));
        }
        all.into_values().collect()
    }
}

impl Observer for Context {
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        let n = self.seen;
        self.seen += 1;
        let ev = || Event {
            at,
            source: source.to_owned(),
            text: text.to_owned(),
        };
        for (focus, before, after) in &mut self.foci {
            if at < *focus {
                if before.len() == CONTEXT_EVENTS {
                    before.pop_front();
                }
                before.push_back((n, ev()));
            } else if after.len() < CONTEXT_EVENTS {
                after.push((n, ev()));
            }
        }
    }
}

/// Run every case, collecting results (used by the CLI and the cargo test harness).
pub fn run_all(cases: &[TestCase], seed: Option<u64>) -> Vec<TestResult> {
    cases.iter().map(|c| run_test(c, seed)).collect()
}
