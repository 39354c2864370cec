//! Emergency-stop sequencing: from the button edge to a machine with no motion left.
//!
//! A feed hold `!` alone is not a stop: FluidNC decelerates, parks in `Hold:0`, and keeps the
//! rest of the move planned, so a later `~` (or anything that resumes a hold) would finish a dose
//! nobody asked for. The seed firmware sent `!` and then waited for `Idle`, which never comes.
//! [`StopSequence`] therefore goes on after the hold:
//!
//! 1. `!` first, before anything else is written ([`Client::feed_hold_now`] puts it at the front
//!    and discards unsent lines), then `?` polls until the hold is complete (`Hold:0`, or the
//!    machine was not moving at all). A reset while still decelerating would cost the position
//!    (`ALARM:3`), so it waits — but only up to [`StopConfig::hold_timeout`], then resets anyway.
//! 2. Soft reset 0x18: the planner, and with it the remaining motion, is flushed.
//! 3. `$X` (held back by the client until the banner) clears a possible `ALARM:3`.
//! 4. `?` until a fresh report gives the machine position to re-sync from (FluidNC keeps MPos
//!    over a soft reset; the G92 offset is cleared, which the pump does not use).
//!
//! No `~` is ever sent. Resuming after an emergency is the owner's business
//! ([`super::dispense::PumpMotion::resume`]): back to `IDLE`, reporting what was dispensed.
//!
//! Also here: the E-stop input edge detector ([`EstopButton`]) and the LED pattern the platform
//! shows ([`LedPattern`]).
use super::fluidnc::{AXES, Client, ClientEvent, LineTag, MachineState, Realtime};
use crate::time::{Duration, Instant};

/// What fired the emergency stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum EstopTrigger {
    /// The physical E-stop button.
    Button,
    /// A remote command (MQTT, WebSocket, REST, or the serial link).
    Remote,
}

impl EstopTrigger {
    /// Name as published (`"Button"`, `"Remote"`).
    pub const fn name(self) -> &'static str {
        match self {
            EstopTrigger::Button => "Button",
            EstopTrigger::Remote => "Remote",
        }
    }
}

/// The pattern the status LEDs should show; the platform maps it to pins and blink timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum LedPattern {
    /// Ready, nothing pumping (steady green).
    #[default]
    Idle,
    /// A dispense is running (slow blink).
    Dispensing,
    /// Emergency stop latched (fast red blink) until resume.
    Emergency,
    /// Machine alarm or dispense fault (steady red) until resume.
    Alarm,
}

/// Rising-edge detector for the E-stop input (pressed = `true`).
///
/// No debounce on purpose: the first edge must act at once, and a bounce only repeats an
/// emergency stop, which is idempotent.
#[derive(Debug, Default, Clone, Copy)]
pub struct EstopButton {
    pressed: bool,
}

impl EstopButton {
    /// A released button.
    pub const fn new() -> Self {
        EstopButton { pressed: false }
    }
    /// Feed the sampled level; `true` on the press edge.
    pub fn handle_level(&mut self, pressed: bool) -> bool {
        let edge = pressed && !self.pressed;
        self.pressed = pressed;
        edge
    }
}

/// Timing of the stop sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StopConfig {
    /// Longest wait for `Hold:0` before resetting anyway (deceleration from 200 mm/min at
    /// 100 mm/s² takes ~33 ms).
    pub hold_timeout: Duration,
    /// Longest wait for the `$X` answer after the reset (covers the client's banner wait).
    pub unlock_timeout: Duration,
    /// Longest wait for the re-sync status report.
    pub sync_timeout: Duration,
    /// Interval between `?` polls while waiting for a report.
    pub poll_interval: Duration,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            hold_timeout: Duration::from_millis(1_000),
            unlock_timeout: Duration::from_millis(3_000),
            sync_timeout: Duration::from_millis(1_000),
            poll_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// `!` sent; polling until the hold completes.
    Hold {
        deadline: Instant,
        next_poll: Instant,
    },
    /// 0x18 + `$X` sent; waiting for the `$X` answer.
    Unlock {
        tag: LineTag,
        deadline: Instant,
    },
    /// Polling for a fresh position.
    Sync {
        deadline: Instant,
        next_poll: Instant,
    },
    Done,
}

/// How a stop sequence ended.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StopOutcome {
    /// The machine position after the stop (from the re-sync report, else the last report seen).
    pub position: Option<[f32; AXES]>,
    /// Whether every step was confirmed by the controller (false: a step timed out and the
    /// sequence went on regardless).
    pub confirmed: bool,
}

/// The sans-IO stop sequence. It drives a [`Client`] it is handed on every call.
#[derive(Debug, Clone)]
pub struct StopSequence {
    config: StopConfig,
    phase: Phase,
    position: Option<[f32; AXES]>,
    confirmed: bool,
}

impl StopSequence {
    /// Start: `!` goes to the front of the client's output, unsent lines are dropped, and a `?`
    /// follows.
    pub fn start(client: &mut Client, config: StopConfig, now: Instant) -> Self {
        client.feed_hold_now();
        client.send_realtime(Realtime::StatusQuery);
        StopSequence {
            config,
            phase: Phase::Hold {
                deadline: now + config.hold_timeout,
                next_poll: now + config.poll_interval,
            },
            position: client.last_status().map(|s| s.position),
            confirmed: true,
        }
    }

    /// Whether the sequence has finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn reset(&mut self, client: &mut Client, now: Instant) {
        client.soft_reset(now);
        match client.send_line("$X") {
            Ok(tag) => {
                self.phase = Phase::Unlock {
                    tag,
                    deadline: now + self.config.unlock_timeout,
                }
            }
            Err(_) => {
                // Cannot happen: soft_reset emptied the queue. Go straight to the sync.
                self.confirmed = false;
                self.sync(client, now);
            }
        }
    }

    fn sync(&mut self, client: &mut Client, now: Instant) {
        client.clear_last_status();
        client.send_realtime(Realtime::StatusQuery);
        self.phase = Phase::Sync {
            deadline: now + self.config.sync_timeout,
            next_poll: now + self.config.poll_interval,
        };
    }

    fn finish(&mut self) -> Option<StopOutcome> {
        self.phase = Phase::Done;
        Some(StopOutcome {
            position: self.position,
            confirmed: self.confirmed,
        })
    }

    /// Feed a client event. Returns the outcome when the sequence finishes.
    pub fn handle_event(
        &mut self,
        ev: &ClientEvent,
        client: &mut Client,
        now: Instant,
    ) -> Option<StopOutcome> {
        if let ClientEvent::Status(r) = ev {
            self.position = Some(r.position);
        }
        match (self.phase, ev) {
            (Phase::Hold { .. }, ClientEvent::Status(r))
                if !matches!(r.state, MachineState::Run | MachineState::Hold(1)) =>
            {
                self.reset(client, now);
                None
            }
            (Phase::Unlock { tag, .. }, ClientEvent::Ok(t) | ClientEvent::Error { tag: t, .. })
                if *t == tag =>
            {
                self.sync(client, now);
                None
            }
            (Phase::Unlock { tag, .. }, ClientEvent::Dropped(t)) if *t == tag => {
                self.confirmed = false;
                self.sync(client, now);
                None
            }
            (Phase::Sync { .. }, ClientEvent::Status(_)) => self.finish(),
            _ => None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Hold {
                deadline,
                next_poll,
            }
            | Phase::Sync {
                deadline,
                next_poll,
            } => Some(deadline.min(next_poll)),
            Phase::Unlock { deadline, .. } => Some(deadline),
            Phase::Done => None,
        }
    }

    /// Handle the passage of time: poll again, or give up waiting and go on.
    pub fn handle_timeout(&mut self, client: &mut Client, now: Instant) -> Option<StopOutcome> {
        match self.phase {
            Phase::Hold {
                deadline,
                next_poll,
            } => {
                if now >= deadline {
                    warn!("estop: hold not confirmed, resetting anyway");
                    self.confirmed = false;
                    self.reset(client, now);
                } else if now >= next_poll {
                    client.send_realtime(Realtime::StatusQuery);
                    self.phase = Phase::Hold {
                        deadline,
                        next_poll: now + self.config.poll_interval,
                    };
                }
                None
            }
            Phase::Unlock { deadline, .. } => {
                if now >= deadline {
                    warn!("estop: no answer to $X");
                    self.confirmed = false;
                    self.sync(client, now);
                }
                None
            }
            Phase::Sync {
                deadline,
                next_poll,
            } => {
                if now >= deadline {
                    warn!("estop: no status after reset");
                    self.confirmed = false;
                    return self.finish();
                }
                if now >= next_poll {
                    client.send_realtime(Realtime::StatusQuery);
                    self.phase = Phase::Sync {
                        deadline,
                        next_poll: now + self.config.poll_interval,
                    };
                }
                None
            }
            Phase::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::fluidnc::ClientConfig;

    const BANNER: &[u8] = b"\nGrbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]\n";

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn drain(c: &mut Client) -> std::vec::Vec<u8> {
        let mut out = std::vec::Vec::new();
        while let Some(t) = c.poll_transmit() {
            out.extend_from_slice(t.bytes());
        }
        out
    }

    /// Feed `bytes` to the client and the resulting events to the sequence.
    fn feed(
        s: &mut StopSequence,
        c: &mut Client,
        bytes: &[u8],
        now: Instant,
    ) -> Option<StopOutcome> {
        c.handle_bytes(bytes, now);
        let mut out = None;
        while let Some(ev) = c.poll_event() {
            out = out.or(s.handle_event(&ev, c, now));
        }
        out
    }

    /// A client with a G1 line in flight, machine running.
    fn client_running() -> Client {
        let mut c = Client::new(ClientConfig::default());
        c.send_line("G91 G1 X100 F200").unwrap();
        let _ = drain(&mut c);
        c.handle_bytes(b"ok\n<Run|MPos:1.000,0,0,0|FS:200,0>\n", ms(0));
        while c.poll_event().is_some() {}
        c
    }

    #[test]
    fn estop_sends_feed_hold_first_then_reset_and_unlock_and_never_resume() {
        let mut c = client_running();
        c.send_line("G91 G1 Y5 F100").unwrap(); // queued behind: must never go out
        let mut s = StopSequence::start(&mut c, StopConfig::default(), ms(0));
        let mut wire = drain(&mut c);
        assert_eq!(wire[0], b'!', "the feed hold is the first byte written");
        assert!(
            feed(
                &mut s,
                &mut c,
                b"<Hold:1|MPos:1.050,0,0,0|FS:100,0>\n",
                ms(10)
            )
            .is_none()
        );
        wire.extend(drain(&mut c));
        assert!(!wire.contains(&0x18), "no reset while decelerating");
        assert!(
            feed(
                &mut s,
                &mut c,
                b"<Hold:0|MPos:1.060,0,0,0|FS:0,0>\n",
                ms(40)
            )
            .is_none()
        );
        wire.extend(drain(&mut c));
        assert!(feed(&mut s, &mut c, BANNER, ms(50)).is_none());
        wire.extend(drain(&mut c));
        assert!(
            feed(
                &mut s,
                &mut c,
                b"[MSG:INFO: Caution: Unlocked]\nok\n",
                ms(60)
            )
            .is_none()
        );
        wire.extend(drain(&mut c));
        let out = feed(&mut s, &mut c, b"<Idle|MPos:1.060,0,0,0|FS:0,0>\n", ms(70)).unwrap();
        assert_eq!(out.position, Some([1.06, 0.0, 0.0, 0.0]));
        assert!(out.confirmed);
        assert_eq!(wire, b"!?\x18$X\n?");
        assert!(!wire.contains(&b'~'));
        assert!(!wire.windows(2).any(|w| w == b"Y5"));
    }

    #[test]
    fn a_hold_that_never_completes_is_reset_at_the_hold_timeout() {
        let mut c = client_running();
        let cfg = StopConfig::default();
        let mut s = StopSequence::start(&mut c, cfg, ms(0));
        let mut now = ms(0);
        let mut wire = drain(&mut c);
        while !wire.contains(&0x18) {
            now = s.poll_timeout().unwrap();
            assert!(now <= ms(0) + cfg.hold_timeout);
            s.handle_timeout(&mut c, now);
            wire.extend(drain(&mut c));
        }
        assert_eq!(now, ms(0) + cfg.hold_timeout);
    }

    #[test]
    fn a_silent_controller_still_ends_the_sequence_unconfirmed() {
        let mut c = client_running();
        let mut s = StopSequence::start(&mut c, StopConfig::default(), ms(0));
        let mut out = None;
        for _ in 0..1000 {
            let Some(t) = s.poll_timeout() else { break };
            c.handle_timeout(t);
            out = s.handle_timeout(&mut c, t);
            let _ = drain(&mut c);
            if out.is_some() {
                break;
            }
        }
        let out = out.expect("sequence ends");
        assert!(!out.confirmed);
        assert_eq!(out.position, Some([1.0, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn estop_button_acts_on_the_press_edge_only() {
        let mut b = EstopButton::new();
        assert!(b.handle_level(true));
        assert!(!b.handle_level(true));
        assert!(!b.handle_level(false));
        assert!(b.handle_level(true));
    }
}
