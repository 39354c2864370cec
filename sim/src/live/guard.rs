//! What every live TCP service shares to stay up under bad or hostile clients: a cap on the
//! connections served at once, a back-off when `accept()` fails, and the counters of what was
//! refused, all readable on a running twin as state keys (`state pdu http.refused_busy`).
//!
//! | limit | policy when exceeded | counter |
//! |---|---|---|
//! | connections served at once (`max`, per service) | the connection is accepted, answered `503 Service Unavailable` with `Connection: close` at once (the answer is written within [`REFUSE_WRITE_TIMEOUT`] or dropped) and closed | `refused_busy` |
//! | a failing `accept()` (out of file descriptors, …) | the loop sleeps [`ACCEPT_BACKOFF_MIN`], doubling up to [`ACCEPT_BACKOFF_MAX`] while it keeps failing, instead of spinning | `accept_errors` |
//!
//! The service-specific limits (request size, read and idle timeouts) and their counters are the
//! service's own; they use the same [`ServiceStats`].
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::devices::StateValue;

/// First wait after a failed `accept()`.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between `accept()` attempts while they keep failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the 503 to a connection over the cap may take to write.
pub const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters of one live service. They only grow (except `open`).
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Connections accepted (served or refused).
    pub accepted: AtomicU64,
    /// Connections open and being served now.
    pub open: AtomicU64,
    /// Connections refused with 503 because `max` were already being served.
    pub refused_busy: AtomicU64,
    /// Failed `accept()` calls.
    pub accept_errors: AtomicU64,
    /// Requests answered 408: no complete request within the read timeout, or no byte within
    /// the idle timeout.
    pub timed_out: AtomicU64,
    /// Requests answered 413 or 431 before their body or head was read.
    pub too_large: AtomicU64,
    /// Requests answered 400 at once because their first bytes cannot be HTTP.
    pub malformed: AtomicU64,
}

impl ServiceStats {
    /// Add one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters by name, in a stable order.
    pub fn values(&self) -> [(&'static str, u64); 7] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("accepted", g(&self.accepted)),
            ("open", g(&self.open)),
            ("refused_busy", g(&self.refused_busy)),
            ("accept_errors", g(&self.accept_errors)),
            ("timed_out", g(&self.timed_out)),
            ("too_large", g(&self.too_large)),
            ("malformed", g(&self.malformed)),
        ]
    }

    /// The state key `<prefix>.<counter>` (e.g. `http.refused_busy`), if it names one.
    pub fn state(&self, prefix: &str, key: &str) -> Option<StateValue> {
        let name = key.strip_prefix(prefix)?.strip_prefix('.')?;
        self.values()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| StateValue::Int(i64::try_from(v).unwrap_or(i64::MAX)))
    }

    /// One line for the shutdown summary.
    pub fn summary(&self) -> String {
        self.values()
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Something connections come from (a [`TcpListener`]; tests use failing fakes).
pub trait Acceptor: Send + 'static {
    /// The accepted connection.
    type Conn: Send + 'static;
    /// Wait for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Acceptor for TcpListener {
    type Conn = TcpStream;
    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// The 503 a connection over the cap gets.
pub fn busy_reply(why: &str) -> Vec<u8> {
    let body = format!("{{\"error\":\"{why}\"}}");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The 408 a request that did not arrive in time gets (the service's read or idle timeout).
pub fn timeout_reply() -> Vec<u8> {
    let body = "{\"error\":\"request timeout\"}";
    format!(
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What to do with a connection over the cap.
pub trait Refuse<C>: Send + Sync + 'static {
    /// Answer and close `conn` (it is dropped afterwards).
    fn refuse(&self, conn: C) -> impl Future<Output = ()> + Send;
}

/// Refuse a TCP connection with a 503.
pub struct Refuse503;

impl Refuse<TcpStream> for Refuse503 {
    async fn refuse(&self, mut conn: TcpStream) {
        let reply = busy_reply("too many connections");
        let _ = tokio::time::timeout(REFUSE_WRITE_TIMEOUT, async { conn.write_all(&reply).await })
            .await;
        let _ = conn.shutdown().await;
    }
}

/// Accept connections for ever: serve at most `max` at once (`serve` gets each with its permit,
/// which frees the slot when dropped), refuse the rest (`refuse`), and back off while `accept()`
/// fails. See the module docs.
pub async fn accept_loop<A, F, Fut, R>(
    mut listener: A,
    max: usize,
    stats: Arc<ServiceStats>,
    refuse: R,
    mut serve: F,
) where
    A: Acceptor,
    F: FnMut(A::Conn, Slot) -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
    R: Refuse<A::Conn>,
{
    let slots = Arc::new(Semaphore::new(max));
    let refuse = Arc::new(refuse);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let conn = match listener.accept().await {
            Ok(c) => {
                backoff = ACCEPT_BACKOFF_MIN;
                c
            }
            Err(_) => {
                ServiceStats::bump(&stats.accept_errors);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        ServiceStats::bump(&stats.accepted);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                stats.open.fetch_add(1, Ordering::Relaxed);
                let slot = Slot {
                    _permit: permit,
                    stats: stats.clone(),
                };
                tokio::spawn(serve(conn, slot));
            }
            Err(_) => {
                ServiceStats::bump(&stats.refused_busy);
                let refuse = refuse.clone();
                tokio::spawn(async move { refuse.refuse(conn).await });
            }
        }
    }
}

/// One of the `max` connection slots; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ServiceStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails every `accept()`, counting the calls.
    struct Failing(Arc<AtomicU64>);

    impl Acceptor for Failing {
        type Conn = ();
        async fn accept(&mut self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::other("out of file descriptors"))
        }
    }

    /// Hands out `n` connections, then waits for ever.
    struct Some_(u32);

    impl Acceptor for Some_ {
        type Conn = u32;
        async fn accept(&mut self) -> io::Result<u32> {
            if self.0 == 0 {
                std::future::pending::<()>().await;
            }
            self.0 -= 1;
            Ok(self.0)
        }
    }

    struct Record(Arc<Mutex<Vec<u32>>>);

    impl Refuse<u32> for Record {
        async fn refuse(&self, conn: u32) {
            if let Ok(mut v) = self.0.lock() {
                v.push(conn);
            }
        }
    }

    impl Refuse<()> for Record {
        async fn refuse(&self, _: ()) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_accept_backs_off_instead_of_spinning() {
        let calls = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(ServiceStats::default());
        let task = tokio::spawn(accept_loop(
            Failing(calls.clone()),
            4,
            stats.clone(),
            Record(Default::default()),
            |_, _| async {},
        ));
        // Ten seconds of the paused clock: 50, 100, 200, 400, 800 ms, then 1 s each.
        tokio::time::sleep(Duration::from_secs(10)).await;
        task.abort();
        let n = calls.load(Ordering::Relaxed);
        assert!((10..=16).contains(&n), "{n} accept() calls in 10 s");
        assert_eq!(stats.accept_errors.load(Ordering::Relaxed), n);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_over_the_cap_are_refused_and_dropping_a_slot_frees_it() {
        let stats = Arc::new(ServiceStats::default());
        let refused = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let task = tokio::spawn(accept_loop(
            Some_(5),
            3,
            stats.clone(),
            Record(refused.clone()),
            move |c, slot| {
                if let Ok(mut v) = h.lock() {
                    v.push((c, slot));
                }
                async {}
            },
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(held.lock().unwrap().len(), 3);
        assert_eq!(*refused.lock().unwrap(), vec![1, 0]);
        assert_eq!(stats.refused_busy.load(Ordering::Relaxed), 2);
        assert_eq!(stats.open.load(Ordering::Relaxed), 3);
        held.lock().unwrap().clear();
        assert_eq!(stats.open.load(Ordering::Relaxed), 0);
        assert_eq!(
            stats.state("http", "http.refused_busy"),
            Some(StateValue::Int(2))
        );
        assert_eq!(stats.state("http", "http.nope"), None);
        task.abort();
    }
}
