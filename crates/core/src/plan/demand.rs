//! Demand: the jobs queued for a pool's scope as `workflow_job` deliveries report them, label
//! matching between queued jobs and a pool, and registration labels
//! ([docs/planner.md, "Demand"](../../../../docs/planner.md#demand)).
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::crd::{OsType, RunnerPoolSpec};

use super::types::QueuedJob;

/// What a `workflow_job` delivery says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobAction {
    Queued,
    Waiting,
    InProgress,
    Completed,
    Other,
}

impl JobAction {
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "waiting" => Self::Waiting,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            _ => Self::Other,
        }
    }

    /// A short name for logs and metric labels (one of five: bounded).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Waiting => "waiting",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Other => "other",
        }
    }
}

/// One `workflow_job` delivery, reduced to what scaling needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    pub job_id: u64,
    pub action: JobAction,
    pub labels: Vec<String>,
    /// `owner/repo`.
    pub repository: Option<String>,
    pub organization: Option<String>,
    /// The GitHub App whose own webhook secret verified the delivery; `None` for the shared
    /// secret. Demand of App `N` feeds only pools of App `N` ([`DemandFilter`]).
    pub app: Option<u64>,
}

impl JobEvent {
    /// The organization: the delivery's, else the owner of its repository.
    fn organization(&self) -> Option<&str> {
        self.organization
            .as_deref()
            .or_else(|| self.repository.as_deref().and_then(|r| r.split_once('/')).map(|(o, _)| o))
    }
}

/// What one pool takes from webhook demand: jobs of its GitHub scope, whose labels its runners
/// carry, from deliveries attributed to `app` (the pool's App when that App has a webhook secret
/// of its own, else `None`: the shared secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemandFilter {
    repository: Option<String>,
    organization: Option<String>,
    labels: BTreeSet<String>,
    app: Option<u64>,
}

impl DemandFilter {
    pub fn new(spec: &RunnerPoolSpec, app: Option<u64>) -> Self {
        Self {
            repository: spec.github.repository.clone(),
            organization: spec.github.organization.clone(),
            labels: pool_label_set(spec),
            app,
        }
    }

    fn in_scope(&self, app: Option<u64>, repository: Option<&str>, organization: Option<&str>) -> bool {
        if app != self.app {
            return false;
        }
        if let Some(repo) = &self.repository {
            repository.is_some_and(|r| r.eq_ignore_ascii_case(repo))
        } else if let Some(org) = &self.organization {
            organization.is_some_and(|o| o.eq_ignore_ascii_case(org))
        } else {
            // Enterprise scope: every job its App's (or the shared) webhook reports.
            true
        }
    }

    /// Could a runner of this pool take the job this delivery reports?
    pub fn takes(&self, ev: &JobEvent) -> bool {
        self.in_scope(ev.app, ev.repository.as_deref(), ev.organization())
            && job_matches(&self.labels, &ev.labels)
    }
}

/// What [`PendingJobs::apply`] did with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A queued job stored.
    Stored,
    /// A job that started or completed (or a repeated `queued`) changed nothing stored, or did.
    Updated { changed: bool },
    /// A queued job no watched pool can take: not stored.
    NoPool,
    /// A queued job not stored: its App already has [`PendingJobs::MAX_PER_APP`] queued jobs.
    Full,
    /// `waiting` and actions GitHub may add: nothing to do.
    Ignored,
}

impl Applied {
    /// Did the set of queued jobs change?
    pub fn changed(self) -> bool {
        matches!(self, Self::Stored | Self::Updated { changed: true })
    }

    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Updated { .. } => "updated",
            Self::NoPool => "no_pool",
            Self::Full => "full",
            Self::Ignored => "ignored",
        }
    }
}

#[derive(Clone, Debug)]
struct Pending {
    job: QueuedJob,
    repository: Option<String>,
    organization: Option<String>,
}

/// Jobs known to be queued, by (App attribution, job id): a delivery attributed to one App can
/// neither add nor remove another App's jobs. A job leaves when it starts or completes, or when
/// it is older than the TTL given to [`PendingJobs::expire`]: GitHub does not redeliver a dropped
/// `completed` delivery, so without the TTL such a job would pin demand forever. Bounded: at
/// most [`PendingJobs::MAX_PER_APP`] jobs per attribution, and only jobs some pool takes.
#[derive(Clone, Debug, Default)]
pub struct PendingJobs {
    jobs: HashMap<(Option<u64>, u64), Pending>,
    per_app: HashMap<Option<u64>, usize>,
}

impl PendingJobs {
    /// Queued jobs kept per App attribution (each entry is well under 1 KiB: its labels are a
    /// pool's labels, its names GitHub-sized).
    pub const MAX_PER_APP: usize = 10_000;

    /// Apply one delivery; a `queued` job is stored only when one of `pools` takes it.
    pub fn apply<'a>(
        &mut self,
        ev: &JobEvent,
        now: DateTime<Utc>,
        pools: impl IntoIterator<Item = &'a DemandFilter>,
    ) -> Applied {
        let key = (ev.app, ev.job_id);
        match ev.action {
            JobAction::Queued => {
                if self.jobs.contains_key(&key) {
                    return Applied::Updated { changed: false };
                }
                if !pools.into_iter().any(|p| p.takes(ev)) {
                    return Applied::NoPool;
                }
                let count = self.per_app.entry(ev.app).or_default();
                if *count >= Self::MAX_PER_APP {
                    return Applied::Full;
                }
                *count += 1;
                let job = QueuedJob { id: ev.job_id, labels: ev.labels.clone(), queued_at: now };
                let pending = Pending {
                    job,
                    repository: ev.repository.clone(),
                    organization: ev.organization().map(str::to_string),
                };
                self.jobs.insert(key, pending);
                Applied::Stored
            }
            JobAction::InProgress | JobAction::Completed => Applied::Updated { changed: self.remove(&key) },
            JobAction::Waiting | JobAction::Other => Applied::Ignored,
        }
    }

    fn remove(&mut self, key: &(Option<u64>, u64)) -> bool {
        let gone = self.jobs.remove(key).is_some();
        if gone && let Some(c) = self.per_app.get_mut(&key.0) {
            *c = c.saturating_sub(1);
        }
        gone
    }

    /// Drop jobs queued longer than `ttl` before `now`.
    pub fn expire(&mut self, now: DateTime<Utc>, ttl: std::time::Duration) {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        let old: Vec<_> = self
            .jobs
            .iter()
            .filter(|(_, p)| now.signed_duration_since(p.job.queued_at) > ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.remove(&k);
        }
    }

    /// Queued jobs the pool's filter admits by scope and App, by job id (the planner matches
    /// labels).
    pub fn for_pool(&self, pool: &DemandFilter) -> Vec<QueuedJob> {
        let mut v: Vec<QueuedJob> = self
            .jobs
            .iter()
            .filter(|((app, _), p)| pool.in_scope(*app, p.repository.as_deref(), p.organization.as_deref()))
            .map(|(_, p)| p.job.clone())
            .collect();
        v.sort_by_key(|j| j.id);
        v
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// Default labels GitHub gives every self-hosted runner of the pool (ACI is x64 only).
pub fn default_labels(spec: &RunnerPoolSpec) -> [&'static str; 3] {
    let os = match spec.runner.os_type {
        OsType::Linux => "linux",
        OsType::Windows => "windows",
    };
    ["self-hosted", os, "x64"]
}

/// Lowercased set of labels the pool's runners carry: defaults plus `spec.github.labels`.
pub fn pool_label_set(spec: &RunnerPoolSpec) -> BTreeSet<String> {
    default_labels(spec)
        .iter()
        .map(|l| l.to_string())
        .chain(spec.github.labels.iter().map(|l| l.to_ascii_lowercase()))
        .collect()
}

/// Labels for a JIT config: defaults first, then the custom labels, without duplicates.
pub fn jit_labels(spec: &RunnerPoolSpec) -> Vec<String> {
    let mut seen = BTreeSet::new();
    default_labels(spec)
        .iter()
        .map(|l| l.to_string())
        .chain(spec.github.labels.iter().cloned())
        .filter(|l| seen.insert(l.to_ascii_lowercase()))
        .collect()
}

/// Can a runner of this pool take a job with these `runs-on` labels? Every job label must be a
/// pool label (case-insensitive); a job without labels matches nothing.
pub fn job_matches(pool_labels: &BTreeSet<String>, job_labels: &[String]) -> bool {
    !job_labels.is_empty() && job_labels.iter().all(|l| pool_labels.contains(&l.to_ascii_lowercase()))
}

/// Jobs queued within the TTL whose labels the pool satisfies.
pub fn matching_queued(
    spec: &RunnerPoolSpec,
    jobs: &[QueuedJob],
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> usize {
    let labels = pool_label_set(spec);
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut ids = BTreeSet::new();
    jobs.iter()
        .filter(|j| now.signed_duration_since(j.queued_at) <= ttl)
        .filter(|j| job_matches(&labels, &j.labels))
        .filter(|j| ids.insert(j.id))
        .count()
}

/// Does a registration carry all of the pool's custom labels (case-insensitive)?
pub fn runner_has_pool_labels(spec: &RunnerPoolSpec, runner_labels: &[String]) -> bool {
    let have: BTreeSet<String> = runner_labels.iter().map(|l| l.to_ascii_lowercase()).collect();
    spec.github.labels.iter().all(|l| have.contains(&l.to_ascii_lowercase()))
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    fn spec(scope: serde_json::Value) -> RunnerPoolSpec {
        let mut g = serde_json::json!({"labels": ["aci"], "appSecretRef": {"name": "a"}});
        g.as_object_mut().unwrap().extend(scope.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({"github": g, "azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "x1"}})).unwrap()
    }

    fn ev(id: u64, action: JobAction, repo: &str) -> JobEvent {
        JobEvent {
            job_id: id,
            action,
            labels: vec!["aci".into()],
            repository: Some(repo.into()),
            organization: None,
            app: None,
        }
    }

    #[test]
    fn queued_then_started_then_expired() {
        let mut d = PendingJobs::default();
        let t0 = Utc::now();
        let org = DemandFilter::new(&spec(serde_json::json!({"organization": "acme"})), None);
        let other = DemandFilter::new(&spec(serde_json::json!({"organization": "other"})), None);
        let repo = DemandFilter::new(&spec(serde_json::json!({"repository": "acme/app"})), None);
        let other_repo = DemandFilter::new(&spec(serde_json::json!({"repository": "acme/lib"})), None);
        let pools = [org.clone(), other.clone()];
        assert_eq!(d.apply(&ev(1, JobAction::Queued, "acme/app"), t0, &pools), Applied::Stored);
        assert_eq!(d.apply(&ev(2, JobAction::Queued, "other/x"), t0, &pools), Applied::Stored);
        // A redelivered `queued` changes nothing.
        assert!(!d.apply(&ev(2, JobAction::Queued, "other/x"), t0, &pools).changed());
        assert_eq!(d.for_pool(&org).len(), 1);
        assert_eq!(d.for_pool(&repo).len(), 1);
        assert_eq!(d.for_pool(&other_repo).len(), 0);
        assert!(d.apply(&ev(1, JobAction::InProgress, "acme/app"), t0, &pools).changed());
        assert_eq!(d.for_pool(&org).len(), 0);
        d.expire(t0 + chrono::Duration::hours(2), std::time::Duration::from_secs(3600));
        assert!(d.is_empty());
        assert_eq!(d.per_app.values().sum::<usize>(), 0);
    }

    #[test]
    fn only_jobs_a_pool_takes_are_stored() {
        let mut d = PendingJobs::default();
        let t0 = Utc::now();
        let pools = [DemandFilter::new(&spec(serde_json::json!({"organization": "acme"})), None)];
        // Labels no pool carries, another org, no pool at all.
        let gpu = JobEvent { labels: vec!["gpu".into()], ..ev(1, JobAction::Queued, "acme/app") };
        assert_eq!(d.apply(&gpu, t0, &pools), Applied::NoPool);
        assert_eq!(d.apply(&ev(2, JobAction::Queued, "else/app"), t0, &pools), Applied::NoPool);
        assert_eq!(d.apply(&ev(3, JobAction::Queued, "acme/app"), t0, &[]), Applied::NoPool);
        assert!(d.is_empty());
    }

    #[test]
    fn one_apps_deliveries_never_touch_another_apps_pools() {
        let mut d = PendingJobs::default();
        let t0 = Utc::now();
        let s = spec(serde_json::json!({"organization": "acme"}));
        let (app7, app8, shared) =
            (DemandFilter::new(&s, Some(7)), DemandFilter::new(&s, Some(8)), DemandFilter::new(&s, None));
        let pools = [app7.clone(), app8.clone(), shared.clone()];
        let as_app = |app, id, action| JobEvent { app, ..ev(id, action, "acme/app") };
        // App 8 reports a job for acme: only App 8's pool sees it.
        assert_eq!(d.apply(&as_app(Some(8), 1, JobAction::Queued), t0, &pools), Applied::Stored);
        assert_eq!(d.for_pool(&app8).len(), 1);
        assert!(d.for_pool(&app7).is_empty() && d.for_pool(&shared).is_empty());
        // ... and neither App 7 nor the shared secret can remove it.
        assert!(!d.apply(&as_app(Some(7), 1, JobAction::Completed), t0, &pools).changed());
        assert!(!d.apply(&as_app(None, 1, JobAction::Completed), t0, &pools).changed());
        assert_eq!(d.for_pool(&app8).len(), 1);
        // Without a pool of App 9, App 9's deliveries are not stored.
        assert_eq!(d.apply(&as_app(Some(9), 2, JobAction::Queued), t0, &pools), Applied::NoPool);
    }

    #[test]
    fn queued_jobs_are_capped_per_app() {
        let mut d = PendingJobs::default();
        let t0 = Utc::now();
        let s = spec(serde_json::json!({"organization": "acme"}));
        let pools = [DemandFilter::new(&s, Some(7)), DemandFilter::new(&s, None)];
        for id in 0..PendingJobs::MAX_PER_APP as u64 {
            assert_eq!(
                d.apply(&JobEvent { app: Some(7), ..ev(id, JobAction::Queued, "acme/a") }, t0, &pools),
                Applied::Stored
            );
        }
        let one_more = JobEvent { app: Some(7), ..ev(u64::MAX, JobAction::Queued, "acme/a") };
        assert_eq!(d.apply(&one_more, t0, &pools), Applied::Full);
        // Another attribution has its own room.
        assert_eq!(d.apply(&ev(1, JobAction::Queued, "acme/a"), t0, &pools), Applied::Stored);
        // A job that leaves makes room.
        assert!(
            d.apply(&JobEvent { app: Some(7), ..ev(0, JobAction::Completed, "acme/a") }, t0, &pools)
                .changed()
        );
        assert_eq!(d.apply(&one_more, t0, &pools), Applied::Stored);
    }
}
