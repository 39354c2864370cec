//! Device A: the peristaltic pump controller (ESP32 + FluidNC).
