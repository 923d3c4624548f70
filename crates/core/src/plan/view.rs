//! What one pass sees of its pool: each runner (a group, a registration, or both under one
//! name) with the [`Phase`] that decides what happens to it, and the pool's leftovers
//! ([docs/planner.md, "Observation"](../../../../docs/planner.md#observation)).
use std::collections::{BTreeMap, BTreeSet};

use super::types::{FailureReason, ObservedGroup, ObservedRunner, RemovalReason};

/// Where a runner of this pool stands.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
    /// Registration busy: never touched (except after drainTimeout on deletion).
    Busy,
    Idle,
    /// Group exists, registration not online yet.
    Provisioning,
    /// Created by the planner, not in the group list yet.
    InFlight,
    /// Group is being deleted.
    Terminating,
    /// Runner container exited.
    Finished {
        exit_code: Option<i32>,
        crashed: bool,
    },
    /// Group failed.
    Failed {
        reason: FailureReason,
        message: String,
    },
    /// Not online within registrationTimeout.
    TimedOut,
    /// Offline registration without a group (GC candidate).
    OfflineNoGroup,
    /// Its removal was asked for more than `removal_ttl` ago and the lists still show it.
    Removing {
        reason: RemovalReason,
    },
}

/// One runner of this pool: a group, a registration, or both (same name).
#[derive(Clone, Debug)]
pub(super) struct Unit<'a> {
    pub name: String,
    pub group: Option<&'a ObservedGroup>,
    pub runner: Option<&'a ObservedRunner>,
    pub phase: Phase,
}

/// What the lists show about this pool.
pub(super) struct View<'a> {
    pub units: Vec<Unit<'a>>,
    /// Groups tagged with this pool's namespace/name but a uid that no longer exists.
    pub stale_groups: Vec<(&'a ObservedGroup, Option<&'a ObservedRunner>)>,
    pub runners_by_id: BTreeMap<u64, &'a ObservedRunner>,
    /// Every group and runner name in the lists (names are never reused).
    pub all_names: BTreeSet<String>,
}

impl View<'_> {
    /// Units whose phase satisfies `p`.
    pub fn count(&self, p: impl Fn(&Phase) -> bool) -> i32 {
        let n = self.units.iter().filter(|u| p(&u.phase)).count();
        i32::try_from(n).unwrap_or(i32::MAX)
    }
}
