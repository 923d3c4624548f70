//! Pending demand from `workflow_job` webhooks: queued jobs per scope, with a TTL so that a
//! dropped `completed` delivery cannot pin demand forever (GitHub does not redeliver).
use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::crd::RunnerPoolSpec;
use crate::plan::QueuedJob;

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

/// Queued jobs known from webhooks.
#[derive(Default, Debug)]
pub struct DemandStore {
    jobs: Mutex<HashMap<u64, Pending>>,
}

impl DemandStore {
    /// Apply one delivery. Returns true when the set of queued jobs changed.
    pub fn apply(&self, ev: &JobEvent, now: DateTime<Utc>) -> bool {
        let Ok(mut jobs) = self.jobs.lock() else { return false };
        match ev.action {
            JobAction::Queued => {
                let job = QueuedJob { id: ev.job_id, labels: ev.labels.clone(), queued_at: now };
                let repository = ev.repository.clone();
                let organization = ev.organization.clone().or_else(|| {
                    ev.repository.as_deref().and_then(|r| r.split_once('/')).map(|(o, _)| o.to_string())
                });
                jobs.insert(ev.job_id, Pending { job, repository, organization }).is_none()
            }
            JobAction::InProgress | JobAction::Completed => jobs.remove(&ev.job_id).is_some(),
            JobAction::Waiting | JobAction::Other => false,
        }
    }

    /// Drop jobs older than `ttl`.
    pub fn expire(&self, now: DateTime<Utc>, ttl: std::time::Duration) {
        let Ok(mut jobs) = self.jobs.lock() else { return };
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
        jobs.retain(|_, p| now - p.job.queued_at <= ttl);
    }

    /// Queued jobs in the pool's GitHub scope (the planner matches labels).
    pub fn for_scope(&self, spec: &RunnerPoolSpec) -> Vec<QueuedJob> {
        let Ok(jobs) = self.jobs.lock() else { return Vec::new() };
        let g = &spec.github;
        let mut v: Vec<QueuedJob> = jobs
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
        self.jobs.lock().map(|j| j.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
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
        let d = DemandStore::default();
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
