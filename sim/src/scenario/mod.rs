//! Scenarios are data: TOML files of tests, each with devices, a timeline of actions and
//! expectations (see `scenarios/README.md` for the vocabulary).
//!
//! Loading checks everything — syntax, durations, device kinds and their options, action verbs,
//! state keys, time references — and reports the file, line and offending key, so a bad file
//! never starts running. [`run::run_test`] then runs one test on a fresh kernel.
pub mod duration;
pub mod report;
pub mod run;
pub mod suite;
pub mod sweep;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use firmware_core::time::{Duration, Instant};
use serde::Deserialize;
use toml::Spanned;

use crate::devices::{self, DeviceSpec};
use duration::parse_duration;

/// A scenario file that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the offending key.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// One runnable test: a `[[test]]`, or one of its `[[test.variant]]`s.
#[derive(Clone)]
pub struct TestCase {
    /// The file it came from.
    pub file: PathBuf,
    /// The file's text, for printing mismatches in scenario syntax.
    pub source: Rc<str>,
    /// The test's name.
    pub name: String,
    /// The variant's name, for variants.
    pub variant: Option<String>,
    /// Labels of expectations a variant must break (empty: any one will do).
    pub must_break: Vec<String>,
    /// Seed (the CLI's `--seed` overrides it).
    pub seed: u64,
    /// Number of `[[test.sweep.fault]]`s (0: the test is not swept); their steps, drawn from
    /// `seed`, are in `steps`.
    pub sweep_faults: usize,
    /// Virtual time to run.
    pub duration: Duration,
    /// Devices by name.
    pub devices: Vec<(String, Rc<dyn DeviceSpec>)>,
    /// Each device's kind (`pdu`, `pump`, `demo.cores`, …), by name.
    pub kinds: BTreeMap<String, String>,
    /// Actions in time order.
    pub steps: Vec<Step>,
    /// What must hold.
    pub expects: Vec<Expect>,
}

impl TestCase {
    /// `name` or `name/variant`.
    pub fn full_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}", self.name, v),
            None => self.name.clone(),
        }
    }
    /// Whether this is a variant that must fail.
    pub fn is_variant(&self) -> bool {
        self.variant.is_some()
    }
}

/// A timeline action.
#[derive(Debug, Clone)]
pub struct Step {
    /// Line of its `[[test.step]]` table.
    pub line: usize,
    /// When it happens.
    pub at: Instant,
    /// Its label, if any.
    pub label: Option<String>,
    /// Target device.
    pub device: String,
    /// The action verb (`do = "…"`).
    pub verb: String,
    /// The action's own keys.
    pub params: toml::Table,
}

/// Where an expectation looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// From (inclusive).
    pub from: Instant,
    /// To (inclusive).
    pub to: Instant,
}

/// One expectation.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Line of its `[[test.expect]]` table.
    pub line: usize,
    /// Its label (or a generated one).
    pub label: String,
    /// What it checks.
    pub kind: ExpectKind,
}

/// The kinds of expectation.
#[derive(Debug, Clone)]
pub enum ExpectKind {
    /// Events from `source` (a trailing `*` matches a prefix) containing `contains`, counted in
    /// `window` against `min..=max`.
    Event {
        /// Source pattern.
        source: String,
        /// Text that must appear in the event.
        contains: String,
        /// Where to count.
        window: Window,
        /// Least count (inclusive).
        min: u64,
        /// Most count (inclusive).
        max: u64,
    },
    /// A device state at an instant.
    State {
        /// Device name.
        device: String,
        /// State key.
        key: String,
        /// When to read it (`None` = at the end).
        at: Option<Instant>,
        /// Exact value.
        equals: Option<toml::Value>,
        /// Least numeric value.
        min: Option<f64>,
        /// Most numeric value.
        max: Option<f64>,
    },
    /// An aggregate of a metric's samples in a window.
    Metric {
        /// Metric name; `cpu.<core>.utilisation` is computed from core stats.
        name: String,
        /// `max`, `min`, `mean`, `count`, `sum` or `last`.
        stat: Stat,
        /// Where to look.
        window: Window,
        /// Least value.
        min: Option<f64>,
        /// Most value.
        max: Option<f64>,
    },
}

/// How a metric's samples are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// Largest sample.
    Max,
    /// Smallest sample.
    Min,
    /// Mean of the samples.
    Mean,
    /// Number of samples.
    Count,
    /// Sum of the samples.
    Sum,
    /// Last sample.
    Last,
}

impl Stat {
    fn parse(s: &str) -> Result<Stat, String> {
        Ok(match s {
            "max" => Stat::Max,
            "min" => Stat::Min,
            "mean" => Stat::Mean,
            "count" => Stat::Count,
            "sum" => Stat::Sum,
            "last" => Stat::Last,
            other => {
                return Err(format!(
                    "unknown stat `{other}` (max, min, mean, count, sum, last)"
                ));
            }
        })
    }
    /// Its name in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Max => "max",
            Stat::Min => "min",
            Stat::Mean => "mean",
            Stat::Count => "count",
            Stat::Sum => "sum",
            Stat::Last => "last",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "test", default)]
    tests: Vec<Spanned<RawTest>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    #[serde(default)]
    seed: u64,
    duration: String,
    #[serde(default)]
    devices: BTreeMap<String, Spanned<toml::Table>>,
    #[serde(rename = "step", default)]
    steps: Vec<Spanned<toml::Table>>,
    #[serde(rename = "expect", default)]
    expects: Vec<Spanned<toml::Table>>,
    #[serde(rename = "variant", default)]
    variants: Vec<Spanned<RawVariant>>,
    /// Randomized faults (`[test.sweep]`, see [`sweep`]): drawn from the seed at load time.
    sweep: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    seed: Option<u64>,
    duration: Option<String>,
    /// Deep-merged into the test's device tables.
    #[serde(default)]
    devices: toml::Table,
    /// Labels of the test's steps to leave out.
    #[serde(default)]
    drop_steps: Vec<String>,
    #[serde(rename = "step", default)]
    steps: Vec<Spanned<toml::Table>>,
    /// Labels of expectations that must fail (default: at least one must).
    #[serde(default)]
    breaks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    label: Option<String>,
    event: Option<String>,
    contains: Option<String>,
    count: Option<u64>,
    min_count: Option<u64>,
    max_count: Option<u64>,
    absent: Option<bool>,
    state: Option<String>,
    equals: Option<toml::Value>,
    metric: Option<String>,
    stat: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    at: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<String>,
    within: Option<String>,
}

/// Every `*.toml` under `path` (or `path` itself), sorted, skipping files named `README`.
pub fn collect_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                out.extend(collect_files(&p)?);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(out)
}

/// Load and check one scenario file.
pub fn load_file(path: &Path) -> Result<Vec<TestCase>, LoadError> {
    load_file_seeded(path, None)
}

/// [`load_file`] for a run with `seed` (`--seed`) instead of each test's own: a test with a
/// `[test.sweep]` draws its fault schedule from the seed it will run with, so the seed alone
/// replays a sweep's run.
pub fn load_file_seeded(path: &Path, seed: Option<u64>) -> Result<Vec<TestCase>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError {
        file: path.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    load_str_seeded(path, &text, seed)
}

/// Load and check scenario text (`path` is used in messages only).
pub fn load_str(path: &Path, text: &str) -> Result<Vec<TestCase>, LoadError> {
    load_str_seeded(path, text, None)
}

/// [`load_str`] for a run with `seed` (see [`load_file_seeded`]).
pub fn load_str_seeded(
    path: &Path,
    text: &str,
    seed: Option<u64>,
) -> Result<Vec<TestCase>, LoadError> {
    let source: Rc<str> = Rc::from(text);
    let err_at = |span: Option<std::ops::Range<usize>>, message: String| LoadError {
        file: path.to_owned(),
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let raw: RawFile =
        toml::from_str(text).map_err(|e| err_at(e.span(), e.message().to_owned()))?;
    if raw.tests.is_empty() {
        return Err(err_at(None, "no [[test]] in file".to_owned()));
    }
    let mut cases = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for t in raw.tests {
        let span = t.span();
        let t = t.into_inner();
        if !names.insert(t.name.clone()) {
            return Err(err_at(
                Some(span),
                format!("duplicate test name `{}`", t.name),
            ));
        }
        let base = build_case(path, &source, &t, None, seed, &err_at)?;
        for v in &t.variants {
            let vspan = v.span();
            let v = v.get_ref();
            let case = build_case(path, &source, &t, Some(v), seed, &err_at).map_err(|mut e| {
                e.message = format!("variant `{}`: {}", v.name, e.message);
                e.line = e.line.or(Some(line_of(text, vspan.start)));
                e
            })?;
            for b in &v.breaks {
                if !case.expects.iter().any(|x| &x.label == b) {
                    return Err(err_at(
                        Some(vspan.clone()),
                        format!(
                            "variant `{}`: breaks = [\"{b}\"] names no expectation label",
                            v.name
                        ),
                    ));
                }
            }
            cases.push(case);
        }
        cases.insert(cases.len() - t.variants.len(), base);
    }
    Ok(cases)
}

type ErrAt<'a> = dyn Fn(Option<std::ops::Range<usize>>, String) -> LoadError + 'a;

fn build_case(
    path: &Path,
    source: &Rc<str>,
    t: &RawTest,
    variant: Option<&RawVariant>,
    seed_override: Option<u64>,
    err_at: &ErrAt<'_>,
) -> Result<TestCase, LoadError> {
    let seed = seed_override
        .or(variant.and_then(|v| v.seed))
        .unwrap_or(t.seed);
    let duration_text = variant
        .and_then(|v| v.duration.clone())
        .unwrap_or_else(|| t.duration.clone());
    let duration =
        parse_duration(&duration_text).map_err(|m| err_at(None, format!("duration: {m}")))?;

    // Devices, with the variant's overrides merged in.
    let mut devices: Vec<(String, Rc<dyn DeviceSpec>)> = Vec::new();
    let mut kinds = BTreeMap::new();
    for (name, table) in &t.devices {
        let mut table = table.get_ref().clone();
        if let Some(v) = variant
            && let Some(over) = v.devices.get(name)
        {
            let Some(over) = over.as_table() else {
                return Err(err_at(None, format!("devices.{name}: expected a table")));
            };
            deep_merge(&mut table, over);
        }
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            _ => {
                return Err(err_at(
                    Some(t.devices[name].span()),
                    format!(
                        "device `{name}`: missing `kind` (known: {})",
                        devices::KINDS.join(", ")
                    ),
                ));
            }
        };
        let spec = devices::parse_spec(&kind, &table).map_err(|m| {
            err_at(
                Some(t.devices[name].span()),
                format!("device `{name}` ({kind}): {m}"),
            )
        })?;
        devices.push((name.clone(), Rc::from(spec)));
        kinds.insert(name.clone(), kind);
    }
    if let Some(v) = variant {
        for key in v.devices.keys() {
            if !t.devices.contains_key(key) {
                return Err(err_at(
                    None,
                    format!("devices.{key}: no such device in the test"),
                ));
            }
        }
    }

    // Steps: the test's plus the variant's. Dropped steps are left out of the run, but their
    // labels still mark instants, so the expectations read the same in every variant.
    let mut raw_steps: Vec<(std::ops::Range<usize>, toml::Table)> = t
        .steps
        .iter()
        .map(|s| (s.span(), s.get_ref().clone()))
        .collect();
    let dropped: &[String] = variant.map_or(&[], |v| v.drop_steps.as_slice());
    for d in dropped {
        if !t
            .steps
            .iter()
            .any(|s| s.get_ref().get("label").and_then(|x| x.as_str()) == Some(d))
        {
            return Err(err_at(None, format!("drop_steps: no step labelled `{d}`")));
        }
    }
    if let Some(v) = variant {
        raw_steps.extend(v.steps.iter().map(|s| (s.span(), s.get_ref().clone())));
    }
    let mut sweep_faults = 0;
    if let Some(table) = &t.sweep {
        let span = table.span();
        let spec = sweep::SweepSpec::parse(table.get_ref(), duration)
            .map_err(|m| err_at(Some(span.clone()), format!("sweep: {m}")))?;
        sweep_faults = spec.faults.len();
        let drawn = spec
            .draw(&t.name, seed)
            .map_err(|m| err_at(Some(span.clone()), format!("sweep: {m}")))?;
        raw_steps.extend(drawn.into_iter().map(|s| (span.clone(), s)));
    }
    let mut steps = build_steps(source, &raw_steps, &devices, duration, err_at)?;

    let mut expects = Vec::new();
    for (i, e) in t.expects.iter().enumerate() {
        expects.push(build_expect(
            source, i, e, &devices, &steps, duration, err_at,
        )?);
    }
    steps.retain(|s| !s.label.as_ref().is_some_and(|l| dropped.contains(l)));
    if expects.is_empty() {
        return Err(err_at(
            None,
            format!("test `{}` has no [[test.expect]]", t.name),
        ));
    }
    Ok(TestCase {
        file: path.to_owned(),
        source: source.clone(),
        name: t.name.clone(),
        variant: variant.map(|v| v.name.clone()),
        must_break: variant.map(|v| v.breaks.clone()).unwrap_or_default(),
        seed,
        sweep_faults,
        duration,
        devices,
        kinds,
        steps,
        expects,
    })
}

fn build_steps(
    text: &str,
    raw: &[(std::ops::Range<usize>, toml::Table)],
    devices: &[(String, Rc<dyn DeviceSpec>)],
    duration: Duration,
    err_at: &ErrAt<'_>,
) -> Result<Vec<Step>, LoadError> {
    // Resolve `after = "label"` chains in file order; a label must be defined before use.
    let mut labels: BTreeMap<String, Instant> = BTreeMap::new();
    let mut steps = Vec::new();
    for (span, table) in raw {
        let span = span.clone();
        let mut table = table.clone();
        let e = |m: String| err_at(Some(span.clone()), m);
        let take_str = |table: &mut toml::Table, key: &str| -> Result<Option<String>, LoadError> {
            match table.remove(key) {
                None => Ok(None),
                Some(toml::Value::String(v)) => Ok(Some(v)),
                Some(_) => Err(err_at(
                    Some(span.clone()),
                    format!("`{key}` must be a string"),
                )),
            }
        };
        let at = take_str(&mut table, "at")?;
        let after = take_str(&mut table, "after")?;
        let delay = take_str(&mut table, "delay")?;
        let label = take_str(&mut table, "label")?;
        let verb = take_str(&mut table, "do")?.ok_or_else(|| e("step without `do`".to_owned()))?;
        let device = take_str(&mut table, "device")?;
        let when = match (at, after) {
            (Some(at), None) => {
                Instant::ZERO + parse_duration(&at).map_err(|m| e(format!("at: {m}")))?
            }
            (None, Some(after)) => *labels
                .get(&after)
                .ok_or_else(|| e(format!("after: no earlier step labelled `{after}`")))?,
            (Some(_), Some(_)) => return Err(e("use either `at` or `after`, not both".to_owned())),
            (None, None) => return Err(e("step needs `at` or `after`".to_owned())),
        };
        let when = match delay {
            Some(d) => when + parse_duration(&d).map_err(|m| e(format!("delay: {m}")))?,
            None => when,
        };
        if when > Instant::ZERO + duration {
            return Err(e(format!(
                "step at {} is after the end of the test ({duration})",
                Duration::from_micros(when.as_micros())
            )));
        }
        let device = resolve_device(device, devices).map_err(&e)?;
        let spec = &devices
            .iter()
            .find(|(n, _)| *n == device)
            .map(|(_, s)| s.clone());
        if let Some(spec) = spec {
            spec.check_action(&verb, &table)
                .map_err(|m| e(format!("do = \"{verb}\": {m}")))?;
        }
        if let Some(l) = &label
            && labels.insert(l.clone(), when).is_some()
        {
            return Err(e(format!("duplicate step label `{l}`")));
        }
        steps.push(Step {
            line: line_of(text, span.start),
            at: when,
            label,
            device,
            verb,
            params: table,
        });
    }
    steps.sort_by_key(|s| s.at);
    Ok(steps)
}

fn resolve_device(
    device: Option<String>,
    devices: &[(String, Rc<dyn DeviceSpec>)],
) -> Result<String, String> {
    let names: Vec<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
    match device {
        Some(d) if names.contains(&d.as_str()) => Ok(d),
        Some(d) => Err(format!(
            "device `{d}` is not in this test (devices: {})",
            names.join(", ")
        )),
        None if names.len() == 1 => Ok(names[0].to_owned()),
        None => Err(format!(
            "`device` is needed: the test has {} devices",
            names.len()
        )),
    }
}

fn build_expect(
    text: &str,
    index: usize,
    raw: &Spanned<toml::Table>,
    devices: &[(String, Rc<dyn DeviceSpec>)],
    steps: &[Step],
    duration: Duration,
    err_at: &ErrAt<'_>,
) -> Result<Expect, LoadError> {
    let span = raw.span();
    let e = |m: String| err_at(Some(span.clone()), m);
    let r: RawExpect = devices::from_table(raw.get_ref()).map_err(&e)?;
    let end = Instant::ZERO + duration;
    let time = |text: &str| resolve_time(text, steps, end).map_err(&e);
    let window = |r: &RawExpect| -> Result<Window, LoadError> {
        let mut from = Instant::ZERO;
        let mut to = end;
        if let Some(a) = &r.after {
            from = time(a)?;
        }
        if let Some(f) = &r.from {
            from = time(f)?;
        }
        if let Some(w) = &r.within {
            to = from + parse_duration(w).map_err(|m| e(format!("within: {m}")))?;
        }
        if let Some(t) = &r.to {
            to = time(t)?;
        }
        if to < from {
            return Err(e("window ends before it starts".to_owned()));
        }
        Ok(Window { from, to })
    };
    let chosen = [r.event.is_some(), r.state.is_some(), r.metric.is_some()];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(e(
            "an expectation needs exactly one of `event`, `state`, `metric`".to_owned(),
        ));
    }
    let kind = if let Some(source) = &r.event {
        let (min, max) = match (r.absent, r.count, r.min_count, r.max_count) {
            (Some(true), None, None, None) => (0, 0),
            (None | Some(false), Some(c), None, None) => (c, c),
            (None | Some(false), None, min, max) => (min.unwrap_or(1), max.unwrap_or(u64::MAX)),
            _ => {
                return Err(e(
                    "use one of `absent`, `count`, or `min_count`/`max_count`".to_owned(),
                ));
            }
        };
        ExpectKind::Event {
            source: source.clone(),
            contains: r.contains.clone().unwrap_or_default(),
            window: window(&r)?,
            min,
            max,
        }
    } else if let Some(state) = &r.state {
        let (device, key) = state
            .split_once('.')
            .ok_or_else(|| e(format!("state `{state}`: expected `<device>.<key>`")))?;
        if device == "kernel" {
            check_kernel_state(key).map_err(&e)?;
        } else {
            let spec = devices
                .iter()
                .find(|(n, _)| n == device)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    e(format!(
                        "state `{state}`: no device `{device}` in this test"
                    ))
                })?;
            spec.check_state(key)
                .map_err(|m| e(format!("state `{state}`: {m}")))?;
        }
        if r.equals.is_none() && r.min.is_none() && r.max.is_none() {
            return Err(e(
                "a state expectation needs `equals`, `min` or `max`".to_owned()
            ));
        }
        let at = match r.at.as_deref() {
            None | Some("end") => None,
            Some(t) => Some(time(t)?),
        };
        ExpectKind::State {
            device: device.to_owned(),
            key: key.to_owned(),
            at,
            equals: r.equals.clone(),
            min: r.min,
            max: r.max,
        }
    } else {
        let name = r.metric.clone().unwrap_or_default();
        if r.min.is_none() && r.max.is_none() {
            return Err(e("a metric expectation needs `min` or `max`".to_owned()));
        }
        let stat = match &r.stat {
            Some(s) => Stat::parse(s).map_err(&e)?,
            None if r.max.is_some() => Stat::Max,
            None => Stat::Min,
        };
        ExpectKind::Metric {
            name,
            stat,
            window: window(&r)?,
            min: r.min,
            max: r.max,
        }
    };
    Ok(Expect {
        line: line_of(text, span.start),
        label: r.label.unwrap_or_else(|| format!("expect#{}", index + 1)),
        kind,
    })
}

fn check_kernel_state(key: &str) -> Result<(), String> {
    let ok = ["polls", "run_us", "wait_us", "max_wait_us"]
        .iter()
        .any(|f| key.starts_with("task.") && key.ends_with(&format!(".{f}")))
        || (key.starts_with("core.") && key.ends_with(".busy_us"));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "state `kernel.{key}`: expected kernel.task.<task>.(polls|run_us|wait_us|max_wait_us) or kernel.core.<core>.busy_us"
        ))
    }
}

/// `"1.5s"`, `"end"`, `"<step label>"` or `"<step label>+5ms"`.
fn resolve_time(text: &str, steps: &[Step], end: Instant) -> Result<Instant, String> {
    if text == "end" {
        return Ok(end);
    }
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_duration(text).map(|d| Instant::ZERO + d);
    }
    let (label, offset) = match text.split_once('+') {
        Some((l, o)) => (l.trim(), parse_duration(o)?),
        None => (text.trim(), Duration::ZERO),
    };
    steps
        .iter()
        .find(|s| s.label.as_deref() == Some(label))
        .map(|s| s.at + offset)
        .ok_or_else(|| format!("`{text}`: no step labelled `{label}` (or use a time like `1.5s`)"))
}

fn deep_merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}
