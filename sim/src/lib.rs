//! Twinbench's host simulator: a virtual-time kernel that runs `firmware-core` tasks against
//! simulated parts, scenarios as data, and the live twin's services.
//!
//! See `docs/architecture.md` for the data flow.
pub mod bench;
pub mod devices;
pub mod kernel;
pub mod live;
pub mod periph;
pub mod report;
pub mod scenario;
