//! Garbage collection of container groups whose pool no longer exists at all (no live pool with
//! the group's uid, nor with its namespace/name: the pool planner handles groups of an older pool
//! with the same name). Run once per listed resource group, not once per pool, so each orphan is
//! deleted by exactly one caller.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::types::{Action, EdgeError, EventType, ObservedGroup, PlannedEvent, RemovalReason};
use super::{after, elapsed};

/// Inputs of [`plan_orphan_groups`].
#[derive(Clone, Debug)]
pub struct OrphanInput<'a> {
    /// The tagged group list of one resource group, or the error.
    pub groups: Result<&'a [ObservedGroup], EdgeError>,
    /// Uids of ALL RunnerPools that exist.
    pub live_pool_uids: &'a BTreeSet<String>,
    /// `(namespace, name)` of all RunnerPools that exist.
    pub live_pools: &'a BTreeSet<(String, String)>,
    /// Names of runners any GitHub list shows busy (never touched).
    pub busy_runners: &'a BTreeSet<String>,
    /// Marks carried from the previous pass: group name → first seen as orphan.
    pub marks: &'a BTreeMap<String, DateTime<Utc>>,
    pub grace: Duration,
    pub now: DateTime<Utc>,
}

/// Output of [`plan_orphan_groups`].
#[derive(Clone, Debug, PartialEq)]
pub struct OrphanPlan {
    /// Only `DeleteGroup { reason: Orphaned }`.
    pub actions: Vec<Action>,
    /// Marks to carry into the next pass.
    pub marks: BTreeMap<String, DateTime<Utc>>,
    pub events: Vec<PlannedEvent>,
    /// When the next mark becomes due, if any.
    pub requeue_after: Option<Duration>,
}

/// Mark-then-confirm deletion of groups of pools that no longer exist. A failed list deletes
/// nothing and keeps the marks.
pub fn plan_orphan_groups(input: &OrphanInput<'_>) -> OrphanPlan {
    let Ok(groups) = &input.groups else {
        return OrphanPlan {
            actions: Vec::new(),
            marks: input.marks.clone(),
            events: Vec::new(),
            requeue_after: None,
        };
    };
    let mut actions = Vec::new();
    let mut marks = BTreeMap::new();
    let mut due: Option<DateTime<Utc>> = None;
    for g in groups.iter() {
        let Some(uid) = g.pool_uid.as_deref() else { continue };
        if input.live_pool_uids.contains(uid) {
            continue;
        }
        if let (Some(ns), Some(name)) = (&g.pool_namespace, &g.pool_name)
            && input.live_pools.contains(&(ns.clone(), name.clone()))
        {
            continue;
        }
        if input.busy_runners.contains(&g.name) {
            continue;
        }
        let first = input.marks.get(&g.name).copied().unwrap_or(input.now);
        marks.insert(g.name.clone(), first);
        let when = after(first, input.grace);
        if when <= input.now {
            actions.push(Action::DeleteGroup {
                name: g.name.clone(),
                reason: RemovalReason::Orphaned,
                only_if_unregistered: None,
            });
        } else {
            due = Some(due.map_or(when, |d| d.min(when)));
        }
    }
    let mut events = Vec::new();
    if !actions.is_empty() {
        let names: Vec<&str> = actions.iter().map(|a| a.name()).collect();
        events.push(PlannedEvent {
            type_: EventType::Normal,
            reason: "GarbageCollected".into(),
            message: format!("deleting {} orphaned container group(s): {}", names.len(), names.join(", ")),
        });
    }
    OrphanPlan { actions, marks, events, requeue_after: due.map(|d| elapsed(input.now, d)) }
}
