//! The governor's hand on the WiFi radio: transmit power per priority.
//!
//! The design's priority table (`docs/design.md`) lowers the WiFi transmit power while pumps run
//! ("reduced power", for less interference with the motor drivers and the FluidNC UART) and to a
//! minimum in an emergency, from a configured default of 11 dBm. [`RadioTask`] makes that a firmware decision:
//! it sets the level of the current priority at boot and again on every governor change, through
//! the platform's [`WifiRadio`] (on the board the radio driver's TX power setting; in the twin the
//! WiFi link model's `tx_power`). The levels are configuration ([`TxPowerLevels`]).
//!
//! Power is counted in quarter dBm, the unit of ESP-IDF's `esp_wifi_set_max_tx_power`, so
//! 8.5 dBm is exact.
use core::fmt;
use core::future::Future;

use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::Receiver;

use super::governor::{Governor, Priority, Transition};
use crate::ports::Clock;
use crate::time::Duration;

/// A transmit power, in quarter dBm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TxPower(pub i8);

impl TxPower {
    /// `dbm_x4 / 4` dBm.
    pub const fn from_quarter_dbm(dbm_x4: i8) -> TxPower {
        TxPower(dbm_x4)
    }

    /// The power in quarter dBm.
    pub const fn quarter_dbm(self) -> i8 {
        self.0
    }

    /// The power in dBm.
    pub fn dbm(self) -> f32 {
        f32::from(self.0) / 4.0
    }
}

impl fmt::Display for TxPower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = i32::from(self.0);
        let (sign, q) = if q < 0 { ("-", -q) } else { ("", q) };
        match q % 4 {
            0 => write!(f, "{sign}{}dBm", q / 4),
            r => write!(f, "{sign}{}.{}dBm", q / 4, [0, 25, 5, 75][r as usize]),
        }
    }
}

/// The transmit power at each priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TxPowerLevels {
    /// IDLE: the configured default.
    pub idle: TxPower,
    /// DISPENSING: reduced.
    pub dispensing: TxPower,
    /// EMERGENCY: the minimum.
    pub emergency: TxPower,
}

impl TxPowerLevels {
    /// 11 dBm (the design's default), 8.5 dBm while dispensing, 2 dBm (the lowest level the
    /// design lists) in an emergency.
    pub const DEFAULT: TxPowerLevels = TxPowerLevels {
        idle: TxPower(44),
        dispensing: TxPower(34),
        emergency: TxPower(8),
    };

    /// The level at `p`.
    pub const fn at(&self, p: Priority) -> TxPower {
        match p {
            Priority::Idle => self.idle,
            Priority::Dispensing => self.dispensing,
            Priority::Emergency => self.emergency,
        }
    }
}

impl Default for TxPowerLevels {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The platform's WiFi radio, as far as the governor drives it.
///
/// # Contract
/// * `set_tx_power` MUST apply to every frame the radio sends after it returns `Ok`.
/// * It MAY round to the radio's own steps; it MUST NOT go above the requested power.
/// * It MUST complete in bounded time; on `Err` the power is unchanged and the task retries.
pub trait WifiRadio {
    /// Why the setting failed (logged by the platform, counted by the task).
    type Error: fmt::Debug;
    /// Set the transmit power.
    fn set_tx_power(&mut self, power: TxPower) -> impl Future<Output = Result<(), Self::Error>>;
}

/// How long the task waits before trying again after the radio refused a setting.
pub const RETRY: Duration = Duration::from_secs(1);

/// The radio task: the level of the current priority, set at boot and on every change.
pub struct RadioTask<'a, M: RawMutex, R, C, const W: usize> {
    governor: &'a Governor<M, W>,
    changes: Receiver<'a, M, Transition, W>,
    radio: R,
    clock: C,
    levels: TxPowerLevels,
    applied: Option<TxPower>,
    failures: u32,
}

impl<'a, M: RawMutex, R: WifiRadio, C: Clock, const W: usize> RadioTask<'a, M, R, C, W> {
    /// A task over `radio`; `None` when the governor has no receiver slot left.
    pub fn new(
        governor: &'a Governor<M, W>,
        radio: R,
        clock: C,
        levels: TxPowerLevels,
    ) -> Option<Self> {
        Some(RadioTask {
            changes: governor.changed()?,
            governor,
            radio,
            clock,
            levels,
            applied: None,
            failures: 0,
        })
    }

    /// The power last applied (`None` before the first success).
    pub fn applied(&self) -> Option<TxPower> {
        self.applied
    }

    /// Settings the radio refused.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The radio (the simulator inspects it).
    pub fn radio(&self) -> &R {
        &self.radio
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// Apply the current priority's level if it is not in force, then wait for a change (or the
    /// retry delay after a failure).
    pub async fn step(&mut self) {
        let want = self.levels.at(self.governor.get());
        if self.applied != Some(want) {
            match self.radio.set_tx_power(want).await {
                Ok(()) => {
                    info!("radio: tx power {}", want.quarter_dbm());
                    self.applied = Some(want);
                }
                Err(_) => {
                    self.failures = self.failures.wrapping_add(1);
                    warn!("radio: tx power {} refused, retrying", want.quarter_dbm());
                    select(self.clock.sleep(RETRY), self.changes.changed()).await;
                    return;
                }
            }
        }
        self.changes.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::governor::Reason;
    use crate::pump::outbox::testing::TestClock;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;

    #[derive(Default)]
    struct Radio {
        set: Vec<TxPower>,
        fail_next: bool,
    }

    impl WifiRadio for Radio {
        type Error = ();
        async fn set_tx_power(&mut self, p: TxPower) -> Result<(), ()> {
            if core::mem::take(&mut self.fail_next) {
                return Err(());
            }
            self.set.push(p);
            Ok(())
        }
    }

    #[test]
    fn powers_print_in_dbm() {
        assert_eq!(TxPower(44).to_string(), "11dBm");
        assert_eq!(TxPower(34).to_string(), "8.5dBm");
        assert_eq!(TxPower(-4).to_string(), "-1dBm");
        assert_eq!(TxPower(78).to_string(), "19.5dBm");
        assert_eq!(TxPower(34).dbm(), 8.5);
    }

    #[test]
    fn the_power_follows_the_priority_from_boot_on() {
        let gov: Governor<NoopRawMutex, 1> = Governor::new();
        let clock = TestClock::default();
        let mut t = RadioTask::new(&gov, Radio::default(), &clock, TxPowerLevels::DEFAULT).unwrap();
        let step = |t: &mut RadioTask<'_, _, _, _, 1>| {
            let _ = embassy_futures::poll_once(core::pin::pin!(t.step()));
        };
        step(&mut t);
        gov.request(Priority::Dispensing, Reason::DispenseStarted);
        step(&mut t);
        gov.emergency(Reason::EmergencyStop);
        step(&mut t);
        gov.resume();
        step(&mut t);
        assert_eq!(
            t.radio().set,
            [TxPower(44), TxPower(34), TxPower(8), TxPower(44)]
        );
    }

    #[test]
    fn a_refused_setting_is_retried() {
        let gov: Governor<NoopRawMutex, 1> = Governor::new();
        let clock = TestClock::default();
        let radio = Radio {
            fail_next: true,
            ..Default::default()
        };
        let mut t = RadioTask::new(&gov, radio, &clock, TxPowerLevels::DEFAULT).unwrap();
        assert!(embassy_futures::poll_once(core::pin::pin!(t.step())).is_ready());
        assert_eq!((t.applied(), t.failures()), (None, 1));
        let _ = embassy_futures::poll_once(core::pin::pin!(t.step()));
        assert_eq!(t.applied(), Some(TxPower(44)));
    }
}
