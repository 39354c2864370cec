//! A bounded queue from any thread into one kernel task.
//!
//! Live sockets (tokio threads), the desktop window and stdin push into an [`Inbox`]; one task
//! on the kernel's thread receives. A push wakes that task through its waker, and a wake from
//! another thread lands in the kernel's wake queue and unparks the kernel, so an item is handled
//! at the virtual instant that corresponds to its arrival.
//!
//! Full policy: **reject the newest**. [`Inbox::offer`] hands the item back and counts it in
//! [`InboxStats::dropped`]; the caller decides what a refusal means (a datagram is lost as in a
//! full socket buffer, an HTTP client gets 503, a control request gets an error).
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Poll, Waker};

/// Counters of an [`Inbox`], for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Items accepted.
    pub accepted: u64,
    /// Items refused because the inbox was full.
    pub dropped: u64,
    /// Largest depth seen.
    pub high_water: usize,
}

struct InboxState<T> {
    items: VecDeque<T>,
    waker: Option<Waker>,
    stats: InboxStats,
}

/// A bounded queue from any thread into one kernel task. Full policy: reject the newest.
pub struct Inbox<T> {
    state: Mutex<InboxState<T>>,
    capacity: usize,
}

impl<T> Inbox<T> {
    /// An empty inbox holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                items: VecDeque::new(),
                waker: None,
                stats: InboxStats::default(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// Queue `item`, or hand it back (counted) when full.
    pub fn offer(&self, item: T) -> Result<(), T> {
        let Ok(mut st) = self.state.lock() else {
            return Err(item);
        };
        if st.items.len() >= self.capacity {
            st.stats.dropped += 1;
            return Err(item);
        }
        st.items.push_back(item);
        st.stats.accepted += 1;
        st.stats.high_water = st.stats.high_water.max(st.items.len());
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Wait for the next item.
    pub async fn recv(&self) -> T {
        poll_fn(|cx| {
            let Ok(mut st) = self.state.lock() else {
                return Poll::Pending;
            };
            match st.items.pop_front() {
                Some(item) => Poll::Ready(item),
                None => {
                    st.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Forget everything queued (power loss).
    pub fn clear(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.items.clear();
        }
    }

    /// Items waiting now.
    pub fn depth(&self) -> usize {
        self.state.lock().map(|s| s.items.len()).unwrap_or(0)
    }

    /// The counters.
    pub fn stats(&self) -> InboxStats {
        self.state.lock().map(|s| s.stats).unwrap_or_default()
    }
}
