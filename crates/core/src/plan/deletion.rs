//! Deletion of a pool: no creates; idle runners removed, busy ones drained until drainTimeout,
//! in-flight creates waited for; the orphan policy releases the groups instead; failed passes
//! count as attempts, spaced by the back-off, and the finalizer goes once everything is gone
//! or the attempts are used up
//! ([docs/planner.md, "Deletion"](../../../../docs/planner.md#deletion)).
use chrono::{DateTime, Utc};

use super::conditions::{CondValue, Conditions};
use super::reasons::{ConditionReason, EventReason};
use super::view::{Phase, View};
use super::{Pass, after, backoff, list_names};
use crate::crd::RunnerPoolStatus;
use crate::plan::types::*;

/// The conditions of a pool being deleted.
fn deleting_conditions(message: String) -> Conditions {
    Conditions {
        ready: CondValue::new(false, ConditionReason::Deleting, message.clone()),
        reconciling: CondValue::new(true, ConditionReason::Deleting, message),
        stalled: CondValue::new(false, ConditionReason::NotStalled, String::new()),
    }
}

/// How the pool's runners stand during deletion.
#[derive(Default)]
struct Progress {
    /// Busy runners before their drain deadline.
    draining: i32,
    /// Runners asked to go in this pass.
    removing: i32,
    /// Runners whose removal (or create) is awaited.
    waiting: i32,
}

impl<'a> Pass<'_, 'a> {
    pub(super) fn plan_deletion(&mut self, view: Option<&View<'a>>) -> Plan {
        let input = self.input;
        let cfg = input.config;
        let mut status = self.base_status();
        status.desired = 0;
        let blockers = self.deletion_blockers();
        if !blockers.is_empty() {
            self.count_deletion_attempt();
        }
        if self.st.deletion_attempts >= cfg.deletion_max_attempts {
            self.abandon_cleanup(&blockers);
            let wanted = deleting_conditions("cleanup abandoned; removing the finalizer".into());
            return self.finish(status, wanted, view, false, FinalizerDecision::Remove);
        }
        if input.pool.orphan_on_delete() {
            return self.release_groups(status, view, &blockers);
        }
        let creds_ok = matches!(input.credentials, CredentialStatus::Ok);
        let Some(view) = view.filter(|_| creds_ok) else {
            let wanted = deleting_conditions(format!(
                "cleanup blocked (attempt {} of {}): {}",
                self.st.deletion_attempts,
                cfg.deletion_max_attempts,
                blockers.join("; ")
            ));
            return self.finish(status, wanted, None, true, FinalizerDecision::Keep);
        };
        let drain_deadline = self.drain_deadline();
        let progress = self.remove_all(view, drain_deadline);
        status.busy = progress.draining;
        status.idle = 0;
        status.provisioning = 0;
        status.failed = 0;
        status.terminating =
            progress.removing.saturating_add(progress.waiting).saturating_add(progress.draining);
        if view.units.is_empty() && progress.removing == 0 {
            if let Some(plan) = self.hold_for_predecessor(&status, Some(view), "no runner left") {
                return plan;
            }
            self.event(
                EventType::Normal,
                EventReason::CleanupComplete,
                "all runners and container groups removed",
            );
            let wanted = deleting_conditions("all runners removed".into());
            return self.finish(status, wanted, Some(view), false, FinalizerDecision::Remove);
        }
        let wanted = self.deletion_progress_conditions(&progress, drain_deadline, &blockers);
        self.finish(status, wanted, Some(view), true, FinalizerDecision::Keep)
    }

    /// Nothing is left, but a create of the process before this one may still land on this
    /// pool (older than the process): the finalizer stays, and the pass is woken when the
    /// predecessor's writes can no longer arrive. None: nothing of a predecessor is on the wire.
    fn hold_for_predecessor(
        &mut self,
        status: &RunnerPoolStatus,
        view: Option<&View<'a>>,
        left: &str,
    ) -> Option<Plan> {
        let input = self.input;
        let until = after(input.acting_since, input.config.predecessor_writes);
        let older = input.pool.created.is_none_or(|c| c <= input.acting_since);
        if !older || self.now >= until {
            return None;
        }
        let wanted = deleting_conditions(format!(
            "{left}; waiting until {} in case a create sent by the previous controller process still lands",
            until.to_rfc3339()
        ));
        self.wake.push(until);
        Some(self.finish(status.clone(), wanted, view, true, FinalizerDecision::Keep))
    }

    fn deletion_ts(&self) -> DateTime<Utc> {
        self.input.pool.deletion_timestamp.unwrap_or(self.now)
    }

    fn drain_deadline(&self) -> DateTime<Utc> {
        after(self.deletion_ts(), self.timings.drain_timeout)
    }

    /// What makes this pass a failed cleanup attempt: failed lists, unusable credentials
    /// (unless the orphan policy needs neither), failed removals, or being overdue.
    fn deletion_blockers(&self) -> Vec<String> {
        let input = self.input;
        // A pool outside its tenant policy gets no Azure or GitHub call, cleanup included.
        if let Err(e) = input.permission {
            return vec![e.to_string()];
        }
        let mut blockers: Vec<String> = Vec::new();
        if let Err(e) = &input.groups {
            blockers.push(e.message.clone());
        }
        if !input.pool.orphan_on_delete() {
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
        let overdue = after(self.drain_deadline(), input.config.deletion_grace);
        if blockers.is_empty() && self.now >= overdue {
            blockers.push(format!("cleanup not finished by {}", overdue.to_rfc3339()));
        }
        blockers
    }

    /// Count a failed attempt, at most one per back-off period: a burst of passes (triggers,
    /// requeues) cannot use the budget up during a short outage.
    fn count_deletion_attempt(&mut self) {
        let cfg = self.input.config;
        let spacing = |attempts: u32| backoff(cfg.backoff_base, cfg.backoff_max, attempts);
        let due = self.st.deletion_last_attempt.map(|t| after(t, spacing(self.st.deletion_attempts)));
        if due.is_none_or(|d| d <= self.now) {
            self.st.deletion_attempts = self.st.deletion_attempts.saturating_add(1);
            self.st.deletion_last_attempt = Some(self.now);
        }
        if let Some(t) = self.st.deletion_last_attempt {
            self.wake.push(after(t, spacing(self.st.deletion_attempts)));
        }
    }

    /// The attempts are used up: a Warning names what may be left behind.
    fn abandon_cleanup(&mut self, blockers: &[String]) {
        let left: Vec<String> = self.st.last_known.iter().cloned().collect();
        let what = if left.is_empty() {
            "unknown (the lists never succeeded)".to_string()
        } else {
            list_names(&left)
        };
        self.event(
            EventType::Warning,
            EventReason::CleanupAbandoned,
            format!(
                "giving up after {} failed cleanup attempts ({}); container groups and runner registrations may be left behind: {what}",
                self.st.deletion_attempts,
                blockers.join("; ")
            ),
        );
    }

    /// Orphan policy: release every group of the pool (its registrations stay), then remove
    /// the finalizer once the list shows none.
    fn release_groups(
        &mut self,
        status: RunnerPoolStatus,
        view: Option<&View<'a>>,
        blockers: &[String],
    ) -> Plan {
        let input = self.input;
        let Ok(groups) = &input.groups else {
            let wanted = deleting_conditions(format!("waiting for the group list: {}", blockers.join("; ")));
            return self.finish(status, wanted, None, true, FinalizerDecision::Keep);
        };
        let names: Vec<String> = groups
            .iter()
            .filter(|g| super::install::is_pool_group(input.install, &input.pool.uid, g))
            .map(|g| g.name.clone())
            .collect();
        if names.is_empty() {
            if let Some(plan) = self.hold_for_predecessor(&status, view, "no container group left") {
                return plan;
            }
            let wanted = deleting_conditions("released all container groups".into());
            return self.finish(status, wanted, view, false, FinalizerDecision::Remove);
        }
        for n in &names {
            self.actions.push(Action::ReleaseGroup { name: n.clone() });
        }
        self.event(
            EventType::Normal,
            EventReason::Orphaned,
            format!(
                "deletion policy orphan: leaving {} container group(s) and their registrations in place: {}",
                names.len(),
                list_names(&names)
            ),
        );
        let wanted = deleting_conditions(format!("releasing {} container group(s)", names.len()));
        self.finish(status, wanted, view, true, FinalizerDecision::Keep)
    }

    /// Remove every runner that is not busy; busy ones after the drain deadline.
    fn remove_all(&mut self, view: &View<'a>, drain_deadline: DateTime<Utc>) -> Progress {
        let mut p = Progress::default();
        for u in &view.units {
            match u.phase {
                Phase::Busy if self.now < drain_deadline => {
                    p.draining += 1;
                    self.wake.push(drain_deadline);
                }
                Phase::Busy if self.removal_pending(&u.name) => p.waiting += 1,
                Phase::Busy => {
                    // The job did not finish within drainTimeout: stop the container first
                    // (GitHub refuses to delete a busy runner), then unregister.
                    if u.group.is_some() {
                        self.delete_group(&u.name, RemovalReason::DrainTimeout, None, false);
                    }
                    if let Some(r) = u.runner {
                        self.actions.push(Action::UnregisterRunner {
                            id: r.id,
                            name: r.name.clone(),
                            reason: RemovalReason::DrainTimeout,
                        });
                    }
                    p.removing += 1;
                }
                Phase::Terminating => {
                    self.unregister_terminating(u, RemovalReason::PoolDeleted);
                    p.waiting += 1;
                }
                Phase::InFlight => p.waiting += 1,
                _ => {
                    self.remove_unit(u, RemovalReason::PoolDeleted);
                    p.removing += 1;
                }
            }
        }
        for (id, name) in self.st.pending_unregister.clone() {
            if view.runners_by_id.get(&id).is_some_and(|r| !r.busy) && !self.removal_pending(&name) {
                self.actions.push(Action::UnregisterRunner { id, name, reason: RemovalReason::CreateFailed });
                p.removing += 1;
            }
        }
        p
    }

    fn deletion_progress_conditions(
        &self,
        p: &Progress,
        drain_deadline: DateTime<Utc>,
        blockers: &[String],
    ) -> Conditions {
        let cfg = self.input.config;
        let mut msg = format!("removing {} runner(s), waiting for {}", p.removing, p.waiting);
        if p.draining > 0 {
            msg.push_str(&format!(
                "; {} busy runner(s) draining until {}",
                p.draining,
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
        if p.draining > 0 && p.removing == 0 && p.waiting == 0 {
            wanted.ready.reason = ConditionReason::Draining;
            wanted.reconciling.reason = ConditionReason::Draining;
        }
        wanted
    }
}
