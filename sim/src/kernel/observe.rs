//! Observers: whatever wants to see a run as it happens, without the kernel keeping it.
//!
//! An [`Observer`] registered with [`super::Kernel::observe`] receives every traced event and
//! metric sample at the moment it is recorded, and, if it asks for them, the kernel's scheduling
//! decisions ([`Sched`]): which task runs on which core from when to when, why a task waited.
//! That is how a scenario judges its expectations, a report collects its plots and a trace file
//! is written while the run goes on, each keeping only its own bounded summary (or streaming to
//! disk), so a run's memory does not grow with virtual time.
//!
//! Observers run inside the kernel's recording path: they must not record into the trace or
//! drive the kernel themselves (the trace is borrowed while they run).
use firmware_core::time::{Duration, Instant};

use super::{CoreId, TaskId};

/// Identifies a registered observer, to remove it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserverId(pub(super) u64);

/// Why a task became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// It was just spawned.
    Spawn,
    /// A timer it waited on expired (a delay).
    Timer,
    /// Anything else woke it: a queue, a signal, a byte, a socket.
    Other,
}

/// A scheduling decision, reported at the virtual instant it takes effect.
#[derive(Debug, Clone, Copy)]
pub enum Sched<'a> {
    /// A core exists (reported for every core when an observer registers, then as added).
    Core {
        /// Its index.
        core: CoreId,
        /// Its name.
        name: &'a str,
    },
    /// A task exists (reported for every task when an observer registers, then as spawned).
    Spawn {
        /// Its index.
        task: TaskId,
        /// Its name.
        name: &'a str,
        /// The core it is pinned to, or `None` for world tasks.
        core: Option<CoreId>,
        /// Its priority on that core.
        priority: u8,
    },
    /// The task became ready to run.
    Ready {
        /// The task.
        task: TaskId,
        /// What woke it.
        cause: Wake,
    },
    /// The task was polled: its effects happened now, and (on a core) its slice occupies the
    /// core from now for `cost`, unless preempted.
    Poll {
        /// The task.
        task: TaskId,
        /// Its core (`None`: a world task, which takes no time).
        core: Option<CoreId>,
        /// CPU time charged for this poll (fixed cost plus explicit charges).
        cost: Duration,
    },
    /// A task of higher priority took the core: the slice of `task` is suspended.
    Preempt {
        /// The core.
        core: CoreId,
        /// The task whose slice was suspended.
        task: TaskId,
    },
    /// A suspended slice goes on.
    Resume {
        /// The core.
        core: CoreId,
        /// The task whose slice resumes.
        task: TaskId,
    },
    /// A slice ended (reported at its end instant).
    End {
        /// The core.
        core: CoreId,
        /// The task whose slice ended.
        task: TaskId,
    },
}

/// Something that watches a run. Every method has an empty default.
pub trait Observer {
    /// An event was recorded (`Tracer::record`).
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        let _ = (at, source, text);
    }
    /// A metric sample was recorded (`Tracer::sample`).
    fn sample(&mut self, at: Instant, name: &str, value: f64) {
        let _ = (at, name, value);
    }
    /// Whether [`Observer::sched`] should be called (building those reports costs a little,
    /// so the kernel skips it when no observer wants them). Must not change once registered.
    fn wants_sched(&self) -> bool {
        false
    }
    /// A scheduling decision.
    fn sched(&mut self, at: Instant, s: &Sched<'_>) {
        let _ = (at, s);
    }
}
