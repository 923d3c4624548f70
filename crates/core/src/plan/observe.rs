//! From the two lists to this pool's [`View`]: which groups and registrations are the pool's,
//! the [`Phase`] of each runner, in-flight creates, and the carried per-runner state (idle and
//! offline times, runners seen online, used names)
//! ([docs/planner.md, "Observation"](../../../../docs/planner.md#observation)).
use std::collections::{BTreeMap, BTreeSet};

use super::install::{self, GroupClaim, RunnerClaim};
use super::view::{Phase, Unit, View};
use super::{Pass, after, demand, list_names, names};
use crate::plan::failures::failure_reason_of;
use crate::plan::types::*;

/// Failure messages of ACI waiting reasons that mean the image cannot be pulled.
const IMAGE_PULL_REASONS: [&str; 5] =
    ["errimagepull", "imagepullbackoff", "inaccessibleimage", "invalidimagename", "failed to pull image"];

fn is_image_pull_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    IMAGE_PULL_REASONS.iter().any(|p| r.contains(p))
}

fn group_failure(g: &ObservedGroup) -> Option<(FailureReason, String)> {
    if let Some(e) = &g.failure {
        return Some((failure_reason_of(&e.kind), format!("container group {}: {}", g.name, e.message)));
    }
    if let Some(ObservedContainer { state: ContainerState::Waiting { reason: Some(r) }, .. }) = &g.container
        && is_image_pull_reason(r)
    {
        return Some((
            FailureReason::InvalidImage,
            format!("container group {}: image pull failed ({r})", g.name),
        ));
    }
    if g.provisioning == GroupProvisioning::Failed {
        return Some((
            FailureReason::ProvisioningFailed,
            format!("container group {} failed to provision", g.name),
        ));
    }
    None
}

/// The lists split by owner.
struct Ownership<'a> {
    /// Groups tagged with this pool's uid, by name.
    own_groups: BTreeMap<&'a str, &'a ObservedGroup>,
    /// Groups of an older pool with the same namespace/name whose uid no longer exists.
    stale: Vec<&'a ObservedGroup>,
    runners_by_name: BTreeMap<&'a str, &'a ObservedRunner>,
    /// Ids of the registrations that are this pool's runners.
    own_runner_ids: BTreeSet<u64>,
}

impl<'a> Pass<'_, 'a> {
    pub(super) fn prune_names(&mut self) {
        let now = self.now;
        let keep = self.input.config.name_retention;
        self.st.used_names.retain(|_, seen| after(*seen, keep) > now);
        self.st.location_cooldown.retain(|_, until| *until > now);
        if self.st.spot_unavailable_until.is_some_and(|u| u <= now) {
            self.st.spot_unavailable_until = None;
        }
    }

    pub(super) fn observe(&mut self, groups: &'a [ObservedGroup], runners: &'a [ObservedRunner]) -> View<'a> {
        let all_names: BTreeSet<String> =
            groups.iter().map(|g| g.name.clone()).chain(runners.iter().map(|r| r.name.clone())).collect();
        let runners_by_id: BTreeMap<u64, &ObservedRunner> = runners.iter().map(|r| (r.id, r)).collect();
        // A removal is complete once neither list shows the name.
        self.st.removing.retain(|n, _| all_names.contains(n));
        let own = self.ownership(groups, runners);
        let mut units = Vec::new();
        for (name, g) in &own.own_groups {
            let r = own.runners_by_name.get(name).copied().filter(|r| own.own_runner_ids.contains(&r.id));
            let phase = self.classify_group(g, r);
            units.push(Unit { name: name.to_string(), group: Some(g), runner: r, phase });
        }
        for r in runners.iter().filter(|r| own.own_runner_ids.contains(&r.id)) {
            if !own.own_groups.contains_key(r.name.as_str()) {
                let phase = self.classify_runner(r);
                units.push(Unit { name: r.name.clone(), group: None, runner: Some(r), phase });
            }
        }
        self.track_in_flight(groups, &mut units);
        units.sort_by(|a, b| a.name.cmp(&b.name));
        // A stale group's registration is the one of its name. Should that one carry the owner
        // label of anyone but the group's pool of this install, the group is left alone: its
        // delete could not be guarded by an unregister of ours.
        let me = self.input.install;
        let stale_groups = own
            .stale
            .into_iter()
            .filter_map(|g| {
                let r = own.runners_by_name.get(g.name.as_str()).copied();
                match r {
                    Some(r) if !install::registration_fits_group(me, g, &r.labels) => None,
                    _ => Some((g, r)),
                }
            })
            .collect();
        let view = View { units, stale_groups, runners_by_id, all_names };
        self.track(&view);
        view
    }

    /// Which groups and registrations are this pool's (see docs/planner.md, "Inputs", and
    /// [`install`] for the install rules).
    fn ownership(&self, groups: &'a [ObservedGroup], runners: &'a [ObservedRunner]) -> Ownership<'a> {
        let (pool, me) = (self.input.pool, self.input.install);
        let is_own_group = |g: &ObservedGroup| install::is_pool_group(me, &pool.uid, g);
        let runners_by_name: BTreeMap<&str, &ObservedRunner> =
            runners.iter().map(|r| (r.name.as_str(), r)).collect();
        let own_groups: BTreeMap<&str, &ObservedGroup> =
            groups.iter().filter(|g| is_own_group(g)).map(|g| (g.name.as_str(), g)).collect();
        // An older pool's groups are collected only when this install's tag is on them: a group
        // without install id is adopted only while its pool uid is live, which an older pool's
        // is not.
        let stale: Vec<&ObservedGroup> = groups
            .iter()
            .filter(|g| match g.pool_uid.as_deref() {
                Some(uid) => {
                    uid != pool.uid
                        && !self.input.live_pool_uids.contains(uid)
                        && install::claim_group(me, self.input.live_pool_uids, g) == GroupClaim::Ours
                        && g.pool_namespace.as_deref() == Some(pool.namespace.as_str())
                        && g.pool_name.as_deref() == Some(pool.name.as_str())
                }
                None => false,
            })
            .collect();
        let stale_names: BTreeSet<&str> = stale.iter().map(|g| g.name.as_str()).collect();
        let other_group_names: BTreeSet<&str> =
            groups.iter().filter(|g| !is_own_group(g)).map(|g| g.name.as_str()).collect();
        // A registration is ours by our owner label, or (made before owner labels) by the name
        // of one of our own groups or in-flight creates; never by its name's shape alone.
        let is_own_runner = |r: &ObservedRunner| {
            if self.st.pending_unregister.contains_key(&r.id) || stale_names.contains(r.name.as_str()) {
                return false;
            }
            let by_name = own_groups.contains_key(r.name.as_str()) || self.st.in_flight.contains_key(&r.name);
            match install::runner_claim(&self.owner_label, &r.labels) {
                RunnerClaim::Other => false,
                RunnerClaim::Unlabelled => by_name,
                RunnerClaim::Labelled => {
                    by_name
                        || (names::is_pool_runner_name(&self.prefix, &r.name)
                            && !other_group_names.contains(r.name.as_str())
                            && demand::runner_has_pool_labels(self.input.spec, &r.labels))
                }
            }
        };
        let own_runner_ids = runners.iter().filter(|r| is_own_runner(r)).map(|r| r.id).collect();
        Ownership { own_groups, stale, runners_by_name, own_runner_ids }
    }

    /// Phase of a registration without a group.
    fn classify_runner(&mut self, r: &ObservedRunner) -> Phase {
        if r.busy {
            Phase::Busy
        } else if self.removal_pending(&r.name) {
            Phase::Terminating
        } else if let Some(rm) = self.st.removing.get(&r.name) {
            Phase::Removing { reason: rm.reason }
        } else if self.st.in_flight.contains_key(&r.name) {
            Phase::InFlight
        } else if r.online {
            Phase::Idle
        } else {
            Phase::OfflineNoGroup
        }
    }

    /// In-flight creates: drop the ones the list now shows, expire lost ones (one failure per
    /// pass, however many), and add a unit for each one still awaited.
    fn track_in_flight(&mut self, groups: &[ObservedGroup], units: &mut Vec<Unit<'a>>) {
        let now = self.now;
        let listed: BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let in_flight = std::mem::take(&mut self.st.in_flight);
        let mut lost = Vec::new();
        for (name, f) in in_flight {
            if listed.contains(name.as_str()) {
                // ARM accepted the create: quota is available again, but only a create sent
                // after the quota refusal proves it (one sent in the same pass as the refused
                // create was accepted before the quota filled up).
                if self.st.quota.as_ref().is_none_or(|q| f.since > q.since) {
                    self.st.quota = None;
                }
                continue;
            }
            let expires = after(f.since, self.input.config.in_flight_ttl);
            if expires <= now {
                self.st.used_names.insert(name.clone(), now);
                lost.push(name);
                continue;
            }
            self.wake.push(expires);
            if !units.iter().any(|u| u.name == name) {
                units.push(Unit { name: name.clone(), group: None, runner: None, phase: Phase::InFlight });
            }
            self.st.in_flight.insert(name, f);
        }
        if !lost.is_empty() && self.input.pool.deletion_timestamp.is_none() {
            self.record_failure(
                FailureReason::Transient,
                format!("container group(s) never appeared after their create: {}", list_names(&lost)),
            );
        }
    }

    fn classify_group(&mut self, g: &ObservedGroup, r: Option<&ObservedRunner>) -> Phase {
        if r.is_some_and(|r| r.busy) {
            return Phase::Busy;
        }
        if g.provisioning == GroupProvisioning::Deleting || self.removal_pending(&g.name) {
            return Phase::Terminating;
        }
        if let Some(r) = self.st.removing.get(&g.name) {
            // Asked before, still listed after removal_ttl: ask again.
            return Phase::Removing { reason: r.reason };
        }
        if let Some((reason, message)) = group_failure(g) {
            return Phase::Failed { reason, message };
        }
        if let Some(c) = &g.container {
            if let ContainerState::Terminated { exit_code } = c.state {
                return Phase::Finished { exit_code, crashed: exit_code != Some(0) || c.restart_count > 0 };
            }
            // A container that restarted before its runner was ever online is a crash. One
            // whose runner was online before is a persistent runner that ACI restarted
            // (restartPolicy Always): it re-registers under the same name and may take a job
            // before the runner list shows the new registration, so its list's "offline" is
            // not trusted. It gets registrationTimeout to come back (below), and once online
            // again it is kept like any idle runner: removing it could hit the newer
            // registration while it runs a job.
            if c.restart_count > 0 && !self.st.seen_online.contains(&g.name) {
                return Phase::Finished { exit_code: None, crashed: true };
            }
        }
        if r.is_some_and(|r| r.online) {
            return Phase::Idle;
        }
        self.registration_deadline(g)
    }

    /// A group whose runner is not online: Provisioning until registrationTimeout after the
    /// container started (or the runner went offline), TimedOut after.
    fn registration_deadline(&mut self, g: &ObservedGroup) -> Phase {
        let reference = if self.st.seen_online.contains(&g.name) {
            *self.st.offline_since.entry(g.name.clone()).or_insert(self.now)
        } else {
            let started = g.container.as_ref().and_then(|c| match c.state {
                ContainerState::Running => c.started_at,
                _ => None,
            });
            match started.or(g.created) {
                Some(t) => t,
                None => *self.st.offline_since.entry(g.name.clone()).or_insert(self.now),
            }
        };
        let deadline = after(reference, self.timings.registration_timeout);
        if deadline <= self.now {
            Phase::TimedOut
        } else {
            self.wake.push(deadline);
            Phase::Provisioning
        }
    }

    /// Update carried per-runner state from the observation.
    fn track(&mut self, view: &View<'a>) {
        let now = self.now;
        let mut came_online = false;
        for u in &view.units {
            if u.runner.is_some_and(|r| r.online || r.busy) && self.st.seen_online.insert(u.name.clone()) {
                came_online = true;
            }
            if u.phase == Phase::Idle {
                self.st.idle_since.entry(u.name.clone()).or_insert(now);
            }
            self.st.used_names.insert(u.name.clone(), now);
        }
        if came_online && self.input.pool.deletion_timestamp.is_none() {
            self.success();
        }
        let names_where = |p: fn(&Unit<'_>) -> bool| -> BTreeSet<&str> {
            view.units.iter().filter(|u| p(u)).map(|u| u.name.as_str()).collect()
        };
        let names = names_where(|_| true);
        let idle = names_where(|u| u.phase == Phase::Idle);
        let waiting = names_where(|u| matches!(u.phase, Phase::Provisioning | Phase::TimedOut));
        let groups = names_where(|u| u.group.is_some());
        self.st.idle_since.retain(|n, _| idle.contains(n.as_str()));
        self.st.offline_since.retain(|n, _| waiting.contains(n.as_str()));
        self.st.seen_online.retain(|n| names.contains(n.as_str()));
        self.st.counted_failures.retain(|n| groups.contains(n.as_str()));
        self.st.pending_unregister.retain(|id, _| view.runners_by_id.contains_key(id));
        self.st.last_known = view
            .units
            .iter()
            .map(|u| u.name.clone())
            .chain(view.stale_groups.iter().map(|(g, _)| g.name.clone()))
            .collect();
    }
}
