//! [`Forge`] through the GitHub edge: one [`GithubHub`] for the process (shared installation
//! tokens, ETag-cached runner lists per scope, rate-limit budget), a client per pool credentials.
use std::sync::Arc;

use futures::future::BoxFuture;

use super::ports::{Forge, GithubCredentials, JitRegistration, PoolContext, SecretString};
use crate::github::bridge::{edge_error, observed_runner, scope_of};
use crate::github::{Credentials, GithubClient, GithubHub, Runner, Scope, Secret};
use crate::plan::{EdgeError, EdgeErrorKind, ObservedRunner};

/// (id, online, busy) of every runner of a scope, sorted.
type RunnerPrint = Vec<(u64, bool, bool)>;
/// The last list of a scope (shared with the hub's cache) and its fingerprint.
type SeenList = (Arc<Vec<Runner>>, RunnerPrint);

/// The GitHub edge behind the [`Forge`] port.
pub struct GithubPort {
    hub: GithubHub,
    clock: crate::github::Clock,
    /// Woken when a scope's runner list differs from the one seen before (see `with_change_signal`).
    changes: Option<tokio::sync::mpsc::Sender<()>>,
    /// Last list and its fingerprint per (API URL, scope).
    seen: std::sync::Mutex<std::collections::HashMap<(String, Scope), SeenList>>,
}

impl GithubPort {
    /// `clock` must be the clock the hub computes rate-limit resets on.
    pub fn new(hub: GithubHub, clock: crate::github::Clock) -> Self {
        Self { hub, clock, changes: None, seen: Default::default() }
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
                private_key_pem: Secret::new(private_key.expose()),
            },
            GithubCredentials::Token { token } => Credentials::Pat { token: Secret::new(token.expose()) },
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
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            // The same cached list as last time (most passes): nothing can have changed.
            let same = seen.get(&key).is_some_and(|(l, _)| Arc::ptr_eq(l, &runners));
            if !same {
                let mut f: RunnerPrint = runners.iter().map(|r| (r.id, r.online(), r.busy)).collect();
                f.sort_unstable();
                if let Some((_, prev)) = seen.insert(key, (Arc::clone(&runners), f.clone()))
                    && prev != f
                {
                    let _ = tx.try_send(());
                }
            }
        }
        Ok(runners)
    }
}

impl Forge for GithubPort {
    fn list_runners<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<ObservedRunner>, EdgeError>> {
        Box::pin(async move {
            let runners = self.cached_list(pool).await?;
            Ok(runners.iter().map(observed_runner).collect())
        })
    }

    fn list_pool_runners<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<ObservedRunner>, EdgeError>> {
        Box::pin(async move {
            let runners = self.cached_list(pool).await?;
            // Only the runners with this pool's runner-name shape concern its plan; the rest of
            // a shared scope's list is not copied per pass.
            let prefix = crate::plan::names::runner_name_prefix(&pool.meta.name);
            Ok(runners
                .iter()
                .filter(|r| crate::plan::names::is_pool_runner_name(&prefix, &r.name))
                .map(observed_runner)
                .collect())
        })
    }

    fn register_jit<'a>(
        &'a self,
        pool: &'a PoolContext,
        name: &'a str,
        labels: &'a [String],
        runner_group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<JitRegistration, EdgeError>> {
        Box::pin(async move {
            let (client, scope) = self.client(pool)?;
            let group =
                client.runner_group_id(&scope, runner_group.unwrap_or("")).await.map_err(|e| self.err(&e))?;
            let jit = client
                .generate_jit_config(&scope, name, labels, group, Some(&pool.spec.runner.work_folder))
                .await
                .map_err(|e| self.err(&e))?;
            Ok(JitRegistration { runner_id: jit.runner_id, encoded: SecretString::new(jit.encoded.expose()) })
        })
    }

    fn registration_token<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<(String, SecretString), EdgeError>> {
        Box::pin(async move {
            let (client, scope) = self.client(pool)?;
            let t = client.registration_token(&scope).await.map_err(|e| self.err(&e))?;
            Ok((t.url, SecretString::new(t.token.expose())))
        })
    }

    fn unregister<'a>(
        &'a self,
        pool: &'a PoolContext,
        runner_id: u64,
    ) -> BoxFuture<'a, Result<(), EdgeError>> {
        Box::pin(async move {
            let (client, scope) = self.client(pool)?;
            let r = client.delete_runner(&scope, runner_id).await;
            if let Err(crate::github::GithubError::Busy(_)) = &r {
                // Fix: GitHub says the runner is busy, so the shared list that showed it idle is
                // stale. Refresh it on the next pass; otherwise every pass until the list
                // interval ends decides the same removal and sends the same refused DELETE.
                client.invalidate_runners(&scope).await;
            }
            r.map_err(|e| self.err(&e))
        })
    }
}
