//! What a report page plots, collected while the run goes, in bounded memory.
//!
//! A [`Collector`] observes one scenario run and reads device states at fixed instants. The run
//! is cut into [`BINS`] equal bins (its duration is known before it starts), so every series
//! it keeps has at most that many points, whatever the virtual duration:
//! * every metric: min, max, mean and last per bin (queue depths, latencies, intervals), and
//!   for latency-like metrics (`latency`, `lag`, `interval` in the name) a histogram of every
//!   sample (`hdrhistogram`, three significant digits) for the histogram and CDF plots;
//! * each core's busy fraction per bin, from the kernel's scheduling decisions;
//! * relay states: the contacts each PDU's `relays` events say are closed, per bin;
//! * meter readings and doses: `meter.<N>.power_w` of each PDU and `pump.<X>.dispensed_ml` of
//!   each pump, read at the end of every bin.
use std::collections::BTreeMap;

use firmware_core::time::{Duration, Instant};
use hdrhistogram::Histogram;

use crate::devices::StateValue;
use crate::kernel::{BUCKET, CoreId, Observer, Sched};
use crate::scenario::TestCase;
use crate::scenario::run::StateSampler;

/// Points per series.
pub const BINS: usize = 240;

/// Histogram values are kept in thousandths of the metric's unit.
const SCALE: f64 = 1000.0;

/// One bin of a metric.
#[derive(Debug, Clone, Copy)]
pub struct Bin {
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Sum of the samples.
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
    /// The last sample.
    pub last: f64,
}

/// A metric over the run.
pub struct MetricSeries {
    /// Per bin, `None` where no sample fell.
    pub bins: Vec<Option<Bin>>,
    /// Every sample, for latency-like metrics.
    pub histogram: Option<Histogram<u64>>,
    /// Samples in all.
    pub count: u64,
}

/// A named series of `(virtual seconds, value)` points.
pub type Points = Vec<(f64, f64)>;

/// What a report plots. See the module docs.
pub struct Collector {
    bin: Duration,
    end: Instant,
    /// Metrics by name.
    pub metrics: BTreeMap<String, MetricSeries>,
    cores: Vec<Option<(String, Vec<u64>)>>,
    /// Relay masks per PDU device, per bin (the state at the bin's end; `None`: unchanged).
    relays: BTreeMap<String, (u16, Vec<Option<u16>>)>,
    /// State readings, by `device.key`, per bin end.
    readings: BTreeMap<String, Vec<(f64, f64)>>,
    wanted_states: Vec<(String, String)>,
}

fn latency_like(name: &str) -> bool {
    name.contains("latency") || name.contains("lag") || name.contains("interval")
}

impl Collector {
    /// A collector for `case`'s run.
    pub fn new(case: &TestCase) -> Self {
        let total = case.duration.as_micros().max(1);
        let b = BUCKET.as_micros();
        // Whole buckets, so core load per bin is exact.
        let bin = Duration::from_micros(total.div_ceil(BINS as u64).div_ceil(b).max(1) * b);
        let mut wanted_states = Vec::new();
        for (device, kind) in &case.kinds {
            match kind.as_str() {
                "pdu" => {
                    for ch in 1..=8 {
                        wanted_states.push((device.clone(), format!("meter.{ch}.power_w")));
                    }
                }
                "pump" => {
                    for p in ["X", "Y", "Z", "A"] {
                        wanted_states.push((device.clone(), format!("pump.{p}.dispensed_ml")));
                    }
                }
                _ => {}
            }
        }
        Collector {
            bin,
            end: Instant::ZERO + case.duration,
            metrics: BTreeMap::new(),
            cores: Vec::new(),
            relays: BTreeMap::new(),
            readings: BTreeMap::new(),
            wanted_states,
        }
    }

    fn bins(&self) -> usize {
        (self.end.as_micros().div_ceil(self.bin.as_micros()) as usize).max(1)
    }

    fn bin_of(&self, at: Instant) -> usize {
        ((at.as_micros() / self.bin.as_micros()) as usize).min(self.bins() - 1)
    }

    fn bin_mid_s(&self, i: usize) -> f64 {
        (i as f64 + 0.5) * self.bin.as_micros() as f64 / 1e6
    }

    /// Width of a bin.
    pub fn bin_width(&self) -> Duration {
        self.bin
    }

    /// The metric's max per bin, as points.
    pub fn metric_max(&self, name: &str) -> Points {
        self.metric_points(name, |b| b.max)
    }

    /// The metric's points per bin, reduced by `f`.
    pub fn metric_points(&self, name: &str, f: impl Fn(&Bin) -> f64) -> Points {
        let Some(m) = self.metrics.get(name) else {
            return Vec::new();
        };
        m.bins
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (self.bin_mid_s(i), f(b))))
            .collect()
    }

    /// Each core's busy fraction per bin, by core name.
    pub fn core_load(&self) -> Vec<(String, Points)> {
        let width = self.bin.as_micros() as f64;
        self.cores
            .iter()
            .flatten()
            .map(|(name, busy)| {
                let pts = busy
                    .iter()
                    .enumerate()
                    .map(|(i, &us)| (self.bin_mid_s(i), us as f64 / width))
                    .collect();
                (name.clone(), pts)
            })
            .collect()
    }

    /// Relay contacts per device: per channel, `(s, 0 or 1)` at each bin end.
    pub fn relay_states(&self) -> Vec<(String, Vec<Points>)> {
        let w = self.bin.as_micros() as f64 / 1e6;
        self.relays
            .iter()
            .map(|(device, (_, bins))| {
                let mut mask = 0u16;
                let mut channels: Vec<Points> = vec![Vec::new(); 8];
                for (i, b) in bins.iter().enumerate() {
                    if let Some(m) = b {
                        mask = *m;
                    }
                    for (ch, pts) in channels.iter_mut().enumerate() {
                        pts.push(((i + 1) as f64 * w, f64::from((mask >> ch) & 1)));
                    }
                }
                (device.clone(), channels)
            })
            .collect()
    }

    /// State readings (`device.key` → points), e.g. meter power.
    pub fn readings(&self) -> &BTreeMap<String, Points> {
        &self.readings
    }
}

impl Observer for Collector {
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        // `relay CH3 closed` / `relay CH3 opened` from `<device>.relays`.
        let Some(device) = source.strip_suffix(".relays") else {
            return;
        };
        let mut words = text.split_whitespace();
        let (Some("relay"), Some(ch), Some(state)) = (words.next(), words.next(), words.next())
        else {
            return;
        };
        let Some(n) = ch
            .strip_prefix("CH")
            .and_then(|n| n.parse::<u16>().ok())
            .filter(|n| (1..=16).contains(n))
        else {
            return;
        };
        let bins = self.bins();
        let bin = self.bin_of(at);
        let entry = self
            .relays
            .entry(device.to_owned())
            .or_insert_with(|| (0, vec![None; bins]));
        match state {
            "closed" => entry.0 |= 1 << (n - 1),
            "opened" => entry.0 &= !(1 << (n - 1)),
            _ => return,
        }
        if let Some(slot) = entry.1.get_mut(bin) {
            *slot = Some(entry.0);
        }
    }

    fn sample(&mut self, at: Instant, name: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        let bins = self.bins();
        let bin = self.bin_of(at);
        let m = match self.metrics.get_mut(name) {
            Some(m) => m,
            None => {
                let histogram = latency_like(name)
                    .then(|| Histogram::<u64>::new(3).ok())
                    .flatten();
                self.metrics.entry(name.to_owned()).or_insert(MetricSeries {
                    bins: vec![None; bins],
                    histogram,
                    count: 0,
                })
            }
        };
        m.count += 1;
        if let Some(h) = &mut m.histogram {
            // Out of range values are counted in `count` but not plotted.
            let _ = h.record((value.max(0.0) * SCALE).round() as u64);
        }
        if let Some(slot) = m.bins.get_mut(bin) {
            let b = slot.get_or_insert(Bin {
                min: value,
                max: value,
                sum: 0.0,
                count: 0,
                last: value,
            });
            b.min = b.min.min(value);
            b.max = b.max.max(value);
            b.sum += value;
            b.count += 1;
            b.last = value;
        }
    }

    fn wants_sched(&self) -> bool {
        true
    }

    fn sched(&mut self, at: Instant, s: &Sched<'_>) {
        match *s {
            Sched::Core { core, name } => {
                let bins = self.bins();
                let CoreId(i) = core;
                if self.cores.len() <= i {
                    self.cores.resize_with(i + 1, || None);
                }
                self.cores[i] = Some((name.to_owned(), vec![0; bins]));
            }
            Sched::Poll {
                core: Some(CoreId(i)),
                cost,
                ..
            } if cost > Duration::ZERO => {
                let w = self.bin.as_micros();
                let last = self.bins();
                let Some(Some((_, busy))) = self.cores.get_mut(i) else {
                    return;
                };
                let mut t = at.as_micros();
                let end = t + cost.as_micros();
                while t < end {
                    let idx = (t / w) as usize;
                    let part = end.min((idx as u64 + 1) * w) - t;
                    if let Some(slot) = busy.get_mut(idx.min(last - 1)) {
                        *slot += part;
                    }
                    t += part;
                }
            }
            _ => {}
        }
    }
}

impl StateSampler for Collector {
    fn instants(&self) -> Vec<Instant> {
        (1..=self.bins())
            .map(|i| {
                Instant::from_micros((i as u64 * self.bin.as_micros()).min(self.end.as_micros()))
            })
            .collect()
    }

    fn sample(&mut self, at: Instant, read: &dyn Fn(&str, &str) -> Option<StateValue>) {
        let s = at.as_micros() as f64 / 1e6;
        for (device, key) in &self.wanted_states {
            if let Some(v) = read(device, key).and_then(|v| v.as_f64()) {
                self.readings
                    .entry(format!("{device}.{key}"))
                    .or_default()
                    .push((s, v));
            }
        }
    }
}

/// `count` equal-width bins of `h` from its min to its max: `(low, high, samples)`, in the
/// metric's unit.
pub fn histogram_bins(h: &Histogram<u64>, count: usize) -> Vec<(f64, f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let lo = h.min();
    let hi = h.max().max(lo + 1);
    let step = (hi - lo).div_ceil(count as u64).max(1);
    (0..count as u64)
        .map(|i| {
            let a = lo + i * step;
            let b = a + step - 1;
            (
                a as f64 / SCALE,
                (b + 1) as f64 / SCALE,
                h.count_between(a, b),
            )
        })
        .filter(|(a, _, _)| *a <= hi as f64 / SCALE)
        .collect()
}

/// The cumulative distribution of `h`: `(value, fraction ≤ value)` at every percentile.
pub fn cdf(h: &Histogram<u64>) -> Points {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|p| {
            let q = f64::from(p) / 100.0;
            (h.value_at_quantile(q) as f64 / SCALE, q)
        })
        .collect()
}
