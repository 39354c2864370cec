//! The crate's shared building blocks: bounded queues and their full policies, time arithmetic,
//! HTTP Basic credentials.
use core::fmt::Write as _;

use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, NoopRawMutex};

use super::{Outcome, cases, check, check_eq};
use crate::basic_auth;
use crate::queue::{FullPolicy, Offer, Queue};
use crate::time::{Duration, Instant};

cases![
    reject_new_keeps_queued_items_and_counts_the_refusal,
    drop_oldest_makes_room_and_counts_the_displaced_item,
    nothing_is_lost_while_there_is_room,
    send_waits_for_room_instead_of_dropping,
    instant_arithmetic_saturates_instead_of_panicking,
    duration_displays_in_the_nearest_unit,
    right_credentials_match_with_or_without_padding,
    wrong_or_malformed_credentials_do_not_match,
    a_password_with_a_colon_is_kept_whole,
];

fn queue(policy: FullPolicy) -> Queue<NoopRawMutex, u32, 3> {
    Queue::new(policy)
}

fn reject_new_keeps_queued_items_and_counts_the_refusal() -> Outcome {
    let q = queue(FullPolicy::RejectNew);
    for i in 0..3 {
        check_eq!(q.offer(i), Offer::Queued);
    }
    check_eq!(q.offer(99), Offer::Rejected(99));
    let s = q.stats();
    check_eq!((s.accepted, s.rejected, s.displaced, s.depth), (3, 1, 0, 3));
    check_eq!(q.try_receive(), Some(0));
    Ok(())
}

fn drop_oldest_makes_room_and_counts_the_displaced_item() -> Outcome {
    let q = queue(FullPolicy::DropOldest);
    for i in 0..3 {
        check_eq!(q.offer(i), Offer::Queued);
    }
    check_eq!(q.offer(3), Offer::Displaced(0));
    let s = q.stats();
    check_eq!(
        (s.accepted, s.displaced, s.lost(), s.high_water),
        (4, 1, 1, 3)
    );
    let drained: [Option<u32>; 4] = core::array::from_fn(|_| q.try_receive());
    check_eq!(drained, [Some(1), Some(2), Some(3), None]);
    Ok(())
}

fn nothing_is_lost_while_there_is_room() -> Outcome {
    let q = queue(FullPolicy::RejectNew);
    for round in 0..10 {
        check!(q.offer(round).is_queued());
        check_eq!(q.try_receive(), Some(round));
    }
    let s = q.stats();
    check_eq!((s.accepted, s.lost(), s.high_water, s.depth), (10, 0, 1, 0));
    Ok(())
}

fn send_waits_for_room_instead_of_dropping() -> Outcome {
    let q: Queue<CriticalSectionRawMutex, u8, 1> = Queue::new(FullPolicy::RejectNew);
    embassy_futures::block_on(async {
        q.send(1).await;
        let second = q.send(2);
        let mut second = core::pin::pin!(second);
        // The queue is full: the second send must not finish yet.
        check!(embassy_futures::poll_once(second.as_mut()).is_pending());
        check_eq!(q.receive().await, 1);
        second.await;
        check_eq!(q.receive().await, 2);
        Ok(())
    })?;
    check_eq!(q.stats().lost(), 0);
    Ok(())
}

fn instant_arithmetic_saturates_instead_of_panicking() -> Outcome {
    check_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
    check_eq!(Instant::ZERO - Instant::from_millis(5), Duration::ZERO);
    check_eq!(
        Instant::from_millis(5) - Instant::from_millis(2),
        Duration::from_millis(3)
    );
    Ok(())
}

fn duration_displays_in_the_nearest_unit() -> Outcome {
    for (d, text) in [
        (Duration::from_micros(250), "250us"),
        (Duration::from_micros(12_500), "12.500ms"),
        (Duration::from_secs(3), "3.000000s"),
    ] {
        let mut s: heapless::String<16> = heapless::String::new();
        check!(write!(s, "{d}").is_ok(), "{d:?} does not fit 16 bytes");
        check_eq!(s.as_str(), text);
    }
    Ok(())
}

fn right_credentials_match_with_or_without_padding() -> Outcome {
    // base64("admin:energis") is "YWRtaW46ZW5lcmdpcw==".
    for header in [
        &b"Basic YWRtaW46ZW5lcmdpcw=="[..],
        b"basic  YWRtaW46ZW5lcmdpcw ",
        b"Basic YWRtaW46ZW5lcmdpcw",
    ] {
        check!(
            basic_auth::matches(Some(header), "admin", "energis"),
            "{header:?} refused"
        );
    }
    Ok(())
}

fn wrong_or_malformed_credentials_do_not_match() -> Outcome {
    for bad in [
        &b"Basic YWRtaW46ZW5lcmdpcx=="[..],
        b"Bearer YWRtaW46ZW5lcmdpcw==",
        b"Basic",
        b"Basic Y",
        b"Basic YW*u",
        b"Basic YWRtaW4=",
        b"\xff\xfe",
    ] {
        check!(
            !basic_auth::matches(Some(bad), "admin", "energis"),
            "{bad:?} accepted"
        );
    }
    check!(!basic_auth::matches(None, "admin", "energis"));
    Ok(())
}

fn a_password_with_a_colon_is_kept_whole() -> Outcome {
    // base64("u:p:q")
    check!(basic_auth::matches(Some(b"Basic dTpwOnE="), "u", "p:q"));
    Ok(())
}
