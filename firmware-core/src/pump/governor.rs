//! The priority governor: `IDLE` / `DISPENSING` / `EMERGENCY`.
//!
//! Pump control sets it; network tasks read it on every cycle and throttle themselves. Reading
//! is a single atomic load, so no reader can time out on a lock and see `IDLE` during an
//! emergency (a flaw of the design sketch). Tasks that must react to a change at once (the MQTT
//! drain, the WebSocket feed) wait on [`Governor::changed`].
//!
//! Transitions have rules: only [`Governor::resume`] leaves `EMERGENCY`, so a dispense that
//! finishes during an emergency cannot quietly return the system to `IDLE`.
use core::sync::atomic::{AtomicU8, Ordering};

use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::{Receiver, Watch};

/// System priority, from calm to urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Priority {
    /// Nothing pumping: network at full rate.
    Idle = 0,
    /// A dispense is running: network throttled.
    Dispensing = 1,
    /// E-stop: only emergency traffic.
    Emergency = 2,
}

impl Priority {
    /// Upper-case name as published (`"IDLE"`, `"DISPENSING"`, `"EMERGENCY"`).
    pub const fn name(self) -> &'static str {
        match self {
            Priority::Idle => "IDLE",
            Priority::Dispensing => "DISPENSING",
            Priority::Emergency => "EMERGENCY",
        }
    }
    const fn from_u8(v: u8) -> Priority {
        match v {
            0 => Priority::Idle,
            1 => Priority::Dispensing,
            _ => Priority::Emergency,
        }
    }
}

/// Why the priority changed; logged and published with the transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Reason {
    /// Power-up.
    Boot,
    /// A dispense or recipe started.
    DispenseStarted,
    /// The last active dispense finished or was stopped.
    DispenseFinished,
    /// The E-stop button (or a remote `estop` command) fired.
    EmergencyStop,
    /// FluidNC raised an alarm.
    MachineAlarm,
    /// An operator resumed after an emergency.
    Resumed,
}

/// A transition as seen by [`Governor::changed`] receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Transition {
    /// The new priority.
    pub priority: Priority,
    /// Why.
    pub reason: Reason,
}

/// Shared priority state. `W` is the number of tasks that may wait on [`Governor::changed`].
pub struct Governor<M: RawMutex, const W: usize> {
    current: AtomicU8,
    watch: Watch<M, Transition, W>,
}

impl<M: RawMutex, const W: usize> Default for Governor<M, W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RawMutex, const W: usize> Governor<M, W> {
    /// A governor at `IDLE`. `const`, so it can live in a `static`.
    pub const fn new() -> Self {
        Governor {
            current: AtomicU8::new(Priority::Idle as u8),
            watch: Watch::new(),
        }
    }

    /// The current priority: one atomic load, never blocks.
    pub fn get(&self) -> Priority {
        Priority::from_u8(self.current.load(Ordering::Acquire))
    }

    /// Ask for `priority` because of `reason`. Returns whether it changed.
    ///
    /// Leaving `EMERGENCY` is refused here (returns `false`); use [`resume`](Self::resume).
    pub fn request(&self, priority: Priority, reason: Reason) -> bool {
        let old = self.get();
        if old == priority || (old == Priority::Emergency && reason != Reason::Resumed) {
            return false;
        }
        self.current.store(priority as u8, Ordering::Release);
        info!(
            "governor: {} -> {} ({:?})",
            old.name(),
            priority.name(),
            reason
        );
        self.watch.sender().send(Transition { priority, reason });
        true
    }

    /// Enter `EMERGENCY` at once.
    pub fn emergency(&self, reason: Reason) -> bool {
        self.request(Priority::Emergency, reason)
    }

    /// Leave `EMERGENCY` for `IDLE` (an operator's resume).
    pub fn resume(&self) -> bool {
        self.request(Priority::Idle, Reason::Resumed)
    }

    /// A receiver for transitions, or `None` when all `W` receivers are taken.
    pub fn changed(&self) -> Option<Receiver<'_, M, Transition, W>> {
        self.watch.receiver()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;

    fn governor() -> Governor<NoopRawMutex, 2> {
        Governor::new()
    }

    #[test]
    fn only_resume_leaves_emergency() {
        let g = governor();
        assert!(g.request(Priority::Dispensing, Reason::DispenseStarted));
        assert!(g.emergency(Reason::EmergencyStop));
        assert!(!g.request(Priority::Idle, Reason::DispenseFinished));
        assert_eq!(g.get(), Priority::Emergency);
        assert!(g.resume());
        assert_eq!(g.get(), Priority::Idle);
    }

    #[test]
    fn receivers_see_the_latest_transition_with_its_reason() {
        let g = governor();
        let mut rx = g.changed().expect("a receiver slot");
        g.request(Priority::Dispensing, Reason::DispenseStarted);
        g.emergency(Reason::EmergencyStop);
        assert_eq!(
            rx.try_changed(),
            Some(Transition {
                priority: Priority::Emergency,
                reason: Reason::EmergencyStop
            })
        );
        assert_eq!(rx.try_changed(), None);
    }
}
