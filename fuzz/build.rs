//! Compiles c-tests/sample_device.c, the C device the `c_server` target
//! serves through vfio-io's C API, with the `cc` crate (already in the build
//! graph as libfuzzer-sys's own build dependency). The static library is
//! linked into every target of this crate; only `c_server` uses it.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("..");
    let device = root.join("c-tests/sample_device.c");
    for f in [
        &device,
        &root.join("c-tests/sample_device.h"),
        &root.join("include/vfio-io.h"),
    ] {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    cc::Build::new()
        .file(&device)
        .include(root.join("include"))
        .std("c11")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("sample_device");
}
