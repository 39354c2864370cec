//! Live pacing: virtual time that follows the wall clock × a speed factor.
//!
//! This is the one place in the kernel that reads the wall clock; deterministic runs never come
//! here. Virtual time is anchored to the wall clock at the moment pacing starts or the speed
//! changes, so a kernel that falls behind catches up instead of drifting, and a pause (speed 0)
//! freezes virtual time until resumed.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use firmware_core::time::{Duration, Instant};

/// Slowest and fastest speeds accepted (0 pauses).
pub const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.1..=100.0;

/// A thread-safe handle to steer a live kernel: speed, pause, stop.
#[derive(Clone)]
pub struct LiveControl {
    shared: Arc<ControlState>,
}

struct ControlState {
    speed_bits: AtomicU64,
    /// Bumped on every speed change so the pacer re-anchors.
    generation: AtomicU64,
    interrupted: AtomicBool,
    thread: Mutex<Option<std::thread::Thread>>,
}

impl LiveControl {
    pub(super) fn new(speed: f64) -> Self {
        LiveControl {
            shared: Arc::new(ControlState {
                speed_bits: AtomicU64::new(speed.to_bits()),
                generation: AtomicU64::new(0),
                interrupted: AtomicBool::new(false),
                thread: Mutex::new(None),
            }),
        }
    }

    pub(super) fn bind_thread(&self, thread: std::thread::Thread) {
        if let Ok(mut t) = self.shared.thread.lock() {
            *t = Some(thread);
        }
    }

    fn wake(&self) {
        if let Ok(t) = self.shared.thread.lock()
            && let Some(t) = t.as_ref()
        {
            t.unpark();
        }
    }

    /// Virtual seconds per wall second; 0 means paused.
    pub fn speed(&self) -> f64 {
        f64::from_bits(self.shared.speed_bits.load(Ordering::Acquire))
    }

    /// Change the speed (clamped to [`SPEED_RANGE`]; 0 pauses).
    pub fn set_speed(&self, speed: f64) {
        let speed = if speed <= 0.0 {
            0.0
        } else {
            speed.clamp(*SPEED_RANGE.start(), *SPEED_RANGE.end())
        };
        self.shared
            .speed_bits
            .store(speed.to_bits(), Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    /// Ask the kernel to return from `run_until` as soon as it can.
    pub fn interrupt(&self) {
        self.shared.interrupted.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether [`interrupt`](Self::interrupt) was called.
    pub fn is_interrupted(&self) -> bool {
        self.shared.interrupted.load(Ordering::Acquire)
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }
}

/// The wall-clock anchor of a live kernel.
pub(super) struct Pacer {
    control: LiveControl,
    anchor: Option<(std::time::Instant, Instant, u64)>,
}

impl Pacer {
    pub(super) fn new(control: LiveControl) -> Self {
        Pacer {
            control,
            anchor: None,
        }
    }

    pub(super) fn control(&self) -> &LiveControl {
        &self.control
    }

    /// Block until virtual time `target` is due, or until `has_work()` or an interrupt. Returns
    /// the virtual instant reached (at most `target`, never before `now`).
    pub(super) fn wait_until(
        &mut self,
        now: Instant,
        target: Instant,
        has_work: impl Fn() -> bool,
    ) -> Instant {
        loop {
            let speed = self.control.speed();
            let generation = self.control.generation();
            let (wall0, virt0) = match self.anchor {
                Some((w, v, g)) if g == generation && speed > 0.0 => (w, v),
                _ => {
                    let a = (std::time::Instant::now(), now);
                    self.anchor = Some((a.0, a.1, generation));
                    a
                }
            };
            if self.control.is_interrupted() {
                return now;
            }
            if speed <= 0.0 {
                if has_work() {
                    return now;
                }
                std::thread::park();
                continue;
            }
            let elapsed = std::time::Instant::now().saturating_duration_since(wall0);
            let virt_now =
                virt0 + Duration::from_micros((elapsed.as_secs_f64() * 1e6 * speed) as u64);
            if virt_now >= target {
                return target;
            }
            if has_work() {
                return virt_now.max(now);
            }
            let left_us = (target - virt_now).as_micros() as f64 / speed;
            std::thread::park_timeout(std::time::Duration::from_micros(left_us.ceil() as u64));
        }
    }
}
