//! Progress and output for long runs (a scenario folder, `twin compare`, `twin bench`).
//!
//! On a terminal, a progress bar with an ETA is drawn on standard error by `indicatif`, and
//! result lines printed through [`Progress::line`] go above it. Anywhere else (a pipe, a file,
//! CI) there is no bar at all: results are plain lines on standard output, and
//! [`Progress::step`] prints a plain progress line on standard error only when asked to.
//! `--quiet` drops everything but failures and the summary; `--verbose` adds detail. Colours
//! (`console`) appear only when standard output is a terminal and `NO_COLOR` is unset.
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Verbosity {
    /// Failures and the summary only; no progress.
    Quiet,
    /// Results and progress.
    #[default]
    Normal,
    /// Also every expectation's observed value and timing detail.
    Verbose,
}

impl Verbosity {
    /// From the `--quiet` and `--verbose` flags (`--quiet` wins).
    pub fn from_flags(quiet: bool, verbose: bool) -> Self {
        if quiet {
            Verbosity::Quiet
        } else if verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }
}

/// A progress display over `len` steps.
pub struct Progress {
    bar: Option<ProgressBar>,
    verbosity: Verbosity,
    len: u64,
    done: u64,
    what: String,
    /// Plain progress lines on standard error when there is no bar (for long silent runs).
    plain_steps: bool,
}

impl Progress {
    /// A display for `len` steps of `what` (`scenarios`, `runs`). The bar shows only when
    /// standard error is a terminal and `verbosity` is not quiet.
    pub fn new(len: u64, what: &str, verbosity: Verbosity) -> Self {
        let on_terminal = std::io::stderr().is_terminal();
        let bar = (on_terminal && verbosity > Verbosity::Quiet && len > 0).then(|| {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            verbosity,
            len,
            done: 0,
            what: what.to_owned(),
            plain_steps: false,
        }
    }

    /// Also print a plain `what: n/len` line on standard error per step when there is no bar.
    pub fn with_plain_steps(mut self) -> Self {
        self.plain_steps = true;
        self
    }

    /// The verbosity in force.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Whether a bar is drawn.
    pub fn has_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Print a result line on standard output (above the bar, if there is one).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// One step done; `label` says which.
    pub fn step(&mut self, label: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(label.to_owned());
                bar.inc(1);
            }
            None if self.plain_steps && self.verbosity > Verbosity::Quiet => {
                eprintln!("{}: {}/{} {label}", self.what, self.done, self.len);
            }
            None => {}
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `text` in green when colours are on.
pub fn good(text: &str) -> String {
    console::style(text).green().to_string()
}

/// `text` in bold red when colours are on.
pub fn bad(text: &str) -> String {
    console::style(text).red().bold().to_string()
}
