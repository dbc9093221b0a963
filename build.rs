//! Build script. With the `cuda` feature it will compile `kernels/*.cu` with
//! nvcc into fatbins embedded in the binary and run bindgen on
//! `kernels/include/*.h` (DESIGN.md §2, issue 6). Until the first kernel
//! lands the feature adds no code, so a default build needs only Rust.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
