//! `vfio-io migrate` as a user runs it: edu moved between two servers the
//! command serves itself, every check on arrival printed and passed, its
//! temporary sockets removed, and bad options refused with the usage.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-io"))
        .args(args)
        .output()
        .expect("run vfio-io")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The line of `out` starting with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

#[test]
fn migrate_moves_edu_and_every_check_on_arrival_holds() {
    // Small chunks: the stream crosses in many reads and writes.
    let o = run(&["migrate", "--factorial", "7", "--chunk", "512"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}\n{out}", text(&o.stderr));
    assert!(
        line(&out, "source: 7! = 5040,").contains("liveness reads 0xedcba987"),
        "{out}"
    );
    let moved = line(&out, "migrated: ");
    let bytes = vfio_io::models::edu::STATE_LEN;
    assert!(
        moved.contains(&format!(
            "{bytes} bytes of state in {} chunks",
            bytes.div_ceil(512)
        )),
        "{moved}"
    );
    assert!(moved.contains("downtime "), "{moved}");
    for (what, value) in [
        ("state", "Running"),
        ("identification", "0x010000ed"),
        ("liveness", "0xedcba987"),
        ("factorial", "5040"),
    ] {
        let want = format!("destination: {what} {value} ok");
        assert_eq!(line(&out, &format!("destination: {what} ")), want);
    }
    // The checksum the source printed is the one that arrived.
    let sent = line(&out, "source: 7!").rsplit("FNV-1a ").next().unwrap();
    let sent = sent.trim_end_matches(')');
    assert_eq!(
        line(&out, "destination: DMA buffer FNV-1a"),
        format!("destination: DMA buffer FNV-1a {sent} ok")
    );
    assert!(!out.contains("FAILED"), "{out}");
    // Logged around the DMA: edu read the first page and wrote the second.
    assert_eq!(
        line(&out, "dirty pages: "),
        "dirty pages: 1 of 2 logged, written by the device: [0x101000]"
    );
    // Its sockets are gone with it.
    let src = line(&out, "source: edu served on ");
    let path = src.trim_start_matches("source: edu served on ");
    assert!(!std::path::Path::new(path).exists(), "{path} left behind");
}

#[test]
fn migrate_help_and_bad_options() {
    let o = run(&["migrate", "--help"]);
    assert!(o.status.success());
    assert!(text(&o.stdout).starts_with("usage: vfio-io migrate"));
    assert!(text(&o.stdout).contains("STOP_COPY"));
    for bad in [
        &["migrate", "--chunk", "0"][..],
        &["migrate", "--factorial", "99"],
        &["migrate", "x"],
    ] {
        let o = run(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        assert!(
            text(&o.stderr).contains("usage: vfio-io migrate"),
            "{bad:?}"
        );
        assert!(o.stdout.is_empty(), "{bad:?}");
    }
}
