//! Private logging shim: routes the crate's log lines to `defmt`, to `log`, or to nothing.
//!
//! Firmware modules use `trace!`, `debug!`, `info!`, `warn!` and `error!` from here and never name
//! a backend, so the same source builds for a probe-attached board (`defmt`), for the host
//! simulator (`log`) and for a size-constrained build (neither, where the macros compile away but
//! still type-check their arguments).
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!(
    "features `defmt` and `log` are mutually exclusive: defmt needs its own format strings and \
     global logger, so a build picks exactly one log backend"
);

macro_rules! fw_log {
    ($level:ident, $($arg:expr),+ $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::$level!($($arg),+);
        #[cfg(feature = "log")]
        ::log::$level!($($arg),+);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        {
            // Evaluate nothing, but keep the arguments "used" so both builds see the same code.
            let _ = ($(&$arg),+);
        }
    }};
}

macro_rules! trace {
    ($($arg:expr),+ $(,)?) => { fw_log!(trace, $($arg),+) };
}
macro_rules! debug {
    ($($arg:expr),+ $(,)?) => { fw_log!(debug, $($arg),+) };
}
macro_rules! info {
    ($($arg:expr),+ $(,)?) => { fw_log!(info, $($arg),+) };
}
macro_rules! warn {
    ($($arg:expr),+ $(,)?) => { fw_log!(warn, $($arg),+) };
}
macro_rules! error {
    ($($arg:expr),+ $(,)?) => { fw_log!(error, $($arg),+) };
}
