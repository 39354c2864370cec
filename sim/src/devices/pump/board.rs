//! The FluidNC side of the pump twin: the simulated board ([`FluidncBoard`]) behind a tap on
//! its UART port that measures what only the far end of the wire can see.
//!
//! The tap sits between the UART link and the board: every byte the board reads passes
//! through it. It records the controller's lines and realtime commands as trace events
//! (`rx <line>`, `rx !`, `rx ~`, `rx reset`; status queries, every 200 ms, as `rx ?` under a
//! source of their own, `<device>.fluidnc.poll`, so they do not crowd the lines), keeps the last one for the `uart.last_tx` state, and samples the E-stop latency
//! (button edge → `!` received) and the command latency (a dispense request → its `G1` received).
use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use embedded_io_async::{ErrorType, Read, Write};
use firmware_core::time::Instant;

use crate::kernel::{SimClock, Tracer};
use crate::periph::fluidnc::FluidncBoard;
use crate::periph::uart::UartPort;

/// What the tap knows; the device sets the two start instants.
#[derive(Debug, Default)]
pub struct Probe {
    /// The last line or realtime command the board received.
    pub last_rx: String,
    /// Lines received.
    pub lines: u64,
    /// `!` bytes received.
    pub holds: u64,
    /// When the E-stop button was pressed, until the `!` arrives.
    pub estop_edge: Option<Instant>,
    /// When a request that should start motion was made, until its `G1` arrives.
    pub command_sent: Option<Instant>,
    line: Vec<u8>,
}

/// The board's UART port with the tap in front of it.
pub struct Tap {
    port: UartPort,
    probe: Rc<RefCell<Probe>>,
    clock: SimClock,
    tracer: Tracer,
    source: String,
    /// Where the `?` status queries go.
    poll_source: String,
    metric_estop: String,
    metric_cmd: String,
}

impl Tap {
    /// A tap for device `device` (trace source `<device>.fluidnc`).
    pub fn new(
        device: &str,
        port: UartPort,
        probe: Rc<RefCell<Probe>>,
        clock: SimClock,
        tracer: Tracer,
    ) -> Tap {
        Tap {
            port,
            probe,
            clock,
            tracer,
            source: format!("{device}.fluidnc"),
            poll_source: format!("{device}.fluidnc.poll"),
            metric_estop: format!("{device}.estop.latency_us"),
            metric_cmd: format!("{device}.cmd.latency_ms"),
        }
    }

    fn observe(&self, b: u8) {
        let now = self.clock.now();
        let mut p = self.probe.borrow_mut();
        match b {
            b'?' => self.tracer.record(&self.poll_source, "rx ?"),
            b'!' => {
                p.holds += 1;
                p.last_rx = "!".into();
                match p.estop_edge.take() {
                    Some(edge) => {
                        let us = now.saturating_since(edge).as_micros();
                        self.tracer.sample(&self.metric_estop, us as f64);
                        self.tracer
                            .record(&self.source, format!("rx ! ({us} us after the button)"));
                    }
                    None => self.tracer.record(&self.source, "rx !"),
                }
            }
            b'~' => {
                p.last_rx = "~".into();
                self.tracer.record(&self.source, "rx ~");
            }
            0x18 => {
                p.last_rx = "^X".into();
                p.line.clear();
                self.tracer.record(&self.source, "rx reset");
            }
            b'\n' | b'\r' => {
                let text = String::from_utf8_lossy(&p.line).trim().to_owned();
                p.line.clear();
                if text.is_empty() {
                    return;
                }
                p.lines += 1;
                if text.contains("G1")
                    && let Some(t) = p.command_sent.take()
                {
                    let ms = now.saturating_since(t).as_micros() as f64 / 1000.0;
                    self.tracer.sample(&self.metric_cmd, ms);
                }
                self.tracer.record(&self.source, format!("rx {text}"));
                p.last_rx = text;
            }
            b if b >= 0x80 => {}
            b => {
                if p.line.len() < 256 {
                    p.line.push(b);
                }
            }
        }
    }
}

impl ErrorType for Tap {
    type Error = Infallible;
}

impl Read for Tap {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let n = self.port.read(buf).await?;
        for &b in buf.get(..n).unwrap_or(&[]) {
            self.observe(b);
        }
        Ok(n)
    }
}

impl Write for Tap {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.port.write(buf).await
    }
    async fn flush(&mut self) -> Result<(), Infallible> {
        self.port.flush().await
    }
}

/// The board and its probe.
#[derive(Clone)]
pub struct Board {
    /// The simulated FluidNC board.
    pub board: FluidncBoard,
    /// What the tap saw.
    pub probe: Rc<RefCell<Probe>>,
}

impl Board {
    /// The machine state name the board prints (`Idle`, `Run`, `Hold:0`, `Alarm`, …).
    pub fn machine(&self) -> &'static str {
        self.board.snapshot().state
    }
}
