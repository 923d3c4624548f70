//! The crates are the layers (docs/ARCHITECTURE.md): the core crate has no I/O stack, the
//! production package does not depend on the development tools, and the image builds only the
//! production package.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo metadata` of the workspace (offline: the lock file pins everything).
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Names of every package `root` depends on through normal (non-dev, non-build) edges,
/// transitively, for the host platform and the features the workspace enables.
fn normal_closure(meta: &Value, root: &str) -> BTreeSet<String> {
    let nodes: BTreeMap<&str, &Value> =
        meta["resolve"]["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let start = names.iter().find(|(_, n)| **n == root).map(|(id, _)| *id).unwrap();
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(names[pkg].to_string()) {
                todo.push(pkg);
            }
        }
    }
    seen
}

#[test]
fn the_core_crate_has_no_runtime_http_stack_or_kube_client() {
    let meta = metadata();
    let deps = normal_closure(&meta, "aci-runner-core");
    for banned in
        ["tokio", "kube-runtime", "kube-client", "reqwest", "hyper", "axum", "aci-runner-controller"]
    {
        assert!(!deps.contains(banned), "aci-runner-core depends on {banned}: {deps:?}");
    }
    // It is the planner's crate: the API types come with it.
    assert!(deps.contains("kube-core") && deps.contains("k8s-openapi"), "{deps:?}");
}

#[test]
fn the_production_package_does_not_depend_on_the_development_tools() {
    let meta = metadata();
    let deps = normal_closure(&meta, "aci-runner-controller");
    assert!(deps.contains("aci-runner-core"), "{deps:?}");
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
