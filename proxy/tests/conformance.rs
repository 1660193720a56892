//! The byte-level conformance suite (`tests/conformance/*.vtc`): varnishtest
//! scripts the client and the origin servers byte by byte, the real `aegis`
//! binary stands between them. Needs varnishtest (Debian's `varnish`): on a
//! developer machine without it the test says so and passes; under CI
//! (`CI` set) a missing tool fails it.

use std::path::Path;
use std::process::Command;

#[test]
fn varnishtest_conformance_suite() {
    let have = Command::new("sh")
        .args(["-c", "command -v varnishtest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have varnishtest (bash .ci/install-deps)"
        );
        eprintln!("SKIPPED: varnishtest is not installed (apt-get install varnish)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("tests/conformance/run.sh"))
        .arg(env!("CARGO_BIN_EXE_aegis"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "conformance failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
