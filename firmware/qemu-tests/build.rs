//! Writes the memory map of the QEMU machine the target runs on and links with the runtime's
//! script (`cortex-m-rt` or `riscv-rt`).
use std::env;
use std::fs;
use std::path::PathBuf;

/// micro:bit (nRF51) with SRAM and flash raised by the runner's `-global` options.
const CORTEX_M: &str = "MEMORY {
    FLASH : ORIGIN = 0x00000000, LENGTH = 1024K
    RAM   : ORIGIN = 0x20000000, LENGTH = 256K
}
";

/// QEMU `virt`: `-bios none` starts at 0x8000_0000 in RAM; code and data share it.
const RISCV: &str = "MEMORY {
    FLASH : ORIGIN = 0x80000000, LENGTH = 2M
    RAM   : ORIGIN = 0x80200000, LENGTH = 16M
}
REGION_ALIAS(\"REGION_TEXT\", FLASH);
REGION_ALIAS(\"REGION_RODATA\", FLASH);
REGION_ALIAS(\"REGION_DATA\", RAM);
REGION_ALIAS(\"REGION_BSS\", RAM);
REGION_ALIAS(\"REGION_HEAP\", RAM);
REGION_ALIAS(\"REGION_STACK\", RAM);
";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let memory = if target.starts_with("thumb") {
        CORTEX_M
    } else if target.starts_with("riscv32") {
        RISCV
    } else {
        panic!(
            "qemu-tests builds for thumbv6m-none-eabi or riscv32imac-unknown-none-elf, not {target}"
        );
    };
    fs::write(out.join("memory.x"), memory).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=build.rs");
    if target.starts_with("riscv32") {
        // riscv-rt's link.x includes memory.x but needs it named first.
        println!("cargo:rustc-link-arg-bins=-Tmemory.x");
    }
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}
