//! Device B: the ENERGIS power-distribution unit (RP2040).
//!
//! One owner task per peripheral; tasks talk only through [`crate::queue`] queues.
