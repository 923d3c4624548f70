//! Conversions to the planner's types, so the controller's GitHub port stays a thin adapter.
use chrono::{DateTime, Utc};

use super::{DemandSignal, GithubError, Runner, Scope};
use crate::controller::demand::{JobAction, JobEvent};
use crate::crd::GithubSpec;
use crate::plan::{EdgeError, EdgeErrorKind, ObservedRunner};

/// The pool's registration scope (`None` when the spec names none or an invalid repository; the
/// CRD's validation makes exactly one of the three present).
pub fn scope_of(spec: &GithubSpec) -> Option<Scope> {
    if let Some(r) = &spec.repository {
        return Scope::repo(r);
    }
    if let Some(o) = &spec.organization {
        return Some(Scope::Org(o.clone()));
    }
    spec.enterprise.as_ref().map(|e| Scope::Enterprise(e.clone()))
}

/// Classify a GitHub edge error for the planner. `now` is the clock the reset was computed on.
/// A busy runner is a `Conflict` (GitHub refused the delete; retry after the job).
pub fn edge_error(e: &GithubError, now: DateTime<Utc>) -> EdgeError {
    let kind = match e {
        GithubError::RateLimited { reset } => {
            EdgeErrorKind::Throttled { retry_after: (*reset - now).to_std().ok() }
        }
        GithubError::Transient(_) => EdgeErrorKind::Transient,
        GithubError::Auth { permission, .. } => EdgeErrorKind::Auth { permission: permission.clone() },
        GithubError::NotFound(_) => EdgeErrorKind::NotFound,
        GithubError::Conflict(_) | GithubError::Busy(_) => EdgeErrorKind::Conflict,
        GithubError::InvalidRequest(_) => EdgeErrorKind::InvalidRequest,
    };
    EdgeError::new(kind, e.to_string())
}

/// A webhook demand signal as the controller's demand store takes it.
pub fn job_event(s: &DemandSignal) -> JobEvent {
    JobEvent {
        job_id: s.job_id,
        action: JobAction::parse(&s.action),
        labels: s.labels.clone(),
        repository: s.repository.clone(),
        organization: s.organization.clone(),
    }
}

/// The planner's view of a runner registration.
pub fn observed_runner(r: &Runner) -> ObservedRunner {
    ObservedRunner {
        id: r.id,
        name: r.name.clone(),
        online: r.online(),
        busy: r.busy,
        labels: r.labels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::RunnerStatus;

    #[test]
    fn classification() {
        let now = Utc::now();
        let e = edge_error(&GithubError::RateLimited { reset: now + chrono::Duration::seconds(30) }, now);
        assert_eq!(
            e.kind,
            EdgeErrorKind::Throttled { retry_after: Some(std::time::Duration::from_secs(30)) }
        );
        let e = edge_error(&GithubError::RateLimited { reset: now - chrono::Duration::seconds(1) }, now);
        assert_eq!(e.kind, EdgeErrorKind::Throttled { retry_after: None });
        let e = edge_error(&GithubError::Busy("runner 5".into()), now);
        assert_eq!(e.kind, EdgeErrorKind::Conflict);
        let e = edge_error(
            &GithubError::Auth { message: "denied".into(), permission: Some("administration=write".into()) },
            now,
        );
        assert_eq!(e.kind, EdgeErrorKind::Auth { permission: Some("administration=write".into()) });
        let r = Runner {
            id: 7,
            name: "p-abcde".into(),
            os: "linux".into(),
            status: RunnerStatus::Online,
            busy: true,
            ephemeral: Some(true),
            labels: vec!["self-hosted".into(), "aci".into()],
            runner_group_id: Some(1),
        };
        let o = observed_runner(&r);
        assert!(o.online && o.busy && o.id == 7 && o.labels.len() == 2);
        let spec: GithubSpec =
            serde_json::from_value(serde_json::json!({"repository": "o/r", "labels": ["aci"]})).unwrap();
        assert_eq!(scope_of(&spec), Some(Scope::Repo { owner: "o".into(), repo: "r".into() }));
        let spec: GithubSpec =
            serde_json::from_value(serde_json::json!({"enterprise": "e", "labels": ["aci"]})).unwrap();
        assert_eq!(scope_of(&spec), Some(Scope::Enterprise("e".into())));
        let ev = job_event(&DemandSignal {
            delivery_id: None,
            job_id: 9,
            action: "in_progress".into(),
            labels: vec!["aci".into()],
            runner_name: Some("p-1".into()),
            repository: Some("o/r".into()),
            organization: None,
        });
        assert_eq!((ev.job_id, ev.action, ev.repository.as_deref()), (9, JobAction::InProgress, Some("o/r")));
    }
}
