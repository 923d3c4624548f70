//! The crates are the layers (docs/ARCHITECTURE.md): the core crate has no I/O stack, the
//! production package does not depend on the development tools, and the image builds only the
//! production package.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every package `package` links through normal (non-dev, non-build) dependencies, as
/// `cargo tree -p` resolves them: the features of that package alone, the host platform. Offline:
/// the lock file pins everything and the build running this test has it all at hand.
fn normal_closure(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .args(["--offline", "--locked"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

#[test]
fn the_core_crate_has_no_runtime_http_stack_or_kube_client() {
    let deps = normal_closure("aci-runner-core");
    for banned in
        ["tokio", "kube-runtime", "kube-client", "reqwest", "hyper", "axum", "aci-runner-controller"]
    {
        assert!(!deps.contains(banned), "aci-runner-core depends on {banned}: {deps:?}");
    }
    // It is the planner's crate and the API's: the types come with it.
    assert!(
        deps.contains("kube-core") && deps.contains("k8s-openapi") && deps.contains("chrono"),
        "{deps:?}"
    );
}

#[test]
fn the_production_package_does_not_depend_on_the_development_tools() {
    let deps = normal_closure("aci-runner-controller");
    assert!(deps.contains("aci-runner-core") && deps.contains("kube-runtime"), "{deps:?}");
    for dev in ["aci-runner-devkit", "tempfile"] {
        assert!(!deps.contains(dev), "the production binary links {dev}");
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let build = dockerfile.lines().find(|l| l.contains("cargo build")).unwrap();
    assert!(
        build.contains("-p aci-runner-controller") && build.contains("--bin aci-runner-controller"),
        "{build}"
    );
    assert!(!build.contains("--workspace") && !build.contains("devkit"), "{build}");
}
