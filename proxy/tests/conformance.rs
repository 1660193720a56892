//! The byte-level conformance suite (`tests/conformance/*.vtc`): varnishtest
//! scripts the client and the origin servers byte by byte, the real `aegis`
//! binary stands between them. Needs varnishtest (Debian's `varnish`):
//! without it the test fails and names the command that installs it (a test
//! that did not run never counts as passed).

use std::path::Path;
use std::process::Command;

#[test]
fn varnishtest_conformance_suite() {
    let have = Command::new("sh")
        .args(["-c", "command -v varnishtest"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "varnishtest is not installed: run `bash .ci/install-deps` (or `apt-get install varnish`)"
    );
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
