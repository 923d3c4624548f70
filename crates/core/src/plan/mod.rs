//! The pure planner: observed state in, actions + status + carried state out.
//!
//! No I/O, no clock reads, no randomness: `now` is an input and new runner names draw their
//! suffixes from an injected source. See `docs/planner.md` for the rules.
pub mod conditions;
pub mod demand;
pub mod names;
mod orphans;
pub mod types;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod world_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{
    Priority, RegistrationMode, RunnerPoolSpec, RunnerPoolStatus, RunnerPoolUsage, parse_duration,
};

pub use orphans::{OrphanInput, OrphanPlan, SweepDelete, SweptGroup, plan_orphan_groups};
pub use types::*;

use conditions::{CondValue, Conditions};

/// Fallbacks when a duration of an (invalid) spec cannot be parsed.
const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(300);
const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Names listed in the "may be left behind" warning.
const MAX_NAMES_IN_MESSAGE: usize = 20;

/// `t + d`, saturating.
pub(crate) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Time from `since` to `now` (zero when `since` is in the future).
pub(crate) fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    now.signed_duration_since(since).to_std().unwrap_or(Duration::ZERO)
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn list_names<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<&String> = names.into_iter().collect();
    let mut out: Vec<String> = names.iter().take(MAX_NAMES_IN_MESSAGE).map(|n| n.to_string()).collect();
    if names.len() > MAX_NAMES_IN_MESSAGE {
        out.push(format!("and {} more", names.len() - MAX_NAMES_IN_MESSAGE));
    }
    out.join(", ")
}

/// Spec durations, with defaults for unparsable values (only possible with an invalid spec).
#[derive(Clone, Copy, Debug)]
struct Timings {
    scale_down_delay: Duration,
    registration_timeout: Duration,
    drain_timeout: Duration,
}

impl Timings {
    fn from_spec(spec: &RunnerPoolSpec) -> Self {
        let s = &spec.scaling;
        Self {
            scale_down_delay: parse_duration(&s.scale_down_delay).unwrap_or(DEFAULT_SCALE_DOWN_DELAY),
            registration_timeout: parse_duration(&s.registration_timeout)
                .unwrap_or(DEFAULT_REGISTRATION_TIMEOUT),
            drain_timeout: parse_duration(&s.drain_timeout).unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        }
    }
}

/// Where a runner of this pool stands.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
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
struct Unit<'a> {
    name: String,
    group: Option<&'a ObservedGroup>,
    runner: Option<&'a ObservedRunner>,
    phase: Phase,
}

/// What the lists show about this pool.
struct View<'a> {
    units: Vec<Unit<'a>>,
    /// Groups tagged with this pool's namespace/name but a uid that no longer exists.
    stale_groups: Vec<(&'a ObservedGroup, Option<&'a ObservedRunner>)>,
    runners_by_id: BTreeMap<u64, &'a ObservedRunner>,
    /// Every group and runner name in the lists (names are never reused).
    all_names: BTreeSet<String>,
}

fn is_image_pull_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["errimagepull", "imagepullbackoff", "inaccessibleimage", "invalidimagename", "failed to pull image"]
        .iter()
        .any(|p| r.contains(p))
}

fn failure_reason_of(kind: &EdgeErrorKind) -> FailureReason {
    match kind {
        EdgeErrorKind::InvalidImage => FailureReason::InvalidImage,
        EdgeErrorKind::InvalidRequest => FailureReason::InvalidRequest,
        EdgeErrorKind::Auth { permission: Some(_) } => FailureReason::MissingPermission,
        EdgeErrorKind::Auth { permission: None } => FailureReason::AuthFailed,
        EdgeErrorKind::QuotaExceeded | EdgeErrorKind::CapacityUnavailable => {
            FailureReason::ProvisioningFailed
        }
        EdgeErrorKind::Throttled { .. }
        | EdgeErrorKind::NotFound
        | EdgeErrorKind::Conflict
        | EdgeErrorKind::Transient => FailureReason::Transient,
    }
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

/// Reason and message of a Stalled condition.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stall {
    reason: String,
    message: String,
}

struct Pass<'i, 'a> {
    input: &'i PlanInput<'a>,
    now: DateTime<Utc>,
    timings: Timings,
    prefix: String,
    st: PoolState,
    actions: Vec<Action>,
    events: Vec<PlannedEvent>,
    /// Instants at which something becomes due (requeue).
    wake: Vec<DateTime<Utc>>,
    /// A create failed in the previous pass (reported now).
    create_failed: bool,
    /// Events for auth failures already emitted this pass.
    auth_event: bool,
    /// The spec's validation errors (`PlanInput::validation`), as the conditions show them.
    spec_error: Option<String>,
    /// A failure was recorded in this pass.
    failed_this_pass: bool,
}

/// Run one planning pass. `suffixes` yields random name suffixes (5 characters of `[a-z0-9]`);
/// the controller passes e.g. `&mut || names::random_suffix(&mut rng)`.
pub fn plan(input: &PlanInput<'_>, suffixes: &mut dyn FnMut() -> String) -> Plan {
    let mut p = Pass {
        input,
        now: input.now,
        timings: Timings::from_spec(input.spec),
        prefix: names::runner_name_prefix(&input.pool.name),
        st: input.state.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        wake: Vec::new(),
        create_failed: false,
        auth_event: false,
        spec_error: input.validation.as_ref().err().map(|e| e.to_string()),
        failed_this_pass: false,
    };
    p.reset_on_generation_change();
    p.prune_names();
    p.ingest_failures();
    let view = match (&input.groups, &input.runners) {
        (Ok(groups), Ok(runners)) => Some(p.observe(groups, runners)),
        _ => None,
    };
    if input.pool.deletion_timestamp.is_some() {
        p.plan_deletion(view.as_ref())
    } else {
        p.plan_alive(view.as_ref(), suffixes)
    }
}

impl<'i, 'a> Pass<'i, 'a> {
    fn event(&mut self, type_: EventType, reason: &str, message: impl Into<String>) {
        self.events.push(PlannedEvent { type_, reason: reason.to_string(), message: message.into() });
    }

    fn has_event(&self, reason: &str) -> bool {
        self.events.iter().any(|e| e.reason == reason)
    }

    /// Was the removal of `name` requested recently (the lists may still show it)?
    fn removal_pending(&mut self, name: &str) -> bool {
        match self.st.removing.get(name) {
            Some(r) => {
                let due = after(r.since, self.input.config.removal_ttl);
                if due > self.now {
                    self.wake.push(due);
                    true
                } else {
                    false
                }
            }
            None => false,
        }
    }

    fn reset_on_generation_change(&mut self) {
        if self.st.generation != self.input.pool.generation {
            let fresh = self.st.generation.is_none() && !self.st.initialized;
            // A spec change is the "change" a Stalled pool waits for: forget failure memory.
            self.st.generation = self.input.pool.generation;
            self.st.failures = 0;
            self.st.backoff_until = None;
            self.st.last_failure = None;
            self.st.quota = None;
            self.st.spot_unavailable_until = None;
            self.st.location_cooldown.clear();
            if fresh {
                self.resume_stall();
            }
        }
    }

    /// Fix: after a controller restart (empty memory), a pool that was Stalled on a repeating
    /// failure or on quota in this very generation stays Stalled. Its failure memory is seeded
    /// from the written Stalled condition, so the next attempt (made at once, so that a fix made
    /// meanwhile is picked up) keeps it Stalled, instead of Stalled flipping to False for
    /// `stall_after` failed attempts and back to True (with a new Warning) on every restart.
    fn resume_stall(&mut self) {
        let Some(prev) = self.input.previous_status else { return };
        let Some(c) = conditions::find(&prev.conditions, conditions::STALLED) else { return };
        if c.status != "True" || c.observed_generation != self.input.pool.generation {
            return;
        }
        let since = DateTime::<Utc>::from_timestamp(c.last_transition_time.0.as_second(), 0)
            .unwrap_or(self.now)
            .min(self.now);
        // The messages were written as "<message> (N time(s) in a row...)" and
        // "<message>; next attempt at ...".
        let message = match (c.message.rfind(" ("), c.message.rfind("; next attempt at ")) {
            (Some(i), _) if c.message[i..].contains("time(s) in a row") => c.message[..i].to_string(),
            (_, Some(i)) => c.message[..i].to_string(),
            _ => c.message.clone(),
        };
        if c.reason == "QuotaExceeded" {
            self.st.quota = Some(QuotaWait { until: self.now, attempts: 1, message, since });
            return;
        }
        // Auth reasons are not resumed: they stall again at the first failure anyway, and the
        // lists of the first pass tell whether the credentials were fixed meanwhile.
        let reason = [
            FailureReason::InvalidImage,
            FailureReason::InvalidRequest,
            FailureReason::RegistrationTimeout,
            FailureReason::ContainerCrashed,
            FailureReason::ProvisioningFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == c.reason);
        let Some(reason) = reason else { return };
        let Some(count) = reason.stall_threshold(self.input.config.stall_after) else { return };
        self.st.failures = count;
        self.st.last_failure = Some(FailureRecord { reason, message, count, at: since });
    }

    fn prune_names(&mut self) {
        let now = self.now;
        let keep = self.input.config.name_retention;
        self.st.used_names.retain(|_, seen| after(*seen, keep) > now);
        self.st.location_cooldown.retain(|_, until| *until > now);
        if self.st.spot_unavailable_until.is_some_and(|u| u <= now) {
            self.st.spot_unavailable_until = None;
        }
    }

    /// Record a provisioning failure: exponential per-pool backoff, same-reason repeat count.
    fn record_failure(&mut self, reason: FailureReason, message: String) {
        let cfg = self.input.config;
        self.failed_this_pass = true;
        self.st.failures = self.st.failures.saturating_add(1);
        let exp = self.st.failures.saturating_sub(1).min(20);
        let backoff = cfg.backoff_base.saturating_mul(1u32 << exp).min(cfg.backoff_max);
        let until = after(self.now, backoff);
        self.st.backoff_until = Some(self.st.backoff_until.map_or(until, |u| u.max(until)));
        let count = match &self.st.last_failure {
            Some(f) if f.reason == reason => f.count.saturating_add(1),
            _ => 1,
        };
        // Transient noise does not hide a repeating permanent failure.
        let keep_previous = reason == FailureReason::Transient
            && self.st.last_failure.as_ref().is_some_and(|f| f.reason != FailureReason::Transient);
        if !keep_previous {
            self.st.last_failure =
                Some(FailureRecord { reason, message: message.clone(), count, at: self.now });
        }
        match reason {
            FailureReason::AuthFailed | FailureReason::MissingPermission => {
                if !self.auth_event {
                    self.auth_event = true;
                    self.event(EventType::Warning, "AuthFailed", message);
                }
            }
            _ => self.event(EventType::Warning, "ProvisioningFailed", message),
        }
    }

    fn success(&mut self) {
        self.st.failures = 0;
        self.st.backoff_until = None;
        self.st.last_failure = None;
    }

    fn ingest_failures(&mut self) {
        let cfg = self.input.config;
        let spec = self.input.spec;
        // Several creates of one pass failing the same way count as one failure.
        let mut counted: Vec<FailureReason> = Vec::new();
        let mut quota_counted = false;
        for f in self.input.failures {
            match &f.action {
                Action::CreateRunner { name, location, priority, .. } => {
                    self.create_failed = true;
                    self.st.in_flight.remove(name);
                    self.st.used_names.insert(name.clone(), self.now);
                    if let Some(id) = f.registered_runner {
                        self.st.pending_unregister.insert(id, name.clone());
                    }
                    let spot_fallback = *priority == Priority::Spot && spec.runner.spot_fallback;
                    match &f.error.kind {
                        EdgeErrorKind::CapacityUnavailable | EdgeErrorKind::QuotaExceeded
                            if spot_fallback =>
                        {
                            self.st.spot_unavailable_until = Some(after(self.now, cfg.spot_cooldown));
                            self.event(
                                EventType::Normal,
                                "SpotFallback",
                                format!(
                                    "Spot unavailable in {location} ({}); creating Regular runners for {}",
                                    f.error.message,
                                    fmt_duration(cfg.spot_cooldown)
                                ),
                            );
                        }
                        EdgeErrorKind::CapacityUnavailable => {
                            self.st
                                .location_cooldown
                                .insert(location.clone(), after(self.now, cfg.location_cooldown));
                            self.event(
                                EventType::Warning,
                                "CapacityUnavailable",
                                format!(
                                    "no capacity in {location} ({}); skipping it for {}",
                                    f.error.message,
                                    fmt_duration(cfg.location_cooldown)
                                ),
                            );
                        }
                        EdgeErrorKind::QuotaExceeded => {
                            if quota_counted {
                                continue;
                            }
                            quota_counted = true;
                            let attempts = self.st.quota.as_ref().map_or(0, |q| q.attempts).saturating_add(1);
                            let exp = attempts.saturating_sub(1).min(20);
                            let wait =
                                cfg.quota_backoff_base.saturating_mul(1u32 << exp).min(cfg.quota_backoff_max);
                            let until = after(self.now, wait);
                            let message = format!("quota exceeded in {location}: {}", f.error.message);
                            if !self.has_event("QuotaExceeded") {
                                self.event(
                                    EventType::Warning,
                                    "QuotaExceeded",
                                    format!("{message}; next attempt in {}", fmt_duration(wait)),
                                );
                            }
                            self.st.quota = Some(QuotaWait { until, attempts, message, since: self.now });
                        }
                        EdgeErrorKind::Throttled { retry_after } => {
                            let until = after(self.now, retry_after.unwrap_or(cfg.backoff_base));
                            self.st.backoff_until =
                                Some(self.st.backoff_until.map_or(until, |u| u.max(until)));
                        }
                        kind => {
                            let reason = failure_reason_of(kind);
                            if counted.contains(&reason) {
                                continue;
                            }
                            counted.push(reason);
                            self.record_failure(
                                reason,
                                format!("creating runner {name}: {}", f.error.message),
                            );
                        }
                    }
                }
                Action::DeleteGroup { name, .. }
                | Action::UnregisterRunner { name, .. }
                | Action::ReleaseGroup { name } => {
                    if f.error.kind == EdgeErrorKind::NotFound {
                        continue;
                    }
                    if f.error.kind == EdgeErrorKind::Conflict {
                        // GitHub refused (the runner took a job): decide again from scratch.
                        self.st.removing.remove(name);
                    } else if let Some(r) = self.st.removing.get_mut(name) {
                        // Not removed: ask again next pass, for the same reason.
                        r.since = DateTime::<Utc>::MIN_UTC;
                    }
                    if let EdgeErrorKind::Auth { .. } = f.error.kind {
                        let reason = failure_reason_of(&f.error.kind);
                        if counted.contains(&reason) {
                            continue;
                        }
                        counted.push(reason);
                        // Fix: removals are retried every pass, not after the back-off, so a
                        // denied removal escalated the back-off once per pass (98 times in a
                        // 40 s denial of `containerGroups/delete`: backoffMax), and the pool
                        // stayed Stalled with no create for 10 minutes after the permission
                        // came back. The same denial escalates once per back-off period now;
                        // in between it keeps the pool Stalled.
                        let backing_off = self.st.backoff_until.is_some_and(|b| b > self.now);
                        let same = self.st.last_failure.as_ref().is_some_and(|l| l.reason == reason);
                        if backing_off && same {
                            self.failed_this_pass = true;
                            continue;
                        }
                        self.record_failure(reason, format!("removing {name}: {}", f.error.message));
                    }
                }
            }
        }
    }

    fn observe(&mut self, groups: &'a [ObservedGroup], runners: &'a [ObservedRunner]) -> View<'a> {
        let pool = self.input.pool;
        let spec = self.input.spec;
        let now = self.now;
        let all_names: BTreeSet<String> =
            groups.iter().map(|g| g.name.clone()).chain(runners.iter().map(|r| r.name.clone())).collect();
        let runners_by_id: BTreeMap<u64, &ObservedRunner> = runners.iter().map(|r| (r.id, r)).collect();
        // A removal is complete once neither list shows the name.
        self.st.removing.retain(|n, _| all_names.contains(n));
        let runners_by_name: BTreeMap<&str, &ObservedRunner> =
            runners.iter().map(|r| (r.name.as_str(), r)).collect();

        let own_groups: BTreeMap<&str, &ObservedGroup> = groups
            .iter()
            .filter(|g| g.pool_uid.as_deref() == Some(pool.uid.as_str()))
            .map(|g| (g.name.as_str(), g))
            .collect();
        let stale: Vec<&ObservedGroup> = groups
            .iter()
            .filter(|g| match g.pool_uid.as_deref() {
                Some(uid) => {
                    uid != pool.uid
                        && !self.input.live_pool_uids.contains(uid)
                        && g.pool_namespace.as_deref() == Some(pool.namespace.as_str())
                        && g.pool_name.as_deref() == Some(pool.name.as_str())
                }
                None => false,
            })
            .collect();
        let stale_names: BTreeSet<&str> = stale.iter().map(|g| g.name.as_str()).collect();
        let other_group_names: BTreeSet<&str> = groups
            .iter()
            .filter(|g| g.pool_uid.as_deref() != Some(pool.uid.as_str()))
            .map(|g| g.name.as_str())
            .collect();

        let is_own_runner = |r: &ObservedRunner| {
            if self.st.pending_unregister.contains_key(&r.id) || stale_names.contains(r.name.as_str()) {
                return false;
            }
            own_groups.contains_key(r.name.as_str())
                || self.st.in_flight.contains_key(&r.name)
                || (names::is_pool_runner_name(&self.prefix, &r.name)
                    && !other_group_names.contains(r.name.as_str())
                    && demand::runner_has_pool_labels(spec, &r.labels))
        };

        let own_runner_ids: BTreeSet<u64> =
            runners.iter().filter(|r| is_own_runner(r)).map(|r| r.id).collect();
        let mut units = Vec::new();
        for (name, g) in &own_groups {
            let r = runners_by_name.get(name).copied().filter(|r| own_runner_ids.contains(&r.id));
            let phase = self.classify_group(g, r);
            units.push(Unit { name: name.to_string(), group: Some(g), runner: r, phase });
        }
        for r in runners.iter().filter(|r| own_runner_ids.contains(&r.id)) {
            if own_groups.contains_key(r.name.as_str()) {
                continue;
            }
            let phase = if r.busy {
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
            };
            units.push(Unit { name: r.name.clone(), group: None, runner: Some(r), phase });
        }
        // In-flight creates: drop the ones the list now shows, expire lost ones.
        let listed: BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let in_flight = std::mem::take(&mut self.st.in_flight);
        let mut lost = Vec::new();
        for (name, f) in in_flight {
            if listed.contains(name.as_str()) {
                // ARM accepted the create: quota is available again. Fix: only a create sent
                // after the quota refusal says so; one sent in the same pass as the refused
                // create (accepted before the quota filled up) cleared the wait too, and the
                // next pass retried at once instead of after `quota_backoff_base`.
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
            // One failure per pass, however many creates were lost.
            self.record_failure(
                FailureReason::Transient,
                format!("container group(s) never appeared after their create: {}", list_names(&lost)),
            );
        }
        units.sort_by(|a, b| a.name.cmp(&b.name));

        let stale_groups =
            stale.into_iter().map(|g| (g, runners_by_name.get(g.name.as_str()).copied())).collect();
        let view = View { units, stale_groups, runners_by_id, all_names };
        self.track(&view);
        view
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
            // Fix: a restarted container that runs again (restartPolicy Always: persistent
            // runners) re-registers its runner — a new registration with the same name — which
            // may take a job before the runner list shows it. Removing it on the list's stale
            // "offline" killed a busy runner (fault soak seed 38: a runner died under a job, its
            // container restarted, the new runner took the next job, and the group was deleted
            // under it). A runner seen online before gets registrationTimeout to come back
            // (below); an online one is removed only once its unregister succeeded.
            //
            // And once such a runner is online again it is kept: restartPolicy Always restarting
            // a persistent runner after it died is ACI healing it, not a crash loop. Removing it
            // (even guarded by unregistering the listed id) could hit a newer registration of the
            // same name that already runs a job (soak seed 38 again, 1 in 100 seeds). A container
            // that restarted before its runner was ever online is still a crash.
            if c.restart_count > 0 && !self.st.seen_online.contains(&g.name) {
                return Phase::Finished { exit_code: None, crashed: true };
            }
        }
        if r.is_some_and(|r| r.online) {
            return Phase::Idle;
        }
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
        let names: BTreeSet<&str> = view.units.iter().map(|u| u.name.as_str()).collect();
        let idle: BTreeSet<&str> =
            view.units.iter().filter(|u| u.phase == Phase::Idle).map(|u| u.name.as_str()).collect();
        let waiting: BTreeSet<&str> = view
            .units
            .iter()
            .filter(|u| matches!(u.phase, Phase::Provisioning | Phase::TimedOut))
            .map(|u| u.name.as_str())
            .collect();
        let groups: BTreeSet<&str> =
            view.units.iter().filter(|u| u.group.is_some()).map(|u| u.name.as_str()).collect();
        self.st.idle_since.retain(|n, _| idle.contains(n.as_str()));
        self.st.offline_since.retain(|n, _| waiting.contains(n.as_str()));
        self.st.seen_online.retain(|n| names.contains(n.as_str()));
        self.st.counted_failures.retain(|n| groups.contains(n.as_str()));
        let present: BTreeSet<u64> = view.runners_by_id.keys().copied().collect();
        self.st.pending_unregister.retain(|id, _| present.contains(id));
        self.st.last_known = view
            .units
            .iter()
            .map(|u| u.name.clone())
            .chain(view.stale_groups.iter().map(|(g, _)| g.name.clone()))
            .collect();
    }

    /// Usage accumulated from group lifetimes (only with a successful group list).
    fn usage(&mut self, view: Option<&View<'a>>) -> Option<RunnerPoolUsage> {
        let previous = self.input.previous_status.and_then(|s| s.usage.clone());
        let Some(view) = view else { return previous };
        let mut usage = previous.unwrap_or_default();
        let prices = self.input.config.prices.as_ref();
        let mut cost = usage.estimated_cost.unwrap_or(0.0);
        let mut accounted = BTreeMap::new();
        for g in view.units.iter().filter_map(|u| u.group) {
            let start = g.created.or_else(|| g.container.as_ref().and_then(|c| c.started_at));
            let Some(start) = start else { continue };
            let end = match &g.container {
                Some(ObservedContainer {
                    state: ContainerState::Terminated { .. },
                    finished_at: Some(f),
                    ..
                }) => (*f).min(self.now),
                _ => self.now,
            };
            let lifetime = elapsed(start, end).as_secs_f64();
            let before = self.st.usage_accounted.get(&g.name).copied();
            let delta = match before {
                Some(b) => (lifetime - b).max(0.0),
                // First sight after a restart: its past was accounted before (baseline only).
                None if !self.st.initialized => 0.0,
                None => lifetime,
            };
            accounted.insert(g.name.clone(), lifetime.max(before.unwrap_or(0.0)));
            let cpu = if g.cpu.is_finite() { g.cpu.max(0.0) } else { 0.0 };
            let mem = if g.memory_gb.is_finite() { g.memory_gb.max(0.0) } else { 0.0 };
            usage.vcpu_seconds += delta * cpu;
            usage.gb_seconds += delta * mem;
            if let Some(p) = prices {
                let (pc, pm) = match g.priority {
                    Priority::Spot => (p.spot_vcpu_second, p.spot_gb_second),
                    Priority::Regular => (p.regular_vcpu_second, p.regular_gb_second),
                };
                cost += delta * (cpu * pc + mem * pm);
            }
        }
        self.st.usage_accounted = accounted;
        self.st.initialized = true;
        if let Some(p) = prices {
            usage.estimated_cost = Some(cost);
            usage.currency = Some(p.currency.clone());
        }
        Some(usage)
    }

    /// Mark-then-confirm: true when `key` was marked at least the grace period ago.
    fn gc_confirmed(&mut self, key: GcKey, marks: &mut BTreeMap<GcKey, DateTime<Utc>>) -> bool {
        let grace = self.input.config.gc_grace;
        let first = self.st.gc_marks.get(&key).copied().unwrap_or(self.now);
        marks.insert(key, first);
        let due = after(first, grace);
        if due <= self.now {
            true
        } else {
            self.wake.push(due);
            false
        }
    }

    /// Unregister (if a registration exists and is not busy) then delete the group (if any).
    fn remove_unit(&mut self, u: &Unit<'_>, reason: RemovalReason, conditional: bool) {
        let mut guard = None;
        if let Some(r) = u.runner {
            if r.busy {
                return;
            }
            self.actions.push(Action::UnregisterRunner { id: r.id, name: r.name.clone(), reason });
            if conditional && r.online {
                guard = Some(r.id);
            }
        }
        if u.group.is_some() {
            self.actions.push(Action::DeleteGroup {
                name: u.name.clone(),
                reason,
                only_if_unregistered: guard,
            });
        }
    }

    fn stall(&self) -> Option<Stall> {
        let input = self.input;
        if let Some(e) = &self.spec_error {
            return Some(Stall { reason: "InvalidSpec".into(), message: e.clone() });
        }
        if let CredentialStatus::Invalid { problem, message } = input.credentials {
            return Some(Stall { reason: problem.reason().into(), message: message.clone() });
        }
        // Lists not attempted because of unusable credentials say nothing about permissions.
        let lists = if matches!(input.credentials, CredentialStatus::Ok) {
            vec![
                ("listing container groups", input.groups.as_ref().err()),
                ("listing GitHub runners", input.runners.as_ref().err()),
            ]
        } else {
            Vec::new()
        };
        for (what, res) in lists {
            if let Some(e @ EdgeError { kind: EdgeErrorKind::Auth { .. }, .. }) = res {
                let reason = failure_reason_of(&e.kind).as_str();
                return Some(Stall { reason: reason.into(), message: format!("{what}: {}", e.message) });
            }
        }
        if let Some(f) = &self.st.last_failure
            && f.reason.stall_threshold(input.config.stall_after).is_some_and(|t| f.count >= t)
        {
            let retry = self
                .st
                .backoff_until
                .map(|t| format!("; next attempt at {}", t.to_rfc3339()))
                .unwrap_or_default();
            return Some(Stall {
                reason: f.reason.as_str().into(),
                message: format!("{} ({} time(s) in a row{retry})", f.message, f.count),
            });
        }
        if let Some(q) = &self.st.quota {
            return Some(Stall {
                reason: "QuotaExceeded".into(),
                message: format!("{}; next attempt at {}", q.message, q.until.to_rfc3339()),
            });
        }
        None
    }

    fn base_status(&self) -> RunnerPoolStatus {
        let prev = self.input.previous_status.cloned().unwrap_or_default();
        RunnerPoolStatus {
            observed_generation: self.input.pool.generation,
            scope: Some(self.input.spec.scope_display()).filter(|s| !s.is_empty()),
            conditions: Vec::new(),
            usage: None,
            ..prev
        }
    }

    fn requeue(&self, converging: bool) -> Duration {
        let cfg = self.input.config;
        let mut d = if converging { cfg.converging_requeue.min(cfg.resync) } else { cfg.resync };
        for w in &self.wake {
            let until = elapsed(self.now, *w);
            if until < d {
                d = until;
            }
        }
        d.max(cfg.min_requeue)
    }

    fn finish(
        &mut self,
        mut status: RunnerPoolStatus,
        wanted: Conditions,
        view: Option<&View<'a>>,
        converging: bool,
        finalizer: FinalizerDecision,
    ) -> Plan {
        let prev_conditions = self.input.previous_status.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
        // Events on transitions.
        let was_stalled = conditions::find(prev_conditions, conditions::STALLED)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone());
        if wanted.stalled.status && was_stalled.as_deref() != Some(wanted.stalled.reason.as_str()) {
            let reason = match wanted.stalled.reason.as_str() {
                "AuthFailed" | "MissingPermission" => "AuthFailed",
                r => r,
            };
            if !self.has_event(reason) {
                self.event(EventType::Warning, reason, wanted.stalled.message.clone());
            }
        }
        if wanted.ready.status && !conditions::is_true(prev_conditions, conditions::READY) {
            self.event(EventType::Normal, "RunnersReady", wanted.ready.message.clone());
        }
        status.conditions = conditions::build(prev_conditions, &wanted, self.input.pool.generation, self.now);
        status.usage = self.usage(view);
        for a in &self.actions {
            let reason = match a {
                Action::UnregisterRunner { reason, .. } | Action::DeleteGroup { reason, .. } => *reason,
                Action::ReleaseGroup { .. } => RemovalReason::PoolDeleted,
                Action::CreateRunner { .. } => continue,
            };
            self.st.removing.insert(a.name().to_string(), Removal { since: self.now, reason });
        }
        // In-flight names keep their "used" mark.
        for name in self.st.in_flight.keys() {
            self.st.used_names.insert(name.clone(), self.now);
        }
        Plan {
            actions: std::mem::take(&mut self.actions),
            status,
            requeue_after: self.requeue(converging),
            state: std::mem::take(&mut self.st),
            events: std::mem::take(&mut self.events),
            finalizer,
        }
    }

    /// Location and priority for the next create, or why none is possible now.
    fn placement(&mut self) -> Result<(String, Priority), Stall> {
        let spec = self.input.spec;
        let mut locations = vec![spec.azure.location.clone()];
        for l in &spec.azure.fallback_locations {
            if !locations.contains(l) {
                locations.push(l.clone());
            }
        }
        let free = locations.iter().find(|l| !self.st.location_cooldown.contains_key(*l));
        let Some(location) = free.cloned() else {
            if let Some(t) = self.st.location_cooldown.values().min() {
                self.wake.push(*t);
            }
            return Err(Stall {
                reason: "CapacityUnavailable".into(),
                message: format!(
                    "no capacity in {}; waiting for a location to cool down",
                    locations.join(", ")
                ),
            });
        };
        let priority = match spec.runner.priority {
            Priority::Spot if spec.runner.spot_fallback && self.st.spot_unavailable_until.is_some() => {
                if let Some(t) = self.st.spot_unavailable_until {
                    self.wake.push(t);
                }
                Priority::Regular
            }
            p => p,
        };
        Ok((location, priority))
    }

    fn registration(&self) -> RunnerRegistration {
        let spec = self.input.spec;
        let runner_group = spec.github.runner_group.clone();
        match spec.runner.registration.mode {
            RegistrationMode::Jit => {
                RunnerRegistration::Jit { labels: demand::jit_labels(spec), runner_group }
            }
            RegistrationMode::Token => RunnerRegistration::Token {
                labels: spec.github.labels.clone(),
                runner_group,
                ephemeral: spec.runner.registration.ephemeral,
            },
        }
    }

    /// Removal of finished, failed, timed-out runners; GC of offline registrations and stale groups.
    fn plan_cleanup(&mut self, view: &View<'a>) -> usize {
        let mut removed = 0;
        let mut recycled = Vec::new();
        let mut collected = Vec::new();
        let mut marks = BTreeMap::new();
        for u in &view.units {
            match &u.phase {
                Phase::Failed { reason, message } => {
                    if self.st.counted_failures.insert(u.name.clone()) {
                        self.record_failure(*reason, message.clone());
                    }
                    self.remove_unit(u, RemovalReason::Failed, false);
                    removed += 1;
                }
                Phase::Finished { exit_code, crashed } => {
                    if *crashed
                        && !self.st.seen_online.contains(&u.name)
                        && self.st.counted_failures.insert(u.name.clone())
                    {
                        let code = exit_code.map_or("unknown".to_string(), |c| c.to_string());
                        self.record_failure(
                            FailureReason::ContainerCrashed,
                            format!("runner container {} exited (code {code}) before coming online", u.name),
                        );
                    }
                    let reason = if *crashed { RemovalReason::Crashed } else { RemovalReason::Recycled };
                    if !*crashed && self.input.spec.runner.registration.ephemeral {
                        // An ephemeral runner that exited 0 ran its job, and GitHub removes
                        // its registration itself; a registration still listed is the list's
                        // staleness. Only the group goes: unregistering would be a wasted call
                        // per lifecycle (bench P2). Should the registration linger, it is an
                        // offline registration without a group and is collected after gcGrace.
                        if u.group.is_some() {
                            self.actions.push(Action::DeleteGroup {
                                name: u.name.clone(),
                                reason,
                                only_if_unregistered: None,
                            });
                        }
                    } else {
                        // A container running again (restarted) may have an online runner
                        // that takes a job at any moment: its group goes only once the
                        // registration is gone.
                        let running = u
                            .group
                            .and_then(|g| g.container.as_ref())
                            .is_some_and(|c| !matches!(c.state, ContainerState::Terminated { .. }));
                        self.remove_unit(u, reason, running);
                    }
                    recycled.push(u.name.clone());
                    removed += 1;
                }
                Phase::TimedOut => {
                    if self.st.counted_failures.insert(u.name.clone()) {
                        let t = fmt_duration(self.timings.registration_timeout);
                        self.record_failure(
                            FailureReason::RegistrationTimeout,
                            format!("runner {} did not come online on GitHub within {t}", u.name),
                        );
                    }
                    self.remove_unit(u, RemovalReason::RegistrationTimeout, false);
                    removed += 1;
                }
                Phase::Terminating => {
                    if let Some(r) = u.runner.filter(|r| !r.busy)
                        && !self.removal_pending(&u.name)
                    {
                        self.actions.push(Action::UnregisterRunner {
                            id: r.id,
                            name: r.name.clone(),
                            reason: RemovalReason::Recycled,
                        });
                    }
                }
                Phase::OfflineNoGroup => {
                    if let Some(r) = u.runner
                        && self.gc_confirmed(GcKey::Runner(r.id), &mut marks)
                    {
                        self.actions.push(Action::UnregisterRunner {
                            id: r.id,
                            name: r.name.clone(),
                            reason: RemovalReason::GarbageCollected,
                        });
                        collected.push(r.name.clone());
                    }
                }
                Phase::Removing { reason } => {
                    self.remove_unit(u, *reason, true);
                    removed += 1;
                }
                Phase::Busy | Phase::Idle | Phase::Provisioning | Phase::InFlight => {}
            }
        }
        for (g, r) in &view.stale_groups {
            if r.is_some_and(|r| r.busy) || self.removal_pending(&g.name) {
                continue;
            }
            if self.gc_confirmed(GcKey::Group(g.name.clone()), &mut marks) {
                let u = Unit { name: g.name.clone(), group: Some(g), runner: *r, phase: Phase::Idle };
                // Guarded (fix): the lists may be cached, and an online runner shown idle may
                // just have taken a job; its group goes only if GitHub let us unregister it.
                self.remove_unit(&u, RemovalReason::Orphaned, true);
                collected.push(g.name.clone());
            }
        }
        self.st.gc_marks = marks;
        let pending: Vec<(u64, String)> =
            self.st.pending_unregister.iter().map(|(i, n)| (*i, n.clone())).collect();
        for (id, name) in pending {
            match view.runners_by_id.get(&id) {
                Some(_) if self.removal_pending(&name) => {}
                Some(r) if !r.busy && !r.online => {
                    self.actions.push(Action::UnregisterRunner {
                        id,
                        name,
                        reason: RemovalReason::CreateFailed,
                    });
                }
                _ => {
                    self.st.pending_unregister.remove(&id);
                }
            }
        }
        if !recycled.is_empty() {
            self.event(
                EventType::Normal,
                "RunnerRecycled",
                format!("removing {} finished runner(s): {}", recycled.len(), list_names(&recycled)),
            );
        }
        if !collected.is_empty() {
            self.event(
                EventType::Normal,
                "GarbageCollected",
                format!("removing {} leftover(s): {}", collected.len(), list_names(&collected)),
            );
        }
        removed
    }

    fn plan_alive(&mut self, view: Option<&View<'a>>, suffixes: &mut dyn FnMut() -> String) -> Plan {
        let input = self.input;
        let spec = input.spec;
        let cfg = input.config;
        let mut status = self.base_status();
        let spec_ok = self.spec_error.is_none();
        let creds_ok = matches!(input.credentials, CredentialStatus::Ok);

        let Some(view) = view.filter(|_| spec_ok && creds_ok) else {
            // Bad input or a failed list: nothing is created or deleted; counts stay as last seen.
            let stall = self.stall();
            let (reason, message) = if let Some(s) = &stall {
                (s.reason.clone(), s.message.clone())
            } else if let CredentialStatus::Unavailable { message } = input.credentials {
                ("CredentialsUnavailable".to_string(), format!("reading Secrets failed: {message}"))
            } else {
                let errs: Vec<String> = [input.groups.as_ref().err(), input.runners.as_ref().err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.message.clone())
                    .collect();
                (
                    "ObservationFailed".to_string(),
                    format!("listing failed, nothing changed: {}", errs.join("; ")),
                )
            };
            let stalled = stall.is_some();
            let wanted = Conditions {
                ready: CondValue::new(false, reason.clone(), message.clone()),
                reconciling: CondValue::new(
                    !stalled,
                    if stalled { "Stalled".to_string() } else { reason.clone() },
                    message.clone(),
                ),
                stalled: CondValue::new(
                    stalled,
                    if stalled { reason } else { "NotStalled".to_string() },
                    if stalled { message } else { String::new() },
                ),
            };
            return self.finish(status, wanted, None, !stalled, FinalizerDecision::Keep);
        };

        let removed = self.plan_cleanup(view);

        let count = |p: fn(&Phase) -> bool| view.units.iter().filter(|u| p(&u.phase)).count() as i32;
        let busy = count(|p| *p == Phase::Busy);
        let idle = count(|p| *p == Phase::Idle);
        let provisioning = count(|p| matches!(p, Phase::Provisioning | Phase::InFlight));
        let failed = count(|p| matches!(p, Phase::Failed { .. }));
        let terminating = count(|p| *p == Phase::Terminating);

        let queued = demand::matching_queued(spec, input.queued_jobs, self.now, cfg.demand_ttl) as i64;
        let s = &spec.scaling;
        let want = busy as i64 + (s.min_idle.max(0) as i64).max(queued);
        let desired = want.clamp(0, s.max_runners.max(0) as i64) as i32;
        let supply = busy + idle + provisioning;
        if idle + busy >= desired && provisioning == 0 {
            // Nothing to create: neither quota nor earlier failures hold the pool back.
            self.st.quota = None;
            if self.st.last_failure.is_some() && !self.failed_this_pass {
                self.success();
            }
        }

        // Scale up.
        let mut wait: Option<Stall> = None;
        let mut created = Vec::new();
        if supply < desired {
            let room = (s.max_runners - supply).max(0);
            let n = (desired - supply).min(room).min(cfg.max_creates_per_pass as i32);
            let gate = if let Some(q) = &self.st.quota
                && q.until > self.now
            {
                self.wake.push(q.until);
                Some(Stall { reason: "QuotaExceeded".into(), message: q.message.clone() })
            } else if let Some(b) = self.st.backoff_until
                && b > self.now
            {
                self.wake.push(b);
                let why = self.st.last_failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
                Some(Stall {
                    reason: "Backoff".into(),
                    message: format!("waiting until {} after failures: {why}", b.to_rfc3339()),
                })
            } else {
                None
            };
            if let Some(g) = gate {
                wait = Some(g);
            } else {
                match self.placement() {
                    Err(e) => wait = Some(e),
                    Ok((location, priority)) => {
                        let registration = self.registration();
                        for _ in 0..n {
                            let taken = |name: &str| {
                                view.all_names.contains(name)
                                    || self.st.in_flight.contains_key(name)
                                    || self.st.used_names.contains_key(name)
                            };
                            let Some(name) = names::fresh_name(&self.prefix, &taken, suffixes) else {
                                self.event(
                                    EventType::Warning,
                                    "NameUnavailable",
                                    "could not draw an unused runner name; retrying next pass",
                                );
                                break;
                            };
                            self.st.in_flight.insert(
                                name.clone(),
                                InFlight { since: self.now, location: location.clone(), priority },
                            );
                            self.st.used_names.insert(name.clone(), self.now);
                            self.actions.push(Action::CreateRunner {
                                name: name.clone(),
                                location: location.clone(),
                                priority,
                                registration: registration.clone(),
                            });
                            created.push(name);
                        }
                    }
                }
            }
        }
        if !created.is_empty() {
            self.event(
                EventType::Normal,
                "ScaledUp",
                format!(
                    "creating {} runner(s) ({}): desired {desired}, busy {busy}, idle {idle}, provisioning {provisioning}",
                    created.len(),
                    list_names(&created)
                ),
            );
        }

        // Scale down: only idle runners idle for longer than scaleDownDelay, oldest first.
        let surplus = (supply - desired).min(idle + busy - desired).max(0) as usize;
        let mut scaled_down = Vec::new();
        if surplus > 0 {
            let delay = self.timings.scale_down_delay;
            let mut candidates: Vec<(DateTime<Utc>, &Unit<'a>)> = Vec::new();
            for u in view.units.iter().filter(|u| u.phase == Phase::Idle) {
                let since = self.st.idle_since.get(&u.name).copied().unwrap_or(self.now);
                let due = after(since, delay);
                if due <= self.now {
                    candidates.push((since, u));
                } else {
                    self.wake.push(due);
                }
            }
            candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
            for (_, u) in candidates.into_iter().take(surplus) {
                self.remove_unit(u, RemovalReason::ScaleDown, true);
                scaled_down.push(u.name.clone());
            }
        }
        if !scaled_down.is_empty() {
            self.event(
                EventType::Normal,
                "ScaledDown",
                format!(
                    "removing {} idle runner(s) ({}): desired {desired}, busy {busy}, idle {idle}",
                    scaled_down.len(),
                    list_names(&scaled_down)
                ),
            );
        }

        status.desired = desired;
        status.busy = busy;
        status.idle = idle;
        status.provisioning = provisioning + created.len() as i32;
        status.failed = failed;
        status.terminating = terminating + removed as i32 + scaled_down.len() as i32;

        let stall = self.stall();
        let summary = format!(
            "{idle} idle, {busy} busy, {} provisioning of {desired} desired",
            provisioning + created.len() as i32
        );
        let failing = failed > 0 || self.create_failed || self.st.backoff_until.is_some_and(|b| b > self.now);
        let reconciling_reason: Option<(String, String)> = if let Some(w) = &wait {
            Some((w.reason.clone(), w.message.clone()))
        } else if !created.is_empty() || supply < desired {
            Some(("ScalingUp".into(), summary.clone()))
        } else if provisioning > 0 {
            Some(("Provisioning".into(), summary.clone()))
        } else if idle + busy > desired {
            Some(("ScalingDown".into(), summary.clone()))
        } else if removed > 0 || terminating > 0 {
            Some(("Recycling".into(), summary.clone()))
        } else if failing {
            let why = self
                .st
                .last_failure
                .as_ref()
                .map_or("recovering from failures".to_string(), |f| f.message.clone());
            Some(("Backoff".into(), why))
        } else {
            None
        };
        let ready = stall.is_none() && idle + busy == desired && !failing;
        let wanted = match &stall {
            Some(st) => Conditions {
                ready: CondValue::new(false, st.reason.clone(), st.message.clone()),
                reconciling: CondValue::new(false, "Stalled", st.message.clone()),
                stalled: CondValue::new(true, st.reason.clone(), st.message.clone()),
            },
            None => {
                let (rr, rm) = reconciling_reason.clone().unwrap_or(("Converged".into(), summary.clone()));
                let ready_cond = if ready {
                    CondValue::new(true, "RunnersReady", summary.clone())
                } else {
                    CondValue::new(false, rr.clone(), rm.clone())
                };
                Conditions {
                    ready: ready_cond,
                    reconciling: CondValue::new(reconciling_reason.is_some(), rr, rm),
                    stalled: CondValue::new(false, "NotStalled", String::new()),
                }
            }
        };
        let converging = !self.actions.is_empty() || provisioning > 0 || reconciling_reason.is_some();
        self.finish(status, wanted, Some(view), converging, FinalizerDecision::Keep)
    }

    fn plan_deletion(&mut self, view: Option<&View<'a>>) -> Plan {
        let input = self.input;
        let cfg = input.config;
        let now = self.now;
        let mut status = self.base_status();
        status.desired = 0;
        let creds_ok = matches!(input.credentials, CredentialStatus::Ok);
        let orphan = input.pool.orphan_on_delete();
        let mut blockers: Vec<String> = Vec::new();
        if let Err(e) = &input.groups {
            blockers.push(e.message.clone());
        }
        if !orphan {
            if let Err(e) = &input.runners {
                blockers.push(e.message.clone());
            }
            match input.credentials {
                CredentialStatus::Ok => {}
                CredentialStatus::Unavailable { message } | CredentialStatus::Invalid { message, .. } => {
                    blockers.push(message.clone());
                }
            }
        }
        for f in input.failures.iter().filter(|f| f.action.is_destructive()) {
            if !matches!(f.error.kind, EdgeErrorKind::NotFound | EdgeErrorKind::Conflict) {
                blockers.push(format!("{}: {}", f.action.name(), f.error.message));
            }
        }
        let deletion_ts = input.pool.deletion_timestamp.unwrap_or(now);
        let overdue = after(after(deletion_ts, self.timings.drain_timeout), cfg.deletion_grace);
        if blockers.is_empty() && now >= overdue {
            blockers.push(format!("cleanup not finished by {}", overdue.to_rfc3339()));
        }
        if !blockers.is_empty() {
            // Attempts are spaced by an exponential backoff, so that a burst of passes (triggers,
            // requeues) cannot use the budget up during a short outage.
            let spacing = |attempts: u32| {
                let exp = attempts.saturating_sub(1).min(20);
                cfg.backoff_base.saturating_mul(1u32 << exp).min(cfg.backoff_max)
            };
            let due = self.st.deletion_last_attempt.map(|t| after(t, spacing(self.st.deletion_attempts)));
            if due.is_none_or(|d| d <= now) {
                self.st.deletion_attempts = self.st.deletion_attempts.saturating_add(1);
                self.st.deletion_last_attempt = Some(now);
            }
            if let Some(t) = self.st.deletion_last_attempt {
                self.wake.push(after(t, spacing(self.st.deletion_attempts)));
            }
        }

        if self.st.deletion_attempts >= cfg.deletion_max_attempts {
            let left: Vec<String> = self.st.last_known.iter().cloned().collect();
            let what = if left.is_empty() {
                "unknown (the lists never succeeded)".to_string()
            } else {
                list_names(&left)
            };
            self.event(
                EventType::Warning,
                "CleanupAbandoned",
                format!(
                    "giving up after {} failed cleanup attempts ({}); container groups and runner registrations may be left behind: {what}",
                    self.st.deletion_attempts,
                    blockers.join("; ")
                ),
            );
            let wanted = deleting_conditions("cleanup abandoned; removing the finalizer".into());
            return self.finish(status, wanted, view, false, FinalizerDecision::Remove);
        }

        if orphan {
            let Ok(groups) = &input.groups else {
                let wanted =
                    deleting_conditions(format!("waiting for the group list: {}", blockers.join("; ")));
                return self.finish(status, wanted, None, true, FinalizerDecision::Keep);
            };
            let own: Vec<&ObservedGroup> =
                groups.iter().filter(|g| g.pool_uid.as_deref() == Some(input.pool.uid.as_str())).collect();
            if own.is_empty() {
                let wanted = deleting_conditions("released all container groups".into());
                return self.finish(status, wanted, view, false, FinalizerDecision::Remove);
            }
            let names: Vec<String> = own.iter().map(|g| g.name.clone()).collect();
            for n in &names {
                self.actions.push(Action::ReleaseGroup { name: n.clone() });
            }
            self.event(
                EventType::Normal,
                "Orphaned",
                format!(
                    "deletion policy orphan: leaving {} container group(s) and their registrations in place: {}",
                    names.len(),
                    list_names(&names)
                ),
            );
            let wanted = deleting_conditions(format!("releasing {} container group(s)", names.len()));
            return self.finish(status, wanted, view, true, FinalizerDecision::Keep);
        }

        let Some(view) = view.filter(|_| creds_ok) else {
            let wanted = deleting_conditions(format!(
                "cleanup blocked (attempt {} of {}): {}",
                self.st.deletion_attempts,
                cfg.deletion_max_attempts,
                blockers.join("; ")
            ));
            return self.finish(status, wanted, None, true, FinalizerDecision::Keep);
        };

        let drain_deadline = after(deletion_ts, self.timings.drain_timeout);
        let mut draining = 0;
        let mut removing = 0;
        let mut waiting = 0;
        for u in &view.units {
            match u.phase {
                Phase::Busy => {
                    if now < drain_deadline {
                        draining += 1;
                        self.wake.push(drain_deadline);
                    } else if self.removal_pending(&u.name) {
                        waiting += 1;
                    } else {
                        // The job did not finish within drainTimeout: stop the container first
                        // (GitHub refuses to delete a busy runner), then unregister.
                        if u.group.is_some() {
                            self.actions.push(Action::DeleteGroup {
                                name: u.name.clone(),
                                reason: RemovalReason::DrainTimeout,
                                only_if_unregistered: None,
                            });
                        }
                        if let Some(r) = u.runner {
                            self.actions.push(Action::UnregisterRunner {
                                id: r.id,
                                name: r.name.clone(),
                                reason: RemovalReason::DrainTimeout,
                            });
                        }
                        removing += 1;
                    }
                }
                Phase::Terminating => {
                    if let Some(r) = u.runner.filter(|r| !r.busy)
                        && !self.removal_pending(&u.name)
                    {
                        self.actions.push(Action::UnregisterRunner {
                            id: r.id,
                            name: r.name.clone(),
                            reason: RemovalReason::PoolDeleted,
                        });
                    }
                    waiting += 1;
                }
                Phase::InFlight => waiting += 1,
                _ => {
                    self.remove_unit(u, RemovalReason::PoolDeleted, true);
                    removing += 1;
                }
            }
        }
        for (id, name) in self.st.pending_unregister.clone() {
            if view.runners_by_id.get(&id).is_some_and(|r| !r.busy) && !self.removal_pending(&name) {
                self.actions.push(Action::UnregisterRunner { id, name, reason: RemovalReason::CreateFailed });
                removing += 1;
            }
        }
        status.busy = draining;
        status.idle = 0;
        status.provisioning = 0;
        status.failed = 0;
        status.terminating = removing + waiting + draining;
        if view.units.is_empty() && removing == 0 {
            self.event(EventType::Normal, "CleanupComplete", "all runners and container groups removed");
            let wanted = deleting_conditions("all runners removed".into());
            return self.finish(status, wanted, Some(view), false, FinalizerDecision::Remove);
        }
        let mut msg = format!("removing {removing} runner(s), waiting for {waiting}");
        if draining > 0 {
            msg.push_str(&format!(
                "; {draining} busy runner(s) draining until {}",
                drain_deadline.to_rfc3339()
            ));
        }
        if !blockers.is_empty() {
            msg.push_str(&format!(
                "; failures (attempt {} of {}): {}",
                self.st.deletion_attempts,
                cfg.deletion_max_attempts,
                blockers.join("; ")
            ));
        }
        let mut wanted = deleting_conditions(msg);
        if draining > 0 && removing == 0 && waiting == 0 {
            wanted.ready.reason = "Draining".into();
            wanted.reconciling.reason = "Draining".into();
        }
        self.finish(status, wanted, Some(view), true, FinalizerDecision::Keep)
    }
}

fn deleting_conditions(message: String) -> Conditions {
    Conditions {
        ready: CondValue::new(false, "Deleting", message.clone()),
        reconciling: CondValue::new(true, "Deleting", message),
        stalled: CondValue::new(false, "NotStalled", String::new()),
    }
}
