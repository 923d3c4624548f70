//! Garbage collection of container groups no pool planner looks after, over one subscription:
//!
//! - orphans: no live pool with the group's uid, nor with its namespace/name (the pool planner
//!   handles groups of an older pool with the same name);
//! - stranded groups: the pool is live, but the group is in another subscription or resource group
//!   than the pool's current spec (left behind by a change of `spec.azure.resourceGroup` or
//!   `subscriptionId`; the pool lists only its current resource group).
//!
//! Only groups of this install are considered ([`super::install::claim_group`]): another
//! install's groups are never touched, and a group without install id only while its pool uid
//! is live here (then it is never an orphan, at most stranded).
//!
//! Run once per listed subscription, not once per pool, so each group has exactly one deleter.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::install::{InstallId, claim_group, registration_fits_group};
use super::reasons::EventReason;
use super::types::{EdgeError, EventType, ObservedGroup, PlannedEvent};
use super::{after, elapsed};

/// A listed container group and the resource group it is in.
#[derive(Clone, Debug, PartialEq)]
pub struct SweptGroup {
    pub resource_group: String,
    pub group: ObservedGroup,
}

/// Inputs of [`plan_orphan_groups`].
#[derive(Clone, Debug)]
pub struct OrphanInput<'a> {
    /// This controller's install.
    pub install: &'a InstallId,
    /// The subscription listed.
    pub subscription: &'a str,
    /// The tagged group list of the subscription (every resource group), or the error.
    pub groups: Result<&'a [SweptGroup], EdgeError>,
    /// Uids of ALL RunnerPools that exist.
    pub live_pool_uids: &'a BTreeSet<String>,
    /// `(namespace, name)` of all RunnerPools that exist.
    pub live_pools: &'a BTreeSet<(String, String)>,
    /// uid → current `(subscription, resource group)` of the live pools whose stranded groups
    /// this pass may delete (their runner lists are in `busy_runners`). Groups of live pools not
    /// in this map are never touched.
    pub placements: &'a BTreeMap<String, (String, String)>,
    /// Names of runners any GitHub list shows busy (never touched).
    pub busy_runners: &'a BTreeSet<String>,
    /// Labels of the registrations the GitHub lists show, by name: a group whose same-named
    /// registration carries another pool's or install's owner label is left alone.
    pub registration_labels: &'a BTreeMap<String, Vec<String>>,
    /// Marks carried from the previous pass: (resource group, lower-case; group name) → first
    /// seen as orphan or stranded.
    pub marks: &'a BTreeMap<(String, String), DateTime<Utc>>,
    pub grace: Duration,
    pub now: DateTime<Utc>,
}

/// One group to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepDelete {
    /// As listed (ARM resource group names are case-insensitive).
    pub resource_group: String,
    pub name: String,
    /// The live pool's uid when the group is stranded; `None` for an orphan.
    pub stranded_from: Option<String>,
}

/// Output of [`plan_orphan_groups`].
#[derive(Clone, Debug, PartialEq)]
pub struct OrphanPlan {
    /// Groups to delete now (unregister their runner first, if registered).
    pub deletes: Vec<SweepDelete>,
    /// Marks to carry into the next pass.
    pub marks: BTreeMap<(String, String), DateTime<Utc>>,
    pub events: Vec<PlannedEvent>,
    /// When the next mark becomes due, if any.
    pub requeue_after: Option<Duration>,
}

/// What the sweep makes of one listed group: `None` = not its business.
fn classify(input: &OrphanInput<'_>, g: &SweptGroup) -> Option<Option<String>> {
    if !claim_group(input.install, input.live_pool_uids, &g.group).is_ours() {
        return None;
    }
    if let Some(labels) = input.registration_labels.get(&g.group.name)
        && !registration_fits_group(input.install, &g.group, labels)
    {
        return None;
    }
    let uid = g.group.pool_uid.as_deref()?;
    if input.live_pool_uids.contains(uid) {
        let (sub, rg) = input.placements.get(uid)?;
        let here = sub.eq_ignore_ascii_case(input.subscription) && rg.eq_ignore_ascii_case(&g.resource_group);
        return (!here).then(|| Some(uid.to_string()));
    }
    if let (Some(ns), Some(name)) = (&g.group.pool_namespace, &g.group.pool_name)
        && input.live_pools.contains(&(ns.clone(), name.clone()))
    {
        return None;
    }
    Some(None)
}

/// Mark-then-confirm deletion of orphaned and stranded groups of one subscription. Busy runners
/// are never touched; a failed list deletes nothing and keeps the marks.
pub fn plan_orphan_groups(input: &OrphanInput<'_>) -> OrphanPlan {
    let Ok(groups) = &input.groups else {
        return OrphanPlan {
            deletes: Vec::new(),
            marks: input.marks.clone(),
            events: Vec::new(),
            requeue_after: None,
        };
    };
    let mut deletes = Vec::new();
    let mut marks = BTreeMap::new();
    let mut due: Option<DateTime<Utc>> = None;
    for g in groups.iter() {
        let Some(stranded_from) = classify(input, g) else { continue };
        if input.busy_runners.contains(&g.group.name) {
            continue;
        }
        let key = (g.resource_group.to_ascii_lowercase(), g.group.name.clone());
        let first = input.marks.get(&key).copied().unwrap_or(input.now);
        marks.insert(key, first);
        let when = after(first, input.grace);
        if when <= input.now {
            deletes.push(SweepDelete {
                resource_group: g.resource_group.clone(),
                name: g.group.name.clone(),
                stranded_from,
            });
        } else {
            due = Some(due.map_or(when, |d| d.min(when)));
        }
    }
    let mut events = Vec::new();
    let (stranded, orphaned): (Vec<&SweepDelete>, Vec<&SweepDelete>) =
        deletes.iter().partition(|d| d.stranded_from.is_some());
    for (what, list) in
        [("orphaned", orphaned), ("stranded (the pool moved to another resource group)", stranded)]
    {
        if list.is_empty() {
            continue;
        }
        let names: Vec<String> = list.iter().map(|d| format!("{}/{}", d.resource_group, d.name)).collect();
        events.push(PlannedEvent {
            type_: EventType::Normal,
            reason: EventReason::GarbageCollected,
            message: format!("deleting {} {what} container group(s): {}", names.len(), names.join(", ")),
        });
    }
    OrphanPlan { deletes, marks, events, requeue_after: due.map(|d| elapsed(input.now, d)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{mins, running, t0};
    use crate::plan::types::EdgeErrorKind;

    const SUB: &str = "sub-1";

    fn swept(rg: &str, name: &str, uid: &str) -> SweptGroup {
        let mut group = running(name);
        group.pool_uid = Some(uid.into());
        SweptGroup { resource_group: rg.into(), group }
    }

    struct Fx {
        install: InstallId,
        live_uids: BTreeSet<String>,
        live_pools: BTreeSet<(String, String)>,
        placements: BTreeMap<String, (String, String)>,
        busy: BTreeSet<String>,
        labels: BTreeMap<String, Vec<String>>,
    }

    impl Fx {
        /// Pool `ns/pool` (uid "uid-live") now in `SUB`/`rg-new`.
        fn new() -> Self {
            Self {
                install: crate::plan::tests::install(),
                live_uids: ["uid-live".to_string()].into(),
                live_pools: [("ns".to_string(), "pool".to_string())].into(),
                placements: [("uid-live".to_string(), (SUB.to_string(), "rg-new".to_string()))].into(),
                busy: BTreeSet::new(),
                labels: BTreeMap::new(),
            }
        }
        fn run(
            &self,
            groups: Result<&[SweptGroup], EdgeError>,
            marks: &BTreeMap<(String, String), DateTime<Utc>>,
            now: DateTime<Utc>,
        ) -> OrphanPlan {
            plan_orphan_groups(&OrphanInput {
                install: &self.install,
                subscription: SUB,
                groups,
                live_pool_uids: &self.live_uids,
                live_pools: &self.live_pools,
                placements: &self.placements,
                busy_runners: &self.busy,
                registration_labels: &self.labels,
                marks,
                grace: Duration::from_secs(120),
                now,
            })
        }
    }

    fn key(rg: &str, name: &str) -> (String, String) {
        (rg.to_string(), name.to_string())
    }

    #[test]
    fn stranded_idle_group_is_deleted_after_the_grace() {
        let fx = Fx::new();
        let groups =
            vec![swept("RG-Old", "pool-aaaaa", "uid-live"), swept("rg-new", "pool-bbbbb", "uid-live")];
        let p1 = fx.run(Ok(&groups), &BTreeMap::new(), t0());
        assert!(p1.deletes.is_empty());
        assert_eq!(p1.marks.keys().cloned().collect::<Vec<_>>(), vec![key("rg-old", "pool-aaaaa")]);
        assert_eq!(p1.requeue_after, Some(Duration::from_secs(120)));
        let p2 = fx.run(Ok(&groups), &p1.marks, t0() + mins(2));
        assert_eq!(
            p2.deletes,
            vec![SweepDelete {
                resource_group: "RG-Old".into(),
                name: "pool-aaaaa".into(),
                stranded_from: Some("uid-live".into()),
            }]
        );
        assert_eq!(p2.events.len(), 1);
        assert!(p2.events[0].message.contains("stranded"), "{:?}", p2.events);
    }

    #[test]
    fn a_group_in_another_subscription_is_stranded_too() {
        let mut fx = Fx::new();
        fx.placements.insert("uid-live".into(), ("sub-2".into(), "rg-new".into()));
        let groups = vec![swept("rg-new", "pool-aaaaa", "uid-live")];
        let p1 = fx.run(Ok(&groups), &BTreeMap::new(), t0());
        let p2 = fx.run(Ok(&groups), &p1.marks, t0() + mins(2));
        assert_eq!(p2.deletes.len(), 1);
    }

    #[test]
    fn stranded_busy_group_is_kept_and_unmarked() {
        let mut fx = Fx::new();
        fx.busy.insert("pool-aaaaa".into());
        let groups = vec![swept("rg-old", "pool-aaaaa", "uid-live")];
        let marks: BTreeMap<_, _> = [(key("rg-old", "pool-aaaaa"), t0() - mins(10))].into();
        let p = fx.run(Ok(&groups), &marks, t0());
        assert!(p.deletes.is_empty());
        assert!(p.marks.is_empty(), "a busy runner starts a fresh grace once idle");
    }

    #[test]
    fn a_failed_list_deletes_nothing_and_keeps_the_marks() {
        let fx = Fx::new();
        let marks: BTreeMap<_, _> = [(key("rg-old", "pool-aaaaa"), t0() - mins(10))].into();
        let p = fx.run(Err(EdgeError::new(EdgeErrorKind::Transient, "x")), &marks, t0());
        assert!(p.deletes.is_empty() && p.events.is_empty());
        assert_eq!(p.marks, marks);
    }

    #[test]
    fn groups_in_the_current_resource_group_are_never_touched() {
        let mut fx = Fx::new();
        // A live pool not in `placements` (another shard's, or being deleted): not ours either.
        fx.live_uids.insert("uid-other".into());
        let groups = vec![
            swept("rg-new", "pool-aaaaa", "uid-live"),
            swept("RG-NEW", "pool-bbbbb", "uid-live"),
            swept("rg-elsewhere", "other-ccccc", "uid-other"),
        ];
        let long_marked: BTreeMap<_, _> = groups
            .iter()
            .map(|g| (key(&g.resource_group.to_ascii_lowercase(), &g.group.name), t0() - mins(60)))
            .collect();
        let p = fx.run(Ok(&groups), &long_marked, t0());
        assert!(p.deletes.is_empty(), "{:?}", p.deletes);
        assert!(p.marks.is_empty());
        assert_eq!(p.requeue_after, None);
    }

    #[test]
    fn other_installs_and_dead_legacy_groups_are_never_swept() {
        let fx = Fx::new();
        // Another install's orphan and stranded-looking groups, and a group without install id
        // whose pool uid is not live here: none is ours.
        let mut theirs = swept("rg-gone", "gone-aaaaa", "uid-dead");
        theirs.group.pool_name = Some("gone".into());
        theirs.group.install_id = Some("other-install".into());
        let mut theirs_live = swept("rg-old", "pool-bbbbb", "uid-live");
        theirs_live.group.install_id = Some("other-install".into());
        let mut legacy_dead = swept("rg-gone", "gone-ccccc", "uid-dead");
        legacy_dead.group.pool_name = Some("gone".into());
        legacy_dead.group.install_id = None;
        // Controls: ours, and a legacy group of a live pool (adopted: stranded).
        let mut ours = swept("rg-gone", "gone-ddddd", "uid-dead");
        ours.group.pool_name = Some("gone".into());
        let mut legacy_live = swept("rg-old", "pool-eeeee", "uid-live");
        legacy_live.group.install_id = None;
        // Ours, but its same-named registration carries another install's owner label: doubt.
        let mut doubtful = swept("rg-gone", "gone-fffff", "uid-dead");
        doubtful.group.pool_name = Some("gone".into());
        let other = InstallId::parse("other-install").unwrap();
        let mut fx = fx;
        fx.labels.insert(
            "gone-fffff".into(),
            vec!["aci".into(), crate::plan::install::owner_label(&other, "uid-x")],
        );
        fx.labels.insert(
            "gone-ddddd".into(),
            vec!["aci".into(), crate::plan::install::owner_label(&fx.install, "uid-dead")],
        );
        let groups = vec![theirs, theirs_live, legacy_dead, ours, legacy_live, doubtful];
        let p1 = fx.run(Ok(&groups), &BTreeMap::new(), t0());
        let p2 = fx.run(Ok(&groups), &p1.marks, t0() + mins(2));
        let names: Vec<&str> = p2.deletes.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["gone-ddddd", "pool-eeeee"]);
        assert_eq!(p2.marks.len(), 2, "{:?}", p2.marks);
    }

    #[test]
    fn orphans_in_any_resource_group_are_collected() {
        let fx = Fx::new();
        let mut dead = swept("rg-gone", "gone-aaaaa", "uid-dead");
        dead.group.pool_name = Some("gone".into());
        // An older pool with the live pool's namespace/name: the pool planner's business.
        let older = swept("rg-new", "pool-ccccc", "uid-older");
        let groups = vec![dead, older];
        let p1 = fx.run(Ok(&groups), &BTreeMap::new(), t0());
        let p2 = fx.run(Ok(&groups), &p1.marks, t0() + mins(2));
        assert_eq!(
            p2.deletes,
            vec![SweepDelete {
                resource_group: "rg-gone".into(),
                name: "gone-aaaaa".into(),
                stranded_from: None
            }]
        );
        assert!(p2.events[0].message.contains("orphaned"));
    }
}
