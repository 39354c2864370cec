//! Pseudo-terminals for the live twins' serial ports (the PDU console, the bench FluidNC board),
//! so `picocom`, `screen`, `socat` or a G-code sender can attach to a simulated UART.
//!
//! `openpty` comes from `libc`: no maintained crate wraps just this without pulling in a whole
//! terminal library. The terminal is raw (no echo, no line editing), as a serial port is.
//! Input is read on a thread of its own and handed to a callback (which may block: the terminal
//! program's writes then wait, nothing is lost). Output goes through a bounded queue of
//! [`OUTPUT_CHUNKS`] chunks to a writer thread, which blocks when the terminal does not read and
//! the system's pseudo-terminal buffer is full. Full output queue policy, chosen per sender:
//! [`PtyOutput::send`] drops the chunk and counts it (for a caller that must never wait, like a
//! console whose output is a log); [`PtyOutput::send_wait`] waits for room (for a serial line
//! whose bytes a program counts, like a G-code sender's `ok`s: the wait holds the rest back in
//! the simulated UART's receive FIFO, which counts an overrun if the terminal stops reading for
//! longer than the buffers hold).
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{Sender, channel, error::TrySendError};

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
    queue: Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl PtyOutput {
    /// Queue `bytes` for the terminal; when the queue is full they are dropped and counted.
    pub fn send(&self, bytes: Vec<u8>) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(bytes) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queue `bytes` for the terminal, waiting for room when the queue is full. Any executor
    /// may await it (the kernel's world tasks do): the wait never blocks a thread. Counted as
    /// dropped only if the terminal is gone (its writer thread stopped on a write error).
    pub async fn send_wait(&self, bytes: Vec<u8>) {
        if self.queue.send(bytes).await.is_err() {
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
        let (queue, mut rx) = channel::<Vec<u8>>(OUTPUT_CHUNKS);
        std::thread::Builder::new()
            .name(format!("{name}-tx"))
            .spawn(move || {
                while let Some(chunk) = rx.blocking_recv() {
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

    /// Write `chunks` chunks of 1 KiB (chunk `i` filled with `i as u8`) through `send_all`
    /// while the terminal reads nothing for a while, then read what arrives.
    fn output_while_the_terminal_stalls(
        chunks: usize,
        send_all: impl FnOnce(PtyOutput, Vec<Vec<u8>>) + Send + 'static,
    ) -> (Vec<u8>, u64) {
        let pty = Pty::open("test-stall", |_| true).expect("openpty");
        let mut term = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .expect("open the terminal side");
        let out = pty.output();
        let data: Vec<Vec<u8>> = (0..chunks).map(|i| vec![i as u8; 1024]).collect();
        let (done_tx, done) = std::sync::mpsc::channel();
        let sender_out = out.clone();
        std::thread::spawn(move || {
            send_all(sender_out, data);
            let _ = done_tx.send(());
        });
        // The terminal program is busy: it reads nothing until the sender has finished or has
        // been waiting for a while.
        let _ = done.recv_timeout(Duration::from_millis(500));
        let total = chunks * 1024;
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 64 * 1024];
        set_read_timeout(&term, Duration::from_millis(500));
        while got.len() < total {
            match term.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        (got, out.dropped())
    }

    /// A blocking read that gives up after `d` without data (VTIME on the raw terminal).
    fn set_read_timeout(term: &std::fs::File, d: Duration) {
        // SAFETY: termios is plain data; tcgetattr fills it from a valid fd.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(term.as_raw_fd(), &mut t) == 0 {
                t.c_cc[libc::VMIN] = 0;
                t.c_cc[libc::VTIME] = (d.as_millis() / 100).clamp(1, 255) as libc::cc_t;
                libc::tcsetattr(term.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
    }

    // 512 KiB is far more than the system's pseudo-terminal buffers and the queue together.
    const STALL_CHUNKS: usize = 512;

    #[test]
    fn send_drops_and_counts_what_a_stalled_terminal_cannot_take() {
        let (got, dropped) = output_while_the_terminal_stalls(STALL_CHUNKS, |out, data| {
            for chunk in data {
                out.send(chunk);
            }
        });
        assert!(dropped > 0, "nothing dropped");
        assert_eq!(
            got.len() as u64 + dropped * 1024,
            (STALL_CHUNKS * 1024) as u64
        );
    }

    #[test]
    fn send_wait_holds_output_back_until_a_stalled_terminal_reads_it() {
        let (got, dropped) = output_while_the_terminal_stalls(STALL_CHUNKS, |out, data| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for chunk in data {
                    out.send_wait(chunk).await;
                }
            });
        });
        assert_eq!(dropped, 0);
        let want: Vec<u8> = (0..STALL_CHUNKS)
            .flat_map(|i| vec![i as u8; 1024])
            .collect();
        assert!(
            got == want,
            "{} of {} bytes, in order: {}",
            got.len(),
            want.len(),
            got.starts_with(&want[..got.len().min(want.len())])
        );
    }
}
