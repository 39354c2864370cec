//! The event trace and metric series of one run.
//!
//! Every event is `(virtual time, source, text)`. The trace hash is FNV-1a over every event and
//! metric sample in their canonical form, so the same scenario and seed give the same hash, run
//! after run and machine after machine (no pointer values, no hash-map order, no wall time ever
//! reach it).
//!
//! The trace owns the run's *memory of itself*, and keeps it bounded: it retains only a recent
//! window of events and samples ([`History`]), and hands every event and sample to the
//! [`Observer`]s registered on the kernel as it happens. Whatever needs the whole run (a scenario's
//! expectations, a report, a trace file) observes it and keeps its own bounded summary or streams
//! to disk; the hash alone covers everything.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use firmware_core::time::{Duration, Instant};

use super::observe::{Observer, ObserverId, Sched};

/// One traced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened.
    pub at: Instant,
    /// Who reported it (`device.part`, `kernel`, `scenario`).
    pub source: String,
    /// What happened.
    pub text: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>12} {:<20} {}",
            fmt_time(self.at),
            self.source,
            self.text
        )
    }
}

/// `1.234567s`-style rendering of an instant, as used in reports and scenario files.
pub fn fmt_time(t: Instant) -> String {
    Duration::from_micros(t.as_micros()).to_string()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// How much of its own past a kernel keeps in memory. The hash and the observers see
/// everything regardless; this only sizes what [`Trace::events`], [`Trace::series`] and
/// [`super::CoreStats::utilisation`] can still answer for.
///
/// Each limit keeps at least that many of the most recent items and at most twice as many
/// (the oldest half is dropped in one move when the store is full, so reads stay plain slices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Events kept.
    pub events: usize,
    /// Samples kept per metric.
    pub samples: usize,
    /// Utilisation buckets ([`super::BUCKET`]) kept per core.
    pub buckets: usize,
}

impl History {
    /// The default: a window sized for the live twin's displays and a failure's context
    /// (16 Ki events, 4 Ki samples per metric, one minute of utilisation).
    pub const RECENT: History = History {
        events: 16 * 1024,
        samples: 4 * 1024,
        buckets: 6_000,
    };
    /// Nothing but the hash and the observers (scenario runs: their expectations observe).
    pub const NONE: History = History {
        events: 0,
        samples: 0,
        buckets: 0,
    };
    /// Everything, for the whole run: memory grows with virtual time. For short tools and
    /// tests that read the trace afterwards.
    pub const ALL: History = History {
        events: usize::MAX,
        samples: usize::MAX,
        buckets: usize::MAX,
    };
}

impl Default for History {
    fn default() -> Self {
        History::RECENT
    }
}

/// A store that keeps the last `keep` items (up to `2 * keep`) as one contiguous slice, plus
/// how many older ones were let go.
#[derive(Debug)]
pub(super) struct Window<T> {
    items: Vec<T>,
    keep: usize,
    dropped: u64,
}

impl<T> Window<T> {
    pub(super) fn new(keep: usize) -> Self {
        Window {
            items: Vec::new(),
            keep,
            dropped: 0,
        }
    }

    pub(super) fn push(&mut self, item: T) {
        if self.keep == 0 {
            self.dropped += 1;
            return;
        }
        if self.items.len() >= self.keep.saturating_mul(2) {
            let old = self.items.len() - self.keep;
            self.items.drain(..old);
            self.dropped += old as u64;
        }
        self.items.push(item);
    }

    pub(super) fn as_slice(&self) -> &[T] {
        &self.items
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.items
    }

    /// Items let go so far (the index of the first one kept).
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Events plus named metric series, bounded by a [`History`], and the kernel's observers.
pub struct Trace {
    events: Window<Event>,
    hash: u64,
    metrics: BTreeMap<String, Window<(Instant, f64)>>,
    history: History,
    observers: Vec<(ObserverId, Rc<RefCell<dyn Observer>>)>,
    sched_observers: usize,
    next_observer: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new(History::default())
    }
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("hash", &format_args!("{:016x}", self.hash))
            .field("events_kept", &self.events.as_slice().len())
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl Trace {
    /// An empty trace keeping `history`.
    pub fn new(history: History) -> Self {
        Trace {
            events: Window::new(history.events),
            hash: FNV_OFFSET,
            metrics: BTreeMap::new(),
            history,
            observers: Vec::new(),
            sched_observers: 0,
            next_observer: 0,
        }
    }

    /// What this trace keeps.
    pub fn history(&self) -> History {
        self.history
    }

    /// Record an event.
    pub fn record(&mut self, at: Instant, source: &str, text: String) {
        self.mix(at, source.as_bytes(), text.as_bytes());
        tracing::debug!(target: "twin::trace", "{} {} {}", fmt_time(at), source, text);
        for (_, o) in &self.observers {
            o.borrow_mut().event(at, source, &text);
        }
        if self.history.events > 0 {
            self.events.push(Event {
                at,
                source: source.to_owned(),
                text,
            });
        } else {
            self.events.push_dropped();
        }
    }

    fn mix(&mut self, at: Instant, source: &[u8], text: &[u8]) {
        let mut h = self.hash;
        for part in [
            &at.as_micros().to_le_bytes()[..],
            source,
            b"\x1f",
            text,
            b"\x1e",
        ] {
            for b in part {
                h ^= u64::from(*b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        }
        self.hash = h;
    }

    /// Record one sample of a metric. Samples count towards the hash too.
    pub fn sample(&mut self, at: Instant, name: &str, value: f64) {
        self.mix(at, name.as_bytes(), &value.to_bits().to_le_bytes());
        for (_, o) in &self.observers {
            o.borrow_mut().sample(at, name, value);
        }
        if self.history.samples == 0 {
            return;
        }
        match self.metrics.get_mut(name) {
            Some(series) => series.push((at, value)),
            None => {
                let mut w = Window::new(self.history.samples);
                w.push((at, value));
                self.metrics.insert(name.to_owned(), w);
            }
        }
    }

    /// The events kept, oldest first (all of them with [`History::ALL`]).
    pub fn events(&self) -> &[Event] {
        self.events.as_slice()
    }

    /// Events recorded but no longer kept.
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// FNV-1a hash of every event and metric sample so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The kept samples of one metric, in time order.
    pub fn series(&self, name: &str) -> Option<&[(Instant, f64)]> {
        self.metrics.get(name).map(Window::as_slice)
    }

    /// Names of the metrics kept.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.metrics.keys().map(String::as_str)
    }

    pub(super) fn add_observer(&mut self, o: Rc<RefCell<dyn Observer>>) -> ObserverId {
        let id = ObserverId(self.next_observer);
        self.next_observer += 1;
        if o.borrow().wants_sched() {
            self.sched_observers += 1;
        }
        self.observers.push((id, o));
        id
    }

    pub(super) fn remove_observer(&mut self, id: ObserverId) -> bool {
        let Some(i) = self.observers.iter().position(|(x, _)| *x == id) else {
            return false;
        };
        let (_, o) = self.observers.remove(i);
        if o.borrow().wants_sched() {
            self.sched_observers -= 1;
        }
        true
    }

    /// Whether any observer wants scheduling events (the kernel skips building them if not).
    pub(super) fn observes_sched(&self) -> bool {
        self.sched_observers > 0
    }

    pub(super) fn sched(&self, at: Instant, s: &Sched<'_>) {
        for (_, o) in &self.observers {
            let mut o = o.borrow_mut();
            if o.wants_sched() {
                o.sched(at, s);
            }
        }
    }
}

impl<T> Window<T> {
    /// Count an item that is not kept at all (`keep == 0`), without building it.
    pub(super) fn push_dropped(&mut self) {
        self.dropped += 1;
    }

    /// How many items it keeps at least.
    pub(super) fn capacity(&self) -> usize {
        self.keep
    }

    /// Let everything go and count `n` items as gone in all (`n` ≥ what was pushed).
    pub(super) fn skip_to(&mut self, n: u64) {
        self.items.clear();
        self.dropped = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_time_source_and_text() {
        let mk = |t: u64, s: &str, e: &str| {
            let mut tr = Trace::default();
            tr.record(Instant::from_micros(t), s, e.to_owned());
            tr.hash()
        };
        let base = mk(1, "a", "x");
        assert_eq!(base, mk(1, "a", "x"));
        assert_ne!(base, mk(2, "a", "x"));
        assert_ne!(base, mk(1, "b", "x"));
        assert_ne!(base, mk(1, "a", "y"));
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(mk(1, "ab", "c"), mk(1, "a", "bc"));
    }

    #[test]
    fn a_bounded_trace_keeps_the_recent_window_and_the_same_hash() {
        let history = History {
            events: 100,
            samples: 10,
            buckets: 0,
        };
        let mut all = Trace::new(History::ALL);
        let mut recent = Trace::new(history);
        for i in 0..10_000u64 {
            for t in [&mut all, &mut recent] {
                t.record(Instant::from_micros(i), "src", format!("e{i}"));
                t.sample(Instant::from_micros(i), "m", i as f64);
            }
        }
        assert_eq!(all.hash(), recent.hash());
        assert_eq!(all.events().len(), 10_000);
        let kept = recent.events();
        assert!((100..=200).contains(&kept.len()), "{}", kept.len());
        assert_eq!(kept.last().map(|e| e.text.as_str()), Some("e9999"));
        assert_eq!(recent.events_dropped() + kept.len() as u64, 10_000);
        let series = recent.series("m").unwrap_or_default();
        assert!((10..=20).contains(&series.len()));
        assert_eq!(series.last().map(|s| s.1), Some(9999.0));
    }
}
