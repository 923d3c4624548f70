//! kstatus-style conditions: Ready, Reconciling, Stalled.
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub use super::reasons::{ConditionReason, EventReason};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Every reason the planner writes into a condition (documentation and alerts rely on these).
pub const CONDITION_REASONS: &[&str] = ConditionReason::NAMES;

/// Every Event reason the planner emits (besides the Stalled reasons above, emitted on a
/// transition to Stalled).
pub const EVENT_REASONS: &[&str] = &[
    EventReason::ScaledUp.as_str(),
    EventReason::ScaledDown.as_str(),
    EventReason::RunnerRecycled.as_str(),
    EventReason::GarbageCollected.as_str(),
    EventReason::ProvisioningFailed.as_str(),
    EventReason::QuotaExceeded.as_str(),
    EventReason::CapacityUnavailable.as_str(),
    EventReason::SpotFallback.as_str(),
    EventReason::AuthFailed.as_str(),
    EventReason::RunnersReady.as_str(),
    EventReason::NameUnavailable.as_str(),
    EventReason::Orphaned.as_str(),
    EventReason::CleanupComplete.as_str(),
    EventReason::CleanupAbandoned.as_str(),
    EventReason::InternalError.as_str(),
];

/// The wanted value of one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondValue {
    pub status: bool,
    pub reason: ConditionReason,
    pub message: String,
}

impl CondValue {
    pub fn new(status: bool, reason: impl Into<ConditionReason>, message: impl Into<String>) -> Self {
        Self { status, reason: reason.into(), message: message.into() }
    }
}

/// The three conditions of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: CondValue,
    pub reconciling: CondValue,
    pub stalled: CondValue,
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Find a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Build the conditions; `lastTransitionTime` is kept from `previous` unless the status flips.
pub fn build(
    previous: &[Condition],
    wanted: &Conditions,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    [(READY, &wanted.ready), (RECONCILING, &wanted.reconciling), (STALLED, &wanted.stalled)]
        .into_iter()
        .map(|(type_, v)| {
            let status = status_str(v.status);
            let last_transition_time = match find(previous, type_) {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => to_time(now),
            };
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: v.reason.to_string(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The conditions of a pass that ended in an internal error (a panic the controller contained):
/// Stalled True and Ready False with reason `InternalError`, Reconciling False.
pub fn internal_error(
    previous: &[Condition],
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let wanted = Conditions {
        ready: CondValue::new(false, ConditionReason::InternalError, message),
        reconciling: CondValue::new(false, ConditionReason::Stalled, message),
        stalled: CondValue::new(true, ConditionReason::InternalError, message),
    };
    build(previous, &wanted, generation, now)
}

/// Is the condition `type_` True in `conditions`?
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_stalls_the_pool_and_keeps_unchanged_transition_times() {
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let t1 = t0 + chrono::Duration::minutes(5);
        let first = internal_error(&[], "boom", Some(3), t0);
        assert!(is_true(&first, STALLED) && !is_true(&first, READY) && !is_true(&first, RECONCILING));
        assert_eq!(find(&first, STALLED).unwrap().reason, "InternalError");
        assert_eq!(find(&first, READY).unwrap().reason, "InternalError");
        assert_eq!(find(&first, STALLED).unwrap().observed_generation, Some(3));
        let again = internal_error(&first, "boom", Some(3), t1);
        assert_eq!(find(&again, STALLED).unwrap().last_transition_time, to_time(t0));
    }
}
