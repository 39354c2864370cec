//! Task statistics as the platform reports them: per-task run time and queue depth, plus free
//! memory, for the status JSON and the visual.
//!
//! The firmware cannot measure these itself: run time is the scheduler's (FreeRTOS run-time
//! stats or an embassy executor hook on the board, the simulated core's accounting in the twin),
//! and free memory is the allocator's or the linker's. So the platform implements
//! [`PlatformStats`] and the status publisher only formats what it gets.
use core::fmt::{self, Write};

use crate::time::Duration;

/// Most tasks one report holds; a platform with more reports the first ones.
pub const MAX_TASKS: usize = 12;

/// One task as the platform sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TaskStats {
    /// Task name (`"mqtt"`, `"pump"`, `"ws"`, ...).
    pub name: &'static str,
    /// The core it is pinned to, if the platform pins tasks.
    pub core: Option<u8>,
    /// CPU time used since boot.
    pub run_time: Duration,
    /// Items waiting in the task's input queue.
    pub queue_depth: u16,
    /// Capacity of that queue (0 when the task has none).
    pub queue_capacity: u16,
}

impl TaskStats {
    /// Share of `wall` this task ran between `earlier` and `self`, in per mille (0..=1000).
    /// Returns 0 for an empty window.
    pub fn load_permille(&self, earlier: &TaskStats, wall: Duration) -> u16 {
        let ran = (self.run_time - earlier.run_time).as_micros();
        let wall = wall.as_micros();
        if wall == 0 {
            return 0;
        }
        let pm = ran.saturating_mul(1000) / wall;
        pm.min(1000) as u16
    }
}

/// A platform snapshot: every task plus free memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsReport {
    /// The tasks, at most [`MAX_TASKS`].
    pub tasks: heapless::Vec<TaskStats, MAX_TASKS>,
    /// Free heap or free RAM in bytes, if the platform knows it.
    pub free_memory: Option<u32>,
}

impl StatsReport {
    /// Write the tasks as a JSON array:
    /// `[{"name":"mqtt","core":0,"runMs":12,"queue":3,"queueCap":50}, ...]`.
    ///
    /// Task names are `&'static str` chosen by the platform; characters that would need JSON
    /// escaping are replaced by `_`.
    pub fn write_tasks_json(&self, w: &mut impl Write) -> fmt::Result {
        w.write_char('[')?;
        for (i, t) in self.tasks.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            w.write_str("{\"name\":\"")?;
            write_json_safe(w, t.name)?;
            w.write_str("\",\"core\":")?;
            match t.core {
                Some(c) => write!(w, "{c}")?,
                None => w.write_str("null")?,
            }
            write!(
                w,
                ",\"runMs\":{},\"queue\":{},\"queueCap\":{}}}",
                t.run_time.as_millis(),
                t.queue_depth,
                t.queue_capacity
            )?;
        }
        w.write_char(']')
    }
}

/// Write `s` keeping only characters that need no JSON escaping (others become `_`).
pub(crate) fn write_json_safe(w: &mut impl Write, s: &str) -> fmt::Result {
    for c in s.chars() {
        let c = if c == '"' || c == '\\' || c.is_control() {
            '_'
        } else {
            c
        };
        w.write_char(c)?;
    }
    Ok(())
}

/// Write `s` as a JSON string literal, quotes included, escaped as RFC 8259 asks (`\"`, `\\`,
/// `\n`, `\r`, `\t`, `\b`, `\f`, other control characters as `\u00XX`).
pub(crate) fn write_json_string(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            '\u{8}' => w.write_str("\\b")?,
            '\u{c}' => w.write_str("\\f")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

/// A `fmt::Write` into a fixed string that keeps what fits and drops the rest (for names that
/// may be cut, where `heapless::String` alone would drop a whole piece that does not fit).
pub(crate) struct Truncating<'a, const N: usize>(pub(crate) &'a mut heapless::String<N>);

impl<const N: usize> Write for Truncating<'_, N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// What a platform reports about its tasks. Implemented by the board crate (scheduler run-time
/// counters) and by the simulator (the simulated cores' accounting).
///
/// # Contract
/// * `stats` MUST NOT block or yield; it is called from the status publisher's loop.
/// * Run times MUST be monotonic per task name, so two reports give a load share.
pub trait PlatformStats {
    /// Fill `out` (already empty) with the current tasks and free memory.
    fn stats(&self, out: &mut StatsReport);
}

/// A platform that reports nothing (tests, builds without run-time stats).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStats;

impl PlatformStats for NoStats {
    fn stats(&self, _out: &mut StatsReport) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &'static str, run_ms: u64) -> TaskStats {
        TaskStats {
            name,
            core: Some(0),
            run_time: Duration::from_millis(run_ms),
            queue_depth: 3,
            queue_capacity: 50,
        }
    }

    #[test]
    fn load_is_the_run_time_share_of_the_window() {
        let a = task("mqtt", 100);
        let b = task("mqtt", 350);
        assert_eq!(b.load_permille(&a, Duration::from_millis(1000)), 250);
        assert_eq!(b.load_permille(&a, Duration::ZERO), 0);
        assert_eq!(a.load_permille(&b, Duration::from_millis(1000)), 0);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s: heapless::String<64> = heapless::String::new();
        write_json_string(&mut s, "a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(s.as_str(), r#""a\"b\\c\nd\u0001é""#);
        let mut cut: heapless::String<4> = heapless::String::new();
        let tail = "cdef";
        write!(Truncating(&mut cut), "ab{tail}").unwrap();
        assert_eq!(cut.as_str(), "abcd");
    }

    #[test]
    fn tasks_are_written_as_a_json_array() {
        let mut r = StatsReport::default();
        r.tasks.push(task("mqtt", 12)).unwrap();
        r.tasks
            .push(TaskStats {
                core: None,
                ..task("we\"ird", 1)
            })
            .unwrap();
        let mut s: heapless::String<256> = heapless::String::new();
        r.write_tasks_json(&mut s).unwrap();
        assert_eq!(
            s.as_str(),
            "[{\"name\":\"mqtt\",\"core\":0,\"runMs\":12,\"queue\":3,\"queueCap\":50},\
             {\"name\":\"we_ird\",\"core\":null,\"runMs\":1,\"queue\":3,\"queueCap\":50}]"
        );
    }
}
