//! The pump controller's MQTT outbox: the two lanes, the drain rate per governor priority, the
//! full policy, and retries while the broker is away.
use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pump::Priority;
use crate::pump::outbox::{
    Drain, DrainConfig, Kind, Lane, Message, MsgId, Outbox, Pushed, alarm_message, topic,
};
use crate::time::{Duration, Instant};

cases![
    an_alarm_overtakes_the_normal_lane_which_emergency_holds_in_order,
    dispensing_drains_one_message_per_cycle,
    a_broker_outage_keeps_every_message_and_backs_off,
    a_full_lane_sheds_telemetry_before_events,
];

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn event(n: u8) -> Result<Message, Failure> {
    Ok(check_ok!(Message::event(
        topic::DISPENSE_EVENT,
        &[b'0' + n]
    )))
}

fn status(n: u8) -> Result<Message, Failure> {
    Ok(check_ok!(Message::telemetry(
        topic::STATUS,
        &[b'0' + n],
        true,
        Lane::Normal
    )))
}

fn queue<const N: usize, const E: usize>(o: &mut Outbox<N, E>, m: Message) -> Outcome {
    let pushed = o.push(m, ms(0));
    check!(matches!(pushed, Pushed::Queued(_)), "{pushed:?}");
    Ok(())
}

/// [`Drain`] without the borrow: the message's id, lane and last payload byte.
#[derive(Debug, PartialEq)]
enum Next {
    Send(MsgId, Lane, u8),
    WaitUntil(Instant),
    Idle,
}

/// What the outbox hands out at `now`.
fn next<const N: usize, const E: usize>(
    o: &mut Outbox<N, E>,
    p: Priority,
    now: Instant,
) -> Result<Next, Failure> {
    Ok(match o.poll_drain(p, now) {
        Drain::Send(q) => Next::Send(q.id, q.msg.lane, *check_ok!(q.msg.payload.last())),
        Drain::WaitUntil(t) => Next::WaitUntil(t),
        Drain::Idle => Next::Idle,
    })
}

fn an_alarm_overtakes_the_normal_lane_which_emergency_holds_in_order() -> Outcome {
    let mut o: Outbox<6, 2> = Outbox::new(DrainConfig::DEFAULT);
    for n in 1..=3 {
        queue(&mut o, event(n)?)?;
    }
    queue(&mut o, alarm_message("ESTOP", "button", ms(0)))?;
    let Next::Send(id, lane, _) = next(&mut o, Priority::Emergency, ms(1))? else {
        check!(false, "the alarm is sent at once in EMERGENCY");
        return Ok(());
    };
    check_eq!(lane, Lane::Emergency);
    o.sent(id, ms(1));
    check_eq!(
        next(&mut o, Priority::Emergency, ms(2))?,
        Next::Idle,
        "normal lane held"
    );
    // Back to IDLE: the held messages come out in the order they were queued.
    for n in 1..=3 {
        let Next::Send(id, lane, payload) = next(&mut o, Priority::Idle, ms(3))? else {
            check!(false, "message {n} not sent");
            return Ok(());
        };
        check_eq!((lane, payload), (Lane::Normal, b'0' + n));
        o.sent(id, ms(3));
    }
    check_eq!(o.stats().sent, 4);
    Ok(())
}

fn dispensing_drains_one_message_per_cycle() -> Outcome {
    let mut o: Outbox<6, 2> = Outbox::new(DrainConfig::DEFAULT);
    for n in 1..=3 {
        queue(&mut o, event(n)?)?;
    }
    let cycle = DrainConfig::DEFAULT.dispensing_cycle;
    let mut now = ms(1_000);
    let mut sent_at: heapless::Vec<Instant, 3> = heapless::Vec::new();
    for _ in 0..10 {
        match next(&mut o, Priority::Dispensing, now)? {
            Next::Send(id, _, _) => {
                o.sent(id, now);
                check!(sent_at.push(now).is_ok(), "more sent than queued");
            }
            Next::WaitUntil(t) => {
                check!(t > now, "a deadline in the past would spin");
                now = t;
            }
            Next::Idle => break,
        }
    }
    check_eq!(sent_at.len(), 3);
    for pair in sent_at.windows(2) {
        check_eq!(pair[1] - pair[0], cycle, "one message per DISPENSING cycle");
    }
    Ok(())
}

fn a_broker_outage_keeps_every_message_and_backs_off() -> Outcome {
    let mut o: Outbox<6, 2> = Outbox::new(DrainConfig::DEFAULT);
    queue(&mut o, event(1)?)?;
    queue(&mut o, event(2)?)?;
    let mut now = ms(0);
    let mut waits: heapless::Vec<Duration, 4> = heapless::Vec::new();
    for _ in 0..3 {
        let Next::Send(id, _, payload) = next(&mut o, Priority::Idle, now)? else {
            check!(false, "nothing to send at {now}");
            return Ok(());
        };
        check_eq!(payload, b'1', "the same message is retried");
        o.failed(id, now);
        let Next::WaitUntil(retry) = next(&mut o, Priority::Idle, now)? else {
            check!(false, "no backoff after a failure");
            return Ok(());
        };
        check!(waits.push(retry - now).is_ok());
        now = retry;
    }
    check_eq!(
        waits.as_slice(),
        &[
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ][..],
        "the backoff doubles"
    );
    for n in 1..=2 {
        let Next::Send(id, _, payload) = next(&mut o, Priority::Idle, now)? else {
            check!(false, "nothing to send after the outage");
            return Ok(());
        };
        check_eq!(payload, b'0' + n);
        o.sent(id, now);
    }
    let s = o.stats();
    check_eq!((s.failed, s.sent, s.dropped()), (3, 2, 0));
    Ok(())
}

fn a_full_lane_sheds_telemetry_before_events() -> Outcome {
    let mut o: Outbox<3, 1> = Outbox::new(DrainConfig::DEFAULT);
    queue(&mut o, event(1)?)?;
    queue(&mut o, status(2)?)?;
    queue(&mut o, event(3)?)?;
    let pushed = o.push(event(4)?, ms(1));
    check!(
        matches!(
            pushed,
            Pushed::Displaced {
                dropped: Kind::Telemetry,
                ..
            }
        ),
        "the status goes first: {pushed:?}"
    );
    check_eq!(
        o.push(status(5)?, ms(2)),
        Pushed::DroppedNew,
        "never displaces an event"
    );
    let pushed = o.push(event(6)?, ms(3));
    check!(
        matches!(
            pushed,
            Pushed::Displaced {
                dropped: Kind::Event,
                ..
            }
        ),
        "then the oldest event: {pushed:?}"
    );
    let mut left: heapless::Vec<u8, 3> = heapless::Vec::new();
    while let Next::Send(id, _, payload) = next(&mut o, Priority::Idle, ms(10))? {
        o.sent(id, ms(10));
        check!(left.push(payload).is_ok());
    }
    check_eq!(left.as_slice(), b"346");
    let s = o.stats();
    check_eq!(
        (s.dropped_telemetry, s.dropped_events, s.dropped()),
        (2, 1, 3)
    );
    Ok(())
}
