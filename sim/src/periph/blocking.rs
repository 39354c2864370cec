//! Blocking `embedded-hal` 1.0 and `embedded-io` adapters over the simulated buses and parts, so
//! that a blocking driver from crates.io (an `eeprom24x`, a `port-expander`) runs unchanged
//! against [`I2cBus`](super::i2c::I2cBus), a [`UartPort`](super::uart::UartPort), the
//! [`SpiLoopback`](super::spi::SpiLoopback) or the kernel's clock.
//!
//! This module owns the one thing such a driver needs and the async parts cannot give it:
//! someone to run the kernel while the driver waits. The simulated buses complete a
//! transaction only when virtual time reaches its end, so `futures::executor::block_on` on a
//! bus future would wait forever. [`BlockingKernel`] owns the kernel; each blocking call polls
//! the async operation and, while it is pending, runs the kernel to its next event
//! ([`Kernel::next_event`]) and polls again, so the call returns at exactly the virtual instant
//! the bus finishes, with every other task (firmware, parts) having run up to it. A driver's
//! `delay_ms(5)` likewise moves virtual time by 5 ms.
//!
//! ```
//! use sim::kernel::Kernel;
//! use sim::periph::blocking::BlockingKernel;
//! use sim::periph::i2c::{FAST_MODE_HZ, I2cBus};
//! use sim::periph::mcp23017::Mcp23017;
//! use embedded_hal::i2c::I2c as _;
//!
//! let kernel = Kernel::new(1);
//! let bus = I2cBus::new(&kernel, "i2c0", FAST_MODE_HZ)?;
//! let expander = Mcp23017::new(&kernel, "mcp").attach(&bus, 0x20)?;
//! let sim = BlockingKernel::new(kernel);
//! let mut i2c = sim.wrap(bus.clone());      // embedded_hal::i2c::I2c
//! i2c.write(0x20, &[0x00, 0x00])?;           // IODIRA: all outputs
//! i2c.write(0x20, &[0x14, 0xA5])?;           // OLATA
//! assert_eq!(expander.borrow().pin_levels() & 0xff, 0xA5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Contract
//! * One thread: the kernel is not `Send`, and neither are the adapters.
//! * A blocking call must not be made from inside a kernel task (a task would be waiting on
//!   the kernel that runs it): it answers [`BlockingError::Reentrant`] instead of deadlocking.
//! * An operation that can never finish (a UART read when nothing will ever send, in a kernel
//!   with no timer left) answers [`BlockingError::Stalled`] instead of hanging. A kernel with
//!   periodic tasks always has a next event, so a read there waits as long as the driver does;
//!   drivers with timeouts get them in virtual time.
//! * On a live kernel ([`Kernel::go_live`]) the calls wait in wall-clock time, as the
//!   kernel does.
//!
//! No crate does this: executors from `futures` or `embassy` poll a future with a real
//! waker, but none of them can advance this kernel's virtual clock, which is what makes the
//! bus future complete.
use std::cell::{RefCell, RefMut};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::kernel::{Kernel, RunEnd, SimClock};

/// Why a blocking call did not return the operation's own result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockingError<E> {
    /// The operation failed on the bus or part (a NACK, a bus error…).
    Inner(E),
    /// Nothing is scheduled in the kernel and the operation still waits: it can never finish.
    Stalled,
    /// The kernel was interrupted ([`LiveControl::interrupt`](crate::kernel::LiveControl)).
    Interrupted,
    /// A blocking call was made while the kernel was running, from one of its own tasks.
    Reentrant,
}

impl<E: fmt::Debug> fmt::Display for BlockingError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockingError::Inner(e) => write!(f, "{e:?}"),
            BlockingError::Stalled => f.write_str(
                "the operation waits but nothing is scheduled in the simulation: it can never finish",
            ),
            BlockingError::Interrupted => f.write_str("the simulation was interrupted"),
            BlockingError::Reentrant => {
                f.write_str("a blocking call was made from inside a running kernel task")
            }
        }
    }
}

impl<E: fmt::Debug> std::error::Error for BlockingError<E> {}

/// A kernel shared by blocking adapters. Cheap to clone; all clones drive the same kernel.
#[derive(Clone)]
pub struct BlockingKernel {
    kernel: Rc<RefCell<Kernel>>,
}

impl BlockingKernel {
    /// Take over `kernel`; spawn tasks and read its trace through [`Self::kernel`].
    pub fn new(kernel: Kernel) -> Self {
        BlockingKernel {
            kernel: Rc::new(RefCell::new(kernel)),
        }
    }

    /// The kernel, between blocking calls (it panics if called from inside a kernel task, like
    /// any nested `RefCell` borrow; blocking calls themselves never do).
    pub fn kernel(&self) -> RefMut<'_, Kernel> {
        self.kernel.borrow_mut()
    }

    /// The kernel's clock.
    pub fn clock(&self) -> SimClock {
        self.kernel.borrow().clock()
    }

    /// Wrap an async bus, port or delay as its blocking counterpart.
    pub fn wrap<T>(&self, inner: T) -> Blocking<T> {
        Blocking {
            inner,
            kernel: self.clone(),
        }
    }

    /// A blocking `embedded_hal::delay::DelayNs` on the kernel's clock.
    pub fn delay(&self) -> Blocking<SimClock> {
        self.wrap(self.clock())
    }

    /// Poll `future`, running the kernel one event at a time while it is pending, and return
    /// its output at the virtual instant it completes.
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, BlockingError<Infallible>> {
        let mut future = pin!(future);
        // The kernel's timers and parts wake whoever registered; here nobody needs waking:
        // the future is polled again after every step of the kernel.
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return Ok(v);
            }
            let mut kernel = self
                .kernel
                .try_borrow_mut()
                .map_err(|_| BlockingError::Reentrant)?;
            // First what is due now (tasks the poll itself woke), then the next event.
            let now = kernel.now();
            if kernel.run_until(now) == RunEnd::Interrupted {
                return Err(BlockingError::Interrupted);
            }
            drop(kernel);
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return Ok(v);
            }
            let mut kernel = self
                .kernel
                .try_borrow_mut()
                .map_err(|_| BlockingError::Reentrant)?;
            let Some(next) = kernel.next_event() else {
                return Err(BlockingError::Stalled);
            };
            if kernel.run_until(next) == RunEnd::Interrupted {
                return Err(BlockingError::Interrupted);
            }
        }
    }

    /// [`Self::block_on`] for an operation with its own error.
    fn run<T, E>(&self, future: impl Future<Output = Result<T, E>>) -> Result<T, BlockingError<E>> {
        match self.block_on(future) {
            Ok(r) => r.map_err(BlockingError::Inner),
            Err(BlockingError::Inner(never)) => match never {},
            Err(BlockingError::Stalled) => Err(BlockingError::Stalled),
            Err(BlockingError::Interrupted) => Err(BlockingError::Interrupted),
            Err(BlockingError::Reentrant) => Err(BlockingError::Reentrant),
        }
    }
}

/// A blocking view of an async bus, port or delay `T` (see the module docs). It implements
/// `embedded_hal::i2c::I2c` for an async I2C bus, `embedded_hal::spi::{SpiBus, SpiDevice}` for
/// async SPI, `embedded_io::{Read, Write, ReadReady, WriteReady}` for async serial ports, and
/// `embedded_hal::delay::DelayNs` for an async delay.
pub struct Blocking<T> {
    inner: T,
    kernel: BlockingKernel,
}

impl<T> Blocking<T> {
    /// The async value inside.
    pub fn inner(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Give the async value back.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

// --- I2C ------------------------------------------------------------------------------------

impl<E: embedded_hal::i2c::Error> embedded_hal::i2c::Error for BlockingError<E> {
    fn kind(&self) -> embedded_hal::i2c::ErrorKind {
        match self {
            BlockingError::Inner(e) => e.kind(),
            _ => embedded_hal::i2c::ErrorKind::Other,
        }
    }
}

impl<T: embedded_hal::i2c::ErrorType> embedded_hal::i2c::ErrorType for Blocking<T> {
    type Error = BlockingError<T::Error>;
}

impl<T: embedded_hal_async::i2c::I2c> embedded_hal::i2c::I2c for Blocking<T> {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [embedded_hal::i2c::Operation<'_>],
    ) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.transaction(address, operations))
    }
}

// --- SPI ------------------------------------------------------------------------------------

impl<E: embedded_hal::spi::Error> embedded_hal::spi::Error for BlockingError<E> {
    fn kind(&self) -> embedded_hal::spi::ErrorKind {
        match self {
            BlockingError::Inner(e) => e.kind(),
            _ => embedded_hal::spi::ErrorKind::Other,
        }
    }
}

impl<T: embedded_hal::spi::ErrorType> embedded_hal::spi::ErrorType for Blocking<T> {
    type Error = BlockingError<T::Error>;
}

impl<T: embedded_hal_async::spi::SpiBus<u8>> embedded_hal::spi::SpiBus<u8> for Blocking<T> {
    fn read(&mut self, words: &mut [u8]) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.read(words))
    }
    fn write(&mut self, words: &[u8]) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.write(words))
    }
    fn transfer(&mut self, read: &mut [u8], write: &[u8]) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.transfer(read, write))
    }
    fn transfer_in_place(&mut self, words: &mut [u8]) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.transfer_in_place(words))
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.flush())
    }
}

impl<T: embedded_hal_async::spi::SpiDevice<u8>> embedded_hal::spi::SpiDevice<u8> for Blocking<T> {
    fn transaction(
        &mut self,
        operations: &mut [embedded_hal::spi::Operation<'_, u8>],
    ) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.transaction(operations))
    }
}

// --- serial ---------------------------------------------------------------------------------

impl<E: embedded_io::Error> embedded_io::Error for BlockingError<E> {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            BlockingError::Inner(e) => e.kind(),
            BlockingError::Stalled => embedded_io::ErrorKind::TimedOut,
            BlockingError::Interrupted => embedded_io::ErrorKind::Interrupted,
            BlockingError::Reentrant => embedded_io::ErrorKind::Other,
        }
    }
}

impl<T: embedded_io::ErrorType> embedded_io::ErrorType for Blocking<T> {
    type Error = BlockingError<T::Error>;
}

impl<T: embedded_io_async::Read> embedded_io::Read for Blocking<T> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.kernel.run(self.inner.read(buf))
    }
}

impl<T: embedded_io_async::Write> embedded_io::Write for Blocking<T> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.kernel.run(self.inner.write(buf))
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.kernel.run(self.inner.flush())
    }
}

impl<T: embedded_io::ReadReady> embedded_io::ReadReady for Blocking<T> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.inner.read_ready().map_err(BlockingError::Inner)
    }
}

impl<T: embedded_io::WriteReady> embedded_io::WriteReady for Blocking<T> {
    fn write_ready(&mut self) -> Result<bool, Self::Error> {
        self.inner.write_ready().map_err(BlockingError::Inner)
    }
}

// --- delay ----------------------------------------------------------------------------------

impl<T: embedded_hal_async::delay::DelayNs> embedded_hal::delay::DelayNs for Blocking<T> {
    /// Moves virtual time by `ns` (rounded up to the microsecond). `DelayNs` has no error: a
    /// delay cannot stall (its sleep is a timer), an interrupted live kernel ends it early,
    /// and one made from inside a kernel task returns at once.
    fn delay_ns(&mut self, ns: u32) {
        let _ = self.kernel.block_on(self.inner.delay_ns(ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::TaskSpec;
    use crate::periph::eeprom::{self, Cat24c256};
    use crate::periph::i2c::{FAST_MODE_HZ, I2cBus};
    use crate::periph::uart::{self, UartConfig};
    use embedded_hal::delay::DelayNs as _;
    use embedded_hal::i2c::I2c as _;
    use embedded_io::{Read as _, Write as _};
    use firmware_core::time::{Duration, Instant};

    #[test]
    fn an_i2c_write_returns_when_its_last_bit_is_on_the_wire() {
        let k = Kernel::new(1);
        let bus = I2cBus::new(&k, "i2c0", FAST_MODE_HZ).expect("bus");
        let part = Cat24c256::new(&k, "eeprom")
            .attach(&bus, eeprom::DEFAULT_ADDRESS)
            .expect("attach");
        let sim = BlockingKernel::new(k);
        let mut i2c = sim.wrap(bus.clone());
        i2c.write(eeprom::DEFAULT_ADDRESS, &[0x00, 0x10, 0xAB])
            .expect("write");
        // Address + 3 bytes, 9 bits each, at 400 kHz: 36 bit times, 90 µs.
        assert_eq!(sim.kernel().now(), Instant::from_micros(90));
        // The part is in its write cycle: it NACKs, exactly as a blocking driver would see.
        let mut byte = [0u8];
        let busy = i2c.write_read(eeprom::DEFAULT_ADDRESS, &[0x00, 0x10], &mut byte);
        assert!(matches!(
            busy,
            Err(BlockingError::Inner(
                embedded_hal::i2c::ErrorKind::NoAcknowledge(_)
            ))
        ));
        sim.delay().delay_ms(5);
        i2c.write_read(eeprom::DEFAULT_ADDRESS, &[0x00, 0x10], &mut byte)
            .expect("read after the write cycle");
        assert_eq!(byte, [0xAB]);
        assert_eq!(part.borrow().contents()[0x10], 0xAB);
    }

    #[test]
    fn other_tasks_run_while_a_blocking_call_waits() {
        let mut k = Kernel::new(1);
        let ticks = Rc::new(std::cell::Cell::new(0u32));
        let (t, clock) = (ticks.clone(), k.clock());
        k.spawn(TaskSpec::world("ticker"), async move {
            loop {
                clock.sleep(Duration::from_millis(1)).await;
                t.set(t.get() + 1);
            }
        })
        .detach();
        let sim = BlockingKernel::new(k);
        sim.delay().delay_ms(10);
        assert_eq!(sim.kernel().now(), Instant::from_millis(10));
        assert_eq!(ticks.get(), 10);
    }

    #[test]
    fn a_uart_read_waits_for_the_bytes_and_a_hopeless_one_says_stalled() {
        let mut k = Kernel::new(1);
        let (_link, a, b) = uart::link(&k, "serial", UartConfig::new_8n1(115_200)).expect("link");
        let clock = k.clock();
        k.spawn(TaskSpec::world("peer"), async move {
            let mut b = b;
            clock.sleep(Duration::from_millis(3)).await;
            let Ok(()) = embedded_io_async::Write::write_all(&mut b, b"pong").await;
        })
        .detach();
        let sim = BlockingKernel::new(k);
        let mut port = sim.wrap(a);
        port.write_all(b"ping").expect("write");
        let mut buf = [0u8; 16];
        let n = port.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"pong");
        // Four bytes at 86.8 µs after the 3 ms.
        assert_eq!(sim.kernel().now(), Instant::from_micros(3_347));
        assert_eq!(port.read(&mut buf), Err(BlockingError::Stalled));
        assert_eq!(
            embedded_io::Error::kind(&BlockingError::<std::convert::Infallible>::Stalled),
            embedded_io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn a_blocking_call_from_inside_a_kernel_task_is_refused() {
        let k = Kernel::new(1);
        let sim = BlockingKernel::new(k);
        let inner = sim.clone();
        let clock = sim.clock();
        let result = Rc::new(RefCell::new(None));
        let r = result.clone();
        sim.kernel()
            .spawn(TaskSpec::world("nested"), async move {
                *r.borrow_mut() = Some(inner.block_on(clock.sleep(Duration::from_millis(1))));
            })
            .detach();
        // The task runs inside `block_on`'s own kernel step, where the kernel is borrowed.
        sim.delay().delay_ms(1);
        assert_eq!(*result.borrow(), Some(Err(BlockingError::Reentrant)));
    }
}
