//! The WiFi link between the ESP32 and the network, as a packet link on virtual time.
//!
//! This module owns what happens to a packet between the pump controller's network stack and
//! the rest of the world (the broker, browsers): its time on the air, its latency, whether it
//! arrives, the bounded transmit queue it waits in, and the CPU time the ESP32's WiFi driver
//! spends on it.
//!
//! # Model
//! Each [`WifiDirection`] is a FIFO transmitter. A packet sent at `now` starts on the air when
//! the packets before it have left (`bytes × 8 / bandwidth_bps` each), then arrives `latency`
//! plus a seeded uniform `0..=jitter` later. Arrivals keep the send order (a late packet holds
//! back the ones behind it, as the driver's single queue does). A packet is lost with
//! [`WifiLink::loss_probability`], drawn from the direction's own seeded stream (`wifi:<name>:up`
//! / `wifi:<name>:down`) when it is sent; a lost packet still takes its airtime (failed retries).
//!
//! **TX power.** The seed sets `WiFi.setTxPower(WIFI_TX_POWER)` with Arduino-ESP32's
//! `wifi_power_t` options ([`TxPower`], −1 to 20 dBm; the seed chose 5 dBm to keep the board cool).
//! Less power means less signal-to-noise margin. The link has a margin at full power
//! ([`WifiConfig::link_margin_db`], at 19.5 dBm; 25 dB is a room away from the access point); at
//! power `p` the margin is `link_margin_db − (19.5 − p)`, and the packet error from it is a
//! logistic curve, `1 / (1 + e^(margin / 1.5 dB))`: 50 % at zero margin, below 0.1 % from about
//! 10.5 dB. The total loss combines it with the configured base loss:
//! `1 − (1 − loss) × (1 − per(margin))`. With the defaults, 19.5 dBm loses nothing measurable,
//! 5 dBm about 0.09 %, 2 dBm 0.7 %, −1 dBm 4.7 %. This is a knob with the right direction and
//! shape, not a radio model.
//!
//! **Queue.** At most [`WifiConfig::queue_packets`] packets per direction wait for the air
//! (the one on the air included). Full policy: the new packet is refused
//! ([`WifiSendError::QueueFull`]) and counted in [`WifiStats::queue_full`] (drop newest), as
//! `esp_wifi` answers `ESP_ERR_NO_MEM` when its TX buffers are used up; each refusal also
//! samples the cumulative count as the metric `<name>.<up|down>.queue_full`.
//!
//! **Disconnects.** [`WifiLink::disconnect`] loses every packet queued or in flight (counted as
//! `disconnected`); sends are refused until [`WifiLink::reconnect`].
//!
//! **CPU.** The ESP32's side pays for its traffic: [`WifiLink::send`] on the uplink and
//! [`WifiLink::recv`] / [`WifiLink::try_recv`] on the downlink charge
//! `cpu_per_packet + bytes × cpu_ns_per_byte` to the task that calls them
//! ([`SimClock::charge`]), so a task pinned to core 0 makes core 0 busy. The network side
//! (world tasks) pays nothing.
//!
//! Every packet ends up in exactly one of [`WifiStats`]' `delivered`, `lost`, `queue_full`,
//! `disconnected` or `in_flight`.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::task::{Poll, Waker};

use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::kernel::{Kernel, SimClock, Sleep, Tracer};

/// Arduino-ESP32's `wifi_power_t` options, as the seed's `WIFI_TX_POWER` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxPower {
    /// `WIFI_POWER_MINUS_1dBm`.
    Minus1,
    /// `WIFI_POWER_2dBm`.
    Dbm2,
    /// `WIFI_POWER_5dBm` (the seed's choice).
    Dbm5,
    /// `WIFI_POWER_7dBm`.
    Dbm7,
    /// `WIFI_POWER_8_5dBm`.
    Dbm8_5,
    /// `WIFI_POWER_11dBm`.
    Dbm11,
    /// `WIFI_POWER_13dBm`.
    Dbm13,
    /// `WIFI_POWER_15dBm`.
    Dbm15,
    /// `WIFI_POWER_17dBm`.
    Dbm17,
    /// `WIFI_POWER_18_5dBm`.
    Dbm18_5,
    /// `WIFI_POWER_19dBm`.
    Dbm19,
    /// `WIFI_POWER_19_5dBm` (the driver's default, full power).
    Dbm19_5,
    /// `WIFI_POWER_20dBm` (newer cores).
    Dbm20,
}

impl TxPower {
    /// Every option, lowest first.
    pub const ALL: [TxPower; 13] = [
        TxPower::Minus1,
        TxPower::Dbm2,
        TxPower::Dbm5,
        TxPower::Dbm7,
        TxPower::Dbm8_5,
        TxPower::Dbm11,
        TxPower::Dbm13,
        TxPower::Dbm15,
        TxPower::Dbm17,
        TxPower::Dbm18_5,
        TxPower::Dbm19,
        TxPower::Dbm19_5,
        TxPower::Dbm20,
    ];

    /// The power in dBm.
    pub fn dbm(self) -> f64 {
        match self {
            TxPower::Minus1 => -1.0,
            TxPower::Dbm2 => 2.0,
            TxPower::Dbm5 => 5.0,
            TxPower::Dbm7 => 7.0,
            TxPower::Dbm8_5 => 8.5,
            TxPower::Dbm11 => 11.0,
            TxPower::Dbm13 => 13.0,
            TxPower::Dbm15 => 15.0,
            TxPower::Dbm17 => 17.0,
            TxPower::Dbm18_5 => 18.5,
            TxPower::Dbm19 => 19.0,
            TxPower::Dbm19_5 => 19.5,
            TxPower::Dbm20 => 20.0,
        }
    }

    /// The highest option not above `dbm` (the lowest option when `dbm` is below them all), as a
    /// radio driver rounds a requested power to its own steps.
    pub fn at_most(dbm: f64) -> TxPower {
        TxPower::ALL
            .iter()
            .rev()
            .find(|p| p.dbm() <= dbm + 1e-9)
            .copied()
            .unwrap_or(TxPower::Minus1)
    }

    /// The Arduino constant's name (`WIFI_POWER_5dBm`).
    pub fn arduino_name(self) -> &'static str {
        match self {
            TxPower::Minus1 => "WIFI_POWER_MINUS_1dBm",
            TxPower::Dbm2 => "WIFI_POWER_2dBm",
            TxPower::Dbm5 => "WIFI_POWER_5dBm",
            TxPower::Dbm7 => "WIFI_POWER_7dBm",
            TxPower::Dbm8_5 => "WIFI_POWER_8_5dBm",
            TxPower::Dbm11 => "WIFI_POWER_11dBm",
            TxPower::Dbm13 => "WIFI_POWER_13dBm",
            TxPower::Dbm15 => "WIFI_POWER_15dBm",
            TxPower::Dbm17 => "WIFI_POWER_17dBm",
            TxPower::Dbm18_5 => "WIFI_POWER_18_5dBm",
            TxPower::Dbm19 => "WIFI_POWER_19dBm",
            TxPower::Dbm19_5 => "WIFI_POWER_19_5dBm",
            TxPower::Dbm20 => "WIFI_POWER_20dBm",
        }
    }
}

impl fmt::Display for TxPower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}dBm", self.dbm())
    }
}

/// A string that names no [`TxPower`] option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown WiFi TX power `{0}` (options: -1, 2, 5, 7, 8.5, 11, 13, 15, 17, 18.5, 19, 19.5, 20 dBm)"
)]
pub struct TxPowerParseError(pub String);

impl FromStr for TxPower {
    type Err = TxPowerParseError;
    /// Accepts `5`, `5dBm`, `8.5dBm`, `8_5dBm`, `-1`, `WIFI_POWER_5dBm`, `WIFI_POWER_MINUS_1dBm`.
    fn from_str(s: &str) -> Result<TxPower, TxPowerParseError> {
        let err = || TxPowerParseError(s.to_owned());
        let t = s.trim();
        if let Some(p) = TxPower::ALL.iter().find(|p| p.arduino_name() == t) {
            return Ok(*p);
        }
        let t = t
            .strip_suffix("dBm")
            .or_else(|| t.strip_suffix("dbm"))
            .unwrap_or(t)
            .trim()
            .replace('_', ".");
        let v: f64 = t.parse().map_err(|_| err())?;
        TxPower::ALL
            .iter()
            .find(|p| (p.dbm() - v).abs() < 1e-9)
            .copied()
            .ok_or_else(err)
    }
}

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WifiDirection {
    /// From the ESP32 to the network.
    Up,
    /// From the network to the ESP32.
    Down,
}

impl WifiDirection {
    fn index(self) -> usize {
        match self {
            WifiDirection::Up => 0,
            WifiDirection::Down => 1,
        }
    }
}

impl fmt::Display for WifiDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WifiDirection::Up => "up",
            WifiDirection::Down => "down",
        })
    }
}

/// Settings of a link (both directions share them).
#[derive(Debug, Clone, PartialEq)]
pub struct WifiConfig {
    /// One-way latency after the packet has left the transmitter.
    pub latency: Duration,
    /// Upper bound of the seeded uniform extra latency per packet.
    pub jitter: Duration,
    /// Base loss per packet, 0 to 1, before the TX-power effect.
    pub loss: f64,
    /// Air rate, bits per second (what the link really carries, not the PHY rate).
    pub bandwidth_bps: u64,
    /// The ESP32's transmit power.
    pub tx_power: TxPower,
    /// Signal-to-noise margin at 19.5 dBm, dB (distance and walls).
    pub link_margin_db: f64,
    /// Packets per direction that may wait for the air (the one on the air included).
    pub queue_packets: usize,
    /// CPU time the ESP32 spends per packet it sends or receives.
    pub cpu_per_packet: Duration,
    /// CPU time per byte, nanoseconds (copies, checksums, encryption).
    pub cpu_ns_per_byte: u64,
}

impl Default for WifiConfig {
    fn default() -> Self {
        WifiConfig {
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            loss: 0.0,
            bandwidth_bps: 10_000_000,
            tx_power: TxPower::Dbm19_5,
            link_margin_db: 25.0,
            queue_packets: 32,
            cpu_per_packet: Duration::from_micros(40),
            cpu_ns_per_byte: 50,
        }
    }
}

/// Why a [`WifiConfig`] cannot describe a link.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WifiConfigError {
    /// Loss is a probability.
    #[error("loss must be between 0 and 1, got {0}")]
    Loss(f64),
    /// A zero rate would hold every packet forever.
    #[error("bandwidth_bps must be above zero")]
    ZeroBandwidth,
    /// The margin must be a number.
    #[error("link_margin_db must be a finite number, got {0}")]
    Margin(f64),
    /// The queue must hold the packet on the air.
    #[error("queue_packets must be at least 1")]
    ZeroQueue,
}

impl WifiConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), WifiConfigError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(WifiConfigError::Loss(self.loss));
        }
        if self.bandwidth_bps == 0 {
            return Err(WifiConfigError::ZeroBandwidth);
        }
        if !self.link_margin_db.is_finite() {
            return Err(WifiConfigError::Margin(self.link_margin_db));
        }
        if self.queue_packets == 0 {
            return Err(WifiConfigError::ZeroQueue);
        }
        Ok(())
    }

    /// The loss probability per packet with the TX-power effect (see the module docs).
    pub fn loss_probability(&self) -> f64 {
        let margin = self.link_margin_db - (TxPower::Dbm19_5.dbm() - self.tx_power.dbm());
        let per = 1.0 / (1.0 + (margin / 1.5).exp());
        (1.0 - (1.0 - self.loss) * (1.0 - per)).clamp(0.0, 1.0)
    }

    /// Time `bytes` take on the air, rounded up to the microsecond.
    pub fn airtime(&self, bytes: usize) -> Duration {
        let bits = bytes as u128 * 8 * 1_000_000;
        let bps = u128::from(self.bandwidth_bps.max(1));
        Duration::from_micros(u64::try_from(bits.div_ceil(bps)).unwrap_or(u64::MAX))
    }

    /// CPU time the ESP32 spends on a packet of `bytes`.
    pub fn cpu_cost(&self, bytes: usize) -> Duration {
        let ns = (bytes as u64).saturating_mul(self.cpu_ns_per_byte);
        self.cpu_per_packet + Duration::from_micros(ns.div_ceil(1_000))
    }
}

/// Why [`WifiLink::send`] refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WifiSendError {
    /// The direction's transmit queue is full (the packet is dropped and counted).
    #[error("wifi transmit queue full")]
    QueueFull,
    /// The link is down (the packet is dropped and counted).
    #[error("wifi disconnected")]
    Disconnected,
}

/// Where the packets of one direction went. `sent = delivered + lost + queue_full +
/// disconnected + in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WifiStats {
    /// Packets handed to [`WifiLink::send`].
    pub sent: u64,
    /// Bytes handed to [`WifiLink::send`].
    pub bytes_sent: u64,
    /// Packets taken by the receiver.
    pub delivered: u64,
    /// Bytes taken by the receiver.
    pub bytes_delivered: u64,
    /// Packets lost on the air.
    pub lost: u64,
    /// Packets refused because the queue was full.
    pub queue_full: u64,
    /// Packets lost to a disconnect (refused, or queued or in flight when it came).
    pub disconnected: u64,
    /// Packets on their way or waiting for the receiver.
    pub in_flight: u64,
    /// Packets waiting for or on the air now.
    pub queued: u64,
    /// Most packets ever waiting for or on the air at once.
    pub max_queued: u64,
}

impl fmt::Display for WifiStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} delivered={} lost={} queue_full={} disconnected={} in_flight={} max_queued={}",
            self.sent,
            self.delivered,
            self.lost,
            self.queue_full,
            self.disconnected,
            self.in_flight,
            self.max_queued
        )
    }
}

/// What a link carries: anything that knows its size on the air.
pub trait WireSize {
    /// Bytes on the air (headers included).
    fn wire_len(&self) -> usize;
}

impl WireSize for Vec<u8> {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

struct Packet<P> {
    air_end: Instant,
    arrive: Instant,
    /// `None` for a packet lost on the air (it still holds its airtime).
    data: Option<P>,
}

struct Lane<P> {
    rng: ChaCha8Rng,
    tx_free_at: Instant,
    last_arrival: Instant,
    packets: VecDeque<Packet<P>>,
    receiver: Option<Waker>,
    stats: WifiStats,
}

impl<P> Lane<P> {
    /// Packets still waiting for or on the air at `now`.
    fn queued(&self, now: Instant) -> usize {
        self.packets.iter().filter(|p| p.air_end > now).count()
    }

    /// Drop lost packets whose airtime is over (they were counted when sent).
    fn purge_lost(&mut self, now: Instant) {
        self.packets.retain(|p| p.data.is_some() || p.air_end > now);
    }

    fn in_flight(&self) -> u64 {
        self.packets.iter().filter(|p| p.data.is_some()).count() as u64
    }
}

struct LinkState<P> {
    name: String,
    config: WifiConfig,
    connected: bool,
    lanes: [Lane<P>; 2],
}

/// A WiFi link (see the module docs). Cheap to clone; clones share the link.
///
/// ```text
/// let wifi = wifi::link(&kernel, "pump.wifi", WifiConfig { tx_power: TxPower::Dbm5, ..Default::default() })?;
/// wifi.send(WifiDirection::Up, mqtt_bytes)?;          // from a task on core 0: charges it
/// let pkt = wifi.recv(WifiDirection::Up).await;       // the broker side
/// ```
pub struct WifiLink<P = Vec<u8>> {
    state: Rc<RefCell<LinkState<P>>>,
    clock: SimClock,
    tracer: Tracer,
}

impl<P> Clone for WifiLink<P> {
    fn clone(&self) -> Self {
        WifiLink {
            state: self.state.clone(),
            clock: self.clock.clone(),
            tracer: self.tracer.clone(),
        }
    }
}

/// Build a link named `name` (its trace source) on `kernel`, with the seeded streams
/// `wifi:<name>:up` and `wifi:<name>:down`.
pub fn link<P>(
    kernel: &Kernel,
    name: &str,
    config: WifiConfig,
) -> Result<WifiLink<P>, WifiConfigError> {
    config.validate()?;
    let lane = |dir: WifiDirection| Lane {
        rng: kernel.rng(&format!("wifi:{name}:{dir}")),
        tx_free_at: Instant::ZERO,
        last_arrival: Instant::ZERO,
        packets: VecDeque::new(),
        receiver: None,
        stats: WifiStats::default(),
    };
    Ok(WifiLink {
        state: Rc::new(RefCell::new(LinkState {
            name: name.to_owned(),
            config,
            connected: true,
            lanes: [lane(WifiDirection::Up), lane(WifiDirection::Down)],
        })),
        clock: kernel.clock(),
        tracer: kernel.tracer(),
    })
}

impl<P: WireSize> WifiLink<P> {
    /// The settings in force.
    pub fn config(&self) -> WifiConfig {
        self.state.borrow().config.clone()
    }

    /// Change the settings for packets sent from now on (traced).
    pub fn set_config(&self, config: WifiConfig) -> Result<(), WifiConfigError> {
        config.validate()?;
        let mut st = self.state.borrow_mut();
        let text = format!(
            "config latency {} jitter {} loss {:.4} bandwidth {} bps tx power {} (loss {:.4})",
            config.latency,
            config.jitter,
            config.loss,
            config.bandwidth_bps,
            config.tx_power,
            config.loss_probability()
        );
        st.config = config;
        self.tracer.record(&st.name, text);
        Ok(())
    }

    /// Set the ESP32's transmit power (traced).
    pub fn set_tx_power(&self, power: TxPower) {
        let config = WifiConfig {
            tx_power: power,
            ..self.config()
        };
        // Only the power changed, and a power is always valid.
        let _ = self.set_config(config);
    }

    /// The loss probability per packet now.
    pub fn loss_probability(&self) -> f64 {
        self.state.borrow().config.loss_probability()
    }

    /// Send `packet` in `dir`. On the uplink the calling task is charged the driver's CPU time.
    /// Loss on the air is silent (the sender does not learn of it); a full queue or a dropped
    /// link refuses the packet and counts it.
    pub fn send(&self, dir: WifiDirection, packet: P) -> Result<(), WifiSendError> {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        let config = st.config.clone();
        let connected = st.connected;
        let len = packet.wire_len();
        if dir == WifiDirection::Up {
            self.clock.charge(config.cpu_cost(len));
        }
        let lane = &mut st.lanes[dir.index()];
        lane.purge_lost(now);
        lane.stats.sent += 1;
        lane.stats.bytes_sent += len as u64;
        if !connected {
            lane.stats.disconnected += 1;
            return Err(WifiSendError::Disconnected);
        }
        let queued = lane.queued(now);
        if queued >= config.queue_packets {
            lane.stats.queue_full += 1;
            let total = lane.stats.queue_full as f64;
            self.tracer
                .sample(&format!("{}.{dir}.queue_full", st.name), total);
            return Err(WifiSendError::QueueFull);
        }
        lane.stats.max_queued = lane.stats.max_queued.max(queued as u64 + 1);
        let start = lane.tx_free_at.max(now);
        let air_end = start + config.airtime(len);
        lane.tx_free_at = air_end;
        let jitter = lane.rng.random_range(0..=config.jitter.as_micros());
        let lost = lane.rng.random_bool(config.loss_probability());
        let arrive =
            (air_end + config.latency + Duration::from_micros(jitter)).max(lane.last_arrival);
        if lost {
            lane.stats.lost += 1;
            lane.packets.push_back(Packet {
                air_end,
                arrive,
                data: None,
            });
            return Ok(());
        }
        lane.last_arrival = arrive;
        lane.packets.push_back(Packet {
            air_end,
            arrive,
            data: Some(packet),
        });
        if let Some(w) = lane.receiver.take() {
            w.wake();
        }
        Ok(())
    }

    /// Take the next packet of `dir` that has arrived, if any. On the downlink the calling task
    /// is charged the driver's CPU time.
    pub fn try_recv(&self, dir: WifiDirection) -> Option<P> {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        let cost = {
            let lane = &mut st.lanes[dir.index()];
            lane.purge_lost(now);
            let i = lane
                .packets
                .iter()
                .position(|p| p.data.is_some())
                .filter(|&i| lane.packets[i].arrive <= now)?;
            let data = lane.packets.remove(i).and_then(|p| p.data)?;
            let len = data.wire_len();
            lane.stats.delivered += 1;
            lane.stats.bytes_delivered += len as u64;
            (len, data)
        };
        if dir == WifiDirection::Down {
            self.clock.charge(st.config.cpu_cost(cost.0));
        }
        Some(cost.1)
    }

    /// Wait for the next packet of `dir` (one receiver per direction). Cancel-safe: a packet
    /// leaves the link only when this completes.
    pub async fn recv(&self, dir: WifiDirection) -> P {
        let mut timer: Option<(Instant, Sleep)> = None;
        poll_fn(|cx| {
            if let Some(p) = self.try_recv(dir) {
                return Poll::Ready(p);
            }
            let mut st = self.state.borrow_mut();
            let lane = &mut st.lanes[dir.index()];
            lane.receiver = Some(cx.waker().clone());
            let next = lane
                .packets
                .iter()
                .find(|p| p.data.is_some())
                .map(|p| p.arrive);
            drop(st);
            match next {
                None => timer = None,
                Some(t) => {
                    if timer.as_ref().map(|(at, _)| *at) != Some(t) {
                        timer = Some((t, self.clock.sleep_until(t)));
                    }
                    if let Some((_, sleep)) = timer.as_mut()
                        && Pin::new(sleep).poll(cx).is_ready()
                    {
                        cx.waker().wake_by_ref();
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Drop the link: every packet queued or in flight is lost, sends are refused until
    /// [`Self::reconnect`].
    pub fn disconnect(&self) {
        let mut st = self.state.borrow_mut();
        st.connected = false;
        let mut lost = 0;
        for lane in &mut st.lanes {
            let n = lane.in_flight();
            lane.stats.disconnected += n;
            lost += n;
            lane.packets.clear();
            lane.tx_free_at = Instant::ZERO;
            lane.last_arrival = Instant::ZERO;
        }
        self.tracer.record(
            &st.name,
            format!("disconnected, {lost} packets in flight lost"),
        );
    }

    /// Bring the link back.
    pub fn reconnect(&self) {
        let mut st = self.state.borrow_mut();
        st.connected = true;
        self.tracer.record(&st.name, "reconnected");
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.state.borrow().connected
    }

    /// Counters of `dir`, up to date with now.
    pub fn stats(&self, dir: WifiDirection) -> WifiStats {
        let now = self.clock.now();
        let st = self.state.borrow();
        let lane = &st.lanes[dir.index()];
        WifiStats {
            in_flight: lane.in_flight(),
            queued: lane.queued(now) as u64,
            ..lane.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{CoreId, TaskSpec};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bench(seed: u64, config: WifiConfig) -> (Kernel, WifiLink<Vec<u8>>) {
        let mut k = Kernel::new(seed);
        let w = link(&k, "wifi", config).unwrap();
        // A far timer, so that `run_for` moves time even when nothing else is due.
        let clock = k.clock();
        k.spawn(TaskSpec::world("keep time"), async move {
            clock.sleep(Duration::from_secs(3_600)).await;
        })
        .detach();
        (k, w)
    }

    type Arrivals = Rc<RefCell<Vec<(Instant, Vec<u8>)>>>;

    /// A world task receiving `dir` forever; arrival times and packets.
    fn receiver(k: &mut Kernel, w: &WifiLink, dir: WifiDirection) -> Arrivals {
        let log = Rc::new(RefCell::new(Vec::new()));
        let (l, w, clock) = (log.clone(), w.clone(), k.clock());
        k.spawn(TaskSpec::world("rx"), async move {
            loop {
                let p = w.recv(dir).await;
                l.borrow_mut().push((clock.now(), p));
            }
        })
        .detach();
        log
    }

    #[test]
    fn a_packet_arrives_after_airtime_plus_latency_plus_bounded_jitter() {
        let cfg = WifiConfig {
            latency: ms(5),
            jitter: ms(2),
            bandwidth_bps: 1_000_000,
            ..WifiConfig::default()
        };
        let (mut k, w) = bench(3, cfg.clone());
        let log = receiver(&mut k, &w, WifiDirection::Down);
        for i in 0..50u8 {
            k.run_for(ms(20));
            w.send(WifiDirection::Down, vec![i; 125]).unwrap();
        }
        k.run_for(ms(50));
        let log = log.borrow();
        assert_eq!(log.len(), 50);
        let mut spread = Vec::new();
        for (i, (t, p)) in log.iter().enumerate() {
            assert_eq!(p, &vec![i as u8; 125]);
            let sent = Instant::from_millis(20 * (i as u64 + 1));
            // 125 bytes at 1 Mbit/s: 1 ms on the air.
            let base = sent + ms(1) + ms(5);
            assert!(*t >= base && *t <= base + ms(2), "{t} vs {base}");
            spread.push(*t - base);
        }
        assert!(spread.iter().any(|d| *d > ms(1)) && spread.iter().any(|d| *d < ms(1)));
    }

    #[test]
    fn packets_wait_for_the_air_one_after_another_and_keep_their_order() {
        let cfg = WifiConfig {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            bandwidth_bps: 8_000, // 1 byte per ms
            ..WifiConfig::default()
        };
        let (mut k, w) = bench(1, cfg);
        let log = receiver(&mut k, &w, WifiDirection::Up);
        for n in [10usize, 20, 5] {
            w.send(WifiDirection::Up, vec![0; n]).unwrap();
        }
        assert_eq!(w.stats(WifiDirection::Up).queued, 3);
        k.run_for(ms(100));
        let times: Vec<_> = log.borrow().iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            [
                Instant::from_millis(10),
                Instant::from_millis(30),
                Instant::from_millis(35)
            ]
        );
        assert_eq!(w.stats(WifiDirection::Up).max_queued, 3);
    }

    fn lossy_run(seed: u64, config: WifiConfig) -> (Vec<u8>, WifiStats) {
        let (mut k, w) = bench(seed, config);
        let log = receiver(&mut k, &w, WifiDirection::Up);
        for i in 0..=255u8 {
            w.send(WifiDirection::Up, vec![i]).unwrap();
            k.run_for(ms(1));
        }
        k.run_for(ms(100));
        let got = log.borrow().iter().map(|(_, p)| p[0]).collect();
        (got, w.stats(WifiDirection::Up))
    }

    #[test]
    fn loss_is_seeded_reproducible_and_counted() {
        let cfg = WifiConfig {
            loss: 0.2,
            ..WifiConfig::default()
        };
        let (a, stats) = lossy_run(9, cfg.clone());
        let (b, _) = lossy_run(9, cfg.clone());
        let (c, _) = lossy_run(10, cfg);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(stats.lost > 25 && stats.lost < 80, "{stats}");
        assert_eq!(stats.delivered + stats.lost, 256);
        assert_eq!(stats.in_flight, 0);
        assert!(
            a.windows(2).all(|w| w[0] < w[1]),
            "survivors keep their order"
        );
    }

    #[test]
    fn lower_tx_power_loses_more() {
        let p = |tx_power| {
            WifiConfig {
                tx_power,
                ..WifiConfig::default()
            }
            .loss_probability()
        };
        let probs: Vec<f64> = TxPower::ALL.iter().map(|&t| p(t)).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
        assert!(p(TxPower::Dbm19_5) < 1e-6);
        assert!(
            (p(TxPower::Dbm5) - 9.1e-4).abs() < 1e-4,
            "{}",
            p(TxPower::Dbm5)
        );
        assert!((p(TxPower::Minus1) - 0.047).abs() < 0.002);
        // And it shows in a run: a weak link at -1 dBm loses packets that 19.5 dBm keeps.
        let weak = WifiConfig {
            tx_power: TxPower::Minus1,
            link_margin_db: 20.0,
            ..WifiConfig::default()
        };
        let (_, s) = lossy_run(4, weak.clone());
        let (_, strong) = lossy_run(
            4,
            WifiConfig {
                tx_power: TxPower::Dbm19_5,
                ..weak
            },
        );
        assert!(s.lost > 20, "{s}");
        assert_eq!(strong.lost, 0);
        assert_eq!("WIFI_POWER_5dBm".parse(), Ok(TxPower::Dbm5));
        assert_eq!("8.5dBm".parse(), Ok(TxPower::Dbm8_5));
        assert_eq!("8_5".parse(), Ok(TxPower::Dbm8_5));
        assert!("6dBm".parse::<TxPower>().is_err());
        assert_eq!(TxPower::at_most(8.5), TxPower::Dbm8_5);
        assert_eq!(TxPower::at_most(6.0), TxPower::Dbm5);
        assert_eq!(TxPower::at_most(-3.0), TxPower::Minus1);
        assert_eq!(TxPower::at_most(30.0), TxPower::Dbm20);
    }

    #[test]
    fn a_full_queue_refuses_the_newest_and_counts_it() {
        let cfg = WifiConfig {
            bandwidth_bps: 8_000,
            queue_packets: 4,
            ..WifiConfig::default()
        };
        let (mut k, w) = bench(1, cfg);
        let results: Vec<_> = (0..6)
            .map(|i| w.send(WifiDirection::Up, vec![i; 10]))
            .collect();
        assert_eq!(results[..4], [Ok(()); 4]);
        assert_eq!(results[4..], [Err(WifiSendError::QueueFull); 2]);
        let s = w.stats(WifiDirection::Up);
        assert_eq!((s.queue_full, s.max_queued, s.in_flight), (2, 4, 4));
        let metric = k.with_trace(|t| t.series("wifi.up.queue_full").map(|v| v.to_vec()));
        assert_eq!(metric.unwrap_or_default().last().map(|s| s.1), Some(2.0));
        // Once the first has left the air there is room again.
        k.run_for(ms(10));
        assert_eq!(w.send(WifiDirection::Up, vec![9]), Ok(()));
    }

    #[test]
    fn a_disconnect_loses_what_is_in_flight_and_refuses_sends_until_reconnect() {
        let (mut k, w) = bench(1, WifiConfig::default());
        let log = receiver(&mut k, &w, WifiDirection::Down);
        w.send(WifiDirection::Down, vec![1; 100]).unwrap();
        w.disconnect();
        assert_eq!(
            w.send(WifiDirection::Down, vec![2]),
            Err(WifiSendError::Disconnected)
        );
        k.run_for(ms(50));
        assert!(log.borrow().is_empty());
        let s = w.stats(WifiDirection::Down);
        assert_eq!((s.sent, s.disconnected, s.delivered), (2, 2, 0));
        w.reconnect();
        w.send(WifiDirection::Down, vec![3]).unwrap();
        k.run_for(ms(50));
        assert_eq!(log.borrow().len(), 1);
        k.with_trace(|t| {
            assert!(
                t.events()
                    .iter()
                    .any(|e| e.text == "disconnected, 1 packets in flight lost")
            );
        });
    }

    #[test]
    fn the_esp32_side_pays_cpu_on_the_calling_core_and_the_network_side_does_not() {
        let cfg = WifiConfig {
            cpu_per_packet: Duration::from_micros(100),
            cpu_ns_per_byte: 1_000,
            ..WifiConfig::default()
        };
        let (mut k, w) = bench(1, cfg);
        let core0 = k.add_core("esp32.core0");
        let core1 = k.add_core("esp32.core1");
        let (w1, w2) = (w.clone(), w.clone());
        k.spawn(
            TaskSpec::on_core("net", core0, 5, Duration::ZERO),
            async move {
                for _ in 0..10 {
                    let _ = w1.send(WifiDirection::Up, vec![0; 400]);
                }
                let _ = w1.recv(WifiDirection::Down).await;
            },
        )
        .detach();
        k.spawn(TaskSpec::world("broker"), async move {
            let _ = w2.recv(WifiDirection::Up).await;
            let _ = w2.send(WifiDirection::Down, vec![0; 900]);
        })
        .detach();
        k.run_for(ms(100));
        let cores = k.core_stats();
        // 10 × (100 + 400) µs sending, 100 + 900 µs receiving.
        assert_eq!(cores[CoreId(0).0].busy, Duration::from_micros(6_000));
        assert_eq!(cores[core1.0].busy, Duration::ZERO);
        assert_eq!(w.stats(WifiDirection::Down).delivered, 1);
    }
}
