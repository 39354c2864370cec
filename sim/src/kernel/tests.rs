use std::cell::RefCell;
use std::rc::Rc;

use super::*;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}
fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}
fn at_ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

#[test]
fn idle_time_is_skipped_and_timers_fire_at_their_deadline() {
    let mut k = Kernel::new(0);
    let clock = k.clock();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    k.spawn(TaskSpec::world("sleeper"), async move {
        for _ in 0..3 {
            clock.sleep(Duration::from_secs(3600)).await;
            s.borrow_mut().push(clock.now());
        }
    })
    .detach();
    assert_eq!(k.run_until(Instant::MAX), RunEnd::Idle);
    assert_eq!(
        *seen.borrow(),
        vec![
            Instant::from_micros(3_600_000_000),
            Instant::from_micros(7_200_000_000),
            Instant::from_micros(10_800_000_000)
        ]
    );
}

#[test]
fn a_dropped_sleep_leaves_no_timer_behind() {
    let mut k = Kernel::new(0);
    let clock = k.clock();
    k.spawn(TaskSpec::world("select"), async move {
        let long = clock.sleep(ms(1_000));
        let short = clock.sleep(ms(10));
        embassy_futures::select::select(long, short).await;
    })
    .detach();
    assert_eq!(k.run_until(Instant::MAX), RunEnd::Idle);
    // Had the 1 s timer survived, time would have jumped to it.
    assert_eq!(k.now(), at_ms(10));
}

/// Two tasks on one core, both due at the same instants: the high-priority one always runs
/// first, and the low one waits exactly one slice.
#[test]
fn higher_priority_task_runs_first_on_a_shared_core() {
    let mut k = Kernel::new(0);
    let core = k.add_core("core0");
    let log = Rc::new(RefCell::new(Vec::new()));
    for (name, prio) in [("low", 1u8), ("high", 9u8)] {
        let clock = k.clock();
        let log = log.clone();
        k.spawn(TaskSpec::on_core(name, core, prio, us(100)), async move {
            for i in 1..=3 {
                clock.sleep_until(at_ms(i)).await;
                log.borrow_mut().push((name, clock.now()));
            }
        })
        .detach();
    }
    k.run_until(at_ms(10));
    let log = log.borrow();
    let firsts: Vec<_> = log.iter().filter(|(_, t)| *t == at_ms(1)).collect();
    assert_eq!(firsts, vec![&("high", at_ms(1))]);
    assert!(log.contains(&("low", at_ms(1) + us(100))));
    let stats = k.task_stats();
    let low = stats.iter().find(|s| s.name == "low").expect("low stats");
    let high = stats.iter().find(|s| s.name == "high").expect("high stats");
    assert_eq!(high.wait, Duration::ZERO);
    // Waits 100 us at each of the three instants (the first poll at t=0 waits too).
    assert_eq!(low.max_wait, us(100));
}

#[test]
fn tasks_on_different_cores_do_not_contend() {
    let mut k = Kernel::new(0);
    let c0 = k.add_core("c0");
    let c1 = k.add_core("c1");
    for (name, core) in [("a", c0), ("b", c1)] {
        let clock = k.clock();
        k.spawn(TaskSpec::on_core(name, core, 1, us(500)), async move {
            loop {
                clock.sleep(ms(1)).await;
            }
        })
        .detach();
    }
    k.run_until(at_ms(100));
    for s in k.task_stats() {
        assert_eq!(s.wait, Duration::ZERO, "{} waited", s.name);
    }
    let cores = k.core_stats();
    let u = cores[0].utilisation(at_ms(0), at_ms(100));
    assert!((u - 0.5).abs() < 0.02, "core0 utilisation {u}");
}

#[test]
fn charged_cpu_time_keeps_the_core_busy() {
    let mut k = Kernel::new(0);
    let core = k.add_core("core0");
    let clock = k.clock();
    let done = Rc::new(RefCell::new(None));
    let d = done.clone();
    k.spawn(
        TaskSpec::on_core("burst", core, 5, Duration::ZERO),
        async move {
            clock.charge(ms(3));
            clock.sleep(Duration::ZERO).await;
        },
    )
    .detach();
    let clock = k.clock();
    k.spawn(
        TaskSpec::on_core("after", core, 1, Duration::ZERO),
        async move {
            *d.borrow_mut() = Some(clock.now());
        },
    )
    .detach();
    k.run_until(at_ms(10));
    assert_eq!(*done.borrow(), Some(at_ms(3)));
    assert_eq!(k.core_stats()[0].busy, ms(3));
}

#[test]
fn a_panicking_task_is_reported_and_the_run_goes_on() {
    let mut k = Kernel::new(0);
    let clock = k.clock();
    k.spawn(TaskSpec::world("bad"), async { panic!("boom") })
        .detach();
    let alive = Rc::new(RefCell::new(false));
    let a = alive.clone();
    k.spawn(TaskSpec::world("good"), async move {
        clock.sleep(ms(5)).await;
        *a.borrow_mut() = true;
    })
    .detach();
    k.run_until(at_ms(10));
    assert!(*alive.borrow());
    assert_eq!(k.panics().len(), 1);
    assert!(k.panics()[0].contains("boom"));
}

#[test]
fn streams_of_one_seed_are_reproducible_and_distinct() {
    use rand::Rng;
    let a1: u64 = rng_for(7, "uart").random();
    let a2: u64 = rng_for(7, "uart").random();
    let b: u64 = rng_for(7, "i2c").random();
    let c: u64 = rng_for(8, "uart").random();
    assert_eq!(a1, a2);
    assert_ne!(a1, b);
    assert_ne!(a1, c);
}

#[test]
fn a_live_kernel_serves_wakes_from_other_threads() {
    let mut k = Kernel::new(0);
    let control = k.go_live(100.0);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    k.spawn(TaskSpec::world("rx"), async move {
        while let Some(v) = rx.recv().await {
            g.borrow_mut().push(v);
        }
    })
    .detach();
    let sender = std::thread::spawn(move || {
        for v in 0..3 {
            tx.blocking_send(v).expect("kernel side alive");
        }
    });
    // 10 virtual seconds at 100x: ample for the other thread, and no timers at all: a virtual
    // kernel would stop at once (Idle), a live one waits for the wakes.
    assert_eq!(k.run_until(Instant::from_millis(10_000)), RunEnd::Reached);
    sender.join().expect("sender finished");
    assert_eq!(*got.borrow(), vec![0, 1, 2]);
    control.interrupt();
    assert_eq!(k.run_until(Instant::MAX), RunEnd::Interrupted);
}
