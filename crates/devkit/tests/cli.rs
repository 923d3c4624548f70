//! The development binary as a developer meets it. Being an integration test of this package, it
//! also makes `cargo test --workspace` link `aci-runner-devkit` (with the test build's features)
//! beside the test executables, where the root package's demo and soak tests find it.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_aci-runner-devkit");

#[test]
fn help_lists_the_simulator_and_the_benchmarks_and_nothing_of_production() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout);
    let commands = aci_runner_devkit::testing::subcommands(&help);
    assert_eq!(commands, ["sim", "bench", "help"], "{help}");
}

#[test]
fn an_unknown_subcommand_is_refused_with_usage() {
    let out = Command::new(BIN).arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}
