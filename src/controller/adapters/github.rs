//! [`RunnerRegistrations`] through the GitHub edge: one [`GithubHub`] for the process (shared installation
//! tokens, ETag-cached runner lists per scope, rate-limit budget), a client per pool credentials.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::controller::ports::{
    GithubCredentials, JitRegistration, JitRunner, PoolContext, RunnerRegistrations,
};
use crate::github::{Credentials, DemandSignal, GithubClient, GithubError, GithubHub, Runner, Scope};
use aci_runner_core::crd::GithubSpec;
use aci_runner_core::plan::demand::{JobAction, JobEvent};
use aci_runner_core::plan::{EdgeError, EdgeErrorKind, ObservedRunner};

/// (id, online, busy) of every runner of a scope, sorted.
type RunnerPrint = Vec<(u64, bool, bool)>;
/// The last list of a scope (shared with the hub's cache) and its fingerprint.
type SeenList = (Arc<Vec<Runner>>, RunnerPrint);

/// The GitHub edge behind the [`RunnerRegistrations`] port.
pub struct GithubAdapter {
    hub: GithubHub,
    clock: crate::github::Clock,
    /// Woken when a scope's runner list differs from the one seen before (see `with_change_signal`).
    changes: Option<tokio::sync::mpsc::Sender<()>>,
    /// Last list and its fingerprint per (API URL, scope).
    seen: std::sync::Mutex<std::collections::HashMap<(String, Scope), SeenList>>,
    /// Deprecation answers per (API URL, scope, runner version), with when they were read.
    deprecations: std::sync::Mutex<std::collections::HashMap<(String, Scope, String), Deprecation>>,
}

/// A deprecation answer and until when it is reused.
type Deprecation = (std::time::Instant, Option<DateTime<Utc>>);

/// How long a deprecation answer is reused: GitHub publishes these dates months ahead.
const DEPRECATION_TTL: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// How long a failed lookup waits before it is tried again (a server without the endpoint, or
/// refusing it, would otherwise cost one request per pass).
const DEPRECATION_RETRY: std::time::Duration = std::time::Duration::from_secs(600);

impl GithubAdapter {
    /// `clock` must be the clock the hub computes rate-limit resets on.
    pub fn new(hub: GithubHub, clock: crate::github::Clock) -> Self {
        Self { hub, clock, changes: None, seen: Default::default(), deprecations: Default::default() }
    }

    /// Signal `tx` whenever a scope's shared runner list changes (a runner came online, went
    /// offline, took or finished a job), so that every pool on the scope reconciles at once.
    pub fn with_change_signal(mut self, tx: tokio::sync::mpsc::Sender<()>) -> Self {
        self.changes = Some(tx);
        self
    }

    pub fn hub(&self) -> &GithubHub {
        &self.hub
    }

    fn client(&self, pool: &PoolContext) -> Result<(GithubClient, Scope), EdgeError> {
        let scope = scope_of(&pool.spec.github).ok_or_else(|| {
            EdgeError::new(
                EdgeErrorKind::InvalidRequest,
                "spec.github names no valid organization, repository or enterprise",
            )
        })?;
        let creds = match &pool.github {
            GithubCredentials::App { app_id, client_id, installation_id, private_key } => Credentials::App {
                app_id: app_id.clone(),
                client_id: client_id.clone(),
                installation_id: *installation_id,
                private_key_pem: private_key.clone(),
            },
            GithubCredentials::Token { token } => Credentials::Pat { token: token.clone() },
        };
        let client = self.hub.client(&pool.spec.github.api_url, creds).map_err(|e| self.err(&e))?;
        Ok((client, scope))
    }

    fn err(&self, e: &crate::github::GithubError) -> EdgeError {
        edge_error(e, (self.clock)())
    }

    /// The scope's shared runner list (the hub's cache), and the change signal when it differs
    /// from the one seen before.
    async fn cached_list(&self, pool: &PoolContext) -> Result<Arc<Vec<Runner>>, EdgeError> {
        let (client, scope) = self.client(pool)?;
        let runners = client.list_runners(&scope).await.map_err(|e| self.err(&e))?;
        if let Some(tx) = &self.changes {
            let key = (pool.spec.github.api_url.clone(), scope.clone());
            let mut seen = crate::sync::lock(&self.seen);
            // The same cached list as last time (most passes): nothing can have changed.
            let same = seen.get(&key).is_some_and(|(l, _)| Arc::ptr_eq(l, &runners));
            if !same {
                let mut f: RunnerPrint = runners.iter().map(|r| (r.id, r.online(), r.busy)).collect();
                f.sort_unstable();
                let previous = seen.insert(key, (Arc::clone(&runners), f.clone())).map(|(_, p)| p);
                super::signal_if_changed(Some(tx), previous, &f);
            }
        }
        Ok(runners)
    }
}

#[async_trait::async_trait]
impl RunnerRegistrations for GithubAdapter {
    async fn list_runners(&self, pool: &PoolContext) -> Result<Vec<ObservedRunner>, EdgeError> {
        let runners = self.cached_list(pool).await?;
        Ok(runners.iter().map(observed_runner).collect())
    }

    async fn list_pool_runners(&self, pool: &PoolContext) -> Result<Vec<ObservedRunner>, EdgeError> {
        let runners = self.cached_list(pool).await?;
        // Only the runners with this pool's runner-name shape concern its plan; the rest of
        // a shared scope's list is not copied per pass.
        let prefix = aci_runner_core::plan::names::runner_name_prefix(&pool.meta.name);
        Ok(runners
            .iter()
            .filter(|r| aci_runner_core::plan::names::is_pool_runner_name(&prefix, &r.name))
            .map(observed_runner)
            .collect())
    }

    async fn register_jit(
        &self,
        pool: &PoolContext,
        runner: JitRunner<'_>,
    ) -> Result<JitRegistration, EdgeError> {
        let (client, scope) = self.client(pool)?;
        let group = client
            .runner_group_id(&scope, runner.runner_group.unwrap_or(""))
            .await
            .map_err(|e| self.err(&e))?;
        let jit = client
            .generate_jit_config(
                &scope,
                runner.name,
                runner.labels,
                group,
                Some(&pool.spec.runner.work_folder),
            )
            .await
            .map_err(|e| self.err(&e))?;
        Ok(JitRegistration { runner_id: jit.runner_id, encoded: jit.encoded })
    }

    async fn registration_token(&self, pool: &PoolContext) -> Result<(String, SecretString), EdgeError> {
        let (client, scope) = self.client(pool)?;
        let t = client.registration_token(&scope).await.map_err(|e| self.err(&e))?;
        Ok((t.url, t.token))
    }

    async fn is_registered_now(&self, pool: &PoolContext, name: &str) -> Result<bool, EdgeError> {
        let (client, scope) = self.client(pool)?;
        client.invalidate_runners(&scope).await;
        Ok(self.cached_list(pool).await?.iter().any(|r| r.name == name))
    }

    async fn runner_version_deprecation(
        &self,
        pool: &PoolContext,
        version: &str,
    ) -> Result<Option<DateTime<Utc>>, EdgeError> {
        let (client, scope) = self.client(pool)?;
        let key = (pool.spec.github.api_url.clone(), scope.clone(), version.to_string());
        let now = std::time::Instant::now();
        if let Some((_, at)) =
            crate::sync::lock(&self.deprecations).get(&key).filter(|(until, _)| now < *until)
        {
            return Ok(*at);
        }
        let answer = client.runner_version_deprecation(&scope, version).await;
        let (keep, at) = match &answer {
            Ok(at) => (DEPRECATION_TTL, *at),
            Err(_) => (DEPRECATION_RETRY, None),
        };
        crate::sync::lock(&self.deprecations).insert(key, (now + keep, at));
        answer.map_err(|e| self.err(&e))
    }

    async fn unregister(&self, pool: &PoolContext, runner_id: u64) -> Result<(), EdgeError> {
        let (client, scope) = self.client(pool)?;
        let r = client.delete_runner(&scope, runner_id).await;
        if let Err(crate::github::GithubError::Busy(_)) = &r {
            // GitHub says the runner is busy, so the shared list that showed it idle is stale:
            // the next pass reads a fresh one instead of deciding the same refused removal
            // until the list interval ends.
            client.invalidate_runners(&scope).await;
        }
        r.map_err(|e| self.err(&e))
    }
}

// Conversions between the GitHub edge's types and the planner's.

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
        GithubError::InvalidRequest(_) | GithubError::ResponseTooLarge(_) => EdgeErrorKind::InvalidRequest,
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
        app: s.app,
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
mod conversion_tests {
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
            app: None,
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
