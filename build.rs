//! Generates include/vfio-io.h from src/ffi with cbindgen, and a pkg-config
//! file for the build tree at target/<profile>/pkgconfig/vfio-io.pc.
//!
//! The cdylib is linked with the soname `libvfio_io.so.<major>` here, not
//! only at install time, so that the library a C program links against in
//! the build tree is the same file scripts/install copies. A program linked
//! against target/<profile>/libvfio_io.so records that soname as NEEDED, so
//! the build tree gets a `libvfio_io.so.<major>` symlink next to it.

use std::path::PathBuf;

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=pkgconfig/vfio-io.pc.in");

    println!("cargo:rerun-if-changed=src/caps/mod.rs");
    let mut config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    config.after_includes = Some(capability_defines(&root));
    let header = root.join("include/vfio-io.h");
    match cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .with_src(root.join("src/ffi/log.rs"))
        .generate()
    {
        // write_to_file leaves the file untouched when nothing changed.
        Ok(b) => {
            b.write_to_file(&header);
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }

    // The ABI major version: 0.x releases may break the ABI at every minor
    // version, but 0.1 keeps `.so.0` as scripts/install names it.
    let soname = format!("libvfio_io.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");

    // OUT_DIR is target/<profile>/build/<pkg>/out: the profile dir is 3 up.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    // The build script runs before the link step, so the symlink dangles
    // until cargo puts libvfio_io.so next to it. It is relative, so a moved
    // target directory keeps working.
    let link = profile_dir.join(&soname);
    if std::fs::read_link(&link).is_err() {
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink("libvfio_io.so", &link);
    }
    let template =
        std::fs::read_to_string(root.join("pkgconfig/vfio-io.pc.in")).expect("pc template");
    let libdir = profile_dir.display().to_string();
    let pc = template
        .replace("@PREFIX@", &libdir)
        .replace("@LIBDIR@", &libdir)
        .replace("@INCLUDEDIR@", &root.join("include").display().to_string())
        .replace("@BINDIR@", &libdir)
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@RPATH@", &format!("-Wl,-rpath,{libdir}"));
    let dir = profile_dir.join("pkgconfig");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("vfio-io.pc"), pc);
}

/// `#define VFIO_IO_CAP_<NAME> (1ULL << n)` for each bit declared in
/// the table in src/caps/mod.rs, with its doc comment, so that table stays the one source.
fn capability_defines(root: &std::path::Path) -> String {
    let src = std::fs::read_to_string(root.join("src/caps/mod.rs")).expect("src/caps/mod.rs");
    let mut out = String::from("\n");
    let mut doc: Vec<String> = Vec::new();
    for line in src.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim().to_string());
            continue;
        }
        // A table row: `NAME = 1 << n on BACKENDS;`.
        let decl = line
            .split_once(" = 1 << ")
            .and_then(|(name, rest)| Some((name, rest.split_once(" on ")?.0)))
            .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        if let Some((name, bit)) = decl {
            let bit = bit.trim();
            for d in &doc {
                out.push_str(&format!("// {d}\n"));
            }
            out.push_str(&format!("#define VFIO_IO_CAP_{name} (1ULL << {bit})\n\n"));
        }
        doc.clear();
    }
    out
}
