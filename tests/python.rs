//! Runs the Python client's unittest suite (clients/python) against the binary cargo
//! built, so that `cargo test` proves the protocol document is enough to write a client;
//! and checks that `pip install clients/python` installs it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{python3, BIN};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");

#[test]
fn python_client_unittests_pass_against_the_real_server() {
    let Some(python) = python3() else { return };
    let certs = common::certs::make(
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("certs-python-{}", std::process::id())),
    );
    let output = Command::new(python)
        .args(["-m", "unittest", "-v", "test_courier_client.py"])
        .current_dir(DIR)
        .env("COURIER_BIN", BIN)
        .env("COURIER_TEST_CA", &certs.ca)
        .env("COURIER_TEST_CERT", &certs.server_cert)
        .env("COURIER_TEST_KEY", &certs.server_key)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 -m unittest");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python unittest failed:\n{report}");
    // unittest's own summary: the suite ran and every test in it passed.
    assert!(report.contains("\nOK"), "{report}");
    assert!(!report.contains("Ran 0 tests"), "{report}");
    // The TLS tests ran: they are skipped only without the certificates.
    assert!(
        report.contains("TlsTest.test_a_call_over_tls_is_answered) ... ok"),
        "{report}"
    );
}

#[test]
fn pip_installs_the_python_client() {
    let Some(python) = python3() else { return };
    let has = |module: &str| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let scratch =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let target = scratch.join("site");
    let offline = has("pip") && has("setuptools") && has("wheel");
    let install = if offline {
        // The build backend already installed: no download needed.
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-build-isolation",
                "--no-deps",
            ])
            .args(["--no-index", "--target"])
            .arg(&target)
            .arg(DIR)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .output()
            .expect("run pip")
    } else {
        // A venv has pip; pip fetches the build backend (setuptools) itself.
        let venv = Command::new(python)
            .args(["-m", "venv"])
            .arg(scratch.join("venv"))
            .output()
            .expect("run python3 -m venv");
        if !venv.status.success() {
            eprintln!(
                "skipping: python3 has no working venv module here, so pip install cannot be tried"
            );
            return;
        }
        Command::new(scratch.join("venv/bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&target)
            .arg(DIR)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .output()
            .expect("run pip")
    };
    let err = String::from_utf8_lossy(&install.stderr);
    if !install.status.success()
        && !offline
        && err.contains("setuptools")
        && (err.contains("No matching distribution") || err.contains("Could not find a version"))
    {
        eprintln!("skipping: pip cannot fetch setuptools (no package index reachable) and none is installed");
        let _ = std::fs::remove_dir_all(&scratch);
        return;
    }
    assert!(install.status.success(), "pip install failed:\n{err}");
    // Imported from the install, not from the source directory.
    let import = Command::new(python)
        .args(["-c", "import courier_client, sys; print(courier_client.__file__); sys.exit(0 if hasattr(courier_client, 'NotCourier') else 1)"])
        .current_dir(&target)
        .env("PYTHONPATH", &target)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&import.stdout).into_owned();
    let tests_installed = target.join("test_courier_client.py").exists();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(printed.contains("site"), "{printed}");
    assert!(!tests_installed, "the tests were installed too");
}
