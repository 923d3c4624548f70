//! Locating the upstream API descriptions (other people's files, never copied into this repo).
//!
//! They live in `../shared/specs/` beside the repository; `ACI_RC_SPECS_DIR` overrides the folder.
use std::path::PathBuf;

/// Each file the tests read, with the upstream repository, path and commit it was copied from.
pub const PINNED: &[(&str, &str, &str, &str)] = &[
    (
        "azure/containerInstance-2023-05-01.json",
        "Azure/azure-rest-api-specs",
        "specification/containerinstance/resource-manager/Microsoft.ContainerInstance/stable/2023-05-01/containerInstance.json",
        "179aaf82bcdf856e8c5cd30402584bece3cd0100",
    ),
    (
        "azure/examples/",
        "Azure/azure-rest-api-specs",
        "specification/containerinstance/resource-manager/Microsoft.ContainerInstance/ContainerInstance/stable/2023-05-01/examples/",
        "see shared/specs/README.md (per-file commits)",
    ),
    (
        "github/runners-api.2022-11-28.json",
        "github/rest-api-description",
        "descriptions/api.github.com/api.github.com.2022-11-28.json (extract)",
        "0000036e42b5e7121c2b1ac244cb7bba1d2f3914",
    ),
    (
        "github/webhooks/",
        "octokit/webhooks",
        "payload-schemas/api.github.com/workflow_job, payload-examples/api.github.com/workflow_job",
        "3a58428aa5c399cf5aa12c8663aea1fb1f515254",
    ),
];

/// The specs folder: `$ACI_RC_SPECS_DIR`, else `<repo>/../shared/specs`.
pub fn specs_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ACI_RC_SPECS_DIR") {
        return PathBuf::from(d);
    }
    super::repo_root().join("..").join("shared").join("specs")
}

/// Why a spec file could not be read, naming where to get it.
pub fn missing_message(rel: &str) -> String {
    let mut m = format!(
        "upstream API description {rel:?} not found under {} (set ACI_RC_SPECS_DIR). \
         The tests need these pinned upstream files:\n",
        specs_dir().display()
    );
    for (local, repo, path, commit) in PINNED {
        m.push_str(&format!("  {local}: {repo} {path} @ {commit}\n"));
    }
    m
}

/// Read and parse one JSON spec file (relative to the specs folder).
pub fn load_json(rel: &str) -> Result<serde_json::Value, String> {
    let p = specs_dir().join(rel);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{e}: {}", missing_message(rel)))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", p.display()))
}
