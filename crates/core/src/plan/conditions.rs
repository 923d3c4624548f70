//! kstatus-style conditions: Ready, Reconciling, Stalled.
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Every reason the planner writes into a condition (documentation and alerts rely on these).
pub const CONDITION_REASONS: &[&str] = &[
    // Ready True / Reconciling False / Stalled False.
    "RunnersReady",
    "Converged",
    "NotStalled",
    "Stalled",
    // Reconciling True (and Ready False).
    "ScalingUp",
    "Provisioning",
    "ScalingDown",
    "Recycling",
    "Backoff",
    "CapacityUnavailable",
    "ObservationFailed",
    "CredentialsUnavailable",
    "Deleting",
    "Draining",
    // Stalled True (and Ready False).
    "InvalidSpec",
    "SecretNotFound",
    "SecretKeyMissing",
    "InvalidAppKey",
    "InvalidSecret",
    "AuthFailed",
    "MissingPermission",
    "QuotaExceeded",
    "InvalidImage",
    "InvalidRequest",
    "RegistrationTimeout",
    "ContainerCrashed",
    "ProvisioningFailed",
];

/// Every Event reason the planner emits (besides the Stalled reasons above, emitted on a
/// transition to Stalled).
pub const EVENT_REASONS: &[&str] = &[
    "ScaledUp",
    "ScaledDown",
    "RunnerRecycled",
    "GarbageCollected",
    "ProvisioningFailed",
    "QuotaExceeded",
    "CapacityUnavailable",
    "SpotFallback",
    "AuthFailed",
    "RunnersReady",
    "NameUnavailable",
    "Orphaned",
    "CleanupComplete",
    "CleanupAbandoned",
];

/// The wanted value of one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondValue {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl CondValue {
    pub fn new(status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
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
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Is the condition `type_` True in `conditions`?
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}
