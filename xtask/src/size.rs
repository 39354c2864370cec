//! The size report: flash and static RAM of each board image, against its budget.
//!
//! Read from the ELF's section headers with the `object` crate, so no `llvm-size` install is
//! needed. Only sections the loader places (`SHF_ALLOC`) count:
//!
//! * **flash**: every allocated section with contents in the file (not `SHT_NOBITS`): code and
//!   read-only data in place, and the initial values of `.data` (and, on the ESP32-C6, the
//!   RAM-resident code in `.rwtext` / `.trap`) that the boot code or the ROM bootloader copies
//!   to RAM;
//! * **static RAM**: every allocated section whose run-time address lies in the chip's RAM:
//!   `.data`, `.bss`, and RAM-resident code.
//!
//! Sections that reserve space rather than hold firmware are left out by name (per board): the
//! ESP32-C6's `.stack`, the RAM esp-hal's linker script leaves over. (Its `.text_gap`, alignment
//! padding between the flash-mapped data and code, is `SHT_NOBITS` outside RAM, so it counts
//! nowhere by the rules above.)
use std::fmt;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, bail};
use object::read::elf::{ElfFile32, SectionHeader as _};
use object::{Endianness, Object as _, ObjectSection as _, elf};

/// One section of an image, as the size check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `.text`, `.bss`, …
    pub name: String,
    /// Run-time (virtual) address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
    /// Placed in memory by the loader (`SHF_ALLOC`).
    pub alloc: bool,
    /// Takes no room in the file (`SHT_NOBITS`: zero-initialised or reserved).
    pub nobits: bool,
}

/// What a board's image may use.
#[derive(Debug, Clone)]
pub struct Budget {
    /// The board crate under `firmware/`.
    pub board: &'static str,
    /// Its target triple.
    pub target: &'static str,
    /// Most flash the image may take, bytes.
    pub flash: u64,
    /// Most static RAM (`.data` + `.bss` + RAM code), bytes.
    pub static_ram: u64,
    /// The chip's RAM address range.
    pub ram: Range<u64>,
    /// Sections that reserve room and are not firmware.
    pub reserved: &'static [&'static str],
}

const KIB: u64 = 1024;

/// The budgets of both boards (issue #11): headroom on the RP2040's 2 MiB flash / 264 KiB RAM and
/// on the ESP32-C6's 4 MiB flash / 512 KiB HP SRAM for what is not wired yet.
pub const BUDGETS: &[Budget] = &[
    Budget {
        board: "energis-rp2040",
        target: "thumbv6m-none-eabi",
        flash: 256 * KIB,
        static_ram: 64 * KIB,
        ram: 0x2000_0000..0x2004_2000,
        reserved: &[],
    },
    Budget {
        board: "pump-esp32c6",
        target: "riscv32imac-unknown-none-elf",
        flash: 1024 * KIB,
        static_ram: 200 * KIB,
        ram: 0x4080_0000..0x4088_0000,
        reserved: &[".stack"],
    },
];

/// Flash and static RAM of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of flash.
    pub flash: u64,
    /// Bytes of static RAM.
    pub static_ram: u64,
}

/// Add up `sections` as the module docs say.
pub fn usage(sections: &[Section], budget: &Budget) -> Usage {
    let counted = sections
        .iter()
        .filter(|s| s.alloc && !budget.reserved.contains(&s.name.as_str()));
    let mut usage = Usage {
        flash: 0,
        static_ram: 0,
    };
    for s in counted {
        if !s.nobits {
            usage.flash += s.size;
        }
        if budget.ram.contains(&s.address) {
            usage.static_ram += s.size;
        }
    }
    usage
}

/// The report line of one board, and whether it is within budget.
pub struct Verdict<'a> {
    budget: &'a Budget,
    usage: Usage,
}

impl Verdict<'_> {
    /// Whether both figures are within budget.
    pub fn within(&self) -> bool {
        self.usage.flash <= self.budget.flash && self.usage.static_ram <= self.budget.static_ram
    }
}

impl fmt::Display for Verdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (u, b) = (&self.usage, self.budget);
        let mark = |used: u64, max: u64| if used <= max { "ok" } else { "OVER BUDGET" };
        write!(
            f,
            "{:<16} flash {:>8} B of {:>4} KiB ({:>4.1} %) {:<11}  static RAM {:>7} B of {:>3} KiB ({:>4.1} %) {}",
            b.board,
            u.flash,
            b.flash / KIB,
            100.0 * u.flash as f64 / b.flash as f64,
            mark(u.flash, b.flash),
            u.static_ram,
            b.static_ram / KIB,
            100.0 * u.static_ram as f64 / b.static_ram as f64,
            mark(u.static_ram, b.static_ram),
        )
    }
}

/// Judge `sections` against `budget`.
pub fn judge<'a>(sections: &[Section], budget: &'a Budget) -> Verdict<'a> {
    Verdict {
        budget,
        usage: usage(sections, budget),
    }
}

/// The sections of a 32-bit little-endian ELF (both boards' targets).
pub fn read_sections(elf_path: &Path) -> Result<Vec<Section>> {
    let data =
        std::fs::read(elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
    let file = ElfFile32::<Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 32-bit ELF", elf_path.display()))?;
    let endian = file.endian();
    file.sections()
        .map(|s| {
            let header = s.elf_section_header();
            Ok(Section {
                name: s.name().context("section name")?.to_owned(),
                address: s.address(),
                size: s.size(),
                alloc: header.sh_flags(endian) & elf::SHF_ALLOC != 0,
                nobits: header.sh_type(endian) == elf::SHT_NOBITS,
            })
        })
        .collect()
}

/// Print every board's line; fail if any is over budget. `elf_of` says where a board's image is.
pub fn report(elf_of: impl Fn(&Budget) -> std::path::PathBuf) -> Result<()> {
    let mut over = Vec::new();
    println!("==> firmware size");
    for budget in BUDGETS {
        let path = elf_of(budget);
        let sections = read_sections(&path)?;
        let verdict = judge(&sections, budget);
        println!("    {verdict}");
        if !verdict.within() {
            over.push(budget.board);
        }
    }
    if !over.is_empty() {
        bail!(
            "over the size budget: {} (budgets in xtask/src/size.rs, figures in docs/firmware-size.md)",
            over.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(name: &str, address: u64, size: u64, nobits: bool) -> Section {
        Section {
            name: name.into(),
            address,
            size,
            alloc: true,
            nobits,
        }
    }

    /// An RP2040-like image: code in XIP flash, `.data` copied to RAM, `.bss`, debug info.
    fn rp2040(text: u64, bss: u64) -> Vec<Section> {
        vec![
            section(".boot2", 0x1000_0000, 256, false),
            section(".vector_table", 0x1000_0100, 192, false),
            section(".text", 0x1000_01C0, text, false),
            section(".rodata", 0x1001_0000, 1_000, false),
            section(".data", 0x2000_0000, 500, false),
            section(".bss", 0x2000_01F4, bss, true),
            Section {
                alloc: false,
                ..section(".debug_info", 0, 900_000, false)
            },
        ]
    }

    fn esp32c6() -> Vec<Section> {
        vec![
            section(".trap", 0x4080_0000, 2_000, false),
            section(".rwtext", 0x4080_07D0, 4_000, false),
            section(".data", 0x4080_1770, 4_000, false),
            section(".bss", 0x4080_2710, 26_000, true),
            section(".rodata", 0x4200_0000, 28_000, false),
            section(".text_gap", 0x4200_6D60, 37_000, true),
            section(".text", 0x4200_FE28, 85_000, false),
            section(".stack", 0x4080_8C50, 416_000, true),
        ]
    }

    #[test]
    fn every_board_ci_builds_has_a_budget() {
        for board in crate::BOARDS {
            assert!(BUDGETS.iter().any(|b| b.board == *board), "{board}");
        }
        assert_eq!(BUDGETS.len(), crate::BOARDS.len());
    }

    #[test]
    fn flash_counts_contents_and_ram_counts_what_lives_in_ram() {
        let b = &BUDGETS[0];
        let u = usage(&rp2040(60_000, 20_000), b);
        assert_eq!(u.flash, 256 + 192 + 60_000 + 1_000 + 500);
        assert_eq!(u.static_ram, 500 + 20_000);
    }

    #[test]
    fn reserved_stack_and_padding_are_not_firmware() {
        let b = &BUDGETS[1];
        let u = usage(&esp32c6(), b);
        assert_eq!(u.flash, 2_000 + 4_000 + 4_000 + 28_000 + 85_000);
        assert_eq!(u.static_ram, 2_000 + 4_000 + 4_000 + 26_000);
        assert!(judge(&esp32c6(), b).within());
    }

    #[test]
    fn an_image_over_either_budget_fails_the_check() {
        let b = &BUDGETS[0];
        assert!(judge(&rp2040(60_000, 20_000), b).within());
        let too_much_code = judge(&rp2040(300_000, 20_000), b);
        assert!(!too_much_code.within());
        assert!(too_much_code.to_string().contains("OVER BUDGET"));
        assert!(!judge(&rp2040(60_000, 70_000), b).within());
        // Exactly at the budget is still within it.
        let at_limit = 64 * KIB - 500;
        assert!(judge(&rp2040(60_000, at_limit), b).within());
        assert!(!judge(&rp2040(60_000, at_limit + 1), b).within());
    }

    #[test]
    fn an_unreadable_image_is_an_error_not_a_pass() {
        let dir = std::env::temp_dir().join(format!("xtask-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Not an ELF: the report must fail with a reason, not pass or panic.
        let bogus = dir.join("not-an-elf");
        std::fs::write(&bogus, b"hello").unwrap();
        let err = report(|_| bogus.clone()).unwrap_err();
        assert!(format!("{err:#}").contains("not a 32-bit ELF"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
