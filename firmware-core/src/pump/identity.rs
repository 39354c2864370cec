//! Who the pump controller is on MQTT: its client id and the prefix of every topic it uses.
//!
//! A single controller keeps the defaults (`pump-controller`, `pump/controller/...`); a fleet of
//! controllers on one broker gives each its own (`pump-0042`, `fleet/pump-0042/...`), so their
//! retained status, alarms and command topics never mix. The outbox stores each message's topic
//! *under* the prefix ([`super::outbox::topic`]); the MQTT task joins the two when it publishes,
//! and the platform subscribes to [`Identity::command_topic`].
use core::fmt;

use super::outbox::{TOPIC_MAX, topic};

/// Longest topic prefix, bytes (leaves room for the longest topic under it in [`TOPIC_MAX`]).
pub const PREFIX_MAX: usize = 40;
/// Longest client id, bytes: MQTT 3.1.1 obliges every broker to accept 1 to 23 characters.
pub const CLIENT_ID_MAX: usize = 23;

/// Why an identity was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IdentityError {
    /// The prefix is empty, longer than [`PREFIX_MAX`], starts or ends with `/`, or holds a
    /// wildcard (`+`, `#`) or a NUL.
    BadPrefix,
    /// The client id is empty, longer than [`CLIENT_ID_MAX`], or holds something other than
    /// ASCII letters, digits, `-` and `_`.
    BadClientId,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentityError::BadPrefix => {
                "bad topic prefix (1 to 40 bytes, no leading or trailing '/', no '+', '#' or NUL)"
            }
            IdentityError::BadClientId => {
                "bad MQTT client id (1 to 23 ASCII letters, digits, '-' or '_')"
            }
        })
    }
}

impl core::error::Error for IdentityError {}

/// The controller's MQTT identity (configuration; default `pump-controller` under
/// `pump/controller`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    prefix: heapless::String<PREFIX_MAX>,
    client_id: heapless::String<CLIENT_ID_MAX>,
}

impl Default for Identity {
    fn default() -> Self {
        // Both defaults pass the checks (pinned by a test).
        Identity::new("pump/controller", "pump-controller").unwrap_or(Identity {
            prefix: heapless::String::new(),
            client_id: heapless::String::new(),
        })
    }
}

impl Identity {
    /// An identity, checked as [`IdentityError`] says.
    pub fn new(prefix: &str, client_id: &str) -> Result<Identity, IdentityError> {
        let prefix_ok = !prefix.is_empty()
            && !prefix.starts_with('/')
            && !prefix.ends_with('/')
            && !prefix.contains(['+', '#', '\0']);
        let mut p = heapless::String::new();
        if !prefix_ok || p.push_str(prefix).is_err() {
            return Err(IdentityError::BadPrefix);
        }
        let id_ok = !client_id.is_empty()
            && client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let mut c = heapless::String::new();
        if !id_ok || c.push_str(client_id).is_err() {
            return Err(IdentityError::BadClientId);
        }
        Ok(Identity {
            prefix: p,
            client_id: c,
        })
    }

    /// The topic prefix (`pump/controller`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The MQTT client id (`pump-controller`).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The full topic of `suffix` (one of [`topic`]'s): `<prefix>/<suffix>`. `None` only when the
    /// result would be longer than [`TOPIC_MAX`], which no suffix of ours reaches.
    pub fn topic(&self, suffix: &str) -> Option<heapless::String<TOPIC_MAX>> {
        let mut t = heapless::String::new();
        t.push_str(&self.prefix).ok()?;
        t.push('/').ok()?;
        t.push_str(suffix).ok()?;
        Some(t)
    }

    /// The topic commands arrive on (subscribed by the platform's MQTT client).
    pub fn command_topic(&self) -> heapless::String<TOPIC_MAX> {
        self.topic(topic::COMMAND).unwrap_or_default()
    }

    /// The suffix of `full` if it is a topic under this prefix (`status` for
    /// `pump/controller/status`).
    pub fn suffix_of<'t>(&self, full: &'t str) -> Option<&'t str> {
        full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_identity_is_the_single_controllers() {
        let id = Identity::default();
        assert_eq!(id.prefix(), "pump/controller");
        assert_eq!(id.client_id(), "pump-controller");
        assert_eq!(
            id.topic(topic::STATUS).as_deref(),
            Some("pump/controller/status")
        );
        assert_eq!(id.command_topic().as_str(), "pump/controller/command");
        assert_eq!(id.suffix_of("pump/controller/alarm"), Some("alarm"));
        assert_eq!(id.suffix_of("pump/controllerx/alarm"), None);
    }

    #[test]
    fn a_fleet_member_has_its_own_topics() {
        let id = Identity::new("fleet/pump-0042", "pump-0042").unwrap();
        assert_eq!(
            id.topic(topic::DISPENSE_COMPLETE).as_deref(),
            Some("fleet/pump-0042/dispense/complete")
        );
    }

    #[test]
    fn every_topic_fits_under_the_longest_prefix() {
        let long = "p".repeat(PREFIX_MAX);
        let id = Identity::new(&long, "x").unwrap();
        for t in topic::ALL {
            assert!(id.topic(t).is_some(), "{t}");
        }
    }

    #[test]
    fn bad_identities_are_refused() {
        for p in ["", "/a", "a/", "a/+/b", "a/#", &"p".repeat(PREFIX_MAX + 1)] {
            assert_eq!(
                Identity::new(p, "x"),
                Err(IdentityError::BadPrefix),
                "{p:?}"
            );
        }
        for c in ["", "has space", "a/b", &"c".repeat(CLIENT_ID_MAX + 1)] {
            assert_eq!(
                Identity::new("a", c),
                Err(IdentityError::BadClientId),
                "{c:?}"
            );
        }
    }
}
