//! The README's demo (`scripts/demo --short`) and a short fault soak (`bench soak`), each run as
//! the user runs them: separate processes, a real local control plane, the simulator.
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The production binary (`run`, `crd`).
const BIN: &str = env!("CARGO_BIN_EXE_aci-runner-controller");

/// The development binary (`sim`, `bench`), linked beside it by `cargo test --workspace` (for the
/// devkit package's own integration tests).
fn devkit() -> std::path::PathBuf {
    let bin = aci_runner_devkit::testing::devkit_bin();
    assert!(
        bin.is_file(),
        "{} not built: run `cargo test --workspace` (scripts/test), or set ACI_RC_DEVKIT_BIN",
        bin.display()
    );
    bin
}

/// PIDs of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let out = Command::new("ps").args(["-eo", "pid=,args="]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}

#[test]
fn short_demo_completes_with_zero_leaks_and_stops_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("demo");
    let out = Command::new("bash")
        .arg(repo().join("scripts/demo"))
        .args(["--short", "--dir", state.to_str().unwrap()])
        .env("ACI_RC_BIN", BIN)
        .env("ACI_RC_DEVKIT_BIN", devkit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(state.join("controller.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ncontroller log:\n{log}"
    );
    // The summary table, with every job done and nothing leaked.
    assert!(stdout.contains("| jobs done"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["jobsTotal"], 12, "{summary}");
    assert_eq!(summary["jobsDone"], 12, "{summary}");
    assert_eq!(summary["jobsFailed"], 0, "{summary}");
    assert_eq!(summary["leakedGroups"], 0, "{summary}");
    assert_eq!(summary["leakedRegistrations"], 0, "{summary}");
    // Ephemeral runners: every job consumed a container group of its own.
    assert!(summary["runnersCreated"].as_u64().unwrap() >= 12, "a runner per job: {summary}");
    assert!(summary["githubCalls"].as_u64().unwrap() > 0 && summary["armCalls"].as_u64().unwrap() > 0);
    // The controller really ran as its own process and logged its work.
    assert!(log.contains("serving POST /webhooks/github"), "{log}");
    // Nothing the demo started is still running.
    let state_str = state.to_str().unwrap();
    let left = processes_mentioning(state_str);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn short_soak_passes_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(devkit())
        .env("ACI_RC_BIN", BIN)
        .args(["bench", "soak", "--seeds", "3", "--parallel", "3", "--out", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("soak.json")).unwrap()).unwrap();
    assert_eq!(report["seeds"], 3, "{report}");
    assert_eq!(report["passed"], 3, "{report}");
    let t = &report["totals"];
    for k in ["leakedGroups", "leakedRegistrations", "busyRunnersKilled", "panics", "unexplainedStalled"] {
        assert_eq!(t[k], 0, "{k}: {report}");
    }
    assert_eq!(t["jobs"], t["jobsCompleted"], "{report}");
    assert!(t["jobs"].as_u64().unwrap() >= 24, "{report}");
    // Each seed injected faults (the schedules are not empty).
    for r in report["results"].as_array().unwrap() {
        assert!(!r["injected"].as_array().unwrap().is_empty(), "seed {} injected nothing", r["seed"]);
    }
    assert!(std::fs::read_to_string(dir.path().join("soak.md")).unwrap().contains("| seeds passed | 3/3 |"));
}

#[test]
fn production_binary_ships_no_development_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let commands = aci_runner_devkit::testing::subcommands(&help);
    assert_eq!(commands, ["crd", "run", "help"], "{help}");
    for dev in ["sim", "bench"] {
        let out = Command::new(BIN).arg(dev).output().unwrap();
        assert!(!out.status.success(), "`aci-runner-controller {dev}` is accepted");
    }
    let out = Command::new(devkit()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("sim") && help.contains("bench"), "{help}");
}
