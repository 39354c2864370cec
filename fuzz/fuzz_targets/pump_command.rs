//! MQTT command payloads (`pump/controller/command`), parsed by `pump::command::parse_command`.
//!
//! * An accepted dispense asks for a finite volume and flow inside the limits, on a real pump.
//! * An accepted recipe names a recipe that exists.
//! * An accepted command, written back as canonical JSON (by `serde_json`, not by us), parses
//!   to the same command: the parser reads what it claims to have read.
#![no_main]

use firmware_core::pump::command::{Command, Limits, RecipeInfo, parse_command};
use libfuzzer_sys::fuzz_target;

const RECIPES: &[RecipeInfo<'static>] = &[
    RecipeInfo { name: "mojito" },
    RecipeInfo { name: "gin tonic" },
    RecipeInfo { name: "\"quoted\"" },
];

fn canonical(c: &Command) -> serde_json::Value {
    match c {
        Command::StartDispense(r) => serde_json::json!({
            "cmd": "start",
            "pump": r.pump.to_string(),
            "volume_ml": r.volume_ml,
            "flow_ml_min": r.flow_ml_min,
        }),
        Command::StartRecipe(name) => serde_json::json!({"cmd": "recipe", "name": name.as_str()}),
        other => serde_json::json!({"cmd": other.name()}),
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let command = match parse_command(data, &limits, RECIPES) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    match &command {
        Command::StartDispense(r) => {
            assert!(
                r.volume_ml > 0.0 && r.volume_ml <= limits.max_volume_ml,
                "{r:?}"
            );
            assert!(
                r.flow_ml_min > 0.0 && r.flow_ml_min <= limits.max_flow_ml_min,
                "{r:?}"
            );
        }
        Command::StartRecipe(name) => {
            assert!(RECIPES.iter().any(|r| r.name == name.as_str()), "{name}");
        }
        _ => {}
    }
    let json = serde_json::to_vec(&canonical(&command)).unwrap();
    assert_eq!(
        parse_command(&json, &limits, RECIPES).as_ref(),
        Ok(&command),
        "canonical form {:?} of {:?}",
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(data)
    );
});
