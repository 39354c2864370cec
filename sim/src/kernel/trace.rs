//! The event trace and metric series of one run.
//!
//! Every event is `(virtual time, source, text)`. The trace hash is FNV-1a over the events'
//! canonical form, so the same scenario and seed give the same hash, run after run and machine
//! after machine (no pointer values, no hash-map order, no wall time ever reach it).
use std::collections::BTreeMap;
use std::fmt;

use firmware_core::time::{Duration, Instant};

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

/// Events plus named metric series.
#[derive(Debug, Default)]
pub struct Trace {
    events: Vec<Event>,
    hash: Option<u64>,
    metrics: BTreeMap<String, Vec<(Instant, f64)>>,
}

impl Trace {
    /// Record an event.
    pub fn record(&mut self, at: Instant, source: &str, text: String) {
        self.mix(at, source.as_bytes(), text.as_bytes());
        tracing::debug!(target: "twin::trace", "{} {} {}", fmt_time(at), source, text);
        self.events.push(Event {
            at,
            source: source.to_owned(),
            text,
        });
    }

    fn mix(&mut self, at: Instant, source: &[u8], text: &[u8]) {
        let mut h = self.hash.unwrap_or(FNV_OFFSET);
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
        self.hash = Some(h);
    }

    /// Record one sample of a metric. Samples count towards the hash too.
    pub fn sample(&mut self, at: Instant, name: &str, value: f64) {
        self.mix(at, name.as_bytes(), &value.to_bits().to_le_bytes());
        match self.metrics.get_mut(name) {
            Some(series) => series.push((at, value)),
            None => {
                self.metrics.insert(name.to_owned(), vec![(at, value)]);
            }
        }
    }

    /// All events in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// FNV-1a hash of every event and metric sample so far.
    pub fn hash(&self) -> u64 {
        self.hash.unwrap_or(FNV_OFFSET)
    }

    /// The samples of one metric, in time order.
    pub fn series(&self, name: &str) -> Option<&[(Instant, f64)]> {
        self.metrics.get(name).map(Vec::as_slice)
    }

    /// Names of all metrics recorded.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.metrics.keys().map(String::as_str)
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
}
