//! Self-tests that run on the boards' instruction sets as well as on the host.
//!
//! Each case is a plain `fn() -> Result<(), Failure>` that checks firmware-core logic needing no
//! host service: codecs, switch policy and interlocks, the storage format on a RAM EEPROM with
//! power cuts, the SNMP, HTTP and console cores, the MQTT outbox lanes, the dispense state
//! machine, queues and time. A case is written once and run twice:
//!
//! * on the host, as an ordinary `#[test]` each (`cargo test -p firmware-core`): the `cases!`
//!   list of every area also generates the test functions;
//! * on the target ISAs, by `firmware/qemu-tests`, a `no_std` binary that loops over [`all`]
//!   under QEMU (Cortex-M0 for the RP2040, riscv32imac for the ESP32-C6), prints each result
//!   through semihosting and exits non-zero when one fails.
//!
//! So the cases allocate nothing, read no clock and keep their stack use modest (a few tens of
//! KiB at most); big values such as a full EEPROM image are built where a case needs them.
//!
//! The checks are macros of our own ([`check!`], [`check_eq!`], [`check_ok!`]) rather than
//! `assert!`, so that a failure on the target is a value that names its file and line, and the
//! runner goes on with the next case and says how many failed. (The embedded test harnesses,
//! `defmt-test` and `embedded-test`, report through a debug probe and end a run at its first
//! failure or reset between tests; under QEMU, semihosting and a loop over plain functions do
//! the job and report every failure.)
//!
//! Compiled for `cargo test` and with the `selftest` feature (never on a board).
// A case returns once; the room for a readable failure message matters more than the size of
// its `Result`.
#![allow(clippy::result_large_err)]

use core::fmt::{self, Write as _};

mod console;
mod core_types;
mod dispense;
mod http;
mod meter;
mod outbox;
mod snmp;
mod storage;
mod switch;

/// Why a case failed: where, and what the check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Source file of the failing check.
    pub file: &'static str,
    /// Line of the failing check.
    pub line: u32,
    /// What was checked and what was seen, cut to fit.
    pub message: heapless::String<MESSAGE_LEN>,
}

/// Longest failure message kept; longer ones end in `…`.
pub const MESSAGE_LEN: usize = 240;

impl Failure {
    /// A failure at `file:line` with a formatted message (used by the check macros).
    pub fn new(file: &'static str, line: u32, message: fmt::Arguments<'_>) -> Failure {
        let mut text = Truncating(heapless::String::new());
        let _ = text.write_fmt(message);
        Failure {
            file,
            line,
            message: text.0,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Keeps what fits and marks the cut, so a long `Debug` value cannot make the report fail.
struct Truncating(heapless::String<MESSAGE_LEN>);

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const MARK: &str = "…";
        for c in s.chars() {
            if self.0.len() + c.len_utf8() + MARK.len() > MESSAGE_LEN {
                if !self.0.ends_with(MARK) {
                    let _ = self.0.push_str(MARK);
                }
                return Ok(());
            }
            let _ = self.0.push(c);
        }
        Ok(())
    }
}

/// The result of one case.
pub type Outcome = Result<(), Failure>;

/// One self-test.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The area (the module below `selftest`), e.g. `switch`.
    pub area: &'static str,
    /// The behaviour it pins, e.g. `interlock_group_refuses_a_second_outlet`.
    pub name: &'static str,
    /// The case.
    pub run: fn() -> Outcome,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{}", self.area, self.name)
    }
}

/// Every area's cases, in the order the target runner runs them.
const AREAS: &[&[Case]] = &[
    core_types::CASES,
    meter::CASES,
    switch::CASES,
    storage::CASES,
    snmp::CASES,
    http::CASES,
    console::CASES,
    outbox::CASES,
    dispense::CASES,
];

/// Every case.
pub fn all() -> impl Iterator<Item = &'static Case> {
    AREAS.iter().flat_map(|area| area.iter())
}

/// Check a condition; on failure return a [`Failure`] from the enclosing case.
///
/// `check!(cond)` or `check!(cond, "format {}", args…)`.
#[macro_export]
#[doc(hidden)]
macro_rules! __selftest_check {
    ($cond:expr $(,)?) => {{
        // Bound first, so a negated float comparison reads as what was written.
        let holds: bool = $cond;
        if !holds {
            return Err($crate::selftest::Failure::new(
                file!(),
                line!(),
                format_args!("check failed: {}", stringify!($cond)),
            ));
        }
    }};
    ($cond:expr, $($fmt:tt)+) => {{
        let holds: bool = $cond;
        if !holds {
            return Err($crate::selftest::Failure::new(
                file!(),
                line!(),
                format_args!($($fmt)+),
            ));
        }
    }};
}

/// Check that two values are equal; on failure return a [`Failure`] that shows both.
///
/// `check_eq!(left, right)` or `check_eq!(left, right, "context {}", args…)`.
#[macro_export]
#[doc(hidden)]
macro_rules! __selftest_check_eq {
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (left, right) => {
                if !(*left == *right) {
                    return Err($crate::selftest::Failure::new(
                        file!(),
                        line!(),
                        format_args!(
                            "{} == {}: left {:?}, right {:?}",
                            stringify!($left),
                            stringify!($right),
                            left,
                            right
                        ),
                    ));
                }
            }
        }
    };
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if !(*left == *right) {
                    return Err($crate::selftest::Failure::new(
                        file!(),
                        line!(),
                        format_args!(
                            "{} == {}: left {:?}, right {:?} ({})",
                            stringify!($left),
                            stringify!($right),
                            left,
                            right,
                            format_args!($($fmt)+)
                        ),
                    ));
                }
            }
        }
    };
}

/// Turn a `Result` or `Option` into its value; on `Err`/`None` return a [`Failure`] naming the
/// expression (and the error).
#[macro_export]
#[doc(hidden)]
macro_rules! __selftest_check_ok {
    ($value:expr $(,)?) => {
        match $crate::selftest::Checkable::into_checked($value) {
            Ok(v) => v,
            Err(e) => {
                return Err($crate::selftest::Failure::new(
                    file!(),
                    line!(),
                    format_args!("{} failed: {}", stringify!($value), e),
                ));
            }
        }
    };
}

pub use crate::__selftest_check as check;
pub use crate::__selftest_check_eq as check_eq;
pub use crate::__selftest_check_ok as check_ok;

/// What [`check_ok!`] accepts: `Result` (with a `Debug` error) and `Option`.
pub trait Checkable {
    /// The value inside.
    type Value;
    /// The value, or a printable reason why there is none.
    fn into_checked(self) -> Result<Self::Value, NoValue>;
}

/// Why [`check_ok!`] found no value.
pub struct NoValue(heapless::String<MESSAGE_LEN>);

impl fmt::Display for NoValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T, E: fmt::Debug> Checkable for Result<T, E> {
    type Value = T;
    fn into_checked(self) -> Result<T, NoValue> {
        self.map_err(|e| {
            let mut text = Truncating(heapless::String::new());
            let _ = write!(text, "Err({e:?})");
            NoValue(text.0)
        })
    }
}

impl<T> Checkable for Option<T> {
    type Value = T;
    fn into_checked(self) -> Result<T, NoValue> {
        self.ok_or_else(|| {
            let mut text = heapless::String::new();
            let _ = text.push_str("None");
            NoValue(text)
        })
    }
}

/// Declare an area's cases: `cases![fn_a, fn_b, …];` makes the area's `CASES` table and, under
/// `cargo test`, one `#[test]` per case with the same name.
macro_rules! cases {
    ($($name:ident),+ $(,)?) => {
        pub(super) const CASES: &[$crate::selftest::Case] = &[$(
            $crate::selftest::Case {
                area: $crate::selftest::area_of(module_path!()),
                name: stringify!($name),
                run: $name,
            },
        )+];

        #[cfg(test)]
        mod host {
            $(
                #[test]
                fn $name() {
                    if let Err(failure) = super::$name() {
                        panic!("{failure}");
                    }
                }
            )+
        }
    };
}
use cases;

/// The last segment of a module path (`firmware_core::selftest::switch` → `switch`).
#[doc(hidden)]
pub const fn area_of(path: &'static str) -> &'static str {
    let bytes = path.as_bytes();
    let mut i = bytes.len();
    while i > 0 && bytes[i - 1] != b':' {
        i -= 1;
    }
    match path.split_at_checked(i) {
        Some((_, last)) => last,
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing() -> Outcome {
        let seen = 2 + 2;
        check_eq!(seen, 5, "arithmetic");
        Ok(())
    }

    #[test]
    fn a_failed_check_names_its_line_and_both_values() {
        let f = failing().unwrap_err();
        assert_eq!(f.file, file!());
        assert!(f.line > 0);
        assert_eq!(
            f.message.as_str(),
            "seen == 5: left 4, right 5 (arithmetic)"
        );
    }

    #[test]
    fn long_messages_are_cut_with_a_mark() {
        let long = [b'x'; 400];
        let text = core::str::from_utf8(&long).unwrap();
        let f = Failure::new("f.rs", 1, format_args!("{text}"));
        assert!(f.message.len() <= MESSAGE_LEN);
        assert!(f.message.ends_with('…'));
    }

    #[test]
    fn every_case_has_a_unique_name_and_its_area() {
        let mut names: std::vec::Vec<std::string::String> =
            all().map(|c| std::format!("{c}")).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate case names");
        assert!(all().all(|c| !c.area.contains(':') && !c.area.is_empty()));
    }
}
