//! Test doubles shared by the pump runners' tests: a byte pipe per UART direction and a clock
//! the test moves by hand. Futures built on them stay pending until the test changes the pipe or
//! the clock, so a test drives a runner with `embassy_futures::poll_once`.
use core::cell::{Cell, RefCell};
use core::convert::Infallible;
use core::future::Future;
use std::collections::VecDeque;

use embedded_io_async::{ErrorType, Read, Write};

use crate::ports::Clock;
use crate::time::Instant;

/// Bytes in flight in one direction.
pub(crate) type Pipe = RefCell<VecDeque<u8>>;

/// The receiving end of a [`Pipe`].
pub(crate) struct PipeRx<'a>(pub(crate) &'a Pipe);

/// The sending end of a [`Pipe`].
pub(crate) struct PipeTx<'a>(pub(crate) &'a Pipe);

/// Microseconds the test sets by hand.
#[derive(Clone, Copy)]
pub(crate) struct TestClock<'a>(pub(crate) &'a Cell<u64>);

/// Everything in `pipe`, in order.
pub(crate) fn contents(pipe: &Pipe) -> std::vec::Vec<u8> {
    pipe.borrow().iter().copied().collect()
}

/// Pending once, then ready: lets `poll_once` return between test steps.
pub(crate) fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    core::future::poll_fn(move |_| {
        if core::mem::replace(&mut yielded, true) {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    })
}

impl ErrorType for PipeRx<'_> {
    type Error = Infallible;
}

impl ErrorType for PipeTx<'_> {
    type Error = Infallible;
}

impl Read for PipeRx<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        loop {
            let n = {
                let mut q = self.0.borrow_mut();
                let n = buf.len().min(q.len());
                for (slot, b) in buf.iter_mut().zip(q.drain(..n)) {
                    *slot = b;
                }
                n
            };
            if n > 0 {
                return Ok(n);
            }
            // Nothing yet: stay pending (the test polls again after adding bytes).
            yield_now().await;
        }
    }
}

impl Write for PipeTx<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.0.borrow_mut().extend(buf.iter().copied());
        Ok(buf.len())
    }
    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl Clock for TestClock<'_> {
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.get())
    }
    async fn sleep_until(&self, deadline: Instant) {
        while self.now() < deadline {
            yield_now().await;
        }
    }
}
