//! The status of a pass: whether the pool is Stalled and why, the conditions and their
//! transition Events, usage, the requeue interval, and the [`Plan`] itself
//! ([docs/planner.md, "Conditions"](../../../../docs/planner.md#conditions) and
//! ["Usage"](../../../../docs/planner.md#usage)).
use std::collections::BTreeMap;
use std::time::Duration;

use super::conditions::{self, CondValue, Conditions};
use super::failures::failure_reason_of;
use super::reasons::{ConditionReason, EventReason, StallReason};
use super::view::View;
use super::{Pass, elapsed};
use crate::crd::{Priority, RunnerPoolStatus, RunnerPoolUsage};
use crate::plan::types::*;

/// Stalled messages of a repeating failure say "<message> (N time(s) in a row[; next attempt
/// at <time>])"; those of a quota wait "<message>; next attempt at <time>" (a restart reads the
/// message back, see `failures`).
pub(super) const IN_A_ROW: &str = "time(s) in a row";
pub(super) const NEXT_ATTEMPT: &str = "; next attempt at ";

/// Reason and message of a Stalled condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stall {
    pub reason: StallReason,
    pub message: String,
}

/// A resource amount usable for accounting (negative and non-finite values count as 0).
fn amount(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

impl<'a> Pass<'_, 'a> {
    /// Why the pool needs a change before it can make progress, if it does.
    pub(super) fn stall(&self) -> Option<Stall> {
        let input = self.input;
        if let Some(e) = &self.spec_error {
            return Some(Stall { reason: StallReason::InvalidSpec, message: e.clone() });
        }
        if let Err(e) = input.permission {
            return Some(Stall { reason: StallReason::NotPermitted, message: e.to_string() });
        }
        if let CredentialStatus::Invalid { problem, message } = input.credentials {
            return Some(Stall { reason: StallReason::of_credentials(*problem), message: message.clone() });
        }
        if let Some(s) = self.list_auth_stall() {
            return Some(s);
        }
        if let Some(f) = &self.st.last_failure
            && f.reason.stall_threshold(input.config.stall_after).is_some_and(|t| f.count >= t)
            && let Some(reason) = StallReason::of_failure(f.reason)
        {
            let retry = self
                .st
                .backoff_until
                .map(|t| format!("{NEXT_ATTEMPT}{}", t.to_rfc3339()))
                .unwrap_or_default();
            return Some(Stall { reason, message: format!("{} ({} {IN_A_ROW}{retry})", f.message, f.count) });
        }
        if let Some(q) = &self.st.quota {
            return Some(Stall {
                reason: StallReason::QuotaExceeded,
                message: format!("{}{NEXT_ATTEMPT}{}", q.message, q.until.to_rfc3339()),
            });
        }
        None
    }

    /// A list refused for auth reasons. Lists not attempted because of unusable credentials
    /// say nothing about permissions.
    fn list_auth_stall(&self) -> Option<Stall> {
        let input = self.input;
        if !matches!(input.credentials, CredentialStatus::Ok) {
            return None;
        }
        let lists = [
            ("listing container groups", input.groups.as_ref().err()),
            ("listing GitHub runners", input.runners.as_ref().err()),
        ];
        lists.into_iter().find_map(|(what, res)| match res {
            Some(e @ EdgeError { kind: EdgeErrorKind::Auth { .. }, .. }) => Some(Stall {
                reason: StallReason::of_failure(failure_reason_of(&e.kind))?,
                message: format!("{what}: {}", e.message),
            }),
            _ => None,
        })
    }

    /// The conditions when a list failed, the spec is invalid or the credentials are not `Ok`,
    /// and whether they say Stalled.
    pub(super) fn blocked_conditions(&self) -> (Conditions, bool) {
        let input = self.input;
        let stall = self.stall();
        let (reason, message) = if let Some(s) = &stall {
            (ConditionReason::from(s.reason), s.message.clone())
        } else if let CredentialStatus::Unavailable { message } = input.credentials {
            (ConditionReason::CredentialsUnavailable, format!("reading Secrets failed: {message}"))
        } else {
            let errs: Vec<String> = [input.groups.as_ref().err(), input.runners.as_ref().err()]
                .into_iter()
                .flatten()
                .map(|e| e.message.clone())
                .collect();
            (
                ConditionReason::ObservationFailed,
                format!("listing failed, nothing changed: {}", errs.join("; ")),
            )
        };
        let stalled = stall.is_some();
        let wanted = Conditions {
            ready: CondValue::new(false, reason, message.clone()),
            reconciling: CondValue::new(
                !stalled,
                if stalled { ConditionReason::Stalled } else { reason },
                message.clone(),
            ),
            stalled: CondValue::new(
                stalled,
                if stalled { reason } else { ConditionReason::NotStalled },
                if stalled { message } else { String::new() },
            ),
        };
        (wanted, stalled)
    }

    pub(super) fn base_status(&self) -> RunnerPoolStatus {
        let prev = self.input.previous_status.cloned().unwrap_or_default();
        RunnerPoolStatus {
            observed_generation: self.input.pool.generation,
            scope: Some(self.input.spec.scope_display()).filter(|s| !s.is_empty()),
            conditions: Vec::new(),
            usage: None,
            ..prev
        }
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
            let Some((lifetime, delta)) = self.lifetime_delta(g) else { continue };
            let before = self.st.usage_accounted.get(&g.name).copied();
            accounted.insert(g.name.clone(), lifetime.max(before.unwrap_or(0.0)));
            let (cpu, mem) = (amount(g.cpu), amount(g.memory_gb));
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

    /// A group's lifetime so far (creation to container finish or now) in seconds, and the part
    /// of it not yet added to the usage.
    fn lifetime_delta(&self, g: &ObservedGroup) -> Option<(f64, f64)> {
        let start = g.created.or_else(|| g.container.as_ref().and_then(|c| c.started_at))?;
        let end = match &g.container {
            Some(ObservedContainer {
                state: ContainerState::Terminated { .. },
                finished_at: Some(f),
                ..
            }) => (*f).min(self.now),
            _ => self.now,
        };
        let lifetime = elapsed(start, end).as_secs_f64();
        let delta = match self.st.usage_accounted.get(&g.name).copied() {
            Some(b) => (lifetime - b).max(0.0),
            // First sight after a restart: its past was accounted before (baseline only).
            None if !self.st.initialized => 0.0,
            None => lifetime,
        };
        Some((lifetime, delta))
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

    /// Events on condition transitions: the Stalled reason when the pool becomes Stalled (or
    /// Stalled for another reason), RunnersReady when it becomes Ready.
    fn transition_events(
        &mut self,
        prev_conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        wanted: &Conditions,
    ) {
        let was_stalled = conditions::find(prev_conditions, conditions::STALLED)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone());
        if wanted.stalled.status
            && was_stalled.as_deref() != Some(wanted.stalled.reason.as_str())
            && let Ok(stall) = StallReason::try_from(wanted.stalled.reason)
        {
            let reason = stall.event();
            if !self.has_event(reason) {
                self.event(EventType::Warning, reason, wanted.stalled.message.clone());
            }
        }
        if wanted.ready.status && !conditions::is_true(prev_conditions, conditions::READY) {
            self.event(EventType::Normal, EventReason::RunnersReady, wanted.ready.message.clone());
        }
    }

    pub(super) fn finish(
        &mut self,
        mut status: RunnerPoolStatus,
        wanted: Conditions,
        view: Option<&View<'a>>,
        converging: bool,
        finalizer: FinalizerDecision,
    ) -> Plan {
        let prev_conditions = self.input.previous_status.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
        self.transition_events(prev_conditions, &wanted);
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
}

/// The status to write before a pass acts on a generation it has not acted on yet (a new pool, a
/// changed spec), or `None` when the written status is of this generation already.
///
/// kstatus (Flux) reads a custom resource without conditions, or with an older
/// `observedGeneration`, as done; this status says at once that the generation is seen and not
/// reached yet (Reconciling True, Ready and Stalled False), and keeps counts and usage. The pass
/// that follows writes the planned status over it.
pub fn acknowledge(
    previous: Option<&RunnerPoolStatus>,
    generation: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<RunnerPoolStatus> {
    let generation = generation?;
    if previous.is_some_and(|s| s.observed_generation == Some(generation)) {
        return None;
    }
    let prev = previous.cloned().unwrap_or_default();
    let message = format!("acting on generation {generation}");
    let wanted = Conditions {
        ready: CondValue::new(false, ConditionReason::NewGeneration, message.clone()),
        reconciling: CondValue::new(true, ConditionReason::NewGeneration, message),
        stalled: CondValue::new(false, ConditionReason::NotStalled, String::new()),
    };
    Some(RunnerPoolStatus {
        observed_generation: Some(generation),
        conditions: conditions::build(&prev.conditions, &wanted, Some(generation), now),
        ..prev
    })
}

impl Pass<'_, '_> {
    /// Within `deprecation_notice` of the date GitHub stops accepting the pool's runner version
    /// (or after it): one Warning `RunnerVersionDeprecated` per version and process, naming the
    /// date and the field to change, before GitHub starts refusing the pool's new runners.
    pub(super) fn notice_runner_deprecation(&mut self) {
        let Some(d) = self.input.runner_deprecation else { return };
        if self.st.deprecation_warned.as_deref() == Some(d.version.as_str()) {
            return;
        }
        // The date is GitHub's: a notice period beyond chrono's range means "always".
        let notice = chrono::Duration::from_std(self.input.config.deprecation_notice).ok();
        if notice.and_then(|n| d.at.checked_sub_signed(n)).is_some_and(|from| self.now < from) {
            return;
        }
        let when = if self.now >= d.at { "since" } else { "from" };
        self.event(
            EventType::Warning,
            EventReason::RunnerVersionDeprecated,
            format!(
                "GitHub stops accepting runner version {} {when} {}: new runners of this pool will fail to register; \
                 update spec.runner.image to a newer actions-runner release",
                d.version,
                d.at.to_rfc3339()
            ),
        );
        self.st.deprecation_warned = Some(d.version.clone());
    }
}
