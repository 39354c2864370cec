//! The kernel's virtual clock as the firmware sees it: [`SimClock`] implements
//! `firmware_core::ports::Clock` and `embedded_hal_async::delay::DelayNs`.
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use firmware_core::ports::Clock;
use firmware_core::time::{Duration, Instant};

use super::Shared;

/// A handle on the kernel's virtual clock. Cheap to clone; all clones share one timeline.
///
/// Besides telling time it lets simulated drivers charge CPU time to the task that calls them
/// ([`SimClock::charge`]), which is how a WiFi burst or a TLS handshake occupies a core.
#[derive(Clone)]
pub struct SimClock {
    pub(super) shared: Rc<Shared>,
}

impl SimClock {
    /// Charge `cost` of CPU time to the task being polled now (nothing if it runs on no core).
    pub fn charge(&self, cost: Duration) {
        let c = &self.shared.charge;
        c.set(c.get() + cost);
    }

    /// A future that completes at `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            shared: self.shared.clone(),
            deadline,
            key: None,
        }
    }

    /// A future that completes `d` from now.
    pub fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(self.now() + d)
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.shared.now.get()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        SimClock::now(self)
    }
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        SimClock::sleep_until(self, deadline)
    }
}

impl embedded_hal_async::delay::DelayNs for SimClock {
    async fn delay_ns(&mut self, ns: u32) {
        // The clock counts microseconds: round up so a delay never ends early.
        self.sleep(Duration::from_micros(u64::from(ns).div_ceil(1_000)))
            .await
    }
}

/// Completes when virtual time reaches its deadline. Dropping it cancels the timer.
pub struct Sleep {
    shared: Rc<Shared>,
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.now.get() >= self.deadline {
            if let Some(key) = self.key.take() {
                self.shared.timers.borrow_mut().remove(&key);
            }
            return Poll::Ready(());
        }
        let mut timers = self.shared.timers.borrow_mut();
        match self.key {
            Some(key) => {
                // Still pending: keep the newest waker (the task may have moved the future).
                if let Some((w, _)) = timers.get_mut(&key) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                } else {
                    timers.insert(key, (cx.waker().clone(), self.shared.current.get()));
                }
            }
            None => {
                let seq = self.shared.timer_seq.get();
                self.shared.timer_seq.set(seq + 1);
                let key = (self.deadline, seq);
                // Whose timer it is, so an observer can tell a delay from other waits.
                timers.insert(key, (cx.waker().clone(), self.shared.current.get()));
                drop(timers);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.timers.borrow_mut().remove(&key);
        }
    }
}
