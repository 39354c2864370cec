//! Requests from other threads to the running twins: scenario actions and state reads.
//!
//! The devices live on the kernel's thread and are not `Send`; a [`Controller`] is the
//! thread-safe way in. Stdin (`act pdu relay.load channel=1 watts=100`), the desktop window and
//! tests push a [`Request`] into an [`Inbox`]; a world task on the kernel's thread
//! ([`serve`]) runs it against the twin's [`Device`], with exactly the verbs and state keys a
//! scenario file uses, so whatever a user can do live a scenario can pin, and the reverse.
//!
//! Full policy: the inbox holds [`CAPACITY`] requests; a request that finds it full is refused
//! at once with an error (counted in the inbox's `dropped`), never queued without bound.
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;

use crate::devices::{Device, StateValue};
use crate::kernel::inbox::{Inbox, InboxStats};

use super::LiveHandle;

/// Requests that may wait for the kernel.
pub const CAPACITY: usize = 256;

/// What an action's answer carries.
pub type ActResult = Result<(), String>;
/// What a state read's answer carries: one value per key, `None` where the device has no such
/// state.
pub type StateResult = Result<Vec<Option<StateValue>>, String>;

/// One request to a twin.
pub enum Request {
    /// Perform a scenario action (`do = "<verb>"` with `params`) on `twin`.
    Act {
        /// Twin name (`pdu`, `pump`).
        twin: String,
        /// The action.
        verb: String,
        /// Its keys.
        params: toml::Table,
        /// Where the outcome goes.
        reply: mpsc::Sender<ActResult>,
    },
    /// Read state keys of `twin`.
    State {
        /// Twin name.
        twin: String,
        /// The keys, as a scenario's `state = "<twin>.<key>"` names them (without the twin).
        keys: Vec<String>,
        /// Where the values go.
        reply: mpsc::Sender<StateResult>,
    },
}

/// A thread-safe handle that sends [`Request`]s to the kernel's thread.
#[derive(Clone)]
pub struct Controller {
    inbox: Arc<Inbox<Request>>,
}

impl Default for Controller {
    fn default() -> Self {
        Controller {
            inbox: Arc::new(Inbox::new(CAPACITY)),
        }
    }
}

impl Controller {
    /// Queue an action; the answer arrives on the returned receiver once the kernel ran it.
    pub fn act(
        &self,
        twin: &str,
        verb: &str,
        params: toml::Table,
    ) -> Result<mpsc::Receiver<ActResult>, String> {
        let (reply, rx) = mpsc::channel();
        self.offer(Request::Act {
            twin: twin.to_owned(),
            verb: verb.to_owned(),
            params,
            reply,
        })?;
        Ok(rx)
    }

    /// Queue a state read; the values arrive on the returned receiver.
    pub fn state(
        &self,
        twin: &str,
        keys: Vec<String>,
    ) -> Result<mpsc::Receiver<StateResult>, String> {
        let (reply, rx) = mpsc::channel();
        self.offer(Request::State {
            twin: twin.to_owned(),
            keys,
            reply,
        })?;
        Ok(rx)
    }

    fn offer(&self, request: Request) -> Result<(), String> {
        self.inbox
            .offer(request)
            .map_err(|_| format!("the twin is busy: {CAPACITY} requests are waiting"))
    }

    /// The inbox's counters.
    pub fn stats(&self) -> InboxStats {
        self.inbox.stats()
    }

    pub(super) fn inbox(&self) -> Arc<Inbox<Request>> {
        self.inbox.clone()
    }
}

/// The started twins by name, shared by the control task and the session's shutdown.
pub(super) type Handles = Rc<RefCell<Vec<(&'static str, Box<dyn LiveHandle>)>>>;

/// The kernel-side loop: take requests and run them against the twins' devices.
pub(super) async fn serve(inbox: Arc<Inbox<Request>>, handles: Handles) {
    loop {
        let request = inbox.recv().await;
        let mut handles = handles.borrow_mut();
        match request {
            Request::Act {
                twin,
                verb,
                params,
                reply,
            } => {
                let outcome = find(&mut handles, &twin).and_then(|d| d.act(&verb, &params));
                let _ = reply.send(outcome);
            }
            Request::State { twin, keys, reply } => {
                let live: Vec<_> = handles
                    .iter()
                    .find(|(n, _)| *n == twin)
                    .map(|(_, h)| keys.iter().map(|k| h.live_state(k)).collect())
                    .unwrap_or_default();
                let values = find(&mut handles, &twin).map(|d| {
                    keys.iter()
                        .enumerate()
                        .map(|(i, k)| live.get(i).cloned().flatten().or_else(|| d.state(k)))
                        .collect()
                });
                let _ = reply.send(values);
            }
        }
    }
}

fn find<'a>(
    handles: &'a mut [(&'static str, Box<dyn LiveHandle>)],
    twin: &str,
) -> Result<&'a mut dyn Device, String> {
    let known: Vec<&str> = handles.iter().map(|(n, _)| *n).collect();
    let known = known.join(", ");
    match handles.iter_mut().find(|(n, _)| *n == twin) {
        Some((_, h)) => h
            .device()
            .ok_or_else(|| format!("the {twin} twin takes no actions")),
        None => Err(format!("no twin `{twin}` is running (running: {known})")),
    }
}

/// Parse `key=value` words of a stdin `act` line into an action table. A value is read as a
/// TOML value (`1`, `0.5`, `true`, `"text"`, `[1, 2]`); anything that is not one is a string.
pub fn parse_params(words: &[&str]) -> Result<toml::Table, String> {
    let mut table = toml::Table::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!("`{word}`: expected key=value"));
        };
        if key.is_empty() {
            return Err(format!("`{word}`: the key is empty"));
        }
        let value = match format!("v = {value}").parse::<toml::Table>() {
            Ok(mut t) => t
                .remove("v")
                .unwrap_or(toml::Value::String(value.to_owned())),
            Err(_) => toml::Value::String(value.to_owned()),
        };
        table.insert(key.to_owned(), value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_toml_values_or_strings() {
        let t = parse_params(&[
            "channel=3",
            "watts=120.5",
            "on=true",
            "pump=X",
            "name=\"a b\"",
        ])
        .unwrap();
        assert_eq!(t["channel"], toml::Value::Integer(3));
        assert_eq!(t["watts"], toml::Value::Float(120.5));
        assert_eq!(t["on"], toml::Value::Boolean(true));
        assert_eq!(t["pump"], toml::Value::String("X".into()));
        assert_eq!(t["name"], toml::Value::String("a b".into()));
        assert!(parse_params(&["nokey"]).is_err());
        assert!(parse_params(&["=1"]).is_err());
    }
}
