//! The power-cut sweep: over every EEPROM byte the PDU writes in a cycle of boot, configuration
//! change and `last_state` save, cut the power at that byte, let the PDU reboot, and check that
//! the configuration it boots with is exactly the one in force before the interrupted save or
//! the one being saved, and that its outputs follow SAFE_MASK and `restore_on_boot` (SAFE_MASK
//! applied at boot, then `last_state` restored).
//!
//! The harness stays at the scenario level (the PDU's own verbs and states, the EEPROM part's
//! trace), so it follows whatever StorageTask wiring the device has. A reference run without a
//! cut lists the write cycles (`pdu.eeprom`: `write cycle 0x.... N bytes`) and the saves
//! (`pdu.storage`: `saved slot …`), and samples the configuration in force every 5 ms. A cut
//! after `k` bytes tears the write cycle holding byte `k` (0 = before the first byte), so that
//! byte's save is the interrupted one: before it, the cut run is the reference run.
//!
//! With `--features broken-firmware` (saves overwrite the record in force) the same sweep must
//! find offsets that boot with neither configuration.
use std::path::Path;

use firmware_core::time::{Duration, Instant};
use sim::devices::StateValue;
use sim::scenario::run::{Extras, StateSampler, run_test_with};
use sim::scenario::{self, TestCase};

const END_MS: u64 = 3_000;
/// The configured SAFE_MASK (outlet 3): applied at every boot, then `restore_on_boot` sets the
/// outlets to `last_state` exactly (outlets outside it go off).
const SAFE_MASK_EVENT: &str = "SAFE_MASK 0x04 applied";
const STEPS_MS: [u64; 2] = [300, 1_000];

fn scenario_text(cut: Option<u64>) -> String {
    let mut s = format!(
        r#"
[[test]]
name = "boot_config_change_last_state_cycle"
duration = "{END_MS}ms"

[test.devices.pdu]
kind = "pdu"
device_name = "old"
safe_mask = [3]
restore_on_boot = true
last_state = [1]

[[test.step]]
at = "{}ms"
do = "console"
line = "CONFIG SET identity.device_name new"

[[test.step]]
at = "{}ms"
do = "console"
line = "CONFIG SAVE"

[[test.step]]
at = "{}ms"
do = "console"
line = "SET_CH 2 ON"

[[test.expect]]
state = "pdu.boots"
min = 1
"#,
        STEPS_MS[0], STEPS_MS[0], STEPS_MS[1]
    );
    if let Some(k) = cut {
        s.push_str(&format!(
            "\n[[test.step]]\nat = \"100ms\"\ndo = \"eeprom.power_cut\"\nafter_bytes = {k}\n"
        ));
    }
    s
}

/// The configuration as the harness compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    name: String,
    last_state: i64,
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    config: Option<Config>,
    relays: i64,
}

struct Every5ms(Vec<Sample>);

impl StateSampler for Every5ms {
    fn instants(&self) -> Vec<Instant> {
        (0..=END_MS / 5)
            .map(|i| Instant::from_millis(i * 5))
            .collect()
    }
    fn sample(&mut self, at: Instant, read: &dyn Fn(&str, &str) -> Option<StateValue>) {
        let name = read("pdu", "config.identity.device_name");
        let last = read("pdu", "last_state");
        let relays = match read("pdu", "relays") {
            Some(StateValue::Int(r)) => r,
            _ => -1,
        };
        let config = match (name, last) {
            (Some(StateValue::Text(name)), Some(StateValue::Int(last_state))) => {
                Some(Config { name, last_state })
            }
            _ => None,
        };
        self.0.push(Sample { at, config, relays });
    }
}

struct Run {
    samples: Vec<Sample>,
    /// (time, bytes) of each write cycle.
    cycles: Vec<(Instant, u64)>,
    /// Completion times of the saves.
    saves: Vec<Instant>,
    /// The cut, if one happened.
    cut_at: Option<Instant>,
    /// Boots (time, text) after power-on.
    boots: Vec<(Instant, String)>,
    /// When SAFE_MASK was applied.
    safe_mask: Vec<Instant>,
}

fn case(cut: Option<u64>) -> TestCase {
    let cases = scenario::load_str(Path::new("power_cut.toml"), &scenario_text(cut))
        .unwrap_or_else(|e| panic!("{e}"));
    cases.into_iter().next().expect("one test")
}

fn run(cut: Option<u64>) -> Run {
    let case = case(cut);
    let all = std::rc::Rc::new(std::cell::RefCell::new(Events::default()));
    let mut sampler = Every5ms(Vec::new());
    let r = run_test_with(
        &case,
        None,
        Extras {
            observers: vec![all.clone()],
            sampler: Some(&mut sampler),
        },
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let events = std::mem::take(&mut all.borrow_mut().0);
    let mut out = Run {
        samples: sampler.0,
        cycles: Vec::new(),
        saves: Vec::new(),
        cut_at: None,
        boots: Vec::new(),
        safe_mask: Vec::new(),
    };
    for (at, source, text) in events {
        if source == "pdu.eeprom" {
            if let Some(rest) = text.strip_prefix("write cycle ") {
                let bytes: u64 = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|b| b.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected eeprom event `{text}`"));
                out.cycles.push((at, bytes));
            } else if text.starts_with("power cut during the write") {
                out.cut_at.get_or_insert(at);
            }
        } else if source == "pdu.storage" && text.starts_with("saved slot") {
            out.saves.push(at);
        } else if source == "pdu.boot" && text.starts_with("configuration:") {
            out.boots.push((at, text));
        } else if source == "pdu.boot" && text == SAFE_MASK_EVENT {
            out.safe_mask.push(at);
        }
    }
    out
}

#[derive(Default)]
struct Events(Vec<(Instant, String, String)>);

impl sim::kernel::Observer for Events {
    fn event(&mut self, at: Instant, source: &str, text: &str) {
        self.0.push((at, source.to_owned(), text.to_owned()));
    }
}

fn config_at(samples: &[Sample], t: Instant) -> Option<Config> {
    samples
        .iter()
        .take_while(|s| s.at <= t)
        .last()
        .and_then(|s| s.config.clone())
}

/// What went wrong at offset `k`, if anything.
fn check_offset(reference: &Run, k: u64) -> Result<(), String> {
    // The save holding byte k: the write cycle with cumulative range containing k.
    let mut before = 0u64;
    let cycle_at = reference
        .cycles
        .iter()
        .find_map(|&(at, n)| {
            let hit = k < before + n;
            before += n;
            hit.then_some(at)
        })
        .ok_or("offset beyond the reference's writes")?;
    let save_done = *reference
        .saves
        .iter()
        .find(|&&s| s >= cycle_at)
        .ok_or("a write cycle after the last save")?;
    let old = config_at(
        &reference.samples,
        Instant::from_micros(cycle_at.as_micros().saturating_sub(1)),
    )
    .ok_or("no configuration before the save")?;
    let new = config_at(&reference.samples, save_done + Duration::from_millis(5))
        .ok_or("no configuration after the save")?;

    let cut = run(Some(k));
    let tc = cut.cut_at.ok_or("the power was never cut")?;
    let (tb, boot) = cut
        .boots
        .iter()
        .find(|(t, _)| *t > tc)
        .cloned()
        .ok_or("no boot after the cut")?;
    if !cut.safe_mask.iter().any(|&t| t >= tb) {
        return Err(format!(
            "the reboot did not apply SAFE_MASK (`{SAFE_MASK_EVENT}`)"
        ));
    }
    let check_at = tb + Duration::from_millis(200);
    if let Some(s) = STEPS_MS
        .iter()
        .find(|&&s| Instant::from_millis(s) > tc && Instant::from_millis(s) <= check_at)
    {
        return Err(format!(
            "a scenario step at {s} ms falls in the check window: move the steps"
        ));
    }
    let sample = cut
        .samples
        .iter()
        .find(|s| s.at >= check_at)
        .ok_or("no sample after the reboot")?;
    let loaded = sample
        .config
        .clone()
        .ok_or("no configuration after the reboot")?;
    if loaded != old && loaded != new {
        return Err(format!(
            "booted with {loaded:?} ({boot}); expected the old {old:?} or the new {new:?}"
        ));
    }
    if sample.relays != loaded.last_state {
        return Err(format!(
            "relays 0x{:02x} after the reboot; restore_on_boot restores last_state 0x{:02x}",
            sample.relays, loaded.last_state
        ));
    }
    Ok(())
}

fn failures() -> (u64, Vec<(u64, String)>) {
    let reference = run(None);
    assert!(reference.cut_at.is_none());
    let total: u64 = reference.cycles.iter().map(|c| c.1).sum();
    // The cycle: the configuration save and at least one `last_state` save, all after the cut
    // is armed (boot only reads).
    assert!(
        reference.saves.len() >= 2,
        "saves in the cycle: {:?}",
        reference.saves
    );
    assert!(reference.cycles[0].0 > Instant::from_millis(100));
    let new_name = config_at(&reference.samples, Instant::from_millis(END_MS));
    assert_eq!(
        new_name.map(|c| c.name),
        Some("new".to_owned()),
        "the reference run saves the new name"
    );
    let offsets: Vec<u64> = (0..total).collect();
    let found = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let reference = run(None);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&k) = offsets.get(i) else { return };
                    if let Err(e) = check_offset(&reference, k) {
                        found.lock().unwrap().push((k, e));
                    }
                }
            });
        }
    });
    let mut found = found.into_inner().unwrap();
    found.sort();
    (total, found)
}

#[test]
#[cfg(not(feature = "broken-firmware"))]
fn a_power_cut_at_every_byte_of_the_cycle_boots_with_the_old_or_the_new_configuration() {
    let (total, failed) = failures();
    eprintln!("power-cut sweep: {total} offsets, {} failed", failed.len());
    assert!(total > 100, "only {total} bytes written in the cycle");
    assert!(
        failed.is_empty(),
        "{} of {total} offsets failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

#[test]
#[cfg(feature = "broken-firmware")]
fn the_power_cut_sweep_catches_saves_that_overwrite_the_record_in_force() {
    let (total, failed) = failures();
    assert!(
        !failed.is_empty(),
        "writing in place survived a cut at every one of {total} offsets"
    );
    eprintln!(
        "broken-firmware: {} of {total} offsets caught, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}
