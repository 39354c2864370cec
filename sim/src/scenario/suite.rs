//! Running many tests: on `jobs` threads, with results handed back in file order, each run
//! optionally writing its timeline ([`crate::report::perfetto`]) and its report page
//! ([`crate::report::html`]).
//!
//! Test cases hold `Rc`s (their device specs and source text are shared between a test and its
//! variants), so they do not cross threads: each worker loads the files itself and runs the
//! cases it takes by index. Runs are independent and deterministic, so the results are the same
//! for any number of jobs; only the wall time changes.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::run::{Extras, StateSampler, TestResult, run_test_with};
use super::{TestCase, load_file_seeded};
use firmware_core::time::Instant;

use crate::devices::StateValue;
use crate::kernel::Observer;
use crate::report::collect::Collector;
use crate::report::html;
use crate::report::perfetto::TraceWriter;

/// What to run and what to write besides the results.
#[derive(Debug, Clone, Default)]
pub struct SuiteOptions {
    /// Override every test's seed.
    pub seed: Option<u64>,
    /// Threads running tests (at least one).
    pub jobs: usize,
    /// Write each run's timeline here (one test) or next to it, one file per test.
    pub trace: Option<PathBuf>,
    /// Write one HTML page per run into this folder, plus `index.html`.
    pub report: Option<PathBuf>,
}

/// One finished run.
pub struct Finished {
    /// Its index in the loaded cases (file order).
    pub index: usize,
    /// What it found.
    pub result: TestResult,
    /// What could not be written (a trace file, a page), if anything.
    pub write_errors: Vec<String>,
    /// The report page's file name, if one was written.
    pub page: Option<String>,
}

/// A file-system-friendly name for a test: letters, digits and `_`, `-` kept, the rest `_`.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where the trace of `case` goes, given `--trace path` and the number of tests run.
pub fn trace_path(path: &Path, case: &TestCase, tests: usize) -> PathBuf {
    if tests == 1 {
        return path.to_owned();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "trace".to_owned());
    let file = case
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        "{stem}.{}.{}.json",
        slug(&file),
        slug(&case.full_name())
    ))
}

fn page_name(case: &TestCase) -> String {
    let file = case
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{}--{}.html", slug(&file), slug(&case.full_name()))
}

/// Run one case with what `options` asks to be written.
pub fn run_one(case: &TestCase, options: &SuiteOptions, tests: usize) -> Finished {
    let mut write_errors = Vec::new();
    let mut observers: Vec<Rc<RefCell<dyn Observer>>> = Vec::new();
    let writer = match &options.trace {
        Some(p) => match TraceWriter::create(&trace_path(p, case, tests)) {
            Ok(w) => Some(Rc::new(RefCell::new(w))),
            Err(e) => {
                write_errors.push(e.to_string());
                None
            }
        },
        None => None,
    };
    if let Some(w) = &writer {
        observers.push(w.clone());
    }
    let collector = options
        .report
        .as_ref()
        .map(|_| Rc::new(RefCell::new(Collector::new(case))));
    if let Some(c) = &collector {
        observers.push(c.clone());
    }
    let mut sampler = collector.clone().map(Sampling);
    let result = run_test_with(
        case,
        options.seed,
        Extras {
            observers,
            sampler: sampler.as_mut().map(|s| s as &mut dyn StateSampler),
        },
    );
    if let Some(w) = &writer
        && let Err(e) = w
            .borrow_mut()
            .finish(Instant::from_millis(result.virtual_ms))
    {
        write_errors.push(e.to_string());
    }
    let mut page = None;
    if let (Some(dir), Some(c)) = (&options.report, &collector) {
        let name = page_name(case);
        let text = html::run_page(case, &result, &c.borrow());
        match std::fs::write(dir.join(&name), text) {
            Ok(()) => page = Some(name),
            Err(e) => write_errors.push(format!("cannot write {}: {e}", dir.join(&name).display())),
        }
    }
    Finished {
        index: 0,
        result,
        write_errors,
        page,
    }
}

/// Reads states for a collector that also observes the run: it is borrowed only while it
/// reads, never while the kernel reports to it.
struct Sampling(Rc<RefCell<Collector>>);

impl StateSampler for Sampling {
    fn instants(&self) -> Vec<Instant> {
        StateSampler::instants(&*self.0.borrow())
    }
    fn sample(&mut self, at: Instant, read: &dyn Fn(&str, &str) -> Option<StateValue>) {
        StateSampler::sample(&mut *self.0.borrow_mut(), at, read);
    }
}

/// Run `cases` (the tests of `files` named in `wanted`, in file order) with `options`, calling
/// `done` for each result in file order as soon as it and every earlier one are finished.
pub fn run_suite(
    files: &[PathBuf],
    cases: &[TestCase],
    wanted: &[(PathBuf, String)],
    options: &SuiteOptions,
    mut done: impl FnMut(&TestCase, &Finished),
) -> Vec<Finished> {
    let jobs = options.jobs.clamp(1, cases.len().max(1));
    let tests = cases.len();
    let mut slots: BTreeMap<usize, Finished> = BTreeMap::new();
    let mut out: Vec<Finished> = Vec::with_capacity(tests);
    let mut deliver =
        |f: Finished, slots: &mut BTreeMap<usize, Finished>, out: &mut Vec<Finished>| {
            slots.insert(f.index, f);
            while let Some(next) = slots.remove(&out.len()) {
                done(&cases[next.index], &next);
                out.push(next);
            }
        };
    if jobs == 1 {
        for (i, case) in cases.iter().enumerate() {
            let mut f = run_one(case, options, tests);
            f.index = i;
            deliver(f, &mut slots, &mut out);
        }
        return out;
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<Result<Finished, String>>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                // This worker's own copy of the cases (they are not `Send`).
                let mut mine: Vec<TestCase> = Vec::new();
                for f in files {
                    match load_file_seeded(f, options.seed) {
                        Ok(c) => mine.extend(c.into_iter().filter(|c| {
                            wanted
                                .iter()
                                .any(|(f, n)| *f == c.file && *n == c.full_name())
                        })),
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = mine.get(i) else { return };
                    let mut f = run_one(case, options, tests);
                    f.index = i;
                    if tx.send(Ok(f)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for msg in rx {
            match msg {
                Ok(f) => deliver(f, &mut slots, &mut out),
                Err(e) => eprintln!("error: a worker could not load the files: {e}"),
            }
        }
    });
    out
}

/// Write `index.html` for the pages of `finished` into `dir`.
pub fn write_index(dir: &Path, cases: &[TestCase], finished: &[Finished]) -> std::io::Result<()> {
    let rows: Vec<html::IndexRow> = finished
        .iter()
        .filter_map(|f| {
            Some(html::IndexRow {
                name: f.result.name.clone(),
                file: cases.get(f.index)?.file.display().to_string(),
                passed: f.result.passed,
                page: f.page.clone()?,
            })
        })
        .collect();
    std::fs::write(dir.join("index.html"), html::index_page(&rows))
}
