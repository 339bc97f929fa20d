//! The README's main command, run as the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn hale_demo_survives_its_faults_and_exits_zero() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_hale"))
        .args(["demo", "--faults", "60", "--gap-ms", "2", "--seed", "42"])
        .output()
        .expect("run hale demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hale demo failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        "60 faults, every one recovered",
        "weather PARKED",
        "weather-backup: same actor, answering",
        "weather: back after the probe",
        "hale/tools     GAVE UP",
        "new hale/tools supervisor up, exec answering",
        "actors not answering:     0",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_hale"))
        .arg("no-such-command")
        .output()
        .expect("run hale");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-command"));
}
