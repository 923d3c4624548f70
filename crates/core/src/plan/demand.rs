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
}

#[derive(Clone, Debug)]
struct Pending {
    job: QueuedJob,
    repository: Option<String>,
    organization: Option<String>,
}

/// Jobs known to be queued, by job id. A job leaves when it starts or completes, or when it is
/// older than the TTL given to [`PendingJobs::expire`]: GitHub does not redeliver a dropped
/// `completed` delivery, so without the TTL such a job would pin demand forever.
#[derive(Clone, Debug, Default)]
pub struct PendingJobs {
    jobs: HashMap<u64, Pending>,
}

impl PendingJobs {
    /// Apply one delivery. Returns true when the set of queued jobs changed.
    pub fn apply(&mut self, ev: &JobEvent, now: DateTime<Utc>) -> bool {
        match ev.action {
            JobAction::Queued => {
                let job = QueuedJob { id: ev.job_id, labels: ev.labels.clone(), queued_at: now };
                let repository = ev.repository.clone();
                let organization = ev.organization.clone().or_else(|| {
                    ev.repository.as_deref().and_then(|r| r.split_once('/')).map(|(o, _)| o.to_string())
                });
                self.jobs.insert(ev.job_id, Pending { job, repository, organization }).is_none()
            }
            JobAction::InProgress | JobAction::Completed => self.jobs.remove(&ev.job_id).is_some(),
            JobAction::Waiting | JobAction::Other => false,
        }
    }

    /// Drop jobs queued longer than `ttl` before `now`.
    pub fn expire(&mut self, now: DateTime<Utc>, ttl: std::time::Duration) {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        self.jobs.retain(|_, p| now.signed_duration_since(p.job.queued_at) <= ttl);
    }

    /// Queued jobs in the pool's GitHub scope, by job id (the planner matches labels).
    pub fn for_scope(&self, spec: &RunnerPoolSpec) -> Vec<QueuedJob> {
        let g = &spec.github;
        let mut v: Vec<QueuedJob> = self
            .jobs
            .values()
            .filter(|p| {
                if let Some(repo) = &g.repository {
                    p.repository.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(repo))
                } else if let Some(org) = &g.organization {
                    p.organization.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(org))
                } else {
                    // Enterprise scope: every job the webhook reports.
                    true
                }
            })
            .map(|p| p.job.clone())
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
        }
    }

    #[test]
    fn queued_then_started_then_expired() {
        let mut d = PendingJobs::default();
        let t0 = Utc::now();
        assert!(d.apply(&ev(1, JobAction::Queued, "acme/app"), t0));
        assert!(d.apply(&ev(2, JobAction::Queued, "other/x"), t0));
        let org = spec(serde_json::json!({"organization": "acme"}));
        let repo = spec(serde_json::json!({"repository": "acme/app"}));
        let other_repo = spec(serde_json::json!({"repository": "acme/lib"}));
        assert_eq!(d.for_scope(&org).len(), 1);
        assert_eq!(d.for_scope(&repo).len(), 1);
        assert_eq!(d.for_scope(&other_repo).len(), 0);
        assert!(d.apply(&ev(1, JobAction::InProgress, "acme/app"), t0));
        assert_eq!(d.for_scope(&org).len(), 0);
        d.expire(t0 + chrono::Duration::hours(2), std::time::Duration::from_secs(3600));
        assert!(d.is_empty());
    }
}
