//! Observability: what a run shows besides its verdicts.
//!
//! * [`perfetto`]: the run's timeline as a Chrome / Perfetto trace-event file, streamed while
//!   it runs (`--trace FILE.json`);
//! * [`collect`] and [`html`]: a self-contained HTML page per run with its verdicts and plots
//!   (`--report DIR`), from data collected in bounded memory;
//! * [`progress`]: progress bars on a terminal, plain lines elsewhere, and colours only where
//!   they can be seen.
pub mod collect;
pub mod html;
pub mod perfetto;
pub mod progress;
