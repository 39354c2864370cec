//! Kernel demonstration devices: small, firmware-like workloads that show the kernel's
//! scheduling, buses and fault injection in scenarios (`scenarios/kernel/`).
mod cores;
mod i2c;
mod uart;

pub use cores::CoresSpec;
pub use i2c::I2cDemoSpec;
pub use uart::UartDemoSpec;
