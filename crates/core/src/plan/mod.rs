//! The pure planner: observed state in, actions + status + carried state out.
//!
//! No I/O, no clock reads, no randomness: `now` is an input and new runner names draw their
//! suffixes from an injected source. See [docs/planner.md](../../../../docs/planner.md) for the
//! rules.
//!
//! One pass ([`plan`]) runs these steps, each in its own module as an `impl Pass` block:
//!
//! 1. [`failures`]: the failure memory (generation reset, restart resume) and the failed actions
//!    of the previous pass;
//! 2. [`observe`]: the lists classified into this pool's runners ([`view`]) and the carried
//!    per-runner state updated;
//! 3. while the pool lives, [`cleanup`] (finished, failed, timed-out runners, GC) and [`scale`]
//!    (placement, scale up and down); once it is being deleted, [`deletion`];
//! 4. [`status`]: Stalled, the conditions, usage, requeue and the plan itself.
pub mod conditions;
pub mod demand;
pub mod install;
pub mod names;
mod orphans;
pub mod reasons;
pub mod types;

mod cleanup;
mod deletion;
mod failures;
mod observe;
mod scale;
mod status;
mod view;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod world_tests;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crd::{RunnerPoolSpec, parse_duration};

pub use orphans::{OrphanInput, OrphanPlan, SweepDelete, SweptGroup, plan_orphan_groups};
pub use reasons::{ConditionReason, EventReason};
pub use status::acknowledge;
pub use types::*;

use view::Unit;

/// Fallbacks when a duration of an (invalid) spec cannot be parsed.
const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(300);
const DEFAULT_REGISTRATION_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Names listed in the "may be left behind" warning.
const MAX_NAMES_IN_MESSAGE: usize = 20;
/// Largest doubling exponent of [`backoff`]: `2^20` times any base is far above every maximum,
/// and the shift stays well inside `u32`.
const MAX_BACKOFF_EXP: u32 = 20;

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

/// Exponential back-off: the wait before attempt `attempt + 1` after `attempt` failed ones
/// (`base`, `2·base`, `4·base`, ... up to `max`). Attempt 0 and 1 both wait `base`; the exponent
/// is clamped, so the shift never overflows, and the product saturates.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(MAX_BACKOFF_EXP);
    base.saturating_mul(1u32 << exp).min(max)
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

/// One planning pass: the input, the carried state being updated, and what was decided so far.
struct Pass<'i, 'a> {
    input: &'i PlanInput<'a>,
    now: DateTime<Utc>,
    timings: Timings,
    prefix: String,
    /// The owner label of this install's registrations for this pool ([`install::owner_label`]).
    owner_label: String,
    st: PoolState,
    actions: Vec<Action>,
    events: Vec<PlannedEvent>,
    /// Instants at which something becomes due (requeue).
    wake: Vec<DateTime<Utc>>,
    /// A create failed in the previous pass (reported now).
    create_failed: bool,
    /// Events for auth failures already emitted this pass.
    auth_event: bool,
    /// The spec's validation errors (`PlanInput::validation`, the caller's one `validate()` of
    /// this pass), as the conditions show them.
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
        owner_label: install::owner_label(input.install, &input.pool.uid),
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
        p.notice_runner_deprecation();
        p.plan_alive(view.as_ref(), suffixes)
    }
}

/// Steps every part of the pass uses: Events, removals in progress, removing a runner.
impl Pass<'_, '_> {
    fn event(&mut self, type_: EventType, reason: EventReason, message: impl Into<String>) {
        self.events.push(PlannedEvent { type_, reason, message: message.into() });
    }

    fn has_event(&self, reason: EventReason) -> bool {
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

    /// Unregister (if a registration exists and is not busy) then delete the group (if any).
    /// A running group whose registration may exist is deleted only once that registration is
    /// proven gone: a listed registration guards the delete by its unregister (an online runner
    /// may take a job at any moment, an offline one may just be coming online); without one, a
    /// fresh runner list at execution must not show it (the runner of a container that can
    /// still run may have registered after the pass's list was read). Only an ephemeral
    /// runner's terminated container (restart policy Never) can run nothing any more.
    fn remove_unit(&mut self, u: &Unit<'_>, reason: RemovalReason) {
        let mut guard = None;
        if let Some(r) = u.runner {
            if r.busy {
                return;
            }
            self.actions.push(Action::UnregisterRunner { id: r.id, name: r.name.clone(), reason });
            guard = Some(r.id);
        }
        if let Some(g) = u.group {
            let terminated =
                g.container.as_ref().is_some_and(|c| matches!(c.state, ContainerState::Terminated { .. }));
            let can_run = !(terminated && self.input.spec.runner.registration.ephemeral);
            self.delete_group(&u.name, reason, guard, guard.is_none() && can_run);
        }
    }

    fn delete_group(
        &mut self,
        name: &str,
        reason: RemovalReason,
        only_if_unregistered: Option<u64>,
        only_if_unlisted: bool,
    ) {
        self.actions.push(Action::DeleteGroup {
            name: name.to_string(),
            reason,
            only_if_unregistered,
            only_if_unlisted,
        });
    }

    /// A terminating group's registration, if idle, is unregistered (once per `removal_ttl`):
    /// the group is already going, its registration must not linger as offline.
    fn unregister_terminating(&mut self, u: &Unit<'_>, reason: RemovalReason) {
        if let Some(r) = u.runner.filter(|r| !r.busy)
            && !self.removal_pending(&u.name)
        {
            self.actions.push(Action::UnregisterRunner { id: r.id, name: r.name.clone(), reason });
        }
    }
}
