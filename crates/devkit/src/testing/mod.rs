//! Test support shared by the integration tests, the demo and the benchmarks: the upstream API
//! descriptions in `../shared/specs/`, the local Kubernetes control plane and the e2e world.
use std::path::{Path, PathBuf};

pub mod control_plane;
pub mod harness;
pub mod specs;
pub mod tools;
pub mod world;

/// Install `subscriber` as this thread's default and return its guard, so that a test can
/// capture what the code under test logs while other tests of its binary run on other threads.
///
/// A bare `Registry` is made the process's global default first (once; a global default set
/// elsewhere is kept). tracing caches each callsite's interest process-wide on its first use;
/// while a single dispatcher exists, that interest comes from the default of the thread that
/// first reaches the callsite, so a sibling test without a subscriber would cache "never" and
/// the capture would miss the event. With the global dispatcher as well, interest is the union
/// over all dispatchers, whichever thread registers the callsite.
pub fn capture_logs<S>(subscriber: S) -> tracing::subscriber::DefaultGuard
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    tracing::subscriber::set_default(subscriber)
}

/// The repository's root (the workspace this crate is built in: `crates/devkit/../..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// The production binary `aci-runner-controller`: `$ACI_RC_BIN`, else the one built beside the
/// running executable (a workspace build puts every binary of a profile in one folder).
pub fn controller_bin() -> PathBuf {
    sibling_bin("ACI_RC_BIN", "aci-runner-controller")
}

/// The development binary `aci-runner-devkit` (`sim`, `bench`): `$ACI_RC_DEVKIT_BIN`, else the one
/// built beside the running executable.
pub fn devkit_bin() -> PathBuf {
    sibling_bin("ACI_RC_DEVKIT_BIN", "aci-runner-devkit")
}

/// The subcommand names a clap `--help` lists under `Commands:`, in order.
pub fn subcommands(help: &str) -> Vec<&str> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

fn sibling_bin(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    // Test binaries live in `target/<profile>/deps/`, binaries in `target/<profile>/`.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}
