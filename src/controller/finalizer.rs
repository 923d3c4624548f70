//! The finalizer that holds a pool until its runners are drained and removed.
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use aci_runner_core::crd::RunnerPool;

/// Finalizer that holds a pool until its runners are drained and removed.
pub const FINALIZER: &str = "aci-runners.dev/cleanup";

/// Does the pool carry our finalizer?
pub fn has_finalizer(pool: &RunnerPool) -> bool {
    pool.finalizers().iter().any(|f| f == FINALIZER)
}

pub async fn ensure_finalizer(api: &Api<RunnerPool>, pool: &RunnerPool) -> Result<(), kube::Error> {
    if has_finalizer(pool) {
        return Ok(());
    }
    let mut f = pool.finalizers().to_vec();
    f.push(FINALIZER.to_string());
    set_finalizers(api, pool, f).await
}

/// Remove our finalizer. `pool` must be the object as of this pass's own last write: the patch is
/// conditional on its resourceVersion.
pub async fn remove_finalizer(api: &Api<RunnerPool>, pool: &RunnerPool) -> Result<(), kube::Error> {
    if !has_finalizer(pool) {
        return Ok(());
    }
    let f = pool.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, pool, f).await
}

async fn set_finalizers(
    api: &Api<RunnerPool>,
    pool: &RunnerPool,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    // A merge patch with the resourceVersion as precondition: a concurrent change to the list
    // makes the patch fail (409) and the pass retries, instead of dropping someone's finalizer.
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": pool.resource_version()}
    });
    match api.patch(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
