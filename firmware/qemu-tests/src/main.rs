//! firmware-core's self-tests on the boards' instruction sets, under QEMU.
//!
//! Runs every case of `firmware_core::selftest` in order, prints `test <area>::<name> ... ok`
//! (or `FAILED` and the failing check's file, line and values) through semihosting, then
//! `N passed, M failed`, and exits with 0 when all passed and 1 otherwise. A panic prints its
//! message and exits with 101 (the `semihosting` crate's panic handler). The runner in
//! `.cargo/config.toml` starts QEMU under `timeout`, so a case that hangs ends the run too.
//!
//! Only platform glue lives here: the reset entry, the critical-section implementation and
//! the output. The cases themselves are in firmware-core, where the host runs them as
//! `#[test]`s.
#![no_std]
#![no_main]
// The cases' `Result` carries a readable failure message (see `firmware_core::selftest`).
#![allow(clippy::result_large_err)]

use firmware_core::selftest::{self, Case};
use semihosting::println;

// Linked for their critical-section implementations (single core / single hart).
#[cfg(target_arch = "arm")]
use cortex_m as _;
#[cfg(target_arch = "riscv32")]
use riscv as _;

#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    run()
}

#[cfg(target_arch = "riscv32")]
#[riscv_rt::entry]
fn main() -> ! {
    run()
}

/// Cases that exist only to show that the lane reports a failure or a hang (features
/// `force-fail`, `force-hang`); xtask builds them in its check of the lane itself.
const LANE_CHECKS: &[Case] = &[
    #[cfg(feature = "force-fail")]
    Case {
        area: "lane",
        name: "forced_failure",
        run: lane::forced_failure,
    },
    #[cfg(feature = "force-hang")]
    Case {
        area: "lane",
        name: "forced_hang",
        run: lane::forced_hang,
    },
];

fn run() -> ! {
    let target = if cfg!(target_arch = "arm") {
        "thumbv6m (Cortex-M0)"
    } else {
        "riscv32imac"
    };
    println!("firmware-core self-tests on {}", target);
    let (mut passed, mut failed) = (0u32, 0u32);
    for case in selftest::all().chain(LANE_CHECKS) {
        match (case.run)() {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok", case);
            }
            Err(failure) => {
                failed += 1;
                println!("test {} ... FAILED", case);
                println!("    {}", failure);
            }
        }
    }
    println!("{} passed, {} failed", passed, failed);
    semihosting::process::exit(if failed == 0 { 0 } else { 1 })
}

#[cfg(any(feature = "force-fail", feature = "force-hang"))]
mod lane {
    use firmware_core::selftest::Outcome;

    #[cfg(feature = "force-fail")]
    pub fn forced_failure() -> Outcome {
        // Through a black box, so the check is evaluated at run time on the target.
        let two = core::hint::black_box(2);
        firmware_core::selftest::check_eq!(two + two, 5, "the lane must report this");
        Ok(())
    }

    #[cfg(feature = "force-hang")]
    pub fn forced_hang() -> Outcome {
        loop {
            core::hint::spin_loop();
        }
    }
}
