//! Timeline export: a run as a Chrome / Perfetto trace-event file, in virtual time.
//!
//! [`TraceWriter`] is an [`Observer`]: register it on a kernel ([`TraceWriter::create`] then
//! [`crate::kernel::Kernel::observe`]) and it streams the run to a file as it happens, in the
//! JSON Array Format of the Trace Event Format (the one `chrome://tracing` and the Perfetto UI
//! both open). Nothing of the timeline is held in memory beyond one open state per task and
//! core, so a long run costs disk, not RAM. Timestamps (`ts`, `dur`) are virtual microseconds,
//! the format's own unit.
//!
//! What goes in, grouped by device (the name before the first `.` is the process):
//! * one track per simulated core, with a slice per stretch of a task running on it (a
//!   preempted slice is cut where it was suspended and goes on after the preempting work);
//! * one track per task: `run`, and its waits: `ready` (wanted its core, which was busy),
//!   `preempted`, `delay` (slept until a timer) and `queue` (waited for a queue, signal, byte
//!   or socket); world tasks (simulated parts) take no time and show their polls as instants;
//! * one track per event source, with an instant event per trace event, in a category that
//!   says what it is (`button`, `uart`, `relay`, `mqtt`, `snmp`, `http`, `priority`, `led`,
//!   `console`, `fault`, `event`), so a timeline can be filtered to the E-stop path;
//! * counters: every metric sample (queue depths, latencies) and each core's load per 10 ms.
//!
//! Written by hand rather than with `tracing-chrome`: that crate timestamps with the wall clock
//! as spans close, while this timeline lives in virtual time and comes from the kernel's
//! scheduling decisions, not from spans. Each event is serialised by `serde_json`.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use firmware_core::time::{Duration, Instant};
use serde::Serialize;

use crate::kernel::{BUCKET, CoreId, Observer, Sched, TaskId, Wake};

/// Why a trace file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Creating or writing the file failed.
    #[error("cannot write the trace {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Longest instant-event name; the full text is in its `args.text`.
const NAME_CHARS: usize = 72;

#[derive(Serialize)]
struct TraceEvent<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cat: &'a str,
    ph: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<u64>,
    pid: u32,
    tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<serde_json::Value>,
}

/// Where a task is, as far as the timeline knows.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Not seen since the writer was attached.
    Unknown,
    /// Waiting for a wake; the cause is known when it comes.
    Blocked,
    /// Woken, waiting for its core.
    Ready,
    /// Running on its core.
    Running,
    /// Its slice is suspended by higher-priority work.
    Preempted,
}

struct TaskTrack {
    name: String,
    pid: u32,
    tid: u32,
    core: Option<CoreId>,
    phase: Phase,
    since: Instant,
    /// Woken while its own slice was still running: ready once it ends.
    woken: bool,
}

struct CoreTrack {
    name: String,
    pid: u32,
    tid: u32,
    /// The stretch running now: which task, since when.
    running: Option<(TaskId, Instant)>,
    /// Busy µs per [`BUCKET`] from `load_from` on (slices are counted from their start, as the
    /// kernel's utilisation counts them).
    load: std::collections::VecDeque<u64>,
    load_from: u64,
    last_load: Option<u64>,
}

/// Streams a run's timeline to a trace-event JSON file. See the module docs.
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<File>,
    first: bool,
    error: Option<std::io::Error>,
    /// Device (process) ids by name.
    processes: BTreeMap<String, u32>,
    /// Next thread id per process.
    next_tid: BTreeMap<u32, u32>,
    cores: Vec<Option<CoreTrack>>,
    tasks: Vec<Option<TaskTrack>>,
    sources: BTreeMap<String, (u32, u32)>,
    now: Instant,
    events: u64,
}

impl TraceWriter {
    /// Create (or truncate) `path` and start the JSON array.
    pub fn create(path: &Path) -> Result<TraceWriter, TraceError> {
        let io = |source| TraceError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(b"[\n").map_err(io)?;
        Ok(TraceWriter {
            path: path.to_owned(),
            out,
            first: true,
            error: None,
            processes: BTreeMap::new(),
            next_tid: BTreeMap::new(),
            cores: Vec::new(),
            tasks: Vec::new(),
            sources: BTreeMap::new(),
            now: Instant::ZERO,
            events: 0,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Trace events written so far.
    pub fn events_written(&self) -> u64 {
        self.events
    }

    /// Close every open slice and wait at `end` (the run's last instant), end the JSON array
    /// and flush. Call once, when the run is over; the file is complete only then (a run cut
    /// short leaves an array without its `]`, which both viewers still open).
    pub fn finish(&mut self, end: Instant) -> Result<(), TraceError> {
        self.advance(end);
        for i in 0..self.tasks.len() {
            self.close_task(i, end);
        }
        for c in 0..self.cores.len() {
            if let Some((task, since)) = self.cores[c].as_mut().and_then(|c| c.running.take()) {
                self.core_slice(c, task, since, end);
            }
        }
        self.flush_load(u64::MAX);
        let closing = self.out.write_all(b"\n]\n").and_then(|()| self.out.flush());
        if let Err(e) = closing {
            self.error.get_or_insert(e);
        }
        match self.error.take() {
            Some(source) => Err(TraceError::Io {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn emit(&mut self, ev: &TraceEvent<'_>) {
        if self.error.is_some() {
            return;
        }
        let sep: &[u8] = if self.first { b"" } else { b",\n" };
        self.first = false;
        let r = self
            .out
            .write_all(sep)
            .and_then(|()| serde_json::to_writer(&mut self.out, ev).map_err(std::io::Error::from));
        match r {
            Ok(()) => self.events += 1,
            Err(e) => self.error = Some(e),
        }
    }

    fn metadata(&mut self, name: &str, pid: u32, tid: u32, args: serde_json::Value) {
        self.emit(&TraceEvent {
            name,
            cat: "",
            ph: "M",
            ts: 0,
            dur: None,
            pid,
            tid,
            s: None,
            args: Some(args),
        });
    }

    /// The process of the device that `name` (`device.part`) belongs to.
    fn process(&mut self, name: &str) -> u32 {
        let device = name.split('.').next().unwrap_or(name);
        if let Some(pid) = self.processes.get(device) {
            return *pid;
        }
        let pid = self.processes.len() as u32 + 1;
        self.processes.insert(device.to_owned(), pid);
        self.metadata(
            "process_name",
            pid,
            0,
            serde_json::json!({ "name": device }),
        );
        pid
    }

    /// A new thread (track) named `name` in `pid`, sorted by `sort` (cores, then tasks, then
    /// event sources).
    fn thread(&mut self, pid: u32, name: &str, sort: u32) -> u32 {
        let next = self.next_tid.entry(pid).or_insert(1);
        let tid = *next;
        *next += 1;
        self.metadata("thread_name", pid, tid, serde_json::json!({ "name": name }));
        self.metadata(
            "thread_sort_index",
            pid,
            tid,
            serde_json::json!({ "sort_index": sort + tid }),
        );
        tid
    }

    fn slice(&mut self, name: &str, cat: &str, pid: u32, tid: u32, from: Instant, to: Instant) {
        self.emit(&TraceEvent {
            name,
            cat,
            ph: "X",
            ts: from.as_micros(),
            dur: Some(to.as_micros().saturating_sub(from.as_micros())),
            pid,
            tid,
            s: None,
            args: None,
        });
    }

    fn instant(&mut self, name: &str, cat: &str, pid: u32, tid: u32, at: Instant) {
        self.emit(&TraceEvent {
            name,
            cat,
            ph: "i",
            ts: at.as_micros(),
            dur: None,
            pid,
            tid,
            s: Some("t"),
            args: None,
        });
    }

    /// Emit the task's current phase as a slice ending at `to`, and enter `phase`.
    fn task_phase(&mut self, task: usize, to: Instant, phase: Phase) {
        let Some(Some(t)) = self.tasks.get_mut(task) else {
            return;
        };
        let (old, since, pid, tid) = (t.phase, t.since, t.pid, t.tid);
        t.phase = phase;
        t.since = to;
        let name = match old {
            Phase::Running => "run",
            Phase::Ready => "ready",
            Phase::Preempted => "preempted",
            Phase::Blocked | Phase::Unknown => return,
        };
        if to > since || old == Phase::Running {
            self.slice(name, "sched", pid, tid, since, to);
        }
    }

    fn close_task(&mut self, task: usize, end: Instant) {
        let phase = match self.tasks.get(task) {
            Some(Some(t)) => t.phase,
            _ => return,
        };
        if phase == Phase::Blocked
            && let Some(Some(t)) = self.tasks.get(task)
        {
            let (pid, tid, since) = (t.pid, t.tid, t.since);
            if end > since {
                self.slice("wait", "sched", pid, tid, since, end);
            }
        }
        self.task_phase(task, end, Phase::Unknown);
    }

    fn core_slice(&mut self, core: usize, task: TaskId, from: Instant, to: Instant) {
        let Some(Some(c)) = self.cores.get(core) else {
            return;
        };
        let (pid, tid) = (c.pid, c.tid);
        let name = match self.tasks.get(task.0) {
            Some(Some(t)) => t.name.clone(),
            _ => format!("task {}", task.0),
        };
        self.slice(&name, "cpu", pid, tid, from, to);
    }

    /// Add a slice's cost to its core's load, from its start.
    fn add_load(&mut self, core: usize, start: Instant, cost: Duration) {
        let b = BUCKET.as_micros();
        let Some(Some(c)) = self.cores.get_mut(core) else {
            return;
        };
        let mut t = start.as_micros();
        let end = t + cost.as_micros();
        if c.load.is_empty() {
            c.load_from = t / b;
        }
        while t < end {
            let idx = t / b;
            let part = end.min((idx + 1) * b) - t;
            let Some(off) = idx.checked_sub(c.load_from) else {
                break;
            };
            while c.load.len() as u64 <= off {
                c.load.push_back(0);
            }
            if let Some(slot) = c.load.get_mut(off as usize) {
                *slot += part;
            }
            t += part;
        }
    }

    /// Emit the load counter of every bucket that ended before `until_us`; repeated values
    /// are left out (a counter holds its value until the next sample).
    fn flush_load(&mut self, until_us: u64) {
        let b = BUCKET.as_micros();
        let mut out = Vec::new();
        for c in self.cores.iter_mut().flatten() {
            while let Some(&busy) = c.load.front() {
                let start = c.load_from * b;
                if start + b > until_us {
                    break;
                }
                c.load.pop_front();
                c.load_from += 1;
                let pct = busy * 100 / b;
                if c.last_load != Some(pct) {
                    c.last_load = Some(pct);
                    out.push((format!("load {}", c.name), c.pid, start, pct));
                }
                if c.load.is_empty() && pct != 0 {
                    // Idle from here on until the next slice.
                    c.last_load = Some(0);
                    out.push((format!("load {}", c.name), c.pid, start + b, 0));
                }
            }
        }
        for (name, pid, ts, pct) in out {
            self.emit(&TraceEvent {
                name: &name,
                cat: "cpu",
                ph: "C",
                ts,
                dur: None,
                pid,
                tid: 0,
                s: None,
                args: Some(serde_json::json!({ "busy %": pct })),
            });
        }
    }

    fn advance(&mut self, at: Instant) {
        if at > self.now {
            self.now = at;
            self.flush_load(at.as_micros());
        }
    }

    fn source_track(&mut self, source: &str) -> (u32, u32) {
        if let Some(t) = self.sources.get(source) {
            return *t;
        }
        let pid = self.process(source);
        let tid = self.thread(pid, source, 2000);
        self.sources.insert(source.to_owned(), (pid, tid));
        (pid, tid)
    }
}

/// The category of a device's trace event, for filtering the timeline.
pub fn category(source: &str, text: &str) -> &'static str {
    let part = source.rsplit('.').next().unwrap_or(source);
    match part {
        "estop" | "buttons" | "button" => "button",
        "fluidnc" if text.starts_with("rx ") => "uart",
        "fluidnc" | "uart" | "uart0" | "link" => "uart",
        "poll" if source.ends_with(".fluidnc.poll") => "uart",
        "relays" => "relay",
        "mqtt" => "mqtt",
        _ if source.contains(".mqtt.") => "mqtt",
        "snmp" => "snmp",
        "http" => "http",
        "led" | "leds" => "led",
        "console" => "console",
        _ if text.contains("priority") || text.contains("governor") => "priority",
        _ if text.contains("mqtt") => "mqtt",
        _ if text.starts_with("fault") || text.contains("panicked") => "fault",
        _ => "event",
    }
}

fn short(text: &str) -> &str {
    match text.char_indices().nth(NAME_CHARS) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

impl Observer for TraceWriter {
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        self.advance(at);
        let (pid, tid) = self.source_track(source);
        let cat = category(source, text);
        let args = (text.chars().count() > NAME_CHARS).then(|| serde_json::json!({ "text": text }));
        self.emit(&TraceEvent {
            name: short(text),
            cat,
            ph: "i",
            ts: at.as_micros(),
            dur: None,
            pid,
            tid,
            s: Some("t"),
            args,
        });
    }

    fn sample(&mut self, at: Instant, name: &str, value: f64) {
        self.advance(at);
        let pid = self.process(name);
        if !value.is_finite() {
            return;
        }
        self.emit(&TraceEvent {
            name,
            cat: "metric",
            ph: "C",
            ts: at.as_micros(),
            dur: None,
            pid,
            tid: 0,
            s: None,
            args: Some(serde_json::json!({ "value": value })),
        });
    }

    fn wants_sched(&self) -> bool {
        true
    }

    fn sched(&mut self, at: Instant, s: &Sched<'_>) {
        self.advance(at);
        match *s {
            Sched::Core { core, name } => {
                let pid = self.process(name);
                let tid = self.thread(pid, name, 0);
                if self.cores.len() <= core.0 {
                    self.cores.resize_with(core.0 + 1, || None);
                }
                self.cores[core.0] = Some(CoreTrack {
                    name: name.to_owned(),
                    pid,
                    tid,
                    running: None,
                    load: Default::default(),
                    load_from: 0,
                    last_load: None,
                });
            }
            Sched::Spawn {
                task, name, core, ..
            } => {
                let pid = self.process(name);
                let sort = if core.is_some() { 100 } else { 1000 };
                let tid = self.thread(pid, name, sort);
                if self.tasks.len() <= task.0 {
                    self.tasks.resize_with(task.0 + 1, || None);
                }
                self.tasks[task.0] = Some(TaskTrack {
                    name: name.to_owned(),
                    pid,
                    tid,
                    core,
                    phase: Phase::Unknown,
                    since: at,
                    woken: false,
                });
            }
            Sched::Ready { task, cause } => {
                let Some(Some(t)) = self.tasks.get_mut(task.0) else {
                    return;
                };
                if t.core.is_none() {
                    return;
                }
                match t.phase {
                    Phase::Running | Phase::Preempted => t.woken = true,
                    Phase::Blocked => {
                        let (pid, tid, since) = (t.pid, t.tid, t.since);
                        t.phase = Phase::Ready;
                        t.since = at;
                        let why = match cause {
                            Wake::Timer => "delay",
                            Wake::Spawn | Wake::Other => "queue",
                        };
                        if at > since {
                            self.slice(why, "sched", pid, tid, since, at);
                        }
                    }
                    Phase::Unknown | Phase::Ready => {
                        t.phase = Phase::Ready;
                        t.since = at;
                    }
                }
            }
            Sched::Poll { task, core, cost } => match core {
                None => {
                    if let Some(Some(t)) = self.tasks.get(task.0) {
                        let (pid, tid) = (t.pid, t.tid);
                        self.instant("poll", "world", pid, tid, at);
                    }
                }
                Some(core) => {
                    self.task_phase(task.0, at, Phase::Running);
                    if let Some(Some(t)) = self.tasks.get_mut(task.0) {
                        t.woken = false;
                    }
                    if let Some(Some(c)) = self.cores.get_mut(core.0) {
                        c.running = Some((task, at));
                    }
                    self.add_load(core.0, at, cost);
                }
            },
            Sched::Preempt { core, task } => {
                if let Some((t, since)) = self
                    .cores
                    .get_mut(core.0)
                    .and_then(|c| c.as_mut().and_then(|c| c.running.take()))
                {
                    self.core_slice(core.0, t, since, at);
                }
                self.task_phase(task.0, at, Phase::Preempted);
            }
            Sched::Resume { core, task } => {
                if let Some(Some(c)) = self.cores.get_mut(core.0) {
                    c.running = Some((task, at));
                }
                self.task_phase(task.0, at, Phase::Running);
            }
            Sched::End { core, task } => {
                if let Some((t, since)) = self
                    .cores
                    .get_mut(core.0)
                    .and_then(|c| c.as_mut().and_then(|c| c.running.take()))
                {
                    self.core_slice(core.0, t, since, at);
                }
                let woken = matches!(self.tasks.get(task.0), Some(Some(t)) if t.woken);
                let next = if woken { Phase::Ready } else { Phase::Blocked };
                self.task_phase(task.0, at, next);
            }
        }
    }
}
