//! Every scenario file under `scenarios/` as ordinary `cargo test` cases: one test per
//! `[[test]]` and one per `[[test.variant]]` (which passes when the variant is caught failing).
use std::path::Path;

use libtest_mimic::{Arguments, Failed, Trial};
use sim::scenario::{self, report, run};

fn main() {
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut trials = Vec::new();
    let files = scenario::collect_files(&root).unwrap_or_default();
    assert!(
        !files.is_empty(),
        "no scenario files under {}",
        root.display()
    );
    for file in files {
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .with_extension("")
            .display()
            .to_string()
            .replace('/', "::");
        match scenario::load_file(&file) {
            Err(e) => {
                let msg = e.to_string();
                trials.push(Trial::test(format!("{rel}::load"), move || {
                    Err(Failed::from(msg))
                }));
            }
            Ok(cases) => {
                for case in cases {
                    let name = format!("{rel}::{}", case.full_name().replace('/', "::"));
                    // Test cases hold `Rc`s: hand the file path over and reload in the trial.
                    let path = file.clone();
                    let full = case.full_name();
                    trials.push(Trial::test(name, move || {
                        let cases = scenario::load_file(&path).map_err(|e| e.to_string())?;
                        let case = cases
                            .iter()
                            .find(|c| c.full_name() == full)
                            .ok_or("test vanished on reload")?;
                        let result = run::run_test(case, None);
                        if result.passed {
                            Ok(())
                        } else {
                            Err(Failed::from(report::explain_failure(case, &result)))
                        }
                    }));
                }
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
