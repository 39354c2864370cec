//! One virtual hour of a 1 ms periodic task on a simulated core; prints the wall time.
//! `cargo run --release -p sim --example kernel_bench`
use firmware_core::time::{Duration, Instant};
use sim::kernel::{Kernel, TaskSpec};

fn main() {
    let mut k = Kernel::new(1);
    let core = k.add_core("core0");
    let clock = k.clock();
    k.spawn(
        TaskSpec::on_core("tick", core, 1, Duration::from_micros(20)),
        async move {
            let mut next = Instant::ZERO;
            loop {
                next += Duration::from_millis(1);
                clock.sleep_until(next).await;
            }
        },
    )
    .detach();
    let wall = std::time::Instant::now();
    k.run_until(Instant::from_millis(3_600_000));
    let el = wall.elapsed();
    println!(
        "1 h virtual, {} polls, wall {:?}, ratio {:.0}x",
        k.task_stats()[0].polls,
        el,
        3600.0 / el.as_secs_f64()
    );
}
