//! The few traits of our own that a platform implements for the firmware.
//!
//! Everything else a task touches is an ecosystem trait: `embedded_hal_async::i2c::I2c` for I2C
//! parts, `embedded_hal_async::delay::DelayNs` for short busy waits inside drivers,
//! `embedded_io_async::{Read, Write}` for UARTs. Each port is a contract: the MUST clauses below
//! are what the firmware relies on, and what a new platform (a board, the simulator) has to keep.
use core::future::Future;

use crate::time::{Duration, Instant};

/// Monotonic time and waiting for it.
///
/// On a board this wraps `embassy_time` (`Instant::now()`, `Timer::at`); in the simulator it is
/// the kernel's virtual clock, so a whole day of firmware time can pass in a second of wall time.
///
/// # Contract
/// * `now()` MUST be monotonic: never smaller than an earlier result on the same clock.
/// * `now()` MUST NOT block or yield, and MUST be cheap enough to call on every event.
/// * `sleep_until(t)` MUST NOT complete before `now() >= t`, and SHOULD complete as soon as it is.
///   A deadline in the past completes at once (it still MAY yield once).
/// * Dropping an unfinished `sleep_until` future MUST cancel it without side effects, so a task
///   can `select` between a queue and a deadline and loop.
/// * Clones MUST share one timeline.
pub trait Clock {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Wait until `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;

    /// Wait for `d` from now.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        self.sleep_until(self.now() + d)
    }
}

impl<C: Clock> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        (**self).sleep_until(deadline)
    }
}

/// Quality of service of one MQTT publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MqttQos {
    /// QoS 0: fire and forget (status, telemetry).
    AtMostOnce,
    /// QoS 1: the broker acknowledges (alarms, dispense events).
    AtLeastOnce,
}

/// Publishing to an MQTT broker: the pump controller's only way out to MQTT.
///
/// Only the MQTT task ([`crate::pump::outbox::MqttTask`]) calls it; every other task pushes into
/// the outbox, so the governor's drain policy sees every message (the design sketch's button
/// handler published directly and bypassed it). On the board this wraps the WiFi stack's MQTT
/// client; in the simulator, the embedded broker (live mode) or an in-process fake
/// (deterministic mode).
///
/// Subscribed messages (`pump/controller/command`) are not part of this trait: the platform's
/// client hands their payloads to [`crate::pump::command::parse_command`].
///
/// # Contract
/// * `publish` MUST return `Ok` only once the message is accepted for delivery: for
///   [`MqttQos::AtMostOnce`] written to the broker connection, for [`MqttQos::AtLeastOnce`]
///   acknowledged by the broker (PUBACK).
/// * `publish` MUST return `Err` when the message was not accepted (no connection, broker
///   unreachable, timeout). The caller keeps the message queued and retries later, so the port
///   MUST NOT keep retrying the same message by itself.
/// * `publish` MUST complete in bounded time (its own connect/ack timeout), so an unreachable
///   broker cannot stall the caller forever. It MAY try to (re)connect once per call.
/// * The port owns the connection (connect, keep-alive, reconnect); the caller never sees it.
/// * The port MUST NOT keep `topic` or `payload` after the returned future completes.
/// * The caller always drives the future to completion (it is never raced against a timeout),
///   so the port need not be cancel-safe.
pub trait MqttPort {
    /// Why a publish failed. The caller only counts failures and retries; the port logs the
    /// details itself (so the type need not be `defmt::Format`).
    type Error: core::fmt::Debug;

    /// Publish `payload` on `topic`.
    fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: MqttQos,
        retain: bool,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

impl<P: MqttPort> MqttPort for &mut P {
    type Error = P::Error;
    fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: MqttQos,
        retain: bool,
    ) -> impl Future<Output = Result<(), Self::Error>> {
        (**self).publish(topic, payload, qos, retain)
    }
}
