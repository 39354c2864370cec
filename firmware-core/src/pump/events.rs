//! The event task: what pump control reports, turned into MQTT messages and the network side's
//! view of the pumps.
//!
//! Pump control ([`super::dispense`]) emits [`PumpEvent`]s and [`MotionSnapshot`]s; in options 1
//! and 2 they come straight from its channels ([`PumpSource`](super::link::PumpSource)), in
//! option 3 over the serial link ([`PumpToHost`] from the link's queue). [`EventTask`] takes each:
//!
//! * an event becomes one outbox message ([`event_message`]): alarms and `RESUMED` on the
//!   emergency lane (QoS 1), everything else a dispense or recipe event on the normal lane;
//! * a snapshot becomes the [`PumpSnapshot`] the status publisher, the WebSocket feed and the
//!   web server read ([`pump_snapshot`]); on the WiFi MCU of option 3 it also sets that MCU's
//!   governor ([`mirror_priority`]), which has no pump control of its own to set it.
//!
//! # Payloads (ms since boot in `timestamp`; per-pump objects `{"X":…,"Y":…,"Z":…,"A":…}`)
//! | event | topic | payload |
//! |---|---|---|
//! | E-stop | `alarm` | `{"eventType":"EMERGENCY_STOP","trigger":"Button","timestamp":…}` ([`alarm_message`]) |
//! | other alarm | `alarm` | `{"eventType":"MACHINE_ALARM","detail":"ALARM:1","timestamp":…}` |
//! | resumed | `dispense/event` | `{"event":"RESUMED","dispensed_ml":{…},"timestamp":…}` |
//! | started | `dispense/event` | `{"event":"STARTED","id":1,"volume_ml":{…},"expected_ms":…,"timestamp":…}` |
//! | progress | `dispense/event` | `{"event":"PROGRESS","id":1,"dispensed_ml":{…},"timestamp":…}` |
//! | complete | `dispense/complete` | `{"id":1,"dispensed_ml":{…},"duration_ms":…,"timestamp":…}` |
//! | aborted | `dispense/event` | `{"event":"ABORTED","id":1,"dispensed_ml":{…},"cause":"Stopped","timestamp":…}` |
//! | rate clamped | `dispense/event` | `{"event":"RATE_CLAMPED","pump":"X","requested":…,"applied":…,"timestamp":…}` |
//! | rejected | `dispense/event` | `{"event":"REJECTED","error":"busy","timestamp":…}` |
//! | recipe started / step | `recipe/start` | `{"name":"demo","steps":2,…}` / `{"name":"demo","step":1,…}` |
//! | recipe complete / aborted | `recipe/complete` | `{"name":"demo",…}` / `{"name":"demo","aborted_at_step":1,…}` |
//!
//! Volumes have three decimals, feeds one; a value that is not finite is written `null`.
//! Payloads are written by hand into a fixed buffer like the status ([`super::status`]): the
//! layouts are flat, numbers need fixed decimals, and strings go through
//! [`write_json_string`](super::stats::write_json_string).
use core::fmt::{self, Write};

use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::Watch;

use super::dispense::{AlarmKind, MotionSnapshot, PerPump, PumpEvent};
use super::governor::{Governor, Priority, Reason};
use super::link::{LinkSource, PumpToHost};
use super::outbox::{Message, PAYLOAD_MAX, Pushed, SharedOutbox, alarm_message, topic};
use super::stats::{Truncating, write_json_string};
use super::status::{PumpSnapshot, STATE_MAX};
use crate::ports::Clock;
use crate::time::Instant;

fn write_num(w: &mut impl Write, v: f32, decimals: usize) -> fmt::Result {
    if v.is_finite() {
        write!(w, "{v:.decimals$}")
    } else {
        w.write_str("null")
    }
}

fn write_per_pump(w: &mut impl Write, v: &PerPump) -> fmt::Result {
    w.write_char('{')?;
    for (i, (axis, ml)) in ["X", "Y", "Z", "A"].iter().zip(v).enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        write!(w, "\"{axis}\":")?;
        write_num(w, *ml, 3)?;
    }
    w.write_char('}')
}

/// A `Display` value as a JSON string (for enum names and error texts of ours).
struct Shown<T>(T);

impl<T: fmt::Display> fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn write_shown_string(w: &mut impl Write, v: impl fmt::Display) -> fmt::Result {
    let mut s: heapless::String<96> = heapless::String::new();
    // Longer texts are cut: none of ours reaches 96 bytes.
    let _ = write!(s, "{}", Shown(v));
    write_json_string(w, &s)
}

struct Debugged<T>(T);

impl<T: fmt::Debug> fmt::Display for Debugged<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The body of a normal-lane event, without the closing `,"timestamp":…}`; its topic.
fn write_event(w: &mut impl Write, ev: &PumpEvent) -> Result<&'static str, fmt::Error> {
    Ok(match ev {
        PumpEvent::DispenseStarted {
            id,
            volume_ml,
            expected_ms,
            ..
        } => {
            write!(w, "{{\"event\":\"STARTED\",\"id\":{id},\"volume_ml\":")?;
            write_per_pump(w, volume_ml)?;
            write!(w, ",\"expected_ms\":{expected_ms}")?;
            topic::DISPENSE_EVENT
        }
        PumpEvent::DispenseProgress { id, dispensed_ml } => {
            write!(w, "{{\"event\":\"PROGRESS\",\"id\":{id},\"dispensed_ml\":")?;
            write_per_pump(w, dispensed_ml)?;
            topic::DISPENSE_EVENT
        }
        PumpEvent::DispenseComplete {
            id,
            dispensed_ml,
            duration_ms,
        } => {
            write!(w, "{{\"id\":{id},\"dispensed_ml\":")?;
            write_per_pump(w, dispensed_ml)?;
            write!(w, ",\"duration_ms\":{duration_ms}")?;
            topic::DISPENSE_COMPLETE
        }
        PumpEvent::DispenseAborted {
            id,
            dispensed_ml,
            cause,
        } => {
            write!(w, "{{\"event\":\"ABORTED\",\"id\":{id},\"dispensed_ml\":")?;
            write_per_pump(w, dispensed_ml)?;
            w.write_str(",\"cause\":")?;
            write_shown_string(w, Debugged(cause))?;
            topic::DISPENSE_EVENT
        }
        PumpEvent::RateClamped {
            pump,
            requested_mm_min,
            applied_mm_min,
        } => {
            write!(
                w,
                "{{\"event\":\"RATE_CLAMPED\",\"pump\":\"{pump}\",\"requested\":"
            )?;
            write_num(w, *requested_mm_min, 1)?;
            w.write_str(",\"applied\":")?;
            write_num(w, *applied_mm_min, 1)?;
            topic::DISPENSE_EVENT
        }
        PumpEvent::Rejected(e) => {
            w.write_str("{\"event\":\"REJECTED\",\"error\":")?;
            write_shown_string(w, e)?;
            topic::DISPENSE_EVENT
        }
        PumpEvent::RecipeStarted { name, steps } => {
            w.write_str("{\"name\":")?;
            write_json_string(w, name)?;
            write!(w, ",\"steps\":{steps}")?;
            topic::RECIPE_START
        }
        PumpEvent::RecipeStep { name, step } => {
            w.write_str("{\"name\":")?;
            write_json_string(w, name)?;
            write!(w, ",\"step\":{step}")?;
            topic::RECIPE_START
        }
        PumpEvent::RecipeComplete { name } => {
            w.write_str("{\"name\":")?;
            write_json_string(w, name)?;
            topic::RECIPE_COMPLETE
        }
        PumpEvent::RecipeAborted { name, step } => {
            w.write_str("{\"name\":")?;
            write_json_string(w, name)?;
            write!(w, ",\"aborted_at_step\":{step}")?;
            topic::RECIPE_COMPLETE
        }
        // Emergency-lane events are written by `event_message` itself.
        PumpEvent::Alarm(_) | PumpEvent::Resumed { .. } => return Err(fmt::Error),
    })
}

/// The outbox message for a pump event at `now` (see the module docs for the payloads); `None`
/// only if it does not fit [`PAYLOAD_MAX`], which no event of ours reaches.
pub fn event_message(ev: &PumpEvent, now: Instant) -> Option<Message> {
    let ts = now.as_millis();
    let mut body: heapless::String<PAYLOAD_MAX> = heapless::String::new();
    match ev {
        PumpEvent::Alarm(AlarmKind::EmergencyStop { trigger }) => {
            Some(alarm_message("EMERGENCY_STOP", trigger.name(), now))
        }
        PumpEvent::Alarm(kind) => {
            write!(
                body,
                "{{\"eventType\":\"{}\",\"detail\":",
                kind.event_type()
            )
            .ok()?;
            write_shown_string(&mut body, kind).ok()?;
            write!(body, ",\"timestamp\":{ts}}}").ok()?;
            Message::alarm(topic::ALARM, body.as_bytes()).ok()
        }
        PumpEvent::Resumed { dispensed_ml } => {
            body.push_str("{\"event\":\"RESUMED\",\"dispensed_ml\":")
                .ok()?;
            write_per_pump(&mut body, dispensed_ml).ok()?;
            write!(body, ",\"timestamp\":{ts}}}").ok()?;
            Message::alarm(topic::DISPENSE_EVENT, body.as_bytes()).ok()
        }
        other => {
            let t = write_event(&mut body, other).ok()?;
            write!(body, ",\"timestamp\":{ts}}}").ok()?;
            Message::event(t, body.as_bytes()).ok()
        }
    }
}

/// The network side's view of a motion snapshot: per-pump status and the state name
/// (`Idle`, `Run`, … from the last machine report; `Emergency`; `Alarm MACHINE_ALARM`; or
/// `Unknown` before the first report).
pub fn pump_snapshot(s: &MotionSnapshot) -> PumpSnapshot {
    let mut state: heapless::String<STATE_MAX> = heapless::String::new();
    // Names longer than STATE_MAX are cut.
    let mut w = Truncating(&mut state);
    let _ = if s.emergency {
        w.write_str("Emergency")
    } else if let Some(a) = s.alarm {
        write!(w, "Alarm {}", a.event_type())
    } else {
        match s.machine {
            Some(m) => write!(w, "{m:?}"),
            None => w.write_str("Unknown"),
        }
    };
    PumpSnapshot {
        pumps: s.pumps,
        state,
    }
}

/// The governor of a WiFi MCU (option 3) follows the pump MCU's snapshots: EMERGENCY while the
/// E-stop is latched, DISPENSING while a dose runs, IDLE otherwise. Leaving EMERGENCY goes
/// through [`Governor::resume`], the only way out of it.
pub fn mirror_priority<M: RawMutex, const W: usize>(gov: &Governor<M, W>, s: &MotionSnapshot) {
    let want = if s.emergency {
        Priority::Emergency
    } else if s.dispensing {
        Priority::Dispensing
    } else {
        Priority::Idle
    };
    match (gov.get(), want) {
        (a, b) if a == b => {}
        (_, Priority::Emergency) => {
            gov.emergency(Reason::EmergencyStop);
        }
        (Priority::Emergency, p) => {
            gov.resume();
            gov.request(p, Reason::DispenseStarted);
        }
        (_, Priority::Dispensing) => {
            gov.request(Priority::Dispensing, Reason::DispenseStarted);
        }
        (_, _) => {
            gov.request(Priority::Idle, Reason::DispenseFinished);
        }
    }
}

/// Where the [`EventTask`]'s governor comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GovernorRole {
    /// Pump control on this MCU sets the governor (options 1 and 2): leave it alone.
    Local,
    /// This is the WiFi MCU of option 3: set it from the snapshots ([`mirror_priority`]).
    Mirror,
}

/// What one [`EventTask::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// An event went into the outbox (or was too large: `None`, logged).
    Event(PumpEvent, Option<Pushed>),
    /// A snapshot was published to the network side.
    Snapshot(MotionSnapshot),
}

/// The event task: [`PumpToHost`] from `source` into the outbox and the pump snapshot watch.
pub struct EventTask<
    'a,
    M: RawMutex,
    S,
    C,
    const W: usize,
    const P: usize,
    const N: usize,
    const E: usize,
> {
    source: S,
    outbox: &'a SharedOutbox<M, N, E>,
    pumps: &'a Watch<M, PumpSnapshot, P>,
    governor: &'a Governor<M, W>,
    role: GovernorRole,
    clock: C,
}

impl<'a, M, S, C, const W: usize, const P: usize, const N: usize, const E: usize>
    EventTask<'a, M, S, C, W, P, N, E>
where
    M: RawMutex,
    S: LinkSource<Item = PumpToHost>,
    C: Clock,
{
    /// A task reading `source`.
    pub fn new(
        source: S,
        outbox: &'a SharedOutbox<M, N, E>,
        pumps: &'a Watch<M, PumpSnapshot, P>,
        governor: &'a Governor<M, W>,
        role: GovernorRole,
        clock: C,
    ) -> Self {
        EventTask {
            source,
            outbox,
            pumps,
            governor,
            role,
            clock,
        }
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// Wait for the next item and handle it.
    pub async fn step(&mut self) -> Handled {
        match self.source.next().await {
            PumpToHost::Event(ev) => {
                let now = self.clock.now();
                let pushed = match event_message(&ev, now) {
                    Some(m) => Some(self.outbox.push(m, now)),
                    None => {
                        warn!("events: an event did not fit an MQTT message");
                        None
                    }
                };
                Handled::Event(ev, pushed)
            }
            PumpToHost::Snapshot(s) => {
                self.pumps.sender().send(pump_snapshot(&s));
                if self.role == GovernorRole::Mirror {
                    mirror_priority(self.governor, &s);
                }
                Handled::Snapshot(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::Pump;
    use crate::pump::dispense::{AbortCause, DispenseError};
    use crate::pump::estop::EstopTrigger;
    use crate::pump::outbox::testing::TestClock;
    use crate::pump::outbox::{DrainConfig, Lane};
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;

    const NOW: Instant = Instant::from_millis(1234);

    #[track_caller]
    fn payload(ev: PumpEvent) -> (String, String, Lane) {
        let m = event_message(&ev, NOW).expect("fits");
        let text = String::from_utf8(m.payload.to_vec()).unwrap();
        (m.topic.as_str().to_owned(), text, m.lane)
    }

    #[test]
    fn dispense_events_have_the_documented_payloads() {
        let v = [1.5, 0.0, 0.25, 0.0];
        assert_eq!(
            payload(PumpEvent::DispenseStarted {
                id: 3,
                volume_ml: v,
                flow_ml_min: v,
                expected_ms: 9000
            }),
            (
                "dispense/event".into(),
                r#"{"event":"STARTED","id":3,"volume_ml":{"X":1.500,"Y":0.000,"Z":0.250,"A":0.000},"expected_ms":9000,"timestamp":1234}"#.into(),
                Lane::Normal
            )
        );
        assert_eq!(
            payload(PumpEvent::DispenseComplete {
                id: 3,
                dispensed_ml: v,
                duration_ms: 9100
            })
            .1,
            r#"{"id":3,"dispensed_ml":{"X":1.500,"Y":0.000,"Z":0.250,"A":0.000},"duration_ms":9100,"timestamp":1234}"#
        );
        assert_eq!(
            payload(PumpEvent::DispenseAborted {
                id: 4,
                dispensed_ml: v,
                cause: AbortCause::Alarm(AlarmKind::EmergencyStop {
                    trigger: EstopTrigger::Button
                })
            })
            .1,
            r#"{"event":"ABORTED","id":4,"dispensed_ml":{"X":1.500,"Y":0.000,"Z":0.250,"A":0.000},"cause":"Alarm(EmergencyStop { trigger: Button })","timestamp":1234}"#
        );
        assert_eq!(
            payload(PumpEvent::RateClamped {
                pump: Pump::Y,
                requested_mm_min: 1200.0,
                applied_mm_min: 200.0
            })
            .1,
            r#"{"event":"RATE_CLAMPED","pump":"Y","requested":1200.0,"applied":200.0,"timestamp":1234}"#
        );
        assert_eq!(
            payload(PumpEvent::Rejected(DispenseError::Busy)).1,
            r#"{"event":"REJECTED","error":"busy","timestamp":1234}"#
        );
    }

    #[test]
    fn alarms_and_resume_take_the_emergency_lane() {
        let (t, text, lane) = payload(PumpEvent::Alarm(AlarmKind::EmergencyStop {
            trigger: EstopTrigger::Button,
        }));
        assert_eq!((t.as_str(), lane), ("alarm", Lane::Emergency));
        assert_eq!(
            text,
            r#"{"eventType":"EMERGENCY_STOP","trigger":"Button","timestamp":1234}"#
        );
        let (t, text, lane) = payload(PumpEvent::Alarm(AlarmKind::MachineAlarm(1)));
        assert_eq!((t.as_str(), lane), ("alarm", Lane::Emergency));
        assert_eq!(
            text,
            r#"{"eventType":"MACHINE_ALARM","detail":"ALARM:1","timestamp":1234}"#
        );
        let (t, text, lane) = payload(PumpEvent::Resumed {
            dispensed_ml: [0.5, 0.0, 0.0, 0.0],
        });
        assert_eq!((t.as_str(), lane), ("dispense/event", Lane::Emergency));
        assert!(text.starts_with(r#"{"event":"RESUMED","dispensed_ml":{"X":0.500,"#));
    }

    #[test]
    fn recipe_names_are_escaped_and_non_finite_values_are_null() {
        let name = heapless::String::try_from("a \"b\"\\").unwrap();
        assert_eq!(
            payload(PumpEvent::RecipeAborted { name, step: 1 }).1,
            r#"{"name":"a \"b\"\\","aborted_at_step":1,"timestamp":1234}"#
        );
        let (_, text, _) = payload(PumpEvent::DispenseProgress {
            id: 1,
            dispensed_ml: [f32::NAN, f32::INFINITY, 0.0, 0.0],
        });
        assert!(text.contains(r#"{"X":null,"Y":null,"#), "{text}");
    }

    #[test]
    fn every_event_payload_is_json_even_at_the_extremes() {
        let big = [-f32::MAX; 4];
        let name = heapless::String::try_from("\u{1}".repeat(24).as_str()).unwrap();
        let events = [
            PumpEvent::DispenseStarted {
                id: u32::MAX,
                volume_ml: big,
                flow_ml_min: big,
                expected_ms: u32::MAX,
            },
            PumpEvent::DispenseAborted {
                id: u32::MAX,
                dispensed_ml: big,
                cause: AbortCause::Alarm(AlarmKind::NotIdle(
                    crate::pump::fluidnc::MachineState::Alarm,
                )),
            },
            PumpEvent::RateClamped {
                pump: Pump::A,
                requested_mm_min: -f32::MAX,
                applied_mm_min: f32::MAX,
            },
            PumpEvent::RecipeStarted { name, steps: 255 },
            PumpEvent::Resumed { dispensed_ml: big },
        ];
        for ev in events {
            let m = event_message(&ev, Instant::MAX).expect("fits PAYLOAD_MAX");
            let text = core::str::from_utf8(&m.payload).unwrap();
            assert!(text.starts_with('{') && text.ends_with('}'), "{text}");
        }
    }

    #[test]
    fn the_snapshot_names_the_state() {
        let mut s = MotionSnapshot::default();
        assert_eq!(pump_snapshot(&s).state.as_str(), "Unknown");
        s.machine = Some(crate::pump::fluidnc::MachineState::Idle);
        assert_eq!(pump_snapshot(&s).state.as_str(), "Idle");
        s.alarm = Some(AlarmKind::DispenseTimeout);
        assert_eq!(pump_snapshot(&s).state.as_str(), "Alarm DISPENSE_T");
        s.emergency = true;
        assert_eq!(pump_snapshot(&s).state.as_str(), "Emergency");
    }

    #[test]
    fn a_mirrored_governor_follows_the_snapshots_and_leaves_emergency_only_by_resume() {
        let gov: Governor<NoopRawMutex, 1> = Governor::new();
        let mut s = MotionSnapshot {
            dispensing: true,
            ..Default::default()
        };
        mirror_priority(&gov, &s);
        assert_eq!(gov.get(), Priority::Dispensing);
        s.emergency = true;
        mirror_priority(&gov, &s);
        assert_eq!(gov.get(), Priority::Emergency);
        s.emergency = false;
        s.dispensing = false;
        mirror_priority(&gov, &s);
        assert_eq!(gov.get(), Priority::Idle);
    }

    struct One(Option<PumpToHost>);

    impl LinkSource for One {
        type Item = PumpToHost;
        async fn next(&mut self) -> PumpToHost {
            match self.0.take() {
                Some(m) => m,
                None => core::future::pending().await,
            }
        }
    }

    #[test]
    fn the_task_queues_events_and_publishes_snapshots() {
        let outbox: SharedOutbox<NoopRawMutex, 50, 8> = SharedOutbox::new(DrainConfig::DEFAULT);
        let pumps: Watch<NoopRawMutex, PumpSnapshot, 1> = Watch::new();
        let gov: Governor<NoopRawMutex, 1> = Governor::new();
        let clock = TestClock::default();
        let ev = PumpEvent::Alarm(AlarmKind::MachineAlarm(2));
        let mut t = EventTask::new(
            One(Some(PumpToHost::Event(ev))),
            &outbox,
            &pumps,
            &gov,
            GovernorRole::Mirror,
            &clock,
        );
        let done = embassy_futures::poll_once(core::pin::pin!(t.step()));
        assert!(matches!(done, core::task::Poll::Ready(Handled::Event(..))));
        assert_eq!(outbox.with(|o| o.emergency_len()), 1);
        let snap = MotionSnapshot {
            emergency: true,
            ..Default::default()
        };
        let mut t = EventTask::new(
            One(Some(PumpToHost::Snapshot(snap))),
            &outbox,
            &pumps,
            &gov,
            GovernorRole::Mirror,
            &clock,
        );
        let _ = embassy_futures::poll_once(core::pin::pin!(t.step()));
        assert_eq!(
            pumps.dyn_anon_receiver().try_get().map(|s| s.state),
            Some(heapless::String::try_from("Emergency").unwrap())
        );
        assert_eq!(gov.get(), Priority::Emergency);
    }
}
