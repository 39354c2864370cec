//! Seeded fault sweeps: a test reruns with randomized fault schedules that its `[test.sweep]`
//! declares, and `twin sweep` reports the failure rate with a confidence interval and the
//! command that replays each failure.
//!
//! The schedule is a pure function of the seed: [`SweepSpec::draw`] turns the declared faults
//! into ordinary steps from a ChaCha stream named after the test (`kernel::rng_for`), and the
//! loader (`load_file_seeded`) adds them to the test before anything runs. A run of seed `S`
//! is therefore `twin scenario FILE --test NAME --seed S`, with nothing else to remember, and a
//! copy of the test with `seed = S` is the regression scenario of a finding. The kernel's own
//! streams draw from the same seed, so one number fixes both the faults and the parts' noise.
//!
//! Sharding ([`Shard`]) interleaves seeds (`i % N == K-1`), so shards of one sweep take the same
//! share of slow and fast seeds and their JSON reports merge ([`merge`]) into exactly the
//! report of the unsharded sweep: the report holds no wall times.
//!
//! The interval is the Wilson score interval at 95 %: it stays inside 0..1, is not degenerate
//! at 0 failures (0 of 1,000 gives 0 – 0.38 %), and is close to nominal coverage at small
//! failure rates, where the normal approximation fails and Clopper–Pearson is needlessly wide.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use firmware_core::time::Duration;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::duration::parse_duration;
use super::report::{explain_failure, xml_escape};
use super::run::run_test;
use super::{collect_files, load_file, load_file_seeded};
use crate::kernel::rng_for;
use crate::report::progress::{Progress, Verbosity, bad};

// ---------------------------------------------------------------------------------------------
// The vocabulary.

/// A test's `[test.sweep]`: the faults a sweep draws.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    /// The declared faults, in file order (the order they draw in).
    pub faults: Vec<Fault>,
    /// The test's end, microseconds: a follow-up step never lands after it.
    pub end: u64,
}

/// One `[[test.sweep.fault]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The action verb.
    pub verb: String,
    /// Its device, if named.
    pub device: Option<String>,
    /// Least and most occurrences (drawn uniformly).
    pub count: (u64, u64),
    /// Chance that each occurrence happens.
    pub probability: f64,
    /// Window the occurrences fall in, microseconds from the start (`from..=to`).
    pub window: (u64, u64),
    /// Names the step (only for a fault that happens exactly once).
    pub label: Option<String>,
    /// The action's keys; values may be [`Draw`]s.
    pub params: Vec<(String, Draw)>,
    /// A follow-up step (`[test.sweep.fault.then]`).
    pub then: Option<Then>,
}

/// A step that follows each occurrence of a fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Then {
    /// The action verb.
    pub verb: String,
    /// Delay after the fault, microseconds (`lo..=hi`, drawn).
    pub delay: (u64, u64),
    /// The action's keys.
    pub params: Vec<(String, Draw)>,
}

/// A parameter value: fixed, or drawn from the seed.
#[derive(Debug, Clone, PartialEq)]
pub enum Draw {
    /// Written as is.
    Fixed(toml::Value),
    /// `{ range = [lo, hi] }` of integers: uniform in `lo..=hi`.
    Int(i64, i64),
    /// `{ range = [lo, hi] }` with a float: uniform in `lo..hi`.
    Float(f64, f64),
    /// `{ range = ["10ms", "2s"] }`: a duration, uniform to the microsecond.
    Time(u64, u64),
    /// `{ choose = [a, b, …] }`: one of these, each as likely.
    Choose(Vec<toml::Value>),
}

const FAULT_KEYS: [&str; 8] = [
    "do",
    "device",
    "count",
    "probability",
    "from",
    "to",
    "label",
    "then",
];

impl SweepSpec {
    /// Check a `[test.sweep]` table of a test lasting `duration`.
    pub fn parse(table: &toml::Table, duration: Duration) -> Result<SweepSpec, String> {
        let end = duration.as_micros();
        let time = |v: Option<&toml::Value>, key: &str, default: u64| -> Result<u64, String> {
            match v {
                None => Ok(default),
                Some(toml::Value::String(s)) => {
                    let t = parse_duration(s).map_err(|m| format!("{key}: {m}"))?;
                    if t.as_micros() > end {
                        return Err(format!("{key} = \"{s}\" is after the end of the test"));
                    }
                    Ok(t.as_micros())
                }
                Some(_) => Err(format!("`{key}` must be a duration like \"1.5s\"")),
            }
        };
        for key in table.keys() {
            if !["from", "to", "fault"].contains(&key.as_str()) {
                return Err(format!(
                    "unknown key `{key}` (from, to, [[test.sweep.fault]])"
                ));
            }
        }
        let from = time(table.get("from"), "from", 0)?;
        let to = time(table.get("to"), "to", end)?;
        let raw = match table.get("fault") {
            Some(toml::Value::Array(a)) => a,
            _ => return Err("needs at least one [[test.sweep.fault]]".to_owned()),
        };
        let mut faults = Vec::new();
        for (i, f) in raw.iter().enumerate() {
            let f = f
                .as_table()
                .ok_or_else(|| format!("fault #{}: expected a table", i + 1))?;
            let fault = parse_fault(f, (from, to), &time)
                .map_err(|m| format!("fault #{} (`{}`): {m}", i + 1, verb_of(f)))?;
            faults.push(fault);
        }
        if faults.is_empty() {
            return Err("needs at least one [[test.sweep.fault]]".to_owned());
        }
        Ok(SweepSpec { faults, end })
    }

    /// The steps of seed `seed` for test `test`, as step tables (`at`, `do`, `device`,
    /// `label` and the action's keys), in declaration order.
    pub fn draw(&self, test: &str, seed: u64) -> Result<Vec<toml::Table>, String> {
        let mut rng = rng_for(seed, &format!("sweep/{test}"));
        let mut steps = Vec::new();
        for f in &self.faults {
            let n = rng.random_range(f.count.0..=f.count.1);
            for _ in 0..n {
                // Every draw is made whether or not the occurrence happens, so the chance of
                // one fault does not shift the schedule of the next.
                let happens = rng.random::<f64>() < f.probability;
                let at = rng.random_range(f.window.0..=f.window.1);
                let mut step = toml::Table::new();
                step.insert("at".into(), toml::Value::String(format!("{at}us")));
                step.insert("do".into(), toml::Value::String(f.verb.clone()));
                if let Some(d) = &f.device {
                    step.insert("device".into(), toml::Value::String(d.clone()));
                }
                if let Some(l) = &f.label {
                    step.insert("label".into(), toml::Value::String(l.clone()));
                }
                for (k, d) in &f.params {
                    step.insert(k.clone(), d.draw(&mut rng));
                }
                let then = f.then.as_ref().map(|t| {
                    let delay = rng.random_range(t.delay.0..=t.delay.1);
                    let mut s = toml::Table::new();
                    s.insert(
                        "at".into(),
                        toml::Value::String(format!(
                            "{}us",
                            at.saturating_add(delay).min(self.end)
                        )),
                    );
                    s.insert("do".into(), toml::Value::String(t.verb.clone()));
                    if let Some(d) = &f.device {
                        s.insert("device".into(), toml::Value::String(d.clone()));
                    }
                    for (k, d) in &t.params {
                        s.insert(k.clone(), d.draw(&mut rng));
                    }
                    s
                });
                if happens {
                    steps.push(step);
                    steps.extend(then);
                }
            }
        }
        Ok(steps)
    }
}

fn verb_of(t: &toml::Table) -> &str {
    t.get("do").and_then(|v| v.as_str()).unwrap_or("?")
}

type TimeOf<'a> = dyn Fn(Option<&toml::Value>, &str, u64) -> Result<u64, String> + 'a;

fn parse_fault(f: &toml::Table, window: (u64, u64), time: &TimeOf<'_>) -> Result<Fault, String> {
    let verb = match f.get("do") {
        Some(toml::Value::String(v)) => v.clone(),
        _ => return Err("needs `do = \"verb\"`".to_owned()),
    };
    let device = match f.get("device") {
        None => None,
        Some(toml::Value::String(d)) => Some(d.clone()),
        Some(_) => return Err("`device` must be a string".to_owned()),
    };
    let count = match f.get("count") {
        None => (1, 1),
        Some(toml::Value::Integer(n)) if *n >= 0 => (*n as u64, *n as u64),
        Some(toml::Value::Array(a)) => match a.as_slice() {
            [toml::Value::Integer(lo), toml::Value::Integer(hi)] if 0 <= *lo && lo <= hi => {
                (*lo as u64, *hi as u64)
            }
            _ => return Err("`count` must be N or [least, most]".to_owned()),
        },
        Some(_) => return Err("`count` must be N or [least, most]".to_owned()),
    };
    let probability = match f.get("probability") {
        None => 1.0,
        Some(v) => match v.as_float().or(v.as_integer().map(|i| i as f64)) {
            Some(p) if (0.0..=1.0).contains(&p) => p,
            _ => return Err("`probability` must be between 0 and 1".to_owned()),
        },
    };
    let from = time(f.get("from"), "from", window.0)?;
    let to = time(f.get("to"), "to", window.1)?;
    if to < from {
        return Err("window ends before it starts".to_owned());
    }
    let label = match f.get("label") {
        None => None,
        Some(toml::Value::String(l)) => {
            if count != (1, 1) || probability < 1.0 {
                return Err(format!(
                    "label = \"{l}\": a labelled fault must happen exactly once (count = 1, no probability), so the expectations that name it always find it"
                ));
            }
            Some(l.clone())
        }
        Some(_) => return Err("`label` must be a string".to_owned()),
    };
    let params = params_of(f, &FAULT_KEYS)?;
    let then = match f.get("then") {
        None => None,
        Some(toml::Value::Table(t)) => {
            let verb = match t.get("do") {
                Some(toml::Value::String(v)) => v.clone(),
                _ => return Err("then: needs `do = \"verb\"`".to_owned()),
            };
            let delay = match t.get("delay") {
                None => (0, 0),
                Some(v) => match Draw::parse(v).map_err(|m| format!("then.delay: {m}"))? {
                    Draw::Time(lo, hi) => (lo, hi),
                    Draw::Fixed(toml::Value::String(s)) => {
                        let d = parse_duration(&s).map_err(|m| format!("then.delay: {m}"))?;
                        (d.as_micros(), d.as_micros())
                    }
                    _ => {
                        return Err(
                            "then.delay must be a duration or { range = [\"lo\", \"hi\"] }"
                                .to_owned(),
                        );
                    }
                },
            };
            let params = params_of(t, &["do", "delay"]).map_err(|m| format!("then: {m}"))?;
            Some(Then {
                verb,
                delay,
                params,
            })
        }
        Some(_) => return Err("`then` must be a table".to_owned()),
    };
    Ok(Fault {
        verb,
        device,
        count,
        probability,
        window: (from, to),
        label,
        params,
        then,
    })
}

fn params_of(t: &toml::Table, reserved: &[&str]) -> Result<Vec<(String, Draw)>, String> {
    t.iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| Ok((k.clone(), Draw::parse(v).map_err(|m| format!("{k}: {m}"))?)))
        .collect()
}

impl Draw {
    /// A parameter as written: a `{ range = … }` or `{ choose = … }` table, or a value.
    pub fn parse(v: &toml::Value) -> Result<Draw, String> {
        let Some(t) = v.as_table() else {
            return Ok(Draw::Fixed(v.clone()));
        };
        if t.len() != 1 {
            return Ok(Draw::Fixed(v.clone()));
        }
        if let Some(r) = t.get("range") {
            let bad =
                || "range must be [lo, hi] of integers, numbers or durations, lo <= hi".to_owned();
            let toml::Value::Array(a) = r else {
                return Err(bad());
            };
            return match a.as_slice() {
                [toml::Value::Integer(lo), toml::Value::Integer(hi)] if lo <= hi => {
                    Ok(Draw::Int(*lo, *hi))
                }
                [toml::Value::String(lo), toml::Value::String(hi)] => {
                    let lo = parse_duration(lo)?.as_micros();
                    let hi = parse_duration(hi)?.as_micros();
                    if lo > hi {
                        return Err(bad());
                    }
                    Ok(Draw::Time(lo, hi))
                }
                [lo, hi] => {
                    let num = |v: &toml::Value| v.as_float().or(v.as_integer().map(|i| i as f64));
                    match (num(lo), num(hi)) {
                        (Some(lo), Some(hi)) if lo <= hi => Ok(Draw::Float(lo, hi)),
                        _ => Err(bad()),
                    }
                }
                _ => Err(bad()),
            };
        }
        if let Some(c) = t.get("choose") {
            return match c {
                toml::Value::Array(a) if !a.is_empty() => Ok(Draw::Choose(a.clone())),
                _ => Err("choose must be a non-empty array".to_owned()),
            };
        }
        Ok(Draw::Fixed(v.clone()))
    }

    fn draw(&self, rng: &mut impl Rng) -> toml::Value {
        match self {
            Draw::Fixed(v) => v.clone(),
            Draw::Int(lo, hi) => toml::Value::Integer(rng.random_range(*lo..=*hi)),
            Draw::Float(lo, hi) => toml::Value::Float(if lo == hi {
                *lo
            } else {
                rng.random_range(*lo..*hi)
            }),
            Draw::Time(lo, hi) => toml::Value::String(format!("{}us", rng.random_range(*lo..=*hi))),
            Draw::Choose(a) => a[rng.random_range(0..a.len())].clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// A failure rate's confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// `wilson`.
    pub method: String,
    /// 0.95.
    pub confidence: f64,
    /// Lower bound of the failure rate.
    pub low: f64,
    /// Upper bound of the failure rate.
    pub high: f64,
}

/// The Wilson score interval at 95 % for `failures` of `runs` (`0..1` when there are no runs).
pub fn wilson(failures: u64, runs: u64) -> Interval {
    const Z: f64 = 1.959_963_984_540_054;
    let (low, high) = if runs == 0 {
        (0.0, 1.0)
    } else {
        let n = runs as f64;
        let p = failures as f64 / n;
        let z2 = Z * Z;
        let denom = 1.0 + z2 / n;
        let centre = (p + z2 / (2.0 * n)) / denom;
        let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
        // The bounds are exactly 0 at no failure and 1 at no success; rounding would leave
        // a residue of the order of 1e-19 there.
        let low = if failures == 0 {
            0.0
        } else {
            (centre - half).max(0.0)
        };
        let high = if failures >= runs {
            1.0
        } else {
            (centre + half).min(1.0)
        };
        (low, high)
    };
    Interval {
        method: "wilson".to_owned(),
        confidence: 0.95,
        low,
        high,
    }
}

// ---------------------------------------------------------------------------------------------
// Running.

/// One shard of a sweep: `index` of `count`, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which shard (1 ..= count).
    pub index: u64,
    /// How many shards.
    pub count: u64,
}

impl Shard {
    /// The whole sweep.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// `K/N`, 1 <= K <= N.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {text}: expected K/N with 1 <= K <= N, e.g. 2/4");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u64 = k.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The seeds of `first .. first + seeds` this shard runs: every `count`-th, from the
    /// `index`-th.
    pub fn seeds(self, first: u64, seeds: u64) -> impl Iterator<Item = u64> {
        (0..seeds)
            .filter(move |i| i % self.count == self.index - 1)
            .map(move |i| first.wrapping_add(i))
    }
}

/// One seed's run of a swept test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRun {
    /// The seed.
    pub seed: u64,
    /// Whether every expectation held.
    pub passed: bool,
    /// The run's fingerprint, as 16 hex digits.
    pub trace_hash: String,
    /// Virtual time run.
    pub virtual_ms: u64,
    /// Labels of the expectations that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// The command that replays this run (failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// What went wrong, in scenario syntax (failures only; not in reports).
    #[serde(skip)]
    pub explanation: Option<String>,
}

/// A swept test: file and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The scenario file, as given.
    pub file: PathBuf,
    /// The test's name.
    pub test: String,
}

/// How `twin` is invoked in replay commands: `cargo run --release --`, with the test-only
/// firmware feature when this binary was built with it.
pub fn twin_invocation() -> &'static str {
    if cfg!(feature = "broken-firmware") {
        "cargo run --release -p sim --features broken-firmware --"
    } else {
        "cargo run --release --"
    }
}

/// The command that replays `seed` of `target`.
pub fn replay_command(target: &Target, seed: u64) -> String {
    format!(
        "{} scenario {} --test {} --seed {seed}",
        twin_invocation(),
        shell_quote(&target.file.display().to_string()),
        shell_quote(&target.test)
    )
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run `seed` of `target` as `twin scenario FILE --test NAME --seed S` would.
pub fn run_seed(target: &Target, seed: u64) -> Result<SeedRun, String> {
    let cases = load_file_seeded(&target.file, Some(seed)).map_err(|e| e.to_string())?;
    let case = cases
        .iter()
        .find(|c| c.variant.is_none() && c.name == target.test)
        .ok_or_else(|| format!("{}: no test `{}`", target.file.display(), target.test))?;
    let r = run_test(case, Some(seed));
    let failed: Vec<String> = r
        .verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| v.label.clone())
        .chain(r.errors.iter().map(|e| format!("error: {e}")))
        .collect();
    Ok(SeedRun {
        seed,
        passed: r.passed,
        trace_hash: format!("{:016x}", r.trace_hash),
        virtual_ms: r.virtual_ms,
        replay: (!r.passed).then(|| replay_command(target, seed)),
        explanation: (!r.passed).then(|| explain_failure(case, &r)),
        failed,
    })
}

/// Run `seeds` of every target on `jobs` threads; `done` sees each run, target by target and
/// seed by seed in order, as soon as it and every earlier one are finished. Returns the runs
/// per target.
pub fn run_sweep(
    targets: &[Target],
    seeds: &[u64],
    jobs: usize,
    mut done: impl FnMut(&Target, &SeedRun),
) -> Result<Vec<Vec<SeedRun>>, String> {
    let items: Vec<(usize, u64)> = (0..targets.len())
        .flat_map(|t| seeds.iter().map(move |s| (t, *s)))
        .collect();
    let mut out: Vec<Vec<SeedRun>> = vec![Vec::new(); targets.len()];
    let mut slots: BTreeMap<usize, SeedRun> = BTreeMap::new();
    let mut next_out = 0usize;
    let mut error = None;
    let mut deliver = |i: usize, r: SeedRun, slots: &mut BTreeMap<usize, SeedRun>| {
        slots.insert(i, r);
        while let Some(r) = slots.remove(&next_out) {
            let t = items[next_out].0;
            done(&targets[t], &r);
            out[t].push(r);
            next_out += 1;
        }
    };
    let jobs = jobs.clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<SeedRun, String>)>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let next = &next;
            let items = &items;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(t, seed)) = items.get(i) else {
                        return;
                    };
                    if tx.send((i, run_seed(&targets[t], seed))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            match r {
                Ok(r) => deliver(i, r, &mut slots),
                Err(e) => {
                    error.get_or_insert(e);
                    // Stop handing out work; runs in progress finish.
                    next.store(items.len(), Ordering::Relaxed);
                }
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

// ---------------------------------------------------------------------------------------------
// Reports.

/// A sweep's report (`--json`); the merge of shard reports is the unsharded sweep's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// `twinbench-sweep/1`.
    pub format: String,
    /// First seed of the sweep.
    pub first_seed: u64,
    /// Seeds in the whole sweep (all shards).
    pub seeds: u64,
    /// The shard this report covers; `None` for the whole sweep.
    #[serde(default)]
    pub shard: Option<Shard>,
    /// Per swept test.
    pub tests: Vec<TestReport>,
}

/// One swept test in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    /// Its file.
    pub file: String,
    /// Its name.
    pub test: String,
    /// Runs made.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// failures / runs.
    pub failure_rate: f64,
    /// The interval of the failure rate.
    pub interval: Interval,
    /// Every run, by seed.
    pub results: Vec<SeedRun>,
}

const FORMAT: &str = "twinbench-sweep/1";

impl TestReport {
    fn new(file: String, test: String, mut results: Vec<SeedRun>) -> TestReport {
        results.sort_by_key(|r| r.seed);
        let runs = results.len() as u64;
        let failures = results.iter().filter(|r| !r.passed).count() as u64;
        TestReport {
            file,
            test,
            runs,
            failures,
            failure_rate: if runs == 0 {
                0.0
            } else {
                failures as f64 / runs as f64
            },
            interval: wilson(failures, runs),
            results,
        }
    }

    /// `3 of 500 runs failed: 0.60 % (95 % Wilson interval 0.20 % – 1.75 %)`.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} runs failed: {:.2} % (95 % Wilson interval {:.2} % – {:.2} %)",
            self.failures,
            self.runs,
            self.failure_rate * 100.0,
            self.interval.low * 100.0,
            self.interval.high * 100.0
        )
    }
}

impl SweepReport {
    /// The report of `runs` (per target) of a sweep.
    pub fn new(
        targets: &[Target],
        runs: Vec<Vec<SeedRun>>,
        first_seed: u64,
        seeds: u64,
        shard: Shard,
    ) -> SweepReport {
        SweepReport {
            format: FORMAT.to_owned(),
            first_seed,
            seeds,
            shard: (shard != Shard::ALL).then_some(shard),
            tests: targets
                .iter()
                .zip(runs)
                .map(|(t, r)| TestReport::new(t.file.display().to_string(), t.test.clone(), r))
                .collect(),
        }
    }

    /// JUnit XML: a suite per swept test, a case per seed (`NAME@seed=S`), the replay command
    /// in each failure. No times: shards merge into the same file as the whole sweep.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
        for t in &self.tests {
            let _ = writeln!(
                out,
                "  <testsuite name=\"sweep {} :: {}\" tests=\"{}\" failures=\"{}\">",
                xml_escape(&t.file),
                xml_escape(&t.test),
                t.runs,
                t.failures
            );
            for r in &t.results {
                let _ = write!(
                    out,
                    "    <testcase classname=\"{}\" name=\"{}@seed={}\"",
                    xml_escape(&t.file),
                    xml_escape(&t.test),
                    r.seed
                );
                if r.passed {
                    out.push_str("/>\n");
                } else {
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">replay: {}</failure>\n    </testcase>",
                        xml_escape(&format!("failed: {}", r.failed.join(", "))),
                        xml_escape(r.replay.as_deref().unwrap_or_default())
                    );
                }
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

/// Why shard reports do not merge.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MergeError {
    /// No report was given.
    #[error("no report to merge")]
    Empty,
    /// A report is not a sweep report of this format.
    #[error("{0}: not a {FORMAT} report")]
    Format(String),
    /// The reports come from different sweeps.
    #[error("{0}: a different sweep (first seed, seeds, shard count or tests differ)")]
    Mismatch(String),
    /// A shard appears twice.
    #[error("shard {0} given twice")]
    Duplicate(u64),
    /// Shards are missing: the merge would not be the whole sweep.
    #[error("shards missing: {0:?} of {1}")]
    Missing(Vec<u64>, u64),
}

/// Merge the reports of every shard of one sweep (`names` for messages) into the report of the
/// whole sweep.
pub fn merge(reports: &[(String, SweepReport)]) -> Result<SweepReport, MergeError> {
    let (_, first) = reports.first().ok_or(MergeError::Empty)?;
    let count = first.shard.map_or(1, |s| s.count);
    let key = |r: &SweepReport| {
        (
            r.first_seed,
            r.seeds,
            r.shard.map_or(1, |s| s.count),
            r.tests
                .iter()
                .map(|t| (t.file.clone(), t.test.clone()))
                .collect::<Vec<_>>(),
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    for (name, r) in reports {
        if r.format != FORMAT {
            return Err(MergeError::Format(name.clone()));
        }
        if key(r) != key(first) {
            return Err(MergeError::Mismatch(name.clone()));
        }
        let index = r.shard.map_or(1, |s| s.index);
        if !seen.insert(index) {
            return Err(MergeError::Duplicate(index));
        }
    }
    let missing: Vec<u64> = (1..=count).filter(|i| !seen.contains(i)).collect();
    if !missing.is_empty() {
        return Err(MergeError::Missing(missing, count));
    }
    let tests = first
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let results = reports
                .iter()
                .flat_map(|(_, r)| r.tests[i].results.iter().cloned())
                .collect();
            TestReport::new(t.file.clone(), t.test.clone(), results)
        })
        .collect();
    Ok(SweepReport {
        format: FORMAT.to_owned(),
        first_seed: first.first_seed,
        seeds: first.seeds,
        shard: None,
        tests,
    })
}

// ---------------------------------------------------------------------------------------------
// The commands.

/// `twin sweep` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Scenario files or folders; every test with a `[test.sweep]` is swept.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Seeds in the sweep (all shards together).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Run only this seed, and print each failure in full (a replay).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed", "shard"])]
    pub only_seed: Option<u64>,
    /// Runs at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Run shard K of N (`--shard 2/4`): every N-th seed from the K-th.
    #[arg(long)]
    pub shard: Option<String>,
    /// Sweep only this test (exact name, or the tests whose names contain it).
    #[arg(long = "test")]
    pub filter: Option<String>,
    /// Write the report as JSON (shards: merge them with `twin sweep-merge`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write JUnit XML, a case per seed.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

/// `twin sweep-merge` options.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// The shards' JSON reports (`twin sweep --shard K/N --json FILE`).
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Write the merged report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the merged report as JUnit XML.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

/// What a sweep command ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every run passed.
    Passed,
    /// Some run failed.
    Failed,
}

/// The swept tests of `paths` (`filter` as `twin scenario --test`).
pub fn targets(paths: &[PathBuf], filter: Option<&str>) -> Result<Vec<Target>, String> {
    let mut found = Vec::new();
    for path in paths {
        let files = collect_files(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for file in files {
            let cases = load_file(&file).map_err(|e| e.to_string())?;
            found.extend(
                cases
                    .into_iter()
                    .filter(|c| c.variant.is_none() && c.sweep_faults > 0)
                    .map(|c| Target {
                        file: file.clone(),
                        test: c.name,
                    }),
            );
        }
    }
    if let Some(f) = filter {
        let exact = found.iter().any(|t| t.test == f);
        found.retain(|t| {
            if exact {
                t.test == f
            } else {
                t.test.contains(f)
            }
        });
    }
    if found.is_empty() {
        return Err(match filter {
            Some(f) => format!("no swept test (one with a [test.sweep]) matches `{f}`"),
            None => "no test with a [test.sweep] in these files".to_owned(),
        });
    }
    Ok(found)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_reports(
    report: &SweepReport,
    json: Option<&Path>,
    junit: Option<&Path>,
) -> Result<(), String> {
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        write(p, &text)?;
    }
    if let Some(p) = junit {
        write(p, &report.junit())?;
    }
    Ok(())
}

/// `twin sweep`. `Err` is invalid input or a report that could not be written (exit 2).
pub fn command(args: &SweepArgs, verbosity: Verbosity) -> Result<Outcome, String> {
    let targets = targets(&args.paths, args.filter.as_deref())?;
    let shard = match &args.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::ALL,
    };
    let (first, count) = match args.only_seed {
        Some(s) => (s, 1),
        None => (args.first_seed, args.seeds),
    };
    let seeds: Vec<u64> = shard.seeds(first, count).collect();
    let shard_text = if shard == Shard::ALL {
        String::new()
    } else {
        format!(
            ", shard {}/{}: {} seeds",
            shard.index,
            shard.count,
            seeds.len()
        )
    };
    for t in &targets {
        println!(
            "sweep {} :: {}  seeds {first}..{}{shard_text}",
            t.file.display(),
            t.test,
            first.saturating_add(count).saturating_sub(1),
        );
    }
    let total = (seeds.len() * targets.len()) as u64;
    let mut progress = Progress::new(total, "runs", verbosity).with_plain_steps();
    let full = args.only_seed.is_some() || verbosity == Verbosity::Verbose;
    let runs = run_sweep(&targets, &seeds, args.jobs.max(1), |t, r| {
        if !r.passed {
            progress.line(&format!(
                "{} {} seed {}: {}",
                bad("FAIL"),
                t.test,
                r.seed,
                r.failed.join(", ")
            ));
            if let Some(cmd) = &r.replay {
                progress.line(&format!("     replay: {cmd}"));
            }
            if full && let Some(e) = &r.explanation {
                progress.line(e);
            }
        } else if verbosity == Verbosity::Verbose {
            progress.line(&format!(
                "ok   {} seed {} [trace {}]",
                t.test, r.seed, r.trace_hash
            ));
        }
        progress.step(&format!("{} seed {}", t.test, r.seed));
    })?;
    progress.finish();
    let report = SweepReport::new(&targets, runs, first, count, shard);
    for t in &report.tests {
        println!("{} :: {}: {}", t.file, t.test, t.summary());
    }
    write_reports(&report, args.json.as_deref(), args.junit.as_deref())?;
    Ok(if report.tests.iter().any(|t| t.failures > 0) {
        Outcome::Failed
    } else {
        Outcome::Passed
    })
}

/// `twin sweep-merge`.
pub fn merge_command(args: &MergeArgs) -> Result<Outcome, String> {
    let mut reports = Vec::new();
    for p in &args.reports {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let r: SweepReport = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a sweep report: {e}", p.display()))?;
        reports.push((p.display().to_string(), r));
    }
    let merged = merge(&reports).map_err(|e| e.to_string())?;
    for t in &merged.tests {
        println!("{} :: {}: {}", t.file, t.test, t.summary());
        for r in t.results.iter().filter(|r| !r.passed) {
            println!(
                "  seed {}: {}; replay: {}",
                r.seed,
                r.failed.join(", "),
                r.replay.as_deref().unwrap_or_default()
            );
        }
    }
    write_reports(&merged, args.json.as_deref(), args.junit.as_deref())?;
    Ok(if merged.tests.iter().any(|t| t.failures > 0) {
        Outcome::Failed
    } else {
        Outcome::Passed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        let t: toml::Table = toml::from_str(text).unwrap();
        SweepSpec::parse(&t, Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn wilson_matches_published_values() {
        // 0 of 1000: upper bound z²/(n + z²) ≈ 0.38 %.
        let w = wilson(0, 1000);
        assert_eq!(w.low, 0.0);
        assert!((w.high - 0.003827).abs() < 1e-5, "{}", w.high);
        // 10 of 100 (Wilson 1927; Newcombe 1998 table I): 0.0552 – 0.1744.
        let w = wilson(10, 100);
        assert!(
            (w.low - 0.0552).abs() < 1e-4 && (w.high - 0.1744).abs() < 1e-4,
            "{w:?}"
        );
    }

    #[test]
    fn shards_partition_the_seed_range() {
        let all: Vec<u64> = Shard::ALL.seeds(5, 10).collect();
        assert_eq!(all, (5..15).collect::<Vec<_>>());
        let mut union: Vec<u64> = (1..=3)
            .flat_map(|k| Shard { index: k, count: 3 }.seeds(5, 10))
            .collect();
        union.sort();
        assert_eq!(union, all);
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, count: 3 }));
        assert!(Shard::parse("0/3").is_err() && Shard::parse("4/3").is_err());
        assert!(Shard::parse("x").is_err());
    }

    #[test]
    fn a_draw_is_a_function_of_the_seed_and_stays_in_its_window() {
        let s = spec(
            r#"
            [[fault]]
            do = "wifi.load"
            count = [0, 4]
            from = "1s"
            to = "2s"
            airtime = { range = [0.1, 0.9] }
            cpu = { choose = [0.2, 0.5] }
            [fault.then]
            do = "wifi.load"
            delay = { range = ["10ms", "20ms"] }
            airtime = 0.0
            "#,
        );
        let a = s.draw("t", 7).unwrap();
        assert_eq!(a, s.draw("t", 7).unwrap());
        let differs = (0..20).any(|seed| s.draw("t", seed).unwrap() != a);
        assert!(differs, "the seed changes the schedule");
        for seed in 0..50 {
            for step in s.draw("t", seed).unwrap() {
                let at = parse_duration(step["at"].as_str().unwrap())
                    .unwrap()
                    .as_micros();
                assert!((1_000_000..=2_020_000).contains(&at), "{at}");
                if let Some(a) = step.get("cpu") {
                    assert!([0.2, 0.5].contains(&a.as_float().unwrap()));
                }
            }
        }
    }

    #[test]
    fn bad_sweeps_are_refused_with_the_key() {
        let bad = |text: &str| {
            let t: toml::Table = toml::from_str(text).unwrap();
            SweepSpec::parse(&t, Duration::from_secs(10)).unwrap_err()
        };
        assert!(bad("x = 1").contains("unknown key `x`"));
        assert!(bad("from = \"1s\"").contains("at least one"));
        assert!(bad("[[fault]]\nfrom = \"1s\"").contains("`do"));
        assert!(bad("[[fault]]\ndo = \"a\"\nto = \"11s\"").contains("after the end"));
        assert!(bad("[[fault]]\ndo = \"a\"\ncount = 2\nlabel = \"x\"").contains("exactly once"));
        assert!(bad("[[fault]]\ndo = \"a\"\nv = { range = [3, 1] }").contains("range"));
        assert!(bad("[[fault]]\ndo = \"a\"\nprobability = 2.0").contains("probability"));
    }

    #[test]
    fn merge_refuses_missing_and_duplicate_shards() {
        let r = |index| SweepReport {
            format: FORMAT.to_owned(),
            first_seed: 0,
            seeds: 4,
            shard: Some(Shard { index, count: 2 }),
            tests: vec![],
        };
        assert_eq!(
            merge(&[("a".into(), r(1))]),
            Err(MergeError::Missing(vec![2], 2))
        );
        assert_eq!(
            merge(&[("a".into(), r(1)), ("b".into(), r(1))]),
            Err(MergeError::Duplicate(1))
        );
        assert!(merge(&[("a".into(), r(1)), ("b".into(), r(2))]).is_ok());
    }
}
