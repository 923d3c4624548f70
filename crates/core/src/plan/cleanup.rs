//! Cleanup of a live pool: finished runners are recycled, failed and timed-out ones removed
//! (their failure counted once), removals still listed asked again, and leftovers (offline
//! registrations without a group, groups of an older pool with the same name, JIT
//! registrations of failed creates) garbage-collected after mark-then-confirm
//! ([docs/planner.md, "Cleanup"](../../../../docs/planner.md#cleanup)).
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::reasons::EventReason;
use super::view::{Phase, Unit, View};
use super::{Pass, after, fmt_duration, list_names};
use crate::plan::types::*;

/// What cleanup did in one pass, for the counts and the Events.
#[derive(Default)]
struct Swept {
    /// Runners being removed (counted as terminating).
    removed: usize,
    recycled: Vec<String>,
    collected: Vec<String>,
    /// GC marks of this pass (candidates not seen again are forgotten).
    marks: BTreeMap<GcKey, DateTime<Utc>>,
}

impl<'a> Pass<'_, 'a> {
    /// Removal of finished, failed, timed-out runners; GC of offline registrations and stale
    /// groups. Returns how many runners are being removed.
    pub(super) fn plan_cleanup(&mut self, view: &View<'a>) -> usize {
        let mut swept = Swept::default();
        for u in &view.units {
            self.clean_unit(u, &mut swept);
        }
        self.collect_stale_groups(view, &mut swept);
        self.st.gc_marks = std::mem::take(&mut swept.marks);
        self.unregister_failed_creates(view);
        if !swept.recycled.is_empty() {
            self.event(
                EventType::Normal,
                EventReason::RunnerRecycled,
                format!(
                    "removing {} finished runner(s): {}",
                    swept.recycled.len(),
                    list_names(&swept.recycled)
                ),
            );
        }
        if !swept.collected.is_empty() {
            self.event(
                EventType::Normal,
                EventReason::GarbageCollected,
                format!("removing {} leftover(s): {}", swept.collected.len(), list_names(&swept.collected)),
            );
        }
        swept.removed
    }

    fn clean_unit(&mut self, u: &Unit<'a>, swept: &mut Swept) {
        match &u.phase {
            Phase::Failed { reason, message } => {
                if self.st.counted_failures.insert(u.name.clone()) {
                    self.record_failure(*reason, message.clone());
                }
                self.remove_unit(u, RemovalReason::Failed);
                swept.removed += 1;
            }
            Phase::Finished { exit_code, crashed } => {
                self.recycle(u, *exit_code, *crashed);
                swept.recycled.push(u.name.clone());
                swept.removed += 1;
            }
            Phase::TimedOut => {
                if self.st.counted_failures.insert(u.name.clone()) {
                    let t = fmt_duration(self.timings.registration_timeout);
                    self.record_failure(
                        FailureReason::RegistrationTimeout,
                        format!("runner {} did not come online on GitHub within {t}", u.name),
                    );
                }
                self.remove_unit(u, RemovalReason::RegistrationTimeout);
                swept.removed += 1;
            }
            Phase::Terminating => self.unregister_terminating(u, RemovalReason::Recycled),
            Phase::OfflineNoGroup => {
                if let Some(r) = u.runner
                    && self.gc_confirmed(GcKey::Runner(r.id), &mut swept.marks)
                {
                    self.actions.push(Action::UnregisterRunner {
                        id: r.id,
                        name: r.name.clone(),
                        reason: RemovalReason::GarbageCollected,
                    });
                    swept.collected.push(r.name.clone());
                }
            }
            Phase::Removing { reason } => {
                self.remove_unit(u, *reason);
                swept.removed += 1;
            }
            Phase::Busy | Phase::Idle | Phase::Provisioning | Phase::InFlight => {}
        }
    }

    /// A runner whose container exited: a crash before it was ever online counts as a failure;
    /// the runner is removed.
    fn recycle(&mut self, u: &Unit<'a>, exit_code: Option<i32>, crashed: bool) {
        if crashed
            && !self.st.seen_online.contains(&u.name)
            && self.st.counted_failures.insert(u.name.clone())
        {
            let code = exit_code.map_or("unknown".to_string(), |c| c.to_string());
            self.record_failure(
                FailureReason::ContainerCrashed,
                format!("runner container {} exited (code {code}) before coming online", u.name),
            );
        }
        let reason = if crashed { RemovalReason::Crashed } else { RemovalReason::Recycled };
        if !crashed && self.input.spec.runner.registration.ephemeral {
            // An ephemeral runner that exited 0 ran its job, and GitHub removes its
            // registration itself; a registration still listed is the list's staleness. Only
            // the group goes, with no unregister call per lifecycle. Should the registration
            // linger, it is an offline registration without a group and is collected after
            // gcGrace.
            if u.group.is_some() {
                self.delete_group(&u.name, reason, None, false);
            }
        } else {
            // A container running again (restarted) may have a runner that takes a job at any
            // moment: its group goes only once the registration is proven gone (`remove_unit`).
            self.remove_unit(u, reason);
        }
    }

    /// Groups of an older pool with this pool's namespace/name: unregister + delete once
    /// confirmed, never while their runner is busy.
    fn collect_stale_groups(&mut self, view: &View<'a>, swept: &mut Swept) {
        for (g, r) in &view.stale_groups {
            if r.is_some_and(|r| r.busy) || self.removal_pending(&g.name) {
                continue;
            }
            if self.gc_confirmed(GcKey::Group(g.name.clone()), &mut swept.marks) {
                let u = Unit { name: g.name.clone(), group: Some(g), runner: *r, phase: Phase::Idle };
                // Guarded: the lists may be cached, and an online runner shown idle may just
                // have taken a job; its group goes only if GitHub let us unregister it.
                self.remove_unit(&u, RemovalReason::Orphaned);
                swept.collected.push(g.name.clone());
            }
        }
    }

    /// JIT registrations whose group create failed are unregistered while offline and idle;
    /// once gone (or busy or online: then it is not a leftover) they are forgotten.
    fn unregister_failed_creates(&mut self, view: &View<'a>) {
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
}
