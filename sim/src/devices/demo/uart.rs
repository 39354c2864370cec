//! `demo.uart`: a sender streams checksummed frames to a receiver over a simulated UART.
//!
//! Frame: `0x7E seq len payload… sum`, where `sum` is the low byte of the sum of `seq`, `len`
//! and the payload. The receiver resynchronises on `0x7E`, checks the sum and the sequence, and
//! traces `rx ok`, `rx bad checksum` and `rx gap` events. It also knows what the sender sent, so
//! a frame that passes the sum but differs is traced as `rx undetected corruption`; `<device>.latency_us` samples the time
//! from the sender's write to the frame's last byte being read.
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use embedded_io_async::{Read, Write};
use firmware_core::time::{Duration, Instant};
use serde::Deserialize;

use crate::devices::{Device, DeviceSpec, StateValue, from_table, serde_duration};
use crate::kernel::{Kernel, TaskSpec};
use crate::periph::uart::{self, Direction, FaultRule, Parity, UartConfig, UartLink};

const MARK: u8 = 0x7E;

/// The `demo.uart` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartDemoSpec {
    baud: u32,
    /// `8N1`, `8E1`, `8O1`, `7E1`, … (data bits, parity, stop bits).
    #[serde(default = "default_format")]
    format: String,
    #[serde(with = "serde_duration")]
    period: Duration,
    #[serde(default = "default_payload")]
    payload: u8,
}

fn default_format() -> String {
    "8N1".to_owned()
}
fn default_payload() -> u8 {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultAction {
    rule: String,
    #[serde(default)]
    probability: Option<f64>,
    #[serde(default, with = "opt_duration")]
    extra: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    jitter: Option<Duration>,
}

mod opt_duration {
    use firmware_core::time::Duration;
    use serde::Deserializer;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        crate::devices::serde_duration::deserialize(d).map(Some)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl FaultAction {
    fn rule(&self) -> Result<FaultRule, String> {
        let p = || {
            self.probability
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("rule `{}` needs probability = 0.0…1.0", self.rule))
        };
        Ok(match self.rule.as_str() {
            "pass" => FaultRule::Pass,
            "drop" => FaultRule::Drop { probability: p()? },
            "corrupt" => FaultRule::Corrupt { probability: p()? },
            "delay" => FaultRule::Delay {
                extra: self.extra.ok_or("rule `delay` needs extra = \"…\"")?,
                jitter: self.jitter.unwrap_or(Duration::ZERO),
            },
            "disconnect" => FaultRule::Disconnect,
            other => {
                return Err(format!(
                    "unknown rule `{other}` (pass, drop, corrupt, delay, disconnect)"
                ));
            }
        })
    }
}

impl UartDemoSpec {
    /// Parse and check a `demo.uart` table.
    pub fn parse(table: &toml::Table) -> Result<Self, String> {
        let spec: UartDemoSpec = from_table(table)?;
        spec.config()?;
        if spec.period == Duration::ZERO {
            return Err("period must be above zero".to_owned());
        }
        Ok(spec)
    }

    fn config(&self) -> Result<UartConfig, String> {
        let f = self.format.as_bytes();
        let [data, parity, stop] = f else {
            return Err(format!(
                "format `{}`: expected e.g. 8N1 or 8E1",
                self.format
            ));
        };
        let parity = match parity {
            b'N' => Parity::None,
            b'E' => Parity::Even,
            b'O' => Parity::Odd,
            _ => {
                return Err(format!(
                    "format `{}`: parity must be N, E or O",
                    self.format
                ));
            }
        };
        let config = UartConfig {
            baud: self.baud,
            data_bits: data.wrapping_sub(b'0'),
            parity,
            stop_bits: stop.wrapping_sub(b'0'),
            rx_buffer: 256,
        };
        config
            .validate()
            .map_err(|e| format!("format `{}` at {} baud: {e}", self.format, self.baud))?;
        Ok(config)
    }
}

#[derive(Default)]
struct Counters {
    sent: Cell<u64>,
    ok: Cell<u64>,
    bad: Cell<u64>,
    gaps: Cell<u64>,
}

impl DeviceSpec for UartDemoSpec {
    fn check_action(&self, verb: &str, params: &toml::Table) -> Result<(), String> {
        match verb {
            "fault" => from_table::<FaultAction>(params)?.rule().map(|_| ()),
            "disconnect" | "reconnect" => from_table::<Empty>(params).map(|_| ()),
            other => Err(format!(
                "demo.uart has no action `{other}` (actions: fault, disconnect, reconnect)"
            )),
        }
    }

    fn check_state(&self, key: &str) -> Result<(), String> {
        match key {
            "tx.sent" | "rx.ok" | "rx.bad" | "rx.gaps" | "link.dropped" | "link.corrupted" => {
                Ok(())
            }
            other => Err(format!(
                "no state `{other}` (states: tx.sent, rx.ok, rx.bad, rx.gaps, link.dropped, link.corrupted)"
            )),
        }
    }

    fn build(&self, name: &str, kernel: &mut Kernel) -> Box<dyn Device> {
        let config = self
            .config()
            .unwrap_or_else(|_| UartConfig::new_8n1(115_200));
        let counters = Rc::new(Counters::default());
        let sent_at: Rc<RefCell<BTreeMap<u8, Instant>>> = Rc::default();
        let core = kernel.add_core(format!("{name}.mcu"));
        let link = match uart::link(kernel, name, config) {
            Ok((link, mut tx, mut rx)) => {
                let clock = kernel.clock();
                let (c, s, period, len) =
                    (counters.clone(), sent_at.clone(), self.period, self.payload);
                kernel
                    .spawn(TaskSpec::world(format!("{name}.sender")), async move {
                        let mut seq: u8 = 0;
                        let mut due = Instant::ZERO;
                        loop {
                            due += period;
                            clock.sleep_until(due).await;
                            let frame = encode(seq, len);
                            s.borrow_mut().insert(seq, clock.now());
                            let _ = tx.write(&frame).await;
                            c.sent.set(c.sent.get() + 1);
                            seq = seq.wrapping_add(1);
                        }
                    })
                    .detach();
                let clock = kernel.clock();
                let tracer = kernel.tracer();
                let c = counters.clone();
                let source = format!("{name}.rx");
                let metric = format!("{name}.latency_us");
                kernel
                    .spawn(
                        TaskSpec::on_core(
                            format!("{name}.receiver"),
                            core,
                            1,
                            Duration::from_micros(20),
                        ),
                        async move {
                            let mut parser = Parser::default();
                            let mut buf = [0u8; 64];
                            loop {
                                let n = rx.read(&mut buf).await.unwrap_or(0);
                                for &b in buf.iter().take(n) {
                                    let Some(outcome) = parser.push(b) else {
                                        continue;
                                    };
                                    match outcome {
                                        Outcome::Ok(seq) => {
                                            c.ok.set(c.ok.get() + 1);
                                            if let Some(gap) = parser.gap(seq) {
                                                c.gaps.set(c.gaps.get() + 1);
                                                tracer.record(&source, format!("rx gap: {gap} frame(s) lost before seq={seq}"));
                                            }
                                            tracer.record(&source, format!("rx ok seq={seq}"));
                                            if let Some(at) = sent_at.borrow_mut().remove(&seq) {
                                                tracer.sample(
                                                    &metric,
                                                    (clock.now() - at).as_micros() as f64,
                                                );
                                            }
                                        }
                                        Outcome::Bad(seq) => {
                                            c.bad.set(c.bad.get() + 1);
                                            tracer.record(&source, format!("rx bad checksum seq={seq}"));
                                        }
                                        Outcome::Undetected(seq) => {
                                            tracer.record(&source, format!("rx undetected corruption seq={seq}"));
                                        }
                                    }
                                }
                            }
                        },
                    )
                    .detach();
                Some(link)
            }
            Err(_) => None,
        };
        Box::new(UartDemo { link, counters })
    }
}

fn encode(seq: u8, len: u8) -> Vec<u8> {
    let mut f = vec![MARK, seq, len];
    f.extend((0..len).map(|i| seq.wrapping_mul(31).wrapping_add(i)));
    let sum = f[1..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.push(sum);
    f
}

enum Outcome {
    Ok(u8),
    Bad(u8),
    Undetected(u8),
}

/// Byte-at-a-time frame parser with resynchronisation on the start mark.
#[derive(Default)]
struct Parser {
    frame: Vec<u8>,
    expected: Option<u8>,
}

impl Parser {
    fn push(&mut self, b: u8) -> Option<Outcome> {
        if self.frame.is_empty() {
            if b == MARK {
                self.frame.push(b);
            }
            return None;
        }
        self.frame.push(b);
        let len = usize::from(*self.frame.get(2)?);
        if self.frame.len() < 4 + len {
            return None;
        }
        let frame = std::mem::take(&mut self.frame);
        let seq = frame[1];
        let body = &frame[1..frame.len() - 1];
        let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        Some(if Some(&sum) != frame.last() {
            Outcome::Bad(seq)
        } else if frame != encode(seq, frame[2]) {
            // The sum matched but the bytes are not what was sent: a corruption the 8-bit sum
            // let through.
            Outcome::Undetected(seq)
        } else {
            Outcome::Ok(seq)
        })
    }

    /// Frames skipped before `seq`, if any; remembers `seq` as the last good one.
    fn gap(&mut self, seq: u8) -> Option<u8> {
        let gap = self
            .expected
            .map(|e| seq.wrapping_sub(e))
            .filter(|g| *g != 0 && *g < 128);
        self.expected = Some(seq.wrapping_add(1));
        gap
    }
}

struct UartDemo {
    link: Option<UartLink>,
    counters: Rc<Counters>,
}

impl Device for UartDemo {
    fn act(&mut self, verb: &str, params: &toml::Table) -> Result<(), String> {
        let link = self.link.as_ref().ok_or("the link could not be built")?;
        match verb {
            "fault" => link.set_fault(Direction::AtoB, from_table::<FaultAction>(params)?.rule()?),
            "disconnect" => link.disconnect(),
            "reconnect" => link.reconnect(),
            other => return Err(format!("no action `{other}`")),
        }
        Ok(())
    }

    fn state(&self, key: &str) -> Option<StateValue> {
        let c = &self.counters;
        let stats = self.link.as_ref().map(|l| l.stats(Direction::AtoB));
        let n = |v: u64| Some(StateValue::Int(v as i64));
        match key {
            "tx.sent" => n(c.sent.get()),
            "rx.ok" => n(c.ok.get()),
            "rx.bad" => n(c.bad.get()),
            "rx.gaps" => n(c.gaps.get()),
            "link.dropped" => n(stats?.dropped),
            "link.corrupted" => n(stats?.corrupted),
            _ => None,
        }
    }
}
