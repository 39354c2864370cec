//! Bounded queues between tasks, with a full policy and counters that reach telemetry.
//!
//! A thin layer over `embassy_sync::channel::Channel`: the channel does the waiting and waking;
//! this type adds what the firmware rules ask of every queue:
//!
//! * a **full policy** fixed when the queue is made ([`FullPolicy`]), applied by [`Queue::offer`],
//!   so a sender never blocks by accident and never loses an item silently;
//! * **counters** ([`QueueStats`]): accepted, rejected, displaced, and the high-water mark, read by
//!   health and telemetry tasks.
//!
//! Senders that may wait for room use [`Queue::send`] (back-pressure); the owner of each queue
//! documents which of the two its senders use.
use core::cell::Cell;

use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::channel::Channel;

/// What [`Queue::offer`] does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FullPolicy {
    /// Keep what is queued; hand the new item back to the sender and count it as rejected.
    /// For requests, where the caller must learn that it was refused (e.g. answer `Busy`).
    RejectNew,
    /// Drop the oldest queued item to make room and count it as displaced.
    /// For logs and telemetry, where the newest news matters most.
    DropOldest,
}

/// The outcome of [`Queue::offer`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a rejected item is handed back and must be answered or counted"]
pub enum Offer<T> {
    /// The item is in the queue.
    Queued,
    /// The item is in the queue; the oldest one was removed to make room and is returned.
    Displaced(T),
    /// The queue was full ([`FullPolicy::RejectNew`]); the item is handed back.
    Rejected(T),
}

impl<T> Offer<T> {
    /// Whether the offered item entered the queue.
    pub fn is_queued(&self) -> bool {
        !matches!(self, Offer::Rejected(_))
    }
}

/// Counters of one queue, for telemetry. They wrap around at `u32::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueStats {
    /// Items accepted into the queue.
    pub accepted: u32,
    /// Items refused because the queue was full ([`FullPolicy::RejectNew`]).
    pub rejected: u32,
    /// Queued items dropped to make room ([`FullPolicy::DropOldest`]).
    pub displaced: u32,
    /// The largest depth seen.
    pub high_water: u16,
    /// Items in the queue when the stats were read.
    pub depth: u16,
    /// The queue's capacity.
    pub capacity: u16,
}

impl QueueStats {
    /// Items that never reached the receiver: rejected plus displaced.
    pub fn lost(&self) -> u32 {
        self.rejected.wrapping_add(self.displaced)
    }
}

/// A bounded multi-producer multi-consumer queue of `N` items of `T`.
///
/// `M` is the embassy-sync raw mutex: `CriticalSectionRawMutex` when senders run in different
/// executors or interrupts, `NoopRawMutex` when everything shares one executor.
pub struct Queue<M: RawMutex, T, const N: usize> {
    channel: Channel<M, T, N>,
    policy: FullPolicy,
    stats: BlockingMutex<M, Cell<QueueStats>>,
}

impl<M: RawMutex, T, const N: usize> Queue<M, T, N> {
    /// An empty queue with the given full policy. `const`, so queues can live in `static`s.
    pub const fn new(policy: FullPolicy) -> Self {
        let capacity = if N > u16::MAX as usize {
            u16::MAX
        } else {
            N as u16
        };
        Self {
            channel: Channel::new(),
            policy,
            stats: BlockingMutex::new(Cell::new(QueueStats {
                accepted: 0,
                rejected: 0,
                displaced: 0,
                high_water: 0,
                depth: 0,
                capacity,
            })),
        }
    }

    /// The policy [`offer`](Self::offer) applies when full.
    pub fn policy(&self) -> FullPolicy {
        self.policy
    }

    /// Put `item` in the queue without waiting, applying the full policy when there is no room.
    pub fn offer(&self, item: T) -> Offer<T> {
        self.stats.lock(|cell| {
            let mut s = cell.get();
            let outcome = match self.channel.try_send(item) {
                Ok(()) => Offer::Queued,
                Err(embassy_sync::channel::TrySendError::Full(item)) => match self.policy {
                    FullPolicy::RejectNew => {
                        s.rejected = s.rejected.wrapping_add(1);
                        cell.set(s);
                        return Offer::Rejected(item);
                    }
                    FullPolicy::DropOldest => {
                        // Every sender goes through this lock, so the slot freed here stays free
                        // for the retry (receivers only ever free more room).
                        let oldest = self.channel.try_receive().ok();
                        match self.channel.try_send(item) {
                            Ok(()) => {}
                            // Unreachable with N > 0; with N == 0 the item is lost, and counted.
                            Err(_) => s.rejected = s.rejected.wrapping_add(1),
                        }
                        s.displaced = s.displaced.wrapping_add(oldest.is_some() as u32);
                        match oldest {
                            Some(old) => Offer::Displaced(old),
                            None => Offer::Queued,
                        }
                    }
                },
            };
            s.accepted = s.accepted.wrapping_add(1);
            s.high_water = s.high_water.max(self.channel.len() as u16);
            cell.set(s);
            outcome
        })
    }

    /// Put `item` in the queue, waiting for room (back-pressure: nothing is dropped).
    pub async fn send(&self, item: T) {
        self.channel.send(item).await;
        self.stats.lock(|cell| {
            let mut s = cell.get();
            s.accepted = s.accepted.wrapping_add(1);
            s.high_water = s.high_water.max(self.channel.len() as u16);
            cell.set(s);
        });
    }

    /// Wait for the next item.
    pub async fn receive(&self) -> T {
        self.channel.receive().await
    }

    /// The next item, if one is queued.
    pub fn try_receive(&self) -> Option<T> {
        self.channel.try_receive().ok()
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.channel.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.channel.is_empty()
    }

    /// The number of items the queue holds when full.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The counters, with the current depth.
    pub fn stats(&self) -> QueueStats {
        let mut s = self.stats.lock(Cell::get);
        s.depth = self.channel.len() as u16;
        s
    }
}

// Tests: `selftest::core_types` (they also run on the target ISAs).
