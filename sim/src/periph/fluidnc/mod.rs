//! The simulated FluidNC motion board of the pump controller (Grbl 1.1 dialect, FluidNC v3.9.9
//! on a secondary UART channel), with the four pumps as axes X, Y, Z, A.
//!
//! This module owns the board's behaviour on the wire and its physics:
//!
//! * [`FluidncSim`] is the sans-IO core: `handle_bytes(bytes, now)`, `handle_deadline(now)`,
//!   `poll_output()`, `poll_deadline()`, `poll_trace()`. It follows docs/interfaces.md §1:
//!   one `ok`/`error:N` per line (CR and LF each end a line, so CRLF gives two `ok`s), output
//!   lines end in `\n`, realtime bytes `?` `!` `~` 0x18 act at once and never enter the line
//!   buffer, a 128-byte receive buffer (bytes beyond it are lost and counted as overrun: the host
//!   must count characters), 15 planner blocks (a line that finds the planner full gets its `ok`
//!   when a block finishes, and no further byte is read meanwhile), status reports
//!   `<State|MPos:…|FS:…[|WCO:…|Ov:…]>` on `?` and pushed every `report_interval` while moving and
//!   at once on every change of the printed state name (so `Hold:1` → `Hold:0` is pushed too),
//!   `$X $$ $G $I $# $RI=N $Report/Interval=N`, `$C` check mode (state `Check`: lines are
//!   parsed, answered and change the modal state, nothing moves or dwells; toggling it off
//!   answers `ok` and then resets), `ALARM:3` on a reset while moving, the banner after power-up
//!   and every reset, verbose errors (`[MSG:ERR: …]` after `error:N`).
//! * Motion: each block runs a trapezoid from rest to rest at the programmed feed along its
//!   vector, clamped so no axis exceeds its `max_rate` or acceleration (Grbl's
//!   `limit_value_by_axis_maximum`). Blocks do not blend (Grbl would carry speed across colinear
//!   junctions; the pump sends one block per dose, where this is exact). A feed hold decelerates
//!   at the block's acceleration (`Hold:1`, distance v²/2a) to `Hold:0`; `~` resumes the rest from
//!   rest. Positions are closed-form in time: the only deadlines are the end of a block or
//!   deceleration, the next auto-report while moving, a dwell, a scheduled alarm, the end of boot.
//! * The fluid model: each pump's net travel × its `ml_per_mm` is its dispensed volume
//!   ([`FluidncSim::dispensed_ml`]), from the distance actually moved (a hold or reset mid-move
//!   counts what was moved); reverse travel counts negative; totals survive resets and power
//!   cycles.
//! * Faults (plain method calls): a stuck motor (the block moving it stops advancing, the board
//!   keeps saying `Run`), never reporting `Idle` again after motion, an alarm now or at a time,
//!   an unresponsive board, garbage bytes in the output, a power cycle. A pulled cable is the UART
//!   link's own `disconnect`.
//!
//! [`FluidncBoard`] is the thin runner: a world task (the board is not on the ESP32's cores)
//! that moves bytes between a UART port and the core, sleeps until the core's next deadline,
//! and records the core's trace events under the board's name (`Run`, `Idle`, `Hold:1`,
//! `ALARM:3`, `reset`, `error:22 …`, faults) plus the samples `<name>.<axis>.dispensed_ml` when
//! motion stops and `<name>.rx_overrun` (cumulative) when receive-buffer overruns grow.
//!
//! Not modelled: overrides (0x90-0x9D are counted and ignored), jogging, homing (`$H` answers
//! `error:5` as with the pump's config), G2/G3, inch mode, spindle and coolant (M3-M9 are accepted
//! and do nothing), the `[EXP:ID]` reply wait, report latency (reports are instant),
//! RX processing time (lines execute when their last byte arrives).
mod gcode;
mod machine;
mod motion;

use std::cell::RefCell;
use std::rc::Rc;

use embassy_futures::select::{Either3, select3};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embedded_io_async::{Read, Write};
use firmware_core::time::{Duration, Instant};

pub use machine::{
    AXES, AXIS_NAMES, FluidncConfig, FluidncConfigError, FluidncSim, FluidncSnapshot, FluidncStats,
    MIN_REPORT_INTERVAL, MachineState,
};
pub use motion::Profile;

use crate::kernel::{JoinHandle, Kernel, SimClock, TaskSpec, Tracer};

struct Inner {
    name: String,
    /// Overrun count last sampled, so a sample goes out only when it grows.
    overrun_sampled: std::cell::Cell<u64>,
    sim: RefCell<FluidncSim>,
    clock: SimClock,
    tracer: Tracer,
    kick: Signal<NoopRawMutex, ()>,
}

/// A FluidNC board on the kernel: the core plus its runner. Cheap to clone; all clones control
/// the same board.
///
/// ```text
/// let (link, esp, board_port) = uart::link(&k, "pump.fluidnc", UartConfig::new_8n1(115_200))?;
/// let board = FluidncBoard::new(&k, "pump.fluidnc", FluidncConfig::default())?;
/// board.spawn(&mut k, board_port).detach();
/// board.set_stuck(0, true);           // pump X stalls
/// let ml = board.snapshot().dispensed_ml[0];
/// ```
#[derive(Clone)]
pub struct FluidncBoard {
    inner: Rc<Inner>,
}

impl FluidncBoard {
    /// A board named `name` (its trace source), powered on now. Injected garbage draws from the
    /// seeded stream `fluidnc:<name>`.
    pub fn new(
        kernel: &Kernel,
        name: &str,
        config: FluidncConfig,
    ) -> Result<FluidncBoard, FluidncConfigError> {
        let sim = FluidncSim::new(config, kernel.rng(&format!("fluidnc:{name}")), kernel.now())?;
        Ok(FluidncBoard {
            inner: Rc::new(Inner {
                name: name.to_owned(),
                overrun_sampled: std::cell::Cell::new(0),
                sim: RefCell::new(sim),
                clock: kernel.clock(),
                tracer: kernel.tracer(),
                kick: Signal::new(),
            }),
        })
    }

    /// The board's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Spawn [`Self::run`] over `port` as a world task named after the board.
    pub fn spawn<P>(&self, kernel: &mut Kernel, port: P) -> JoinHandle<()>
    where
        P: Read + Write + 'static,
    {
        let board = self.clone();
        kernel.spawn(TaskSpec::world(self.inner.name.clone()), async move {
            board.run(port).await;
        })
    }

    /// Serve `port` forever: received bytes go to the core, its output goes back, and the task
    /// sleeps until the core's next deadline or the next fault call.
    pub async fn run<P: Read + Write>(&self, mut port: P) {
        let inner = &self.inner;
        let mut buf = [0u8; 256];
        loop {
            self.drain(&mut port).await;
            let deadline = inner.sim.borrow().poll_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => inner.clock.sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let input = select3(port.read(&mut buf), sleep, inner.kick.wait()).await;
            let now = inner.clock.now();
            match input {
                Either3::First(Ok(n)) => {
                    let bytes = buf.get(..n).unwrap_or(&[]);
                    inner.sim.borrow_mut().handle_bytes(bytes, now);
                }
                Either3::First(Err(_)) => {
                    inner.tracer.record(&inner.name, "uart read failed");
                    inner.clock.sleep(Duration::from_millis(1)).await;
                }
                Either3::Second(()) => inner.sim.borrow_mut().handle_deadline(now),
                Either3::Third(()) => {}
            }
        }
    }

    async fn drain<P: Write>(&self, port: &mut P) {
        let inner = &self.inner;
        let (out, trace, overrun) = {
            let mut sim = inner.sim.borrow_mut();
            (sim.poll_output(), sim.poll_trace(), sim.stats().overrun)
        };
        if overrun != inner.overrun_sampled.replace(overrun) {
            inner
                .tracer
                .sample(&format!("{}.rx_overrun", inner.name), overrun as f64);
        }
        let now = inner.clock.now();
        for text in trace {
            let stopped = matches!(text.as_str(), "Idle" | "Hold:0" | "Alarm");
            inner.tracer.record(&inner.name, text);
            if stopped {
                let ml = inner.sim.borrow().dispensed_ml(now);
                for (axis, v) in AXIS_NAMES.iter().zip(ml) {
                    inner
                        .tracer
                        .sample(&format!("{}.{axis}.dispensed_ml", inner.name), v);
                }
            }
        }
        if !out.is_empty() && port.write_all(&out).await.is_err() {
            inner.tracer.record(&inner.name, "uart write failed");
        }
    }

    /// Act on the core at the current instant, then wake the runner so that what the action
    /// printed goes out and new deadlines count.
    pub fn with<R>(&self, f: impl FnOnce(&mut FluidncSim, Instant) -> R) -> R {
        let now = self.inner.clock.now();
        let r = f(&mut self.inner.sim.borrow_mut(), now);
        self.inner.kick.signal(());
        r
    }

    /// What the board looks like now.
    pub fn snapshot(&self) -> FluidncSnapshot {
        let now = self.inner.clock.now();
        self.inner.sim.borrow_mut().snapshot(now)
    }

    /// Stall (`true`) or free the motor of `axis` (0 = X … 3 = A).
    pub fn set_stuck(&self, axis: usize, stuck: bool) {
        self.with(|s, now| s.set_stuck(axis, stuck, now));
    }

    /// Never report `Idle` after motion ends (`true`), or behave again.
    pub fn set_never_idle(&self, on: bool) {
        self.with(|s, now| s.set_never_idle(on, now));
    }

    /// Raise `ALARM:code` now.
    pub fn raise_alarm(&self, code: u8) {
        self.with(|s, now| s.raise_alarm(code, now));
    }

    /// Raise `ALARM:code` at `at`.
    pub fn schedule_alarm(&self, code: u8, at: Instant) {
        self.with(|s, now| s.schedule_alarm(code, at, now));
    }

    /// Stop answering (`true`) or answer again.
    pub fn set_unresponsive(&self, on: bool) {
        self.with(|s, now| s.set_unresponsive(on, now));
    }

    /// Send `n` seeded random bytes to the host.
    pub fn inject_garbage(&self, n: usize) {
        self.with(|s, now| s.inject_garbage(n, now));
    }

    /// Cut and restore the board's power.
    pub fn power_cycle(&self) {
        self.with(|s, now| s.power_cycle(now));
    }
}

#[cfg(test)]
mod tests;
