//! LoggerTask: the one log sink of the PDU (the USB-CDC console on the board, a byte stream in the
//! simulator).
//!
//! Tasks put structured [`LogEvent`]s `{source, op, channel, duration, status, error_code}` into
//! one [`Queue`] with [`FullPolicy::DropOldest`](crate::queue::FullPolicy::DropOldest): a burst
//! never blocks a task, the newest events win, and every dropped event is counted by the queue.
//! LoggerTask formats each event as one text line ([`LoggerCore::format`]) and writes it to an
//! `embedded_io_async::Write` sink; before the next line after a loss it writes a
//! `logger dropped N events` line, so a reader of the log sees the gap.
//!
//! This is separate from the crate's `info!`/`warn!` macros (developer diagnostics routed to
//! defmt/log): these events are the device's own operational log, visible to an operator.
use core::fmt::Write as _;

use embassy_sync::blocking_mutex::raw::RawMutex;
use embedded_io_async::Write;
use heapless::String;

use super::switch::{SwitchAnswer, op_name, status_name};
use super::{Outlet, Source};
use crate::ports::Clock;
use crate::queue::Queue;
use crate::time::{Duration, Instant};

/// Longest formatted line, bytes (longer lines are cut and end in `~`).
pub const LINE_CAPACITY: usize = 160;

/// Severity; `LoggingConfig::level` 0 keeps only `Error`, 4 keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but handled.
    Warn = 1,
    /// Normal operation worth recording (switching, state changes).
    Info = 2,
    /// Details.
    Debug = 3,
    /// Everything.
    Trace = 4,
}

impl Level {
    /// Upper-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

/// One operational log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LogEvent {
    /// When it happened.
    pub at: Instant,
    /// Severity.
    pub level: Level,
    /// Who: a task (`"meter"`) or a request source (`"console"`).
    pub source: &'static str,
    /// What: an operation name (`"TOGGLE"`, `"EEPROM_WRITE"`).
    pub op: &'static str,
    /// The outlet concerned, if any.
    pub channel: Option<Outlet>,
    /// How long it took.
    pub duration: Duration,
    /// Outcome (`"OK"`, `"TIMEOUT"`).
    pub status: &'static str,
    /// 0 or a module's error/reason code.
    pub error_code: u16,
}

impl LogEvent {
    /// An event with no channel, no duration, status `"OK"` and code 0.
    pub const fn new(at: Instant, level: Level, source: &'static str, op: &'static str) -> Self {
        LogEvent {
            at,
            level,
            source,
            op,
            channel: None,
            duration: Duration::ZERO,
            status: "OK",
            error_code: 0,
        }
    }

    /// The log event of an answered switch request: `Info` when it succeeded, `Warn` otherwise;
    /// the duration is the time from the request's arrival to its answer.
    pub fn switch(answer: &SwitchAnswer, at: Instant) -> Self {
        let reply = &answer.reply;
        let ok = reply.status == super::SwitchStatus::Ok;
        LogEvent {
            at,
            level: if ok { Level::Info } else { Level::Warn },
            source: source_name(answer.source),
            op: op_name(answer.op),
            channel: answer.channel,
            duration: answer.waited,
            status: status_name(reply.status),
            error_code: reply.fault_code,
        }
    }
}

/// Lower-case name of a request source.
pub const fn source_name(source: Source) -> &'static str {
    match source {
        Source::Health => "health",
        Source::Console => "console",
        Source::Net => "net",
        Source::Button => "button",
        Source::Schedule => "schedule",
    }
}

/// Where a task puts its log events: implemented by the log [`Queue`], so a task can hold a
/// `&dyn LogPort` without carrying the queue's capacity in its type.
pub trait LogPort {
    /// Record `event` without waiting or failing (a full queue drops its oldest event, counted).
    fn log(&self, event: LogEvent);
}

impl<M: RawMutex, const N: usize> LogPort for Queue<M, LogEvent, N> {
    fn log(&self, event: LogEvent) {
        let _ = self.offer(event);
    }
}

/// Put `event` on the log queue without waiting. When the queue is full the oldest event is
/// dropped (and counted), so logging never blocks or fails.
pub fn log<M: RawMutex, const N: usize>(queue: &Queue<M, LogEvent, N>, event: LogEvent) {
    let _ = queue.offer(event);
}

/// Counters of the logger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LoggerStats {
    /// Lines written.
    pub lines: u32,
    /// Events below the level filter.
    pub filtered: u32,
    /// Events lost to a full queue, as reported in the log so far.
    pub dropped_reported: u32,
    /// Sink write errors (the line is lost).
    pub write_errors: u32,
}

/// Formatting and filtering, without I/O.
#[derive(Debug, Clone, Default)]
pub struct LoggerCore {
    level: u8,
    stats: LoggerStats,
}

impl LoggerCore {
    /// A logger that keeps events up to `level` (0 = errors … 4 = trace).
    pub fn new(level: u8) -> Self {
        LoggerCore {
            level,
            stats: LoggerStats::default(),
        }
    }

    /// Change the level (console `LOGLEVEL`).
    pub fn set_level(&mut self, level: u8) {
        self.level = level;
    }

    /// The counters.
    pub fn stats(&self) -> LoggerStats {
        self.stats
    }

    /// Whether `event` passes the level filter (counts it when not).
    pub fn accept(&mut self, event: &LogEvent) -> bool {
        let keep = event.level as u8 <= self.level;
        if !keep {
            self.stats.filtered = self.stats.filtered.wrapping_add(1);
        }
        keep
    }

    /// One line, `\r\n`-terminated:
    /// `t=1.250000s INFO console TOGGLE ch=3 dur=1.200ms status=OK err=0`.
    pub fn format(&self, e: &LogEvent) -> String<LINE_CAPACITY> {
        let mut line = String::new();
        let body = write!(
            line,
            "{} {} {} {} ch=",
            e.at,
            e.level.name(),
            e.source,
            e.op
        )
        .and_then(|()| match e.channel {
            Some(c) => write!(line, "{}", c.number()),
            None => line.write_str("-"),
        })
        .and_then(|()| {
            write!(
                line,
                " dur={} status={} err={}\r\n",
                e.duration, e.status, e.error_code
            )
        });
        if body.is_err() {
            // Cut: keep what fits and mark it.
            while line.len() > LINE_CAPACITY - 3 {
                line.pop();
            }
            let _ = line.push_str("~\r\n");
        }
        line
    }

    /// The line announcing `total` dropped events, if more were dropped than reported so far.
    pub fn dropped_line(&mut self, total: u32, now: Instant) -> Option<String<LINE_CAPACITY>> {
        let new = total.wrapping_sub(self.stats.dropped_reported);
        if new == 0 {
            return None;
        }
        self.stats.dropped_reported = total;
        let mut line = String::new();
        let _ = write!(line, "{} WARN logger dropped {} events\r\n", now, new);
        Some(line)
    }

    fn wrote(&mut self, ok: bool) {
        if ok {
            self.stats.lines = self.stats.lines.wrapping_add(1);
        } else {
            self.stats.write_errors = self.stats.write_errors.wrapping_add(1);
        }
    }
}

/// The LoggerTask runner: waits on the log queue, writes lines to the sink.
pub struct LoggerTask<'a, W, C, M: RawMutex, const N: usize> {
    core: LoggerCore,
    sink: W,
    clock: C,
    queue: &'a Queue<M, LogEvent, N>,
}

impl<'a, W, C, M, const N: usize> LoggerTask<'a, W, C, M, N>
where
    W: Write,
    C: Clock,
    M: RawMutex,
{
    /// Assemble the task. `queue` should use `FullPolicy::DropOldest`.
    pub fn new(core: LoggerCore, sink: W, clock: C, queue: &'a Queue<M, LogEvent, N>) -> Self {
        LoggerTask {
            core,
            sink,
            clock,
            queue,
        }
    }

    /// The core (level, counters).
    pub fn core_mut(&mut self) -> &mut LoggerCore {
        &mut self.core
    }

    /// The sink, e.g. to inspect it in tests.
    pub fn sink(&self) -> &W {
        &self.sink
    }

    /// Write one event (and, first, the count of dropped events if there is news).
    pub async fn handle(&mut self, event: LogEvent) {
        let lost = self.queue.stats().displaced;
        if let Some(line) = self.core.dropped_line(lost, self.clock.now()) {
            let ok = self.sink.write_all(line.as_bytes()).await.is_ok();
            self.core.wrote(ok);
        }
        if !self.core.accept(&event) {
            return;
        }
        let line = self.core.format(&event);
        let ok = self.sink.write_all(line.as_bytes()).await.is_ok();
        self.core.wrote(ok);
    }

    /// Log forever.
    pub async fn run(&mut self) -> ! {
        loop {
            let event = self.queue.receive().await;
            self.handle(event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{SwitchOp, SwitchReply, SwitchStatus};
    use crate::queue::FullPolicy;
    use embassy_futures::block_on;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use std::vec::Vec;

    struct Sink(Vec<u8>);
    impl embedded_io_async::ErrorType for Sink {
        type Error = core::convert::Infallible;
    }
    impl Write for Sink {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    struct Clock0;
    impl Clock for Clock0 {
        fn now(&self) -> Instant {
            Instant::from_millis(2_000)
        }
        async fn sleep_until(&self, _deadline: Instant) {}
    }

    fn toggle_event() -> LogEvent {
        let answer = SwitchAnswer {
            source: Source::Console,
            op: SwitchOp::Toggle,
            channel: Outlet::new(3),
            waited: Duration::from_micros(1_200),
            reply: SwitchReply {
                status: SwitchStatus::Ok,
                state_bitmap: crate::pdu::OutletMask(0b100),
                fault_code: 0,
                token: 1,
            },
        };
        LogEvent::switch(&answer, Instant::from_millis(1_250))
    }

    #[test]
    fn a_switch_event_formats_as_one_line_with_every_field() {
        let core = LoggerCore::new(2);
        assert_eq!(
            core.format(&toggle_event()).as_str(),
            "t=1.250000s INFO console TOGGLE ch=3 dur=1.200ms status=OK err=0\r\n"
        );
    }

    #[test]
    fn events_above_the_level_are_filtered_and_counted() {
        let mut core = LoggerCore::new(1);
        assert!(!core.accept(&toggle_event()));
        let err = LogEvent::new(Instant::ZERO, Level::Error, "storage", "EEPROM_WRITE");
        assert!(core.accept(&err));
        assert_eq!(core.stats().filtered, 1);
    }

    #[test]
    fn a_full_log_queue_drops_the_oldest_and_the_loss_is_written_to_the_log() {
        let queue: Queue<NoopRawMutex, LogEvent, 2> = Queue::new(FullPolicy::DropOldest);
        for i in 0..5u16 {
            let mut e = LogEvent::new(Instant::ZERO, Level::Info, "meter", "POLL");
            e.error_code = i;
            log(&queue, e);
        }
        let mut task = LoggerTask::new(LoggerCore::new(4), Sink(Vec::new()), Clock0, &queue);
        while let Some(e) = queue.try_receive() {
            block_on(task.handle(e));
        }
        let text = std::string::String::from_utf8(task.sink().0.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "t=2.000000s WARN logger dropped 3 events");
        assert!(lines[1].ends_with("err=3"), "{lines:?}");
        assert!(lines[2].ends_with("err=4"), "{lines:?}");
        assert_eq!(lines.len(), 3);
        assert_eq!(task.core_mut().stats().lines, 3);
    }

    #[test]
    fn an_overlong_line_is_cut_and_marked() {
        let core = LoggerCore::new(4);
        let long: &'static str = "x-very-long-operation-name-that-keeps-going-and-going-and-going-\
                                  and-going-and-going-and-going-and-going-and-going-and-going";
        let e = LogEvent::new(Instant::ZERO, Level::Info, long, long);
        let line = core.format(&e);
        assert!(line.ends_with("~\r\n"));
        assert!(line.len() <= LINE_CAPACITY);
    }
}
