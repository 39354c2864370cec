//! esp-hal puts `linkall.x` and the chip's memory and ROM scripts on the linker's search path.
fn main() {
    println!("cargo:rustc-link-arg=-Tlinkall.x");
}
