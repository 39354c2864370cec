//! HealthTask: heartbeats, the hardware-watchdog feed, stack/heap watermarks, and the fault policy.
//!
//! * Every task beats on the shared [`Heartbeats`] board (a blocking-mutex cell per task, no
//!   queue: a heartbeat is a latest value, and beating must never block or fail).
//! * [`HealthCore`] checks, on each periodic check, that every watched task beat within its
//!   timeout (`HealthThresholds::heartbeat_timeout_ms` unless set per task). The **watchdog is fed
//!   only while every watched task is alive**: a hung task therefore ends in a hardware reset after
//!   `watchdog_ms`, unless it recovers first.
//! * **Fault policy**: the first time a task is found hung, HealthTask orders `SAFE_STATE` through
//!   SwitchTask (`SwitchRequest { source: Health, op: SafeState }`) and announces it
//!   ([`HealthEvent::SafeStateOrdered`], and in the published [`HealthStatus`]). If SwitchTask's
//!   queue is full the order is retried on the next check. When every task is alive again the
//!   order is re-armed; the outlets stay in the safe state until an operator clears the fault.
//! * Watermarks (lowest free stack per task, free heap) come from the platform through
//!   [`HealthPlatform`]; one below [`HealthCore::set_low_stack_bytes`] is announced once.
use core::cell::Cell;
use core::fmt;

use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::Watch;
use heapless::Deque;

use super::config::HealthThresholds;
use super::switch::offer_request;
use super::{Source, SwitchOp, SwitchRequest};
use crate::ports::Clock;
use crate::queue::Queue;
use crate::time::{Duration, Instant};

/// Most tasks the heartbeat board tracks.
pub const MAX_TASKS: usize = 12;

/// A task's slot on the heartbeat board (0..[`MAX_TASKS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TaskId(pub u8);

impl TaskId {
    /// LoggerTask.
    pub const LOGGER: TaskId = TaskId(0);
    /// StorageTask.
    pub const STORAGE: TaskId = TaskId(1);
    /// SwitchTask.
    pub const SWITCH: TaskId = TaskId(2);
    /// ButtonTask.
    pub const BUTTON: TaskId = TaskId(3);
    /// MeterTask.
    pub const METER: TaskId = TaskId(4);
    /// NetTask.
    pub const NET: TaskId = TaskId(5);
    /// ConsoleTask.
    pub const CONSOLE: TaskId = TaskId(6);

    fn index(self) -> Option<usize> {
        let i = usize::from(self.0);
        (i < MAX_TASKS).then_some(i)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            TaskId::LOGGER => "logger",
            TaskId::STORAGE => "storage",
            TaskId::SWITCH => "switch",
            TaskId::BUTTON => "button",
            TaskId::METER => "meter",
            TaskId::NET => "net",
            TaskId::CONSOLE => "console",
            _ => return write!(f, "task{}", self.0),
        };
        f.write_str(name)
    }
}

/// The shared heartbeat board: the last beat of every task.
pub struct Heartbeats<M: RawMutex> {
    beats: BlockingMutex<M, Cell<[Option<Instant>; MAX_TASKS]>>,
}

impl<M: RawMutex> Default for Heartbeats<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RawMutex> Heartbeats<M> {
    /// A board where nobody has beaten yet. `const`, for `static`s.
    pub const fn new() -> Self {
        Heartbeats {
            beats: BlockingMutex::new(Cell::new([None; MAX_TASKS])),
        }
    }

    /// Task `id` is alive at `now`. An id out of range is ignored.
    pub fn beat(&self, id: TaskId, now: Instant) {
        if let Some(i) = id.index() {
            self.beats.lock(|c| {
                let mut b = c.get();
                b[i] = Some(now);
                c.set(b);
            });
        }
    }

    /// Every task's last beat.
    pub fn read(&self) -> [Option<Instant>; MAX_TASKS] {
        self.beats.lock(Cell::get)
    }
}

/// What the platform reports and does for HealthTask (a board: RP2040 watchdog, FreeRTOS-style
/// stack painting; the simulator: its own bookkeeping).
///
/// # Contract
/// * `feed_watchdog` MUST restart the hardware watchdog's countdown and MUST NOT block.
/// * Watermarks are *lowest ever* free bytes; `None` means the platform cannot tell.
pub trait HealthPlatform {
    /// Restart the hardware watchdog countdown.
    fn feed_watchdog(&mut self);
    /// Lowest free stack of `task` so far, bytes.
    fn stack_free_bytes(&mut self, task: TaskId) -> Option<u32>;
    /// Lowest free heap (or static pool) so far, bytes.
    fn heap_free_bytes(&mut self) -> Option<u32>;
}

/// An announcement of HealthTask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HealthEvent {
    /// A task missed its heartbeat timeout.
    TaskHung(TaskId),
    /// A hung task beats again.
    TaskRecovered(TaskId),
    /// The safe state was ordered from SwitchTask.
    SafeStateOrdered,
    /// A task's stack watermark fell below the warning level.
    LowStack {
        /// Which task.
        task: TaskId,
        /// Free bytes.
        free: u32,
    },
    /// Free heap fell below the warning level.
    LowHeap {
        /// Free bytes.
        free: u32,
    },
}

/// What the runner must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HealthAction {
    /// Feed the hardware watchdog.
    FeedWatchdog,
    /// Offer this request to SwitchTask and report with [`HealthCore::handle_order_result`].
    OrderSafeState(SwitchRequest),
    /// Publish this event.
    Announce(HealthEvent),
}

/// Published health summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HealthStatus {
    /// Bit `i`: task `i` is hung.
    pub hung: u16,
    /// The watchdog was fed at the last check.
    pub watchdog_fed: bool,
    /// The safe state has been ordered for the current fault.
    pub safe_state_ordered: bool,
    /// Lowest free stack of any task, bytes.
    pub min_stack_free: Option<u32>,
    /// Lowest free heap, bytes.
    pub heap_free: Option<u32>,
    /// Checks done.
    pub checks: u32,
}

/// The sans-IO health monitor.
///
/// # Call order
/// Every [`check_period`](Self::check_period): feed watermarks (`handle_stack`, `handle_heap`),
/// then [`handle_check`](Self::handle_check) with the heartbeat board, then drain
/// [`poll_action`](Self::poll_action).
#[derive(Debug, Clone)]
pub struct HealthCore {
    default_timeout: Duration,
    watchdog: Duration,
    watched: [Option<Duration>; MAX_TASKS],
    started: Instant,
    hung: u16,
    order: OrderState,
    low_stack_bytes: u32,
    low_heap_bytes: u32,
    low_stack: u16,
    low_heap: bool,
    status: HealthStatus,
    actions: Deque<HealthAction, 16>,
    actions_dropped: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderState {
    Armed,
    Pending,
    Done,
}

impl HealthCore {
    /// A monitor watching nothing yet; `now` starts every task's grace period.
    pub fn new(thresholds: &HealthThresholds, now: Instant) -> Self {
        HealthCore {
            default_timeout: Duration::from_millis(u64::from(thresholds.heartbeat_timeout_ms)),
            watchdog: Duration::from_millis(u64::from(thresholds.watchdog_ms)),
            watched: [None; MAX_TASKS],
            started: now,
            hung: 0,
            order: OrderState::Armed,
            low_stack_bytes: 256,
            low_heap_bytes: 1024,
            low_stack: 0,
            low_heap: false,
            status: HealthStatus::default(),
            actions: Deque::new(),
            actions_dropped: 0,
        }
    }

    /// Watch `task` with its own timeout, or the configured `heartbeat_timeout_ms` for `None`.
    pub fn watch(&mut self, task: TaskId, timeout: Option<Duration>) {
        if let Some(i) = task.index() {
            self.watched[i] = Some(timeout.unwrap_or(self.default_timeout));
        }
    }

    /// Stack warning level, bytes (default 256).
    pub fn set_low_stack_bytes(&mut self, bytes: u32) {
        self.low_stack_bytes = bytes;
    }

    /// Heap warning level, bytes (default 1024).
    pub fn set_low_heap_bytes(&mut self, bytes: u32) {
        self.low_heap_bytes = bytes;
    }

    /// How often to check: a quarter of the shorter of the heartbeat timeout and the watchdog
    /// period, at least 1 ms, so a feed is never late and a hang is seen within 1.25 timeouts.
    pub fn check_period(&self) -> Duration {
        let shortest = self
            .watched
            .iter()
            .flatten()
            .copied()
            .chain([self.default_timeout, self.watchdog])
            .filter(|d| *d > Duration::ZERO)
            .min()
            .unwrap_or(Duration::from_secs(1));
        Duration::from_micros(shortest.as_micros() / 4).max(Duration::from_millis(1))
    }

    /// A task's lowest free stack.
    pub fn handle_stack(&mut self, task: TaskId, free: u32) {
        let Some(i) = task.index() else { return };
        self.status.min_stack_free = Some(self.status.min_stack_free.map_or(free, |m| m.min(free)));
        if free < self.low_stack_bytes && self.low_stack & (1 << i) == 0 {
            self.low_stack |= 1 << i;
            warn!("health: {} stack low, {} bytes free", task, free);
            self.push(HealthAction::Announce(HealthEvent::LowStack { task, free }));
        }
    }

    /// Lowest free heap.
    pub fn handle_heap(&mut self, free: u32) {
        self.status.heap_free = Some(free);
        if free < self.low_heap_bytes && !self.low_heap {
            self.low_heap = true;
            self.push(HealthAction::Announce(HealthEvent::LowHeap { free }));
        }
    }

    /// Check the heartbeats at `now`: announce hangs and recoveries, order the safe state,
    /// decide the watchdog feed.
    pub fn handle_check(&mut self, beats: &[Option<Instant>; MAX_TASKS], now: Instant) {
        self.status.checks = self.status.checks.wrapping_add(1);
        for (i, timeout) in self.watched.into_iter().enumerate() {
            let Some(timeout) = timeout else { continue };
            let last = beats[i].unwrap_or(self.started).max(self.started);
            let task = TaskId(i as u8);
            let bit = 1u16 << i;
            let late = now.saturating_since(last) > timeout;
            if late && self.hung & bit == 0 {
                self.hung |= bit;
                error!("health: {} missed its heartbeat", task);
                self.push(HealthAction::Announce(HealthEvent::TaskHung(task)));
            } else if !late && self.hung & bit != 0 {
                self.hung &= !bit;
                info!("health: {} recovered", task);
                self.push(HealthAction::Announce(HealthEvent::TaskRecovered(task)));
            }
        }
        if self.hung != 0 {
            if self.order == OrderState::Armed {
                self.order = OrderState::Pending;
            }
            if self.order == OrderState::Pending {
                let mut req = SwitchRequest::new(Source::Health, SwitchOp::SafeState);
                req.token = self.status.checks;
                self.push(HealthAction::OrderSafeState(req));
            }
        } else if self.order == OrderState::Done {
            self.order = OrderState::Armed;
        }
        self.status.hung = self.hung;
        self.status.watchdog_fed = self.hung == 0;
        self.status.safe_state_ordered = self.order == OrderState::Done;
        if self.hung == 0 {
            self.push(HealthAction::FeedWatchdog);
        }
    }

    /// Whether the safe-state order reached SwitchTask's queue (`false`: queue full, retry).
    pub fn handle_order_result(&mut self, queued: bool) {
        if queued && self.order == OrderState::Pending {
            self.order = OrderState::Done;
            self.status.safe_state_ordered = true;
            warn!("health: SAFE_STATE ordered");
            self.push(HealthAction::Announce(HealthEvent::SafeStateOrdered));
        }
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<HealthAction> {
        self.actions.pop_front()
    }

    /// The summary to publish.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Actions dropped because nobody polled them (a bug in the runner if not 0).
    pub fn actions_dropped(&self) -> u32 {
        self.actions_dropped
    }

    fn push(&mut self, a: HealthAction) {
        if self.actions.is_full() {
            self.actions.pop_front();
            self.actions_dropped = self.actions_dropped.wrapping_add(1);
        }
        let _ = self.actions.push_back(a);
    }
}

/// The HealthTask runner: checks every [`HealthCore::check_period`], feeds the watchdog through
/// the platform, orders the safe state through SwitchTask's request queue, publishes
/// [`HealthStatus`] and (optionally) queues [`HealthEvent`]s for the console/net.
pub struct HealthTask<'a, P, C, M: RawMutex, const Q: usize, const W: usize, const E: usize> {
    core: HealthCore,
    platform: P,
    clock: C,
    beats: &'a Heartbeats<M>,
    switch: &'a Queue<M, SwitchRequest, Q>,
    published: &'a Watch<M, HealthStatus, W>,
    events: Option<&'a Queue<M, HealthEvent, E>>,
}

impl<'a, P, C, M, const Q: usize, const W: usize, const E: usize> HealthTask<'a, P, C, M, Q, W, E>
where
    P: HealthPlatform,
    C: Clock,
    M: RawMutex,
{
    /// Assemble the task; `core` already watches the tasks it should.
    pub fn new(
        core: HealthCore,
        platform: P,
        clock: C,
        beats: &'a Heartbeats<M>,
        switch: &'a Queue<M, SwitchRequest, Q>,
        published: &'a Watch<M, HealthStatus, W>,
        events: Option<&'a Queue<M, HealthEvent, E>>,
    ) -> Self {
        HealthTask {
            core,
            platform,
            clock,
            beats,
            switch,
            published,
            events,
        }
    }

    /// The core.
    pub fn core(&self) -> &HealthCore {
        &self.core
    }

    /// One check: watermarks, heartbeats, actions, publication.
    pub fn check(&mut self) {
        let now = self.clock.now();
        for (i, watched) in self.core.watched.into_iter().enumerate() {
            if watched.is_some() {
                let task = TaskId(i as u8);
                if let Some(free) = self.platform.stack_free_bytes(task) {
                    self.core.handle_stack(task, free);
                }
            }
        }
        if let Some(free) = self.platform.heap_free_bytes() {
            self.core.handle_heap(free);
        }
        self.core.handle_check(&self.beats.read(), now);
        while let Some(action) = self.core.poll_action() {
            match action {
                HealthAction::FeedWatchdog => self.platform.feed_watchdog(),
                HealthAction::OrderSafeState(req) => {
                    let queued = offer_request(self.switch, req).is_ok();
                    self.core.handle_order_result(queued);
                }
                HealthAction::Announce(event) => {
                    if let Some(q) = self.events {
                        let _ = q.offer(event);
                    }
                }
            }
        }
        self.published.sender().send(self.core.status());
    }

    /// Check forever, one check per period.
    pub async fn run(&mut self) -> ! {
        loop {
            self.check();
            let next = self.clock.now() + self.core.check_period();
            self.clock.sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    fn health_watching_switch_and_meter() -> HealthCore {
        let t = HealthThresholds {
            heartbeat_timeout_ms: 1_000,
            watchdog_ms: 4_000,
        };
        let mut core = HealthCore::new(&t, ms(0));
        core.watch(TaskId::SWITCH, None);
        core.watch(TaskId::METER, Some(Duration::from_millis(2_000)));
        core
    }

    fn drain(core: &mut HealthCore) -> std::vec::Vec<HealthAction> {
        core_iter(core).collect()
    }

    fn core_iter(core: &mut HealthCore) -> impl Iterator<Item = HealthAction> + '_ {
        core::iter::from_fn(move || core.poll_action())
    }

    #[test]
    fn watchdog_is_fed_while_every_task_beats() {
        let mut core = health_watching_switch_and_meter();
        let beats: Heartbeats<NoopRawMutex> = Heartbeats::new();
        beats.beat(TaskId::SWITCH, ms(900));
        beats.beat(TaskId::METER, ms(900));
        core.handle_check(&beats.read(), ms(1_500));
        assert_eq!(drain(&mut core), [HealthAction::FeedWatchdog]);
        assert!(core.status().watchdog_fed);
    }

    #[test]
    fn a_missed_heartbeat_stops_the_feed_and_orders_safe_state_once() {
        let mut core = health_watching_switch_and_meter();
        let beats: Heartbeats<NoopRawMutex> = Heartbeats::new();
        beats.beat(TaskId::METER, ms(1_000));
        core.handle_check(&beats.read(), ms(1_001));
        let actions = drain(&mut core);
        assert_eq!(
            actions[0],
            HealthAction::Announce(HealthEvent::TaskHung(TaskId::SWITCH))
        );
        let HealthAction::OrderSafeState(req) = actions[1] else {
            panic!("expected a safe-state order, got {actions:?}");
        };
        assert_eq!((req.source, req.op), (Source::Health, SwitchOp::SafeState));
        assert!(!actions.contains(&HealthAction::FeedWatchdog));
        core.handle_order_result(true);
        assert_eq!(
            drain(&mut core),
            [HealthAction::Announce(HealthEvent::SafeStateOrdered)]
        );
        core.handle_check(&beats.read(), ms(1_200));
        assert!(drain(&mut core).is_empty(), "ordered once, no feed");
        assert!(core.status().safe_state_ordered);
    }

    #[test]
    fn a_busy_switch_queue_makes_the_order_retry_on_the_next_check() {
        let mut core = health_watching_switch_and_meter();
        let beats: Heartbeats<NoopRawMutex> = Heartbeats::new();
        core.handle_check(&beats.read(), ms(1_500));
        let _ = drain(&mut core);
        core.handle_order_result(false);
        core.handle_check(&beats.read(), ms(1_750));
        assert!(
            drain(&mut core)
                .iter()
                .any(|a| matches!(a, HealthAction::OrderSafeState(_)))
        );
    }

    #[test]
    fn per_task_timeout_and_recovery_are_announced() {
        let mut core = health_watching_switch_and_meter();
        let beats: Heartbeats<NoopRawMutex> = Heartbeats::new();
        beats.beat(TaskId::SWITCH, ms(1_800));
        // METER's own timeout is 2 s: not hung at 1.9 s, hung at 2.1 s.
        core.handle_check(&beats.read(), ms(1_900));
        assert_eq!(drain(&mut core), [HealthAction::FeedWatchdog]);
        core.handle_check(&beats.read(), ms(2_100));
        assert!(
            drain(&mut core).contains(&HealthAction::Announce(HealthEvent::TaskHung(
                TaskId::METER
            )))
        );
        core.handle_order_result(true);
        let _ = drain(&mut core);
        beats.beat(TaskId::METER, ms(2_200));
        beats.beat(TaskId::SWITCH, ms(2_200));
        core.handle_check(&beats.read(), ms(2_300));
        assert_eq!(
            drain(&mut core),
            [
                HealthAction::Announce(HealthEvent::TaskRecovered(TaskId::METER)),
                HealthAction::FeedWatchdog
            ]
        );
        assert_eq!(core.status().hung, 0);
    }

    #[test]
    fn low_stack_watermark_is_announced_once() {
        let mut core = health_watching_switch_and_meter();
        core.handle_stack(TaskId::NET, 100);
        core.handle_stack(TaskId::NET, 90);
        assert_eq!(
            drain(&mut core),
            [HealthAction::Announce(HealthEvent::LowStack {
                task: TaskId::NET,
                free: 100
            })]
        );
        assert_eq!(core.status().min_stack_free, Some(90));
    }

    #[test]
    fn check_period_is_a_quarter_of_the_shortest_timeout() {
        let core = health_watching_switch_and_meter();
        assert_eq!(core.check_period(), Duration::from_millis(250));
    }

    struct FakePlatform {
        feeds: u32,
    }
    impl HealthPlatform for FakePlatform {
        fn feed_watchdog(&mut self) {
            self.feeds += 1;
        }
        fn stack_free_bytes(&mut self, _task: TaskId) -> Option<u32> {
            Some(1_000)
        }
        fn heap_free_bytes(&mut self) -> Option<u32> {
            None
        }
    }

    struct FixedClock(Instant);
    impl Clock for FixedClock {
        fn now(&self) -> Instant {
            self.0
        }
        async fn sleep_until(&self, _deadline: Instant) {}
    }

    #[test]
    fn runner_check_feeds_the_platform_and_sends_the_order_to_switch_task() {
        let beats: Heartbeats<NoopRawMutex> = Heartbeats::new();
        let switch: Queue<NoopRawMutex, SwitchRequest, 2> =
            Queue::new(crate::queue::FullPolicy::RejectNew);
        let published: Watch<NoopRawMutex, HealthStatus, 1> = Watch::new();
        let events: Queue<NoopRawMutex, HealthEvent, 4> =
            Queue::new(crate::queue::FullPolicy::DropOldest);
        let mut task = HealthTask::new(
            health_watching_switch_and_meter(),
            FakePlatform { feeds: 0 },
            FixedClock(ms(500)),
            &beats,
            &switch,
            &published,
            Some(&events),
        );
        task.check();
        assert_eq!(task.platform.feeds, 1);
        task.clock = FixedClock(ms(5_000));
        task.check();
        assert_eq!(task.platform.feeds, 1);
        let order = switch.try_receive().expect("safe state ordered");
        assert_eq!(order.op, SwitchOp::SafeState);
        assert_eq!(
            events.try_receive(),
            Some(HealthEvent::TaskHung(TaskId::SWITCH))
        );
        assert!(published.try_get().is_some_and(|s| s.safe_state_ordered));
    }
}
