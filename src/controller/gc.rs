//! Orphan garbage collection per resource group: container groups tagged with a pool that no
//! longer exists are deleted after mark-then-confirm (see `plan::plan_orphan_groups`). One pass
//! per (subscription, resource group) in use, so each orphan has exactly one deleter.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{Context, secrets, spec_hash};
use crate::crd::RunnerPool;
use crate::plan::{self, Action, EdgeErrorKind, OrphanInput};

/// Marks carried between passes, per (subscription, resource group).
pub type Marks = BTreeMap<(String, String), BTreeMap<String, DateTime<Utc>>>;

/// One GC pass over every resource group some pool uses. Returns the number of deletions issued.
///
/// Only resource groups used by pools of this controller's namespaces are swept (`namespaces`
/// empty = all): their Secrets are the ones this controller may read, and their runner lists
/// tell which runners are busy. Orphans are recognised against every pool in the cluster.
pub async fn orphan_pass(ctx: &Context, namespaces: &[String], marks: &mut Marks) -> usize {
    let pools = ctx.all_pools.state();
    let live_uids: BTreeSet<String> = pools.iter().filter_map(|p| p.uid()).collect();
    let live_pools: BTreeSet<(String, String)> =
        pools.iter().map(|p| (p.namespace().unwrap_or_default(), p.name_any())).collect();
    let mut by_rg: BTreeMap<(String, String), Vec<&std::sync::Arc<RunnerPool>>> = BTreeMap::new();
    let mine =
        |p: &RunnerPool| namespaces.is_empty() || p.namespace().is_some_and(|ns| namespaces.contains(&ns));
    for p in &pools {
        if p.metadata.deletion_timestamp.is_some() || !mine(p) {
            continue;
        }
        by_rg
            .entry((p.spec.azure.subscription_id.to_lowercase(), p.spec.azure.resource_group.to_lowercase()))
            .or_default()
            .push(p);
    }
    marks.retain(|k, _| by_rg.contains_key(k));
    let mut deleted = 0;
    for (key, rg_pools) in by_rg {
        // Credentials of every pool in the RG: its lists tell which runners are busy.
        let mut contexts = Vec::new();
        for p in &rg_pools {
            let Ok(meta) = super::pool_meta(p) else { continue };
            let src = secrets::KubeSecrets(Api::namespaced(ctx.client.clone(), &meta.namespace));
            if let Ok(c) = secrets::resolve(&src, &meta, &p.spec, &spec_hash(p)).await {
                contexts.push(c);
            }
        }
        let Some(first) = contexts.first() else { continue };
        if contexts.len() != rg_pools.len() {
            // A pool whose credentials cannot be read: its busy runners are unknown. Doubt → no deletes.
            continue;
        }
        let groups = ctx.cloud.list_groups(first).await;
        let mut busy = BTreeSet::new();
        // Registrations by name, with the context (scope) of the list that shows them.
        let mut registrations: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let mut lists_ok = true;
        for (i, c) in contexts.iter().enumerate() {
            match ctx.forge.list_runners(c).await {
                Ok(rs) => {
                    busy.extend(rs.iter().filter(|r| r.busy).map(|r| r.name.clone()));
                    registrations.extend(rs.into_iter().map(|r| (r.name, (i, r.id))));
                }
                Err(_) => lists_ok = false,
            }
        }
        if !lists_ok {
            continue;
        }
        let prev = marks.get(&key).cloned().unwrap_or_default();
        let out = plan::plan_orphan_groups(&OrphanInput {
            groups: groups.as_deref().map_err(Clone::clone),
            live_pool_uids: &live_uids,
            live_pools: &live_pools,
            busy_runners: &busy,
            marks: &prev,
            grace: ctx.planner.gc_grace,
            now: (ctx.clock)(),
        });
        marks.insert(key.clone(), out.marks);
        for a in &out.actions {
            if let Action::DeleteGroup { name, .. } = a {
                // Fix: registration first, then group (as for every other removal). The runner
                // lists may be cached for a while, so "not busy" there does not prove the runner
                // did not just take a job; GitHub refuses to unregister a busy runner, and then
                // the group is kept (the mark stays; retried next pass). This also removes the
                // orphan's registration when its scope is one a live pool of the RG lists.
                if let Some((i, id)) = registrations.get(name)
                    && let Some(c) = contexts.get(*i)
                {
                    match ctx.forge.unregister(c, *id).await {
                        Ok(()) => ctx.metrics.action("unregister_runner", "Orphaned", "ok"),
                        Err(e) if e.kind == EdgeErrorKind::NotFound => {}
                        Err(e) => {
                            ctx.metrics.action("unregister_runner", "Orphaned", "error");
                            info!(group = %name, error = %e.message, "orphaned runner not unregistered (busy?); keeping its group for now");
                            continue;
                        }
                    }
                }
                match ctx.cloud.delete_group(first, name).await {
                    Ok(()) => {
                        deleted += 1;
                        ctx.metrics.action("delete_group", "Orphaned", "ok");
                        info!(group = %name, subscription = %key.0, resource_group = %key.1, "deleted orphaned container group");
                    }
                    Err(e) => {
                        ctx.metrics.action("delete_group", "Orphaned", "error");
                        warn!(group = %name, error = %e.message, "deleting orphaned container group failed");
                    }
                }
            }
        }
    }
    deleted
}
