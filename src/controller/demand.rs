//! The controller's store of webhook demand: the core's [`PendingJobs`] shared between the
//! webhook task, which applies deliveries, and the reconcile passes, which read a pool's part.
//!
//! A delivery's queued job is stored only when a watched pool takes it: every reconcile pass of
//! a live pool with usable credentials registers the pool's [`DemandFilter`] (scope, labels and
//! App attribution); a pool being deleted or gone is forgotten.
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::ports::GithubCredentials;
use crate::sync::lock;
use aci_runner_core::crd::RunnerPoolSpec;
use aci_runner_core::plan::QueuedJob;
use aci_runner_core::plan::demand::{Applied, DemandFilter, JobEvent, PendingJobs};

/// Queued jobs known from webhooks, and the pools that may take them.
#[derive(Default, Debug)]
pub struct DemandStore {
    jobs: Mutex<PendingJobs>,
    /// By pool uid; at most one entry per live pool.
    pools: Mutex<HashMap<String, DemandFilter>>,
    /// Apps whose deliveries are verified with a webhook secret of their own.
    dedicated_apps: BTreeSet<u64>,
}

impl DemandStore {
    /// A store for a receiver with a webhook secret of their own for `dedicated_apps`.
    pub fn new(dedicated_apps: BTreeSet<u64>) -> Self {
        Self { dedicated_apps, ..Self::default() }
    }

    /// The attribution of deliveries a pool of App `app_id` takes: its App when that App has a
    /// secret of its own, else the shared secret's (`None`; also for PAT pools and pools that
    /// name their App by client id only).
    pub fn attribution(&self, app_id: Option<u64>) -> Option<u64> {
        app_id.filter(|id| self.dedicated_apps.contains(id))
    }

    /// Apply one delivery (a queued job only if a registered pool takes it).
    pub fn apply(&self, ev: &JobEvent, now: DateTime<Utc>) -> Applied {
        let pools = lock(&self.pools);
        lock(&self.jobs).apply(ev, now, pools.values())
    }

    /// Drop jobs older than `ttl`.
    pub fn expire(&self, now: DateTime<Utc>, ttl: std::time::Duration) {
        lock(&self.jobs).expire(now, ttl)
    }

    /// Register the pool (uid) as taking demand for its spec and App, and return its queued
    /// jobs (the planner matches labels).
    pub fn queued_for(&self, uid: &str, spec: &RunnerPoolSpec, app_id: Option<u64>) -> Vec<QueuedJob> {
        let filter = DemandFilter::new(spec, self.attribution(app_id));
        let jobs = lock(&self.jobs).for_pool(&filter);
        lock(&self.pools).insert(uid.to_string(), filter);
        jobs
    }

    /// The pool takes no more demand (being deleted, or gone).
    pub fn forget(&self, uid: &str) {
        lock(&self.pools).remove(uid);
    }

    /// Forget every pool whose uid is not in `live`.
    pub fn retain_pools(&self, live: &BTreeSet<String>) {
        lock(&self.pools).retain(|uid, _| live.contains(uid));
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The numeric App id of a pool's GitHub credentials (what a delivery's
/// `X-GitHub-Hook-Installation-Target-ID` names); `None` for a token, or an App named by client
/// id only.
pub fn app_id_of(credentials: &GithubCredentials) -> Option<u64> {
    match credentials {
        GithubCredentials::App { app_id, .. } => app_id.as_deref().and_then(|id| id.trim().parse().ok()),
        GithubCredentials::Token { .. } => None,
    }
}
