//! The reasons the planner writes: into a condition ([`ConditionReason`]) and into an Event
//! ([`EventReason`]). Each is an enum whose [`as_str`](ConditionReason::as_str) (and `Display`)
//! is the variant's name, the string Kubernetes shows; the documentation and alerts rely on
//! these strings ([docs/planner.md, "Conditions"](../../../../docs/planner.md#conditions)).
use std::fmt;

use super::types::{CredentialProblem, FailureReason};

/// An enum of reasons: `as_str`/`Display` give the variant's name, `ALL` lists the variants,
/// `NAMES` their strings, `parse` reads one back; comparisons with `&str` compare the string.
///
/// The second form declares an enum with a sub-enum whose variants it also holds: the
/// sub-enum's list is written once, and its `From` conversion into the enum is derived from it.
macro_rules! reasons {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $v:ident,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $($(#[$vm])* $v,)+
        }

        impl $name {
            /// Every variant.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$v,)+];
            /// Every variant's string.
            #[allow(dead_code)]
            pub const NAMES: &'static [&'static str] = &[$(stringify!($v),)+];

            /// The string written into the status or the Event.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => stringify!($v),)+
                }
            }

            /// The variant whose string is `s`.
            #[allow(dead_code)]
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|r| r.as_str() == s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
    (
        $(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $v:ident,)+ }
        $(#[$sm:meta])* $svis:vis enum $sub:ident { $($(#[$svm:meta])* $sv:ident,)+ }
    ) => {
        reasons! { $(#[$m])* $vis enum $name { $($(#[$vm])* $v,)+ $($(#[$svm])* $sv,)+ } }
        reasons! { $(#[$sm])* $svis enum $sub { $($(#[$svm])* $sv,)+ } }

        impl From<$sub> for $name {
            fn from(r: $sub) -> Self {
                match r {
                    $($sub::$sv => $name::$sv,)+
                }
            }
        }
    };
}

reasons! {
    /// Every reason the planner writes into a condition.
    pub enum ConditionReason {
        // Ready True / Reconciling False / Stalled False.
        RunnersReady,
        Converged,
        /// Reconciling False while the pool churns in its steady state (see `is_routine_churn`).
        SteadyState,
        NotStalled,
        Stalled,
        // Reconciling True (and Ready False).
        /// Written before the first pass of a new generation (see `status::acknowledge`).
        NewGeneration,
        ScalingUp,
        Provisioning,
        ScalingDown,
        Recycling,
        Backoff,
        CapacityUnavailable,
        ObservationFailed,
        CredentialsUnavailable,
        Deleting,
        Draining,
        // Stalled True, written by the controller (not the planner) when a pass panicked; not a
        // stall the planner resumes.
        InternalError,
    }
    /// Why a pool is Stalled (Stalled True, Ready False): the reasons that need a change by the
    /// user. Every one is also a condition reason, listed after the ones above.
    pub(crate) enum StallReason {
        InvalidSpec,
        /// Outside the tenant policy of its namespace (`crate::policy`).
        NotPermitted,
        SecretNotFound,
        SecretKeyMissing,
        InvalidAppKey,
        InvalidSecret,
        AuthFailed,
        MissingPermission,
        QuotaExceeded,
        InvalidImage,
        InvalidRequest,
        RegistrationTimeout,
        ContainerCrashed,
        ProvisioningFailed,
    }
}

reasons! {
    /// Every reason of a [`PlannedEvent`](super::PlannedEvent), and `InternalError`, the
    /// controller's Warning when a pass panicked.
    pub enum EventReason {
        ScaledUp,
        ScaledDown,
        RunnerRecycled,
        GarbageCollected,
        ProvisioningFailed,
        /// A failed, crashed or timed-out runner's container log tail (published by the
        /// controller before it deletes the group, not by the planner).
        RunnerFailedLogs,
        QuotaExceeded,
        CapacityUnavailable,
        SpotFallback,
        AuthFailed,
        RunnersReady,
        NameUnavailable,
        Orphaned,
        CleanupComplete,
        CleanupAbandoned,
        RunnerVersionDeprecated,
        // Published only on a transition to Stalled (see `StallReason::event`).
        InvalidSpec,
        NotPermitted,
        SecretNotFound,
        SecretKeyMissing,
        InvalidAppKey,
        InvalidSecret,
        InvalidImage,
        InvalidRequest,
        RegistrationTimeout,
        ContainerCrashed,
        InternalError,
    }
}

impl ConditionReason {
    /// Work a healthy pool does all the time: creating runners for demand within `maxRunners`,
    /// waiting for them to come online, removing surplus idle ones, replacing finished ones.
    pub fn is_routine_churn(self) -> bool {
        matches!(
            self,
            ConditionReason::ScalingUp
                | ConditionReason::Provisioning
                | ConditionReason::ScalingDown
                | ConditionReason::Recycling
        )
    }
}

impl StallReason {
    /// The reason of unusable credentials.
    pub(crate) fn of_credentials(problem: CredentialProblem) -> Self {
        match problem {
            CredentialProblem::SecretNotFound => StallReason::SecretNotFound,
            CredentialProblem::SecretKeyMissing => StallReason::SecretKeyMissing,
            CredentialProblem::InvalidAppKey => StallReason::InvalidAppKey,
            CredentialProblem::InvalidSecret => StallReason::InvalidSecret,
        }
    }

    /// The reason of a repeating failure (transient errors never stall).
    pub(crate) fn of_failure(reason: FailureReason) -> Option<Self> {
        Some(match reason {
            FailureReason::InvalidImage => StallReason::InvalidImage,
            FailureReason::InvalidRequest => StallReason::InvalidRequest,
            FailureReason::AuthFailed => StallReason::AuthFailed,
            FailureReason::MissingPermission => StallReason::MissingPermission,
            FailureReason::RegistrationTimeout => StallReason::RegistrationTimeout,
            FailureReason::ContainerCrashed => StallReason::ContainerCrashed,
            FailureReason::ProvisioningFailed => StallReason::ProvisioningFailed,
            FailureReason::Transient => return None,
        })
    }

    /// The Event published when the pool becomes Stalled for this reason: auth reasons share
    /// `AuthFailed` (also the reason of the failure's own Warning, so it is published once).
    pub(crate) fn event(self) -> EventReason {
        match self {
            StallReason::InvalidSpec => EventReason::InvalidSpec,
            StallReason::NotPermitted => EventReason::NotPermitted,
            StallReason::SecretNotFound => EventReason::SecretNotFound,
            StallReason::SecretKeyMissing => EventReason::SecretKeyMissing,
            StallReason::InvalidAppKey => EventReason::InvalidAppKey,
            StallReason::InvalidSecret => EventReason::InvalidSecret,
            StallReason::AuthFailed | StallReason::MissingPermission => EventReason::AuthFailed,
            StallReason::QuotaExceeded => EventReason::QuotaExceeded,
            StallReason::InvalidImage => EventReason::InvalidImage,
            StallReason::InvalidRequest => EventReason::InvalidRequest,
            StallReason::RegistrationTimeout => EventReason::RegistrationTimeout,
            StallReason::ContainerCrashed => EventReason::ContainerCrashed,
            StallReason::ProvisioningFailed => EventReason::ProvisioningFailed,
        }
    }
}

impl TryFrom<ConditionReason> for StallReason {
    type Error = ConditionReason;

    /// The stall reason a Stalled condition says (every stall reason is a condition reason of
    /// the same name).
    fn try_from(r: ConditionReason) -> Result<Self, ConditionReason> {
        StallReason::parse(r.as_str()).ok_or(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_variant_names_and_parse_back() {
        for r in ConditionReason::ALL {
            assert_eq!(ConditionReason::parse(r.as_str()), Some(*r));
            assert_eq!(r.to_string(), r.as_str());
        }
        for r in EventReason::ALL {
            assert_eq!(EventReason::parse(&r.to_string()), Some(*r));
        }
        assert_eq!(ConditionReason::NAMES.len(), ConditionReason::ALL.len());
        assert_eq!(EventReason::AuthFailed, "AuthFailed");
    }

    #[test]
    fn every_stall_reason_is_a_condition_reason_and_an_event_reason() {
        for s in StallReason::ALL {
            let c = ConditionReason::from(*s);
            assert_eq!(c.as_str(), s.as_str());
            assert_eq!(StallReason::try_from(c), Ok(*s));
            let e = s.event();
            let auth = matches!(s, StallReason::AuthFailed | StallReason::MissingPermission);
            assert_eq!(e.as_str(), if auth { "AuthFailed" } else { s.as_str() });
        }
    }
}
