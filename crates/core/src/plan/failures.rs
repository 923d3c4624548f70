//! The failure memory: which failures count, the per-pool exponential back-off, the quota
//! wait, location and Spot cool-downs, and what the failed actions of the previous pass mean
//! ([docs/planner.md, "Failures"](../../../../docs/planner.md#failures) and
//! ["Capacity"](../../../../docs/planner.md#capacity)).
use chrono::{DateTime, Utc};

use super::reasons::{EventReason, StallReason};
use super::status::{IN_A_ROW, NEXT_ATTEMPT};
use super::{Pass, after, backoff, conditions, fmt_duration};
use crate::crd::Priority;
use crate::plan::types::*;

/// The failure reason of an edge error kind.
pub(super) fn failure_reason_of(kind: &EdgeErrorKind) -> FailureReason {
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

/// Failures of one pass: several actions failing the same way count as one failure.
#[derive(Default)]
struct Counted {
    reasons: Vec<FailureReason>,
    quota: bool,
}

impl Counted {
    /// True the first time `reason` is seen in this pass.
    fn first(&mut self, reason: FailureReason) -> bool {
        if self.reasons.contains(&reason) {
            return false;
        }
        self.reasons.push(reason);
        true
    }
}

impl Pass<'_, '_> {
    pub(super) fn reset_on_generation_change(&mut self) {
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

    /// On a fresh start (empty memory), a pool Stalled on a repeating failure or on quota in
    /// this very generation stays Stalled: its failure memory is seeded from the written Stalled
    /// condition. The next attempt is made at once (a fix made meanwhile is picked up), and if
    /// it fails the pool is still Stalled, so the condition does not flap to False for
    /// `stall_after` attempts and no duplicate Warning is published.
    fn resume_stall(&mut self) {
        let Some(prev) = self.input.previous_status else { return };
        let Some(c) = conditions::find(&prev.conditions, conditions::STALLED) else { return };
        if c.status != "True" || c.observed_generation != self.input.pool.generation {
            return;
        }
        let since = DateTime::<Utc>::from_timestamp(c.last_transition_time.0.as_second(), 0)
            .unwrap_or(self.now)
            .min(self.now);
        let message = stall_cause(&c.message);
        // Auth reasons are not resumed: they stall again at the first failure anyway, and the
        // lists of the first pass tell whether the credentials were fixed meanwhile. Spec and
        // credential reasons are re-checked by every pass.
        let reason = match StallReason::parse(&c.reason) {
            Some(StallReason::QuotaExceeded) => {
                // The retry at once is the restart's own probe, not a step of the back-off: if it
                // is refused, the wait is the base one, as for a first refusal. (Counting it would
                // double the wait at every controller restart while quota is short, and hold the
                // pool back that much longer once quota is back.)
                self.st.quota = Some(QuotaWait { until: self.now, attempts: 0, message, since });
                return;
            }
            Some(StallReason::InvalidImage) => FailureReason::InvalidImage,
            Some(StallReason::InvalidRequest) => FailureReason::InvalidRequest,
            Some(StallReason::RegistrationTimeout) => FailureReason::RegistrationTimeout,
            Some(StallReason::ContainerCrashed) => FailureReason::ContainerCrashed,
            Some(StallReason::ProvisioningFailed) => FailureReason::ProvisioningFailed,
            _ => return,
        };
        let Some(count) = reason.stall_threshold(self.input.config.stall_after) else { return };
        self.st.failures = count;
        self.st.last_failure = Some(FailureRecord { reason, message, count, at: since });
    }

    /// Record a provisioning failure: exponential per-pool backoff, same-reason repeat count.
    pub(super) fn record_failure(&mut self, reason: FailureReason, message: String) {
        let cfg = self.input.config;
        self.failed_this_pass = true;
        self.st.failures = self.st.failures.saturating_add(1);
        let until = after(self.now, backoff(cfg.backoff_base, cfg.backoff_max, self.st.failures));
        self.back_off_until(until);
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
                    self.event(EventType::Warning, EventReason::AuthFailed, message);
                }
            }
            _ => self.event(EventType::Warning, EventReason::ProvisioningFailed, message),
        }
    }

    /// Creates wait at least until `until` (a later back-off already set is kept).
    fn back_off_until(&mut self, until: DateTime<Utc>) {
        self.st.backoff_until = Some(self.st.backoff_until.map_or(until, |u| u.max(until)));
    }

    pub(super) fn success(&mut self) {
        self.st.failures = 0;
        self.st.backoff_until = None;
        self.st.last_failure = None;
    }

    pub(super) fn ingest_failures(&mut self) {
        let mut counted = Counted::default();
        for f in self.input.failures {
            match &f.action {
                Action::CreateRunner { name, location, priority, .. } => {
                    self.ingest_create_failure(f, name, location, *priority, &mut counted)
                }
                Action::DeleteGroup { name, .. }
                | Action::UnregisterRunner { name, .. }
                | Action::ReleaseGroup { name } => self.ingest_removal_failure(f, name, &mut counted),
            }
        }
    }

    fn ingest_create_failure(
        &mut self,
        f: &ActionFailure,
        name: &str,
        location: &str,
        priority: Priority,
        counted: &mut Counted,
    ) {
        let cfg = self.input.config;
        self.create_failed = true;
        self.st.in_flight.remove(name);
        self.st.used_names.insert(name.to_string(), self.now);
        if let Some(id) = f.registered_runner {
            self.st.pending_unregister.insert(id, name.to_string());
        }
        let spot_fallback = priority == Priority::Spot && self.input.spec.runner.spot_fallback;
        match &f.error.kind {
            EdgeErrorKind::CapacityUnavailable | EdgeErrorKind::QuotaExceeded if spot_fallback => {
                self.st.spot_unavailable_until = Some(after(self.now, cfg.spot_cooldown));
                self.event(
                    EventType::Normal,
                    EventReason::SpotFallback,
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
                    .insert(location.to_string(), after(self.now, cfg.location_cooldown));
                self.event(
                    EventType::Warning,
                    EventReason::CapacityUnavailable,
                    format!(
                        "no capacity in {location} ({}); skipping it for {}",
                        f.error.message,
                        fmt_duration(cfg.location_cooldown)
                    ),
                );
            }
            EdgeErrorKind::QuotaExceeded => {
                if !counted.quota {
                    counted.quota = true;
                    self.wait_for_quota(location, &f.error.message);
                }
            }
            EdgeErrorKind::Throttled { retry_after } => {
                self.back_off_until(after(self.now, retry_after.unwrap_or(cfg.backoff_base)));
            }
            kind => {
                let reason = failure_reason_of(kind);
                if counted.first(reason) {
                    self.record_failure(reason, format!("creating runner {name}: {}", f.error.message));
                }
            }
        }
    }

    /// A quota refusal: creates wait `quota_backoff_base`·2ⁿ (one Warning per pass).
    fn wait_for_quota(&mut self, location: &str, error: &str) {
        let cfg = self.input.config;
        let attempts = self.st.quota.as_ref().map_or(0, |q| q.attempts).saturating_add(1);
        let wait = backoff(cfg.quota_backoff_base, cfg.quota_backoff_max, attempts);
        let until = after(self.now, wait);
        let message = format!("quota exceeded in {location}: {error}");
        if !self.has_event(EventReason::QuotaExceeded) {
            self.event(
                EventType::Warning,
                EventReason::QuotaExceeded,
                format!("{message}; next attempt in {}", fmt_duration(wait)),
            );
        }
        self.st.quota = Some(QuotaWait { until, attempts, message, since: self.now });
    }

    fn ingest_removal_failure(&mut self, f: &ActionFailure, name: &str, counted: &mut Counted) {
        if f.error.kind == EdgeErrorKind::NotFound {
            return;
        }
        if f.error.kind == EdgeErrorKind::Conflict {
            // GitHub refused (the runner took a job): decide again from scratch.
            self.st.removing.remove(name);
        } else if let Some(r) = self.st.removing.get_mut(name) {
            // Not removed: ask again next pass, for the same reason.
            r.since = DateTime::<Utc>::MIN_UTC;
        }
        let EdgeErrorKind::Auth { .. } = f.error.kind else { return };
        let reason = failure_reason_of(&f.error.kind);
        if !counted.first(reason) {
            return;
        }
        // Removals are retried every pass, not after the back-off. A denied removal therefore
        // escalates the back-off once per back-off period, not once per pass (which would reach
        // backoffMax within a minute of denials and hold creates back long after the permission
        // returns); in between, the same denial keeps the pool Stalled.
        let backing_off = self.st.backoff_until.is_some_and(|b| b > self.now);
        let same = self.st.last_failure.as_ref().is_some_and(|l| l.reason == reason);
        if backing_off && same {
            self.failed_this_pass = true;
            return;
        }
        self.record_failure(reason, format!("removing {name}: {}", f.error.message));
    }
}

/// The failure message a Stalled condition message was written from: the condition says
/// "<message> (N time(s) in a row...)" or "<message>; next attempt at ...".
fn stall_cause(message: &str) -> String {
    match (message.rfind(" ("), message.rfind(NEXT_ATTEMPT)) {
        (Some(i), _) if message[i..].contains(IN_A_ROW) => message[..i].to_string(),
        (_, Some(i)) => message[..i].to_string(),
        _ => message.to_string(),
    }
}
