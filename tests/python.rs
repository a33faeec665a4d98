//! Runs the Python client's unittest suite (clients/python) against the binary cargo
//! built, so that `cargo test` proves the protocol document is enough to write a client.

mod common;

use std::process::Command;

use common::{python3, BIN};

#[test]
fn python_client_unittests_pass_against_the_real_server() {
    let Some(python) = python3() else { return };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let output = Command::new(python)
        .args(["-m", "unittest", "-v", "test_courier_client.py"])
        .current_dir(dir)
        .env("COURIER_BIN", BIN)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 -m unittest");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python unittest failed:\n{report}");
    // unittest's own summary: the suite ran and every test in it passed.
    assert!(report.contains("\nOK"), "{report}");
    assert!(!report.contains("Ran 0 tests"), "{report}");
}
