//! Pseudo-terminals for the live twins' serial ports (the PDU console, the bench FluidNC board),
//! so `picocom`, `screen`, `socat` or a G-code sender can attach to a simulated UART.
//!
//! `openpty` comes from `libc`: no maintained crate wraps just this without pulling in a whole
//! terminal library. The terminal is raw (no echo, no line editing), as a serial port is.
//! Input is read on a thread of its own and handed to a callback; output goes through a bounded
//! queue to a writer thread. Full output queue policy: the chunk is dropped and counted, as a
//! serial line drops what nobody reads.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Output chunks queued for the terminal before new ones are dropped.
pub const OUTPUT_CHUNKS: usize = 64;

/// An open pseudo-terminal.
pub struct Pty {
    path: String,
    output: PtyOutput,
    // Kept open so the master never sees a hang-up while no terminal is attached.
    _slave: OwnedFd,
}

/// Where output for the terminal goes; cheap to clone.
#[derive(Clone)]
pub struct PtyOutput {
    queue: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl PtyOutput {
    /// Queue `bytes` for the terminal; when the queue is full they are dropped and counted.
    pub fn send(&self, bytes: Vec<u8>) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(bytes) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Chunks dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Pty {
    /// Open a raw pseudo-terminal named `name` (for its threads). Every chunk typed into it is
    /// passed to `on_input` on the reader thread, which stops when `on_input` returns `false`.
    pub fn open(
        name: &str,
        mut on_input: impl FnMut(Vec<u8>) -> bool + Send + 'static,
    ) -> std::io::Result<Pty> {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        // SAFETY: openpty writes two fds into the provided ints; null name/termios/winsize are
        // allowed by its contract.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openpty succeeded, so both fds are open and owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // SAFETY: termios is plain data; tcgetattr fills it from a valid fd.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))?
            .to_string_lossy()
            .into_owned();
        let mut reader = std::fs::File::from(master.try_clone()?);
        let mut writer = std::fs::File::from(master);
        std::thread::Builder::new()
            .name(format!("{name}-rx"))
            .spawn(move || {
                let mut buf = [0u8; 256];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if !on_input(buf.get(..n).unwrap_or(&[]).to_vec()) {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // Nothing attached yet (EIO on a master without a reader): wait.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        let (queue, rx) = sync_channel::<Vec<u8>>(OUTPUT_CHUNKS);
        std::thread::Builder::new()
            .name(format!("{name}-tx"))
            .spawn(move || {
                for chunk in rx {
                    if writer.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Pty {
            path,
            output: PtyOutput {
                queue,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            _slave: slave,
        })
    }

    /// The terminal's path (`/dev/pts/N`), for the user's terminal program.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where to write output for the terminal.
    pub fn output(&self) -> PtyOutput {
        self.output.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_typed_into_the_terminal_reach_the_callback_and_output_reaches_the_terminal() {
        let (tx, rx) = std::sync::mpsc::channel();
        let pty = Pty::open("test-pty", move |b| tx.send(b).is_ok()).expect("openpty");
        let mut term = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .expect("open the terminal side");
        term.write_all(b"G1 X1\n").expect("type");
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("input arrives");
        assert_eq!(got, b"G1 X1\n");
        pty.output().send(b"ok\n".to_vec());
        let mut buf = [0u8; 3];
        term.read_exact(&mut buf).expect("output arrives");
        assert_eq!(&buf, b"ok\n");
        assert_eq!(pty.output().dropped(), 0);
    }
}
