//! Gives the cdylib the soname of VDDK 8 and compiles the C shim that calls the
//! caller's `va_list` log callbacks (stable Rust cannot build a `va_list`).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvixDiskLib.so.8");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=../../vddk-sys/include/vixDiskLib.h");
    cc::Build::new()
        .file("src/shim.c")
        .include("../../vddk-sys/include")
        .warnings(true)
        .compile("fake_vddk_shim");
}
