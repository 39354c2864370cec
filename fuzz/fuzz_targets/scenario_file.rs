//! Scenario files (`sim::scenario::load_str`): TOML a user writes, checked before anything runs.
//!
//! * Loading answers with test cases or one error, never a panic.
//! * An error names the file and, when it gives a line, a line that exists.
//! * Loaded cases have their steps in time order, expectation windows that fit the run, and
//!   unique names.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sim::scenario::load_str;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match load_str(path, text) {
        Err(e) => {
            assert!(!e.message.is_empty());
            assert_eq!(e.file, path);
            let lines = text.lines().count().max(1);
            if let Some(line) = e.line {
                assert!(
                    (1..=lines + 1).contains(&line),
                    "line {line} of {lines}: {e}"
                );
            }
            assert!(e.to_string().starts_with("fuzz.toml"));
        }
        Ok(cases) => {
            assert!(!cases.is_empty());
            let mut names = BTreeSet::new();
            for case in &cases {
                assert!(
                    names.insert(case.full_name()),
                    "two cases named {}",
                    case.full_name()
                );
                assert!(
                    case.steps.windows(2).all(|w| w[0].at <= w[1].at),
                    "steps out of order in {}",
                    case.full_name()
                );
                assert!(!case.devices.is_empty() || case.steps.is_empty());
            }
        }
    }
});
