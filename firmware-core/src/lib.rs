#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]
#![doc = include_str!("../README.md")]

// `fmt` must come first: its macros are used by every module below.
#[macro_use]
mod fmt;

pub mod basic_auth;
pub mod pdu;
pub mod ports;
pub mod pump;
pub mod queue;
#[cfg(any(test, feature = "selftest"))]
pub mod selftest;
pub mod time;
