//! The simulation kernel: a single-threaded executor with a virtual clock and simulated cores.
//!
//! # Why not tokio's paused clock
//! A tokio current-thread runtime with paused time does give virtual time, but every wake-up
//! instant costs a trip through its driver: a bare 1 ms periodic task manages about 1.6 M instants
//! per wall second here (3.6 M instants, one virtual hour, took 2.2 s). The kernel below is a
//! small executor built on `async-task` whose timers are an ordered map, so an idle instant
//! costs a map pop and a poll. It is deterministic by construction (FIFO run queues, timers
//! ordered by deadline then registration, cores served in index order, no threads), and since it
//! owns scheduling it models CPU cores exactly instead of wrapping futures.
//!
//! # Model
//! * **Time** is virtual. When nothing can run at the current instant, time jumps to the next
//!   timer or to the moment a busy core becomes free, or, after [`Kernel::go_live`], follows the
//!   wall clock times a speed factor, which is how the live twin and real network clients share
//!   one timeline.
//! * **Tasks** run on a simulated core (firmware tasks) or on no core (the world: simulated
//!   parts, the scenario timeline; they run instantly and cost nothing).
//! * **Cores** run the ready task of highest priority (ties: first ready first), preemptively.
//!   A poll is a slice: its effects happen when it starts, then the core stays busy for the
//!   slice's cost, which is the task's fixed cost per poll plus whatever the code it called
//!   charged ([`SimClock::charge`]). A task of higher priority that becomes ready during a slice
//!   suspends it and runs at once; the rest of the suspended slice runs afterwards, exactly as
//!   an RTOS would finish the preempted work.
//! * **Stats**: per task polls, run time, and wait time (ready but not running because its core
//!   was busy); per core busy time in 10 ms buckets, for utilisation over any window.
pub mod inbox;
pub mod pacing;
pub mod time;
pub mod trace;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use async_task::{Runnable, Task};
use firmware_core::time::{Duration, Instant};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use pacing::LiveControl;
pub use time::{SimClock, Sleep};
pub use trace::{Event, Trace};

/// Index of a simulated core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub usize);

/// Index of a spawned task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub usize);

/// Width of a utilisation bucket.
pub const BUCKET: Duration = Duration::from_millis(10);

/// Where and how a task runs.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Name used in the trace and stats.
    pub name: String,
    /// The core it is pinned to, or `None` for world tasks (instant, free).
    pub core: Option<CoreId>,
    /// Higher runs first on its core.
    pub priority: u8,
    /// CPU time every poll costs, before explicit charges.
    pub poll_cost: Duration,
}

impl TaskSpec {
    /// A world task: no core, no cost.
    pub fn world(name: impl Into<String>) -> Self {
        TaskSpec {
            name: name.into(),
            core: None,
            priority: 0,
            poll_cost: Duration::ZERO,
        }
    }
    /// A task pinned to `core` with `priority` and a per-poll cost.
    pub fn on_core(
        name: impl Into<String>,
        core: CoreId,
        priority: u8,
        poll_cost: Duration,
    ) -> Self {
        TaskSpec {
            name: name.into(),
            core: Some(core),
            priority,
            poll_cost,
        }
    }
}

/// What one task did during a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskStats {
    /// Name from its spec.
    pub name: String,
    /// Core name, or empty for world tasks.
    pub core: String,
    /// Times it was polled.
    pub polls: u64,
    /// CPU time charged.
    pub run: Duration,
    /// Time spent ready but waiting for its core.
    pub wait: Duration,
    /// Longest single wait.
    pub max_wait: Duration,
}

/// What one core did during a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreStats {
    /// Name given at creation.
    pub name: String,
    /// Total busy time.
    pub busy: Duration,
    /// Busy microseconds per [`BUCKET`], from time zero.
    pub buckets: Vec<u32>,
}

impl CoreStats {
    /// Busy fraction over `[from, to)`, at bucket resolution.
    pub fn utilisation(&self, from: Instant, to: Instant) -> f64 {
        if to <= from {
            return 0.0;
        }
        let b = BUCKET.as_micros();
        let first = (from.as_micros() / b) as usize;
        let last = to.as_micros().div_ceil(b) as usize;
        let busy: u64 = self
            .buckets
            .iter()
            .take(last)
            .skip(first)
            .map(|&u| u64::from(u))
            .sum();
        busy as f64 / ((last - first) as u64 * b) as f64
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    task: TaskId,
}

struct ReadyEntry {
    priority: u8,
    seq: u64,
    runnable: Runnable<Meta>,
}

impl PartialEq for ReadyEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.priority, self.seq) == (other.priority, other.seq)
    }
}
impl Eq for ReadyEntry {}
impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ReadyEntry {
    /// Max-heap order: higher priority first, then lower sequence (earlier ready) first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

struct CoreState {
    name: String,
    /// The slice running now: its task's priority and when it ends.
    active: Option<(u8, Instant)>,
    /// Slices preempted by higher-priority work: priority and time still to run.
    suspended: Vec<(u8, Duration)>,
    ready: BinaryHeap<ReadyEntry>,
    busy: Duration,
    buckets: Vec<u32>,
}

struct TaskState {
    spec: TaskSpec,
    ready_since: Option<Instant>,
    stats: TaskStats,
}

impl CoreState {
    /// Retire the active slice if it has ended, resuming suspended ones in turn.
    fn settle(&mut self, now: Instant) {
        loop {
            match self.active {
                Some((_, end)) if end > now => return,
                _ => self.active = None,
            }
            match self.suspended.pop() {
                Some((priority, left)) => self.active = Some((priority, now + left)),
                None => return,
            }
        }
    }
}

/// Wakes from any thread land here; the kernel sorts them into run queues.
struct Injector {
    queue: Mutex<VecDeque<Runnable<Meta>>>,
    /// The kernel's thread, unparked on a wake in live mode.
    thread: std::thread::Thread,
}

/// State shared by the kernel, its clocks and its tasks (all on one thread).
pub(crate) struct Shared {
    now: Cell<Instant>,
    timers: RefCell<BTreeMap<(Instant, u64), std::task::Waker>>,
    timer_seq: Cell<u64>,
    charge: Cell<Duration>,
    trace: RefCell<Trace>,
}

/// The simulation kernel. See the module docs.
pub struct Kernel {
    shared: Rc<Shared>,
    injector: Arc<Injector>,
    world: VecDeque<Runnable<Meta>>,
    incoming: VecDeque<Runnable<Meta>>,
    cores: Vec<CoreState>,
    tasks: Vec<TaskState>,
    ready_seq: u64,
    seed: u64,
    /// `Some` in live mode: time follows the wall clock.
    pacer: Option<pacing::Pacer>,
    panics: Vec<String>,
}

/// A spawned task: await it for its output, drop it to cancel it, or detach it.
pub struct JoinHandle<T>(Task<T, Meta>);

impl<T> JoinHandle<T> {
    /// Let the task run to completion on its own.
    pub fn detach(self) {
        self.0.detach();
    }
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Why [`Kernel::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Virtual time reached the requested instant.
    Reached,
    /// Nothing can ever run again (no ready task, no timer, no busy core). Virtual pacing only:
    /// a live kernel waits for wakes from other threads instead.
    Idle,
    /// A [`LiveControl::interrupt`] stopped the run.
    Interrupted,
}

impl Kernel {
    /// A kernel at time zero with the given seed, pacing virtually.
    pub fn new(seed: u64) -> Self {
        Kernel {
            shared: Rc::new(Shared {
                now: Cell::new(Instant::ZERO),
                timers: RefCell::new(BTreeMap::new()),
                timer_seq: Cell::new(0),
                charge: Cell::new(Duration::ZERO),
                trace: RefCell::new(Trace::default()),
            }),
            injector: Arc::new(Injector {
                queue: Mutex::new(VecDeque::new()),
                thread: std::thread::current(),
            }),
            world: VecDeque::new(),
            incoming: VecDeque::new(),
            cores: Vec::new(),
            tasks: Vec::new(),
            ready_seq: 0,
            seed,
            pacer: None,
            panics: Vec::new(),
        }
    }

    /// The seed every random choice derives from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Switch to live pacing at `speed` (virtual seconds per wall second; 0 pauses) and return
    /// the handle that steers it from any thread. Without this, time jumps from event to event.
    pub fn go_live(&mut self, speed: f64) -> LiveControl {
        let control = LiveControl::new(0.0);
        control.bind_thread(self.injector.thread.clone());
        control.set_speed(speed);
        self.pacer = Some(pacing::Pacer::new(control.clone()));
        control
    }

    /// A clock handle for firmware and parts.
    pub fn clock(&self) -> SimClock {
        SimClock {
            shared: self.shared.clone(),
        }
    }

    /// A trace handle for parts and devices.
    pub fn tracer(&self) -> Tracer {
        Tracer {
            shared: self.shared.clone(),
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.shared.now.get()
    }

    /// A random generator of its own for `stream` (a link, a part), derived from the seed.
    /// Two streams never share a sequence, and adding a stream does not change the others.
    pub fn rng(&self, stream: &str) -> ChaCha8Rng {
        rng_for(self.seed, stream)
    }

    /// Add a simulated core.
    pub fn add_core(&mut self, name: impl Into<String>) -> CoreId {
        self.cores.push(CoreState {
            name: name.into(),
            active: None,
            suspended: Vec::new(),
            ready: BinaryHeap::new(),
            busy: Duration::ZERO,
            buckets: Vec::new(),
        });
        CoreId(self.cores.len() - 1)
    }

    /// Spawn `future` as described by `spec`. Dropping the returned handle cancels the task;
    /// call [`JoinHandle::detach`] to let it run on its own.
    pub fn spawn<F>(&mut self, spec: TaskSpec, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let id = TaskId(self.tasks.len());
        let core_name = spec
            .core
            .and_then(|c| self.cores.get(c.0))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        self.tasks.push(TaskState {
            stats: TaskStats {
                name: spec.name.clone(),
                core: core_name,
                ..TaskStats::default()
            },
            spec,
            ready_since: None,
        });
        let injector = self.injector.clone();
        let schedule = move |r: Runnable<Meta>| {
            if let Ok(mut q) = injector.queue.lock() {
                q.push_back(r);
            }
            injector.thread.unpark();
        };
        let (runnable, task) = async_task::Builder::new()
            .metadata(Meta { task: id })
            .spawn_local(move |_| future, schedule);
        runnable.schedule();
        JoinHandle(task)
    }

    /// Record an event in the trace.
    pub fn record(&self, source: &str, text: impl Into<String>) {
        self.tracer().record(source, text);
    }

    /// Run until virtual time reaches `until` or nothing can run any more.
    pub fn run_until(&mut self, until: Instant) -> RunEnd {
        loop {
            if self
                .pacer
                .as_ref()
                .is_some_and(|p| p.control().is_interrupted())
            {
                return RunEnd::Interrupted;
            }
            self.collect_ready();
            if let Some(r) = self.world.pop_front() {
                self.poll(r, None);
                continue;
            }
            if self.run_one_core_slice() {
                continue;
            }
            match self.next_instant() {
                Some(next) if next <= until => {
                    self.advance_to(next);
                    self.fire_timers();
                }
                None if self.pacer.is_none() => return RunEnd::Idle,
                _ => {
                    self.advance_to(until);
                    if self.now() >= until {
                        return RunEnd::Reached;
                    }
                }
            }
        }
    }

    /// The next instant at which something is due (a timer, or the end of a slice that work
    /// waits behind), or `None` when nothing is. For code that drives the kernel one instant at
    /// a time, like the blocking adapters of `periph::blocking`.
    pub fn next_event(&self) -> Option<Instant> {
        self.next_instant()
    }

    /// Run for `d` of virtual time from now.
    pub fn run_for(&mut self, d: Duration) -> RunEnd {
        let until = self.now() + d;
        self.run_until(until)
    }

    /// Per-task statistics, in spawn order.
    pub fn task_stats(&self) -> Vec<TaskStats> {
        self.tasks.iter().map(|t| t.stats.clone()).collect()
    }

    /// Per-core statistics, in creation order.
    pub fn core_stats(&self) -> Vec<CoreStats> {
        self.cores
            .iter()
            .map(|c| CoreStats {
                name: c.name.clone(),
                busy: c.busy,
                buckets: c.buckets.clone(),
            })
            .collect()
    }

    /// Panic messages of tasks that panicked (the run goes on without them).
    pub fn panics(&self) -> &[String] {
        &self.panics
    }

    /// Read the trace.
    pub fn with_trace<R>(&self, f: impl FnOnce(&Trace) -> R) -> R {
        f(&self.shared.trace.borrow())
    }

    fn collect_ready(&mut self) {
        // Swap the shared queue with a spare one so the lock is held only for the swap.
        match self.injector.queue.lock() {
            Ok(mut q) if !q.is_empty() => std::mem::swap(&mut *q, &mut self.incoming),
            _ => return,
        }
        let now = self.now();
        while let Some(r) = self.incoming.pop_front() {
            let id = r.metadata().task;
            let Some(task) = self.tasks.get_mut(id.0) else {
                continue;
            };
            match task.spec.core {
                None => self.world.push_back(r),
                Some(core) => {
                    task.ready_since.get_or_insert(now);
                    self.ready_seq += 1;
                    if let Some(c) = self.cores.get_mut(core.0) {
                        c.ready.push(ReadyEntry {
                            priority: task.spec.priority,
                            seq: self.ready_seq,
                            runnable: r,
                        });
                    }
                }
            }
        }
    }

    /// On the first core that can run something now, poll its best ready task: when the core
    /// is free, or when that task outranks the slice in progress (which is then suspended and
    /// resumes afterwards). Returns whether it polled.
    fn run_one_core_slice(&mut self) -> bool {
        let now = self.now();
        for ci in 0..self.cores.len() {
            let core = &mut self.cores[ci];
            core.settle(now);
            let Some(best) = core.ready.peek().map(|e| e.priority) else {
                continue;
            };
            match core.active {
                None => {}
                Some((running, end)) if best > running => {
                    core.suspended.push((running, end - now));
                    core.active = None;
                }
                Some(_) => continue,
            }
            if let Some(entry) = core.ready.pop() {
                self.poll(entry.runnable, Some(CoreId(ci)));
                return true;
            }
        }
        false
    }

    fn poll(&mut self, r: Runnable<Meta>, core: Option<CoreId>) {
        let id = r.metadata().task;
        let now = self.now();
        self.shared.charge.set(Duration::ZERO);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| r.run()));
        let charged = self.shared.charge.replace(Duration::ZERO);
        let Some(task) = self.tasks.get_mut(id.0) else {
            return;
        };
        if let Err(payload) = result {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            let text = format!("task {} panicked: {msg}", task.spec.name);
            self.shared
                .trace
                .borrow_mut()
                .record(now, "kernel", text.clone());
            self.panics.push(text);
        }
        task.stats.polls += 1;
        let Some(core) = core else {
            return;
        };
        let cost = task.spec.poll_cost + charged;
        if let Some(since) = task.ready_since.take() {
            let waited = now - since;
            task.stats.wait = task.stats.wait + waited;
            task.stats.max_wait = task.stats.max_wait.max(waited);
        }
        task.stats.run = task.stats.run + cost;
        let priority = task.spec.priority;
        let c = &mut self.cores[core.0];
        if cost > Duration::ZERO {
            c.active = Some((priority, now + cost));
        }
        c.settle(now);
        c.busy = c.busy + cost;
        add_to_buckets(&mut c.buckets, now, cost);
    }

    fn next_instant(&self) -> Option<Instant> {
        let timer = self.shared.timers.borrow().keys().next().map(|k| k.0);
        // A slice's end matters only to work waiting behind it.
        let core = self
            .cores
            .iter()
            .filter(|c| !c.ready.is_empty() || !c.suspended.is_empty())
            .filter_map(|c| c.active.map(|(_, end)| end))
            .min();
        match (timer, core) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Move time to `target`; in live mode wait for the wall clock first, and stop short when
    /// a wake arrives from another thread (time then stands where the wall clock is).
    fn advance_to(&mut self, target: Instant) {
        let now = self.now();
        if target <= now {
            return;
        }
        let reached = match &mut self.pacer {
            None => target,
            Some(pacer) => {
                let injector = &self.injector;
                pacer.wait_until(now, target, || {
                    injector
                        .queue
                        .lock()
                        .map(|q| !q.is_empty())
                        .unwrap_or(false)
                })
            }
        };
        self.shared.now.set(reached);
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        loop {
            let entry = {
                let mut timers = self.shared.timers.borrow_mut();
                match timers.first_key_value() {
                    Some((k, _)) if k.0 <= now => timers.pop_first(),
                    _ => None,
                }
            };
            match entry {
                Some((_, waker)) => waker.wake(),
                None => break,
            }
        }
    }
}

fn add_to_buckets(buckets: &mut Vec<u32>, start: Instant, cost: Duration) {
    let b = BUCKET.as_micros();
    let mut t = start.as_micros();
    let end = t + cost.as_micros();
    while t < end {
        let idx = (t / b) as usize;
        let bucket_end = (idx as u64 + 1) * b;
        let part = end.min(bucket_end) - t;
        if buckets.len() <= idx {
            buckets.resize(idx + 1, 0);
        }
        buckets[idx] = buckets[idx].saturating_add(part as u32);
        t += part;
    }
}

/// The random generator for `stream` under `seed`.
pub fn rng_for(seed: u64, stream: &str) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in stream.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// A handle for recording events and metric samples at the current virtual time.
#[derive(Clone)]
pub struct Tracer {
    shared: Rc<Shared>,
}

impl Tracer {
    /// Record an event from `source`.
    pub fn record(&self, source: &str, text: impl Into<String>) {
        let now = self.shared.now.get();
        self.shared
            .trace
            .borrow_mut()
            .record(now, source, text.into());
    }
    /// Record a metric sample.
    pub fn sample(&self, name: &str, value: f64) {
        let now = self.shared.now.get();
        self.shared.trace.borrow_mut().sample(now, name, value);
    }
    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.shared.now.get()
    }
}

#[cfg(test)]
mod tests;
