//! NetTask's SNMP side: a sans-IO SNMP v1/v2c agent for the ENERGIS PDU, with its own no_std
//! BER codec. Sockets belong to the platform (W5500 on the board, a UDP socket in the sim).
//!
//! * [`ber`]: the BER subset (TLV reader, forward writer, OBJECT IDENTIFIER).
//! * [`message`]: checked view of a request message, response emitter.
//! * [`mib`]: the objects (system group + ENERGIS enterprise 19865), in OID order.
//! * [`agent`]: request handling, access control, error mapping, GETBULK, SET via SwitchTask.
//!
//! Usage is documented on [`agent`]; the short form:
//!
//! ```
//! use firmware_core::pdu::snmp::{Agent, Outcome, MAX_REQUEST_LEN};
//! # fn demo(datagram: &[u8], snapshot: &firmware_core::pdu::frontend::Snapshot) {
//! let mut agent = Agent::new();
//! let mut out = [0u8; MAX_REQUEST_LEN];
//! match agent.handle_request(datagram, snapshot, firmware_core::time::Instant::ZERO, &mut out) {
//!     Outcome::Reply(n) => { /* send out[..n] */ }
//!     Outcome::Drop(_reason) => { /* send nothing */ }
//!     Outcome::NeedsSwitch(_request) => { /* ask SwitchTask, then agent.complete(&reply, &mut out) */ }
//! }
//! # }
//! ```
pub mod agent;
pub mod ber;
pub mod message;
pub mod mib;

pub use agent::{Agent, DropReason, MAX_REQUEST_LEN, Outcome, SnmpStats};
