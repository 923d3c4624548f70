//! Scaling of a live pool: how many runners are desired, where and how new ones are created
//! (placement, registration, names), which idle ones go, and the conditions that say so
//! ([docs/planner.md, "Scaling"](../../../../docs/planner.md#scaling)).
use chrono::{DateTime, Utc};

use super::conditions::{self, CondValue, Conditions};
use super::reasons::{ConditionReason, EventReason};
use super::view::{Phase, Unit, View};
use super::{Pass, after, demand, list_names, names};
use crate::crd::{Priority, RegistrationMode};
use crate::plan::types::*;

/// The pool's runners by phase and what is wanted of them.
#[derive(Clone, Copy, Debug)]
struct Counts {
    busy: i32,
    idle: i32,
    /// Provisioning or in flight.
    provisioning: i32,
    failed: i32,
    terminating: i32,
    desired: i32,
    /// busy + idle + provisioning.
    supply: i32,
}

/// Why creates wait: reason and message of the Reconciling (and Ready) condition.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wait {
    reason: ConditionReason,
    message: String,
}

/// What this pass changed, for the status and the conditions.
struct Changes {
    created: Vec<String>,
    scaled_down: Vec<String>,
    /// Runners removed by cleanup.
    removed: usize,
    /// Why creates wait (quota, backoff, no location), if they do.
    wait: Option<Wait>,
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl<'a> Pass<'_, 'a> {
    pub(super) fn plan_alive(
        &mut self,
        view: Option<&View<'a>>,
        suffixes: &mut dyn FnMut() -> String,
    ) -> Plan {
        let mut status = self.base_status();
        let creds_ok = matches!(self.input.credentials, CredentialStatus::Ok);
        let permitted = self.input.permission.is_ok();
        let Some(view) = view.filter(|_| self.spec_error.is_none() && permitted && creds_ok) else {
            // Bad input or a failed list: nothing is created or deleted; counts stay as last seen.
            let (wanted, stalled) = self.blocked_conditions();
            return self.finish(status, wanted, None, !stalled, FinalizerDecision::Keep);
        };
        let removed = self.plan_cleanup(view);
        let c = self.counts(view);
        if c.idle + c.busy >= c.desired && c.provisioning == 0 {
            // Nothing to create: neither quota nor earlier failures hold the pool back.
            self.st.quota = None;
            if self.st.last_failure.is_some() && !self.failed_this_pass {
                self.success();
            }
        }
        let (created, wait) = self.scale_up(view, &c, suffixes);
        let scaled_down = self.scale_down(view, &c);
        let ch = Changes { created, scaled_down, removed, wait };
        let created_n = len_i32(ch.created.len());
        status.desired = c.desired;
        status.busy = c.busy;
        status.idle = c.idle;
        status.provisioning = c.provisioning.saturating_add(created_n);
        status.failed = c.failed;
        status.terminating =
            c.terminating.saturating_add(len_i32(ch.removed)).saturating_add(len_i32(ch.scaled_down.len()));
        let (wanted, reconciling) = self.alive_conditions(&c, &ch);
        let converging = !self.actions.is_empty() || c.provisioning > 0 || reconciling;
        self.finish(status, wanted, Some(view), converging, FinalizerDecision::Keep)
    }

    /// Runners by phase, and desired = clamp(busy + max(minIdle, queued), 0, maxRunners).
    fn counts(&self, view: &View<'a>) -> Counts {
        let input = self.input;
        let busy = view.count(|p| *p == Phase::Busy);
        let idle = view.count(|p| *p == Phase::Idle);
        let provisioning = view.count(|p| matches!(p, Phase::Provisioning | Phase::InFlight));
        let failed = view.count(|p| matches!(p, Phase::Failed { .. }));
        let terminating = view.count(|p| *p == Phase::Terminating);
        let queued =
            demand::matching_queued(input.spec, input.queued_jobs, self.now, input.config.demand_ttl);
        let queued = i64::try_from(queued).unwrap_or(i64::MAX);
        let s = &input.spec.scaling;
        let want = i64::from(busy).saturating_add(i64::from(s.min_idle.max(0)).max(queued));
        let desired = i32::try_from(want.clamp(0, i64::from(s.max_runners.max(0)))).unwrap_or(i32::MAX);
        let supply = busy.saturating_add(idle).saturating_add(provisioning);
        Counts { busy, idle, provisioning, failed, terminating, desired, supply }
    }

    /// Creates up to desired (at most `max_creates_per_pass`, never beyond maxRunners), unless
    /// quota, the back-off or capacity hold them back. Returns the new names and the wait.
    fn scale_up(
        &mut self,
        view: &View<'a>,
        c: &Counts,
        suffixes: &mut dyn FnMut() -> String,
    ) -> (Vec<String>, Option<Wait>) {
        let mut created = Vec::new();
        if c.supply >= c.desired {
            return (created, None);
        }
        let s = &self.input.spec.scaling;
        let room = s.max_runners.saturating_sub(c.supply).max(0);
        let per_pass = i32::try_from(self.input.config.max_creates_per_pass).unwrap_or(i32::MAX);
        let n = c.desired.saturating_sub(c.supply).min(room).min(per_pass);
        if let Some(gate) = self.create_gate() {
            return (created, Some(gate));
        }
        let (location, priority) = match self.placement() {
            Err(e) => return (created, Some(e)),
            Ok(p) => p,
        };
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
                    EventReason::NameUnavailable,
                    "could not draw an unused runner name; retrying next pass",
                );
                break;
            };
            self.st
                .in_flight
                .insert(name.clone(), InFlight { since: self.now, location: location.clone(), priority });
            self.st.used_names.insert(name.clone(), self.now);
            self.actions.push(Action::CreateRunner {
                name: name.clone(),
                location: location.clone(),
                priority,
                registration: registration.clone(),
            });
            created.push(name);
        }
        if !created.is_empty() {
            self.event(
                EventType::Normal,
                EventReason::ScaledUp,
                format!(
                    "creating {} runner(s) ({}): desired {}, busy {}, idle {}, provisioning {}",
                    created.len(),
                    list_names(&created),
                    c.desired,
                    c.busy,
                    c.idle,
                    c.provisioning
                ),
            );
        }
        (created, None)
    }

    /// Why no create may be sent now: a quota wait or the failure back-off.
    fn create_gate(&mut self) -> Option<Wait> {
        if let Some(q) = &self.st.quota
            && q.until > self.now
        {
            self.wake.push(q.until);
            return Some(Wait { reason: ConditionReason::QuotaExceeded, message: q.message.clone() });
        }
        if let Some(b) = self.st.backoff_until
            && b > self.now
        {
            self.wake.push(b);
            let why = self.st.last_failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
            return Some(Wait {
                reason: ConditionReason::Backoff,
                message: format!("waiting until {} after failures: {why}", b.to_rfc3339()),
            });
        }
        None
    }

    /// Scale down: only idle runners idle for longer than scaleDownDelay, oldest first, at most
    /// min(supply − desired, idle + busy − desired).
    fn scale_down(&mut self, view: &View<'a>, c: &Counts) -> Vec<String> {
        let surplus =
            c.supply.saturating_sub(c.desired).min(c.idle.saturating_add(c.busy).saturating_sub(c.desired));
        let surplus = usize::try_from(surplus).unwrap_or(0);
        let mut scaled_down = Vec::new();
        if surplus == 0 {
            return scaled_down;
        }
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
            self.remove_unit(u, RemovalReason::ScaleDown);
            scaled_down.push(u.name.clone());
        }
        if !scaled_down.is_empty() {
            self.event(
                EventType::Normal,
                EventReason::ScaledDown,
                format!(
                    "removing {} idle runner(s) ({}): desired {}, busy {}, idle {}",
                    scaled_down.len(),
                    list_names(&scaled_down),
                    c.desired,
                    c.busy,
                    c.idle
                ),
            );
        }
        scaled_down
    }

    /// The conditions of a live pool, and whether Reconciling is True.
    fn alive_conditions(&self, c: &Counts, ch: &Changes) -> (Conditions, bool) {
        let stall = self.stall();
        let provisioning = c.provisioning.saturating_add(len_i32(ch.created.len()));
        let summary =
            format!("{} idle, {} busy, {provisioning} provisioning of {} desired", c.idle, c.busy, c.desired);
        let failing =
            c.failed > 0 || self.create_failed || self.st.backoff_until.is_some_and(|b| b > self.now);
        let reconciling = self.reconciling_reason(c, ch, failing, &summary);
        let ready = stall.is_none() && c.idle.saturating_add(c.busy) == c.desired && !failing;
        let is_reconciling = reconciling.is_some();
        // kstatus (Flux) and Argo CD read Reconciling=True as "not done yet". Churn of a pool that
        // has reached this generation once (runners recycled, demand within maxRunners) is its
        // steady state; only a generation not reached yet, or a shortfall the controller cannot
        // close now (waits, backoff), keeps Reconciling True.
        let steady = match &reconciling {
            Some((r, _)) => r.is_routine_churn() && (ready || self.settled_at_generation()),
            None => false,
        };
        let wanted = match stall {
            Some(st) => Conditions {
                ready: CondValue::new(false, st.reason, st.message.clone()),
                reconciling: CondValue::new(false, ConditionReason::Stalled, st.message.clone()),
                stalled: CondValue::new(true, st.reason, st.message),
            },
            None => {
                let (rr, rm) = reconciling.unwrap_or((ConditionReason::Converged, summary.clone()));
                let ready_cond = if ready {
                    CondValue::new(true, ConditionReason::RunnersReady, summary)
                } else {
                    CondValue::new(false, rr, rm.clone())
                };
                let reconciling = if steady {
                    CondValue::new(false, ConditionReason::SteadyState, rm)
                } else {
                    CondValue::new(is_reconciling, rr, rm)
                };
                Conditions {
                    ready: ready_cond,
                    reconciling,
                    stalled: CondValue::new(false, ConditionReason::NotStalled, String::new()),
                }
            }
        };
        (wanted, is_reconciling)
    }

    /// Has the pool reached its current generation once, and not fallen out of it since? The
    /// previous pass left Reconciling False at this generation for a reason other than a stall.
    fn settled_at_generation(&self) -> bool {
        let Some(prev) = self.input.previous_status else { return false };
        conditions::find(&prev.conditions, conditions::RECONCILING).is_some_and(|c| {
            c.status == "False"
                && c.reason != ConditionReason::Stalled.as_str()
                && c.observed_generation == self.input.pool.generation
        })
    }

    /// Reason and message of the work in progress, if the pool is not converged.
    fn reconciling_reason(
        &self,
        c: &Counts,
        ch: &Changes,
        failing: bool,
        summary: &str,
    ) -> Option<(ConditionReason, String)> {
        let with_summary = |r: ConditionReason| Some((r, summary.to_string()));
        if let Some(w) = &ch.wait {
            Some((w.reason, w.message.clone()))
        } else if !ch.created.is_empty() || c.supply < c.desired {
            with_summary(ConditionReason::ScalingUp)
        } else if c.provisioning > 0 {
            with_summary(ConditionReason::Provisioning)
        } else if c.idle.saturating_add(c.busy) > c.desired {
            with_summary(ConditionReason::ScalingDown)
        } else if ch.removed > 0 || c.terminating > 0 {
            with_summary(ConditionReason::Recycling)
        } else if failing {
            let why = self
                .st
                .last_failure
                .as_ref()
                .map_or("recovering from failures".to_string(), |f| f.message.clone());
            Some((ConditionReason::Backoff, why))
        } else {
            None
        }
    }

    /// Location and priority for the next create, or why none is possible now.
    fn placement(&mut self) -> Result<(String, Priority), Wait> {
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
            return Err(Wait {
                reason: ConditionReason::CapacityUnavailable,
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

    /// How the new runner registers: the pool's labels plus this install's owner label for the
    /// pool, which is what makes a registration without a group recognisably ours.
    fn registration(&self) -> RunnerRegistration {
        let spec = self.input.spec;
        let runner_group = spec.github.runner_group.clone();
        let owned = |mut labels: Vec<String>| {
            labels.push(self.owner_label.clone());
            labels
        };
        match spec.runner.registration.mode {
            RegistrationMode::Jit => {
                RunnerRegistration::Jit { labels: owned(demand::jit_labels(spec)), runner_group }
            }
            RegistrationMode::Token => RunnerRegistration::Token {
                labels: owned(spec.github.labels.clone()),
                runner_group,
                ephemeral: spec.runner.registration.ephemeral,
            },
        }
    }
}
