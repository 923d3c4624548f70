//! The controller's store of webhook demand: the core's [`PendingJobs`] shared between the
//! webhook task, which applies deliveries, and the reconcile passes, which read a pool's scope.
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::sync::lock;
use aci_runner_core::crd::RunnerPoolSpec;
use aci_runner_core::plan::QueuedJob;
use aci_runner_core::plan::demand::{JobEvent, PendingJobs};

/// Queued jobs known from webhooks.
#[derive(Default, Debug)]
pub struct DemandStore {
    jobs: Mutex<PendingJobs>,
}

impl DemandStore {
    /// Apply one delivery. Returns true when the set of queued jobs changed.
    pub fn apply(&self, ev: &JobEvent, now: DateTime<Utc>) -> bool {
        lock(&self.jobs).apply(ev, now)
    }

    /// Drop jobs older than `ttl`.
    pub fn expire(&self, now: DateTime<Utc>, ttl: std::time::Duration) {
        lock(&self.jobs).expire(now, ttl)
    }

    /// Queued jobs in the pool's GitHub scope (the planner matches labels).
    pub fn for_scope(&self, spec: &RunnerPoolSpec) -> Vec<QueuedJob> {
        lock(&self.jobs).for_scope(spec)
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
