//! Garbage collection per subscription (see `plan::plan_orphan_groups`), mark-then-confirm:
//! - orphans: container groups tagged with a pool that no longer exists;
//! - stranded groups: groups of a live pool of this controller that are in another resource group
//!   (or subscription) than the pool's current spec, left behind when `spec.azure.resourceGroup`
//!   or `subscriptionId` changed. The pool lists only its current resource group, so nothing else
//!   would ever remove them once their runner is done.
//!
//! One pass per subscription in use, so each group has exactly one deleter. Everything is
//! rebuilt from the Azure tags and the pools each pass (restart-safe); only the marks are carried.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use super::ports::PoolContext;
use super::{Context, secrets, spec_hash};
use aci_runner_core::crd::RunnerPool;
use aci_runner_core::plan::{self, EdgeError, EdgeErrorKind, OrphanInput, SweptGroup};

/// Marks carried between passes: subscription (lower-case) → (resource group (lower-case),
/// group name) → first seen.
pub type Marks = BTreeMap<String, BTreeMap<(String, String), DateTime<Utc>>>;

/// The groups of one subscription: from the subscription-wide list when the identity may read at
/// subscription scope, else from the lists of the resource groups the pools use (then stranded
/// groups in other resource groups are not seen). Also returns the index of the context that
/// listed the whole subscription, and the resource groups whose list failed.
async fn list_subscription(
    ctx: &Context,
    contexts: &[&PoolContext],
    sub: &str,
) -> (Result<Vec<SweptGroup>, EdgeError>, Option<usize>, BTreeSet<String>) {
    let mut tried = Vec::new();
    let mut last_error = None;
    for (i, c) in contexts.iter().enumerate() {
        if tried.contains(&&c.azure) {
            continue;
        }
        tried.push(&c.azure);
        match ctx.groups.list_subscription_groups(c).await {
            Ok(groups) => return (Ok(groups), Some(i), BTreeSet::new()),
            Err(e) => last_error = Some(e),
        }
    }
    if let Some(e) = &last_error {
        debug!(subscription = %sub, error = %e.message, "subscription-wide list failed; sweeping only the resource groups in use");
    }
    let mut rgs: BTreeMap<String, &PoolContext> = BTreeMap::new();
    for c in contexts {
        rgs.entry(c.spec.azure.resource_group.to_lowercase()).or_insert(c);
    }
    let (mut out, mut failed, mut error) = (Vec::new(), BTreeSet::new(), None);
    for (rg, c) in rgs {
        match ctx.groups.list_groups(c).await {
            Ok(groups) => {
                out.extend(groups.into_iter().map(|group| SweptGroup { resource_group: rg.clone(), group }))
            }
            Err(e) => {
                failed.insert(rg);
                error = Some(e);
            }
        }
    }
    match error {
        // Nothing listed at all: the planner keeps every mark.
        Some(e) if out.is_empty() => (Err(e), None, failed),
        _ => (Ok(out), None, failed),
    }
}

/// One GC pass over every subscription some pool uses. Returns the number of deletions issued.
///
/// Only subscriptions used by pools of this controller's namespaces are swept (`namespaces`
/// empty = all): their Secrets are the ones this controller may read, and their runner lists
/// tell which runners are busy. Orphans are recognised against every pool in the cluster;
/// stranded groups only for this controller's pools (whose runner lists are read).
pub async fn orphan_pass(ctx: &Context, namespaces: &[String], marks: &mut Marks) -> usize {
    let pools = ctx.all_pools.state();
    let live_uids: BTreeSet<String> = pools.iter().filter_map(|p| p.uid()).collect();
    let live_pools: BTreeSet<(String, String)> =
        pools.iter().map(|p| (p.namespace().unwrap_or_default(), p.name_any())).collect();
    let mine =
        |p: &RunnerPool| namespaces.is_empty() || p.namespace().is_some_and(|ns| namespaces.contains(&ns));
    // This controller's pools (not being deleted) with readable credentials, and where each one
    // is now. A pool whose credentials cannot be read has unknown busy runners: its stranded
    // groups are left alone, and so is every group of its current resource group (doubt → no
    // deletes there).
    let mut contexts: BTreeMap<String, PoolContext> = BTreeMap::new();
    let mut placements: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut by_sub: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut doubt: BTreeSet<(String, String)> = BTreeSet::new();
    for p in &pools {
        if p.metadata.deletion_timestamp.is_some() || !mine(p) {
            continue;
        }
        let Ok(meta) = super::reconcile::pool_meta(p) else { continue };
        let (sub, rg) =
            (p.spec.azure.subscription_id.to_lowercase(), p.spec.azure.resource_group.to_lowercase());
        // A pool refused by the tenant policy lends no credentials to the sweep, and its
        // resource group is left alone (its runners are not listed).
        if ctx.policy.check(&meta.namespace, &p.spec).is_err() {
            doubt.insert((sub, rg));
            continue;
        }
        let src = secrets::KubeSecrets(Api::namespaced(ctx.client.clone(), &meta.namespace));
        let uid = meta.uid.clone();
        match secrets::resolve(&src, &meta, &p.spec, &spec_hash(p)).await {
            Ok(context) => {
                by_sub.entry(sub.clone()).or_default().push(uid.clone());
                placements.insert(uid.clone(), (sub, rg));
                contexts.insert(uid, context);
            }
            Err(_) => {
                doubt.insert((sub, rg));
            }
        }
    }
    marks.retain(|k, _| by_sub.contains_key(k));
    let mut deleted = 0;
    for (sub, uids) in by_sub {
        let sub_contexts: Vec<&PoolContext> = uids.iter().filter_map(|u| contexts.get(u)).collect();
        let (groups, lister, mut kept_rgs) = list_subscription(ctx, &sub_contexts, &sub).await;
        kept_rgs.extend(doubt.iter().filter(|(s, _)| *s == sub).map(|(_, rg)| rg.clone()));
        let groups: Result<Vec<SweptGroup>, EdgeError> = groups.map(|gs| {
            gs.into_iter().filter(|g| !kept_rgs.contains(&g.resource_group.to_lowercase())).collect()
        });
        // Runner lists of the pools of the subscription and of the pools whose stranded groups
        // are here (a pool moved to another subscription): they tell which runners are busy.
        let mut involved: Vec<&PoolContext> = sub_contexts.clone();
        for g in groups.as_deref().unwrap_or_default() {
            let Some(uid) = g.group.pool_uid.as_deref() else { continue };
            if placements.get(uid).is_none_or(|(s, _)| *s == sub) {
                continue;
            }
            if let Some(c) = contexts.get(uid)
                && !involved.iter().any(|i| i.meta.uid == uid)
            {
                involved.push(c);
            }
        }
        let mut busy = BTreeSet::new();
        // Registrations by name, with the context (scope) of the list that shows them, and
        // their labels (the planner leaves a group whose registration is someone else's).
        let mut registrations: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut lists_ok = true;
        for (i, c) in involved.iter().enumerate() {
            match ctx.registrations.list_runners(c).await {
                Ok(rs) => {
                    busy.extend(rs.iter().filter(|r| r.busy).map(|r| r.name.clone()));
                    labels.extend(rs.iter().map(|r| (r.name.clone(), r.labels.clone())));
                    registrations.extend(rs.into_iter().map(|r| (r.name, (i, r.id))));
                }
                Err(_) => lists_ok = false,
            }
        }
        if !lists_ok {
            continue;
        }
        let prev = marks.get(&sub).cloned().unwrap_or_default();
        let out = plan::plan_orphan_groups(&OrphanInput {
            install: &ctx.install,
            subscription: &sub,
            groups: groups.as_deref().map_err(Clone::clone),
            live_pool_uids: &live_uids,
            live_pools: &live_pools,
            placements: &placements,
            busy_runners: &busy,
            registration_labels: &labels,
            marks: &prev,
            grace: ctx.planner.gc_grace,
            now: (ctx.clock)(),
        });
        // Marks of resource groups not swept this pass (list failed, or doubt) are kept.
        let mut next = out.marks;
        next.extend(prev.into_iter().filter(|((rg, _), _)| kept_rgs.contains(rg)));
        marks.insert(sub.clone(), next);
        for d in &out.deletes {
            let name = &d.name;
            // Registration first, then group (as for every other removal). The runner lists may
            // be cached for a while, so "not busy" there does not prove the runner did not just
            // take a job; GitHub refuses to unregister a busy runner, and then the group is kept
            // (the mark stays; retried next pass). This also removes the runner's registration
            // when its scope is one a listed pool shows.
            if let Some((i, id)) = registrations.get(name)
                && let Some(c) = involved.get(*i)
            {
                match ctx.registrations.unregister(c, *id).await {
                    Ok(()) => ctx.metrics.action("unregister_runner", "Orphaned", "ok"),
                    Err(e) if e.kind == EdgeErrorKind::NotFound => {}
                    Err(e) => {
                        ctx.metrics.action("unregister_runner", "Orphaned", "error");
                        info!(group = %name, error = %e.message, "runner of an orphaned or stranded group not unregistered (busy?); keeping its group for now");
                        continue;
                    }
                }
            }
            // Delete with the identity that owns the group: the stranded group's own pool; for
            // an orphan, a pool of its resource group, else the identity that listed it.
            let by_uid = |uid: &str| involved.iter().find(|c| c.meta.uid == uid).copied();
            let by_rg = || {
                sub_contexts
                    .iter()
                    .find(|c| c.spec.azure.resource_group.eq_ignore_ascii_case(&d.resource_group))
            };
            let deleter = match &d.stranded_from {
                Some(uid) => by_uid(uid),
                None => by_rg().copied().or_else(|| lister.and_then(|i| sub_contexts.get(i).copied())),
            };
            let Some(deleter) = deleter else { continue };
            let what = if d.stranded_from.is_some() { "stranded" } else { "orphaned" };
            match ctx.groups.delete_group_in(deleter, &sub, &d.resource_group, name).await {
                Ok(()) => {
                    deleted += 1;
                    ctx.metrics.action("delete_group", "Orphaned", "ok");
                    info!(group = %name, subscription = %sub, resource_group = %d.resource_group, "deleted {what} container group");
                }
                Err(e) => {
                    ctx.metrics.action("delete_group", "Orphaned", "error");
                    warn!(group = %name, resource_group = %d.resource_group, error = %e.message, "deleting {what} container group failed");
                }
            }
        }
    }
    deleted
}
