//! The controller's view of its two edges. The reconciler speaks only these traits; the Azure
//! and GitHub clients implement them (see `adapters::azure.rs`, `adapters::github.rs`), which keeps the
//! reconcile loop independent of HTTP details and lets errors arrive already classified.
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use aci_runner_core::crd::{Priority, RunnerPoolSpec};
use aci_runner_core::plan::{EdgeError, ObservedGroup, ObservedRunner, PoolMeta, SweptGroup};

// Every secret value below is a `secrecy::SecretString`: derived `Debug` prints it redacted, it
// has no `Display`, and it is read only through `ExposeSecret` where it leaves for the edge.

/// GitHub credentials of a pool, read from its Secret.
#[derive(Clone, Debug)]
pub enum GithubCredentials {
    App { app_id: Option<String>, client_id: Option<String>, installation_id: u64, private_key: SecretString },
    Token { token: SecretString },
}

/// Azure credentials of a pool: the controller's own identity, or a per-pool service principal.
#[derive(Clone, Debug)]
pub enum AzureCredentials {
    Controller,
    ServicePrincipal { tenant_id: String, client_id: String, client_secret: SecretString },
}

/// Equal when both name the same identity with the same secret: the orphan sweep tries each
/// distinct identity once. The secrets are compared, never printed.
impl PartialEq for AzureCredentials {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Controller, Self::Controller) => true,
            (
                Self::ServicePrincipal { tenant_id, client_id, client_secret },
                Self::ServicePrincipal { tenant_id: t, client_id: c, client_secret: s },
            ) => tenant_id == t && client_id == c && client_secret.expose_secret() == s.expose_secret(),
            _ => false,
        }
    }
}

impl Eq for AzureCredentials {}

/// Everything an edge needs to act for one pool; secret values stay inside this struct.
#[derive(Clone, Debug)]
pub struct PoolContext {
    pub meta: PoolMeta,
    pub spec: RunnerPoolSpec,
    pub spec_hash: String,
    pub github: GithubCredentials,
    pub azure: AzureCredentials,
    /// Values of `spec.runner.secureEnvFrom`, resolved from Secrets: (env name, value).
    pub secure_env: Vec<(String, SecretString)>,
    /// Registry username/password from `spec.runner.imageRegistry.credentialsSecretRef`.
    pub registry_credentials: Option<(String, SecretString)>,
}

/// How the new runner's container authenticates to GitHub.
#[derive(Clone, Debug)]
pub enum RunnerSecret {
    /// Encoded JIT config (`ACTIONS_RUNNER_INPUT_JITCONFIG`).
    Jit { encoded: SecretString },
    /// Registration token plus what `config.sh` needs.
    Token {
        url: String,
        token: SecretString,
        labels: Vec<String>,
        runner_group: Option<String>,
        ephemeral: bool,
    },
}

/// A container group to create.
#[derive(Clone, Debug)]
pub struct CreateGroup {
    pub name: String,
    pub location: String,
    pub priority: Priority,
    pub secret: RunnerSecret,
    pub created: chrono::DateTime<chrono::Utc>,
    /// This controller's install id, tagged on the group.
    pub install_id: String,
}

/// Azure side.
#[async_trait::async_trait]
pub trait ContainerGroups: Send + Sync {
    /// Every container group carrying the controller's managed-by tag in the pool's resource group.
    async fn list_groups(&self, pool: &PoolContext) -> Result<Vec<ObservedGroup>, EdgeError>;
    /// The part of [`ContainerGroups::list_groups`] that concerns the pool's plan
    /// ([`aci_runner_core::plan::names::group_concerns_pool`]): what a reconcile pass reads, so that a pass
    /// does not copy a resource group shared with many pools whole.
    async fn list_pool_groups(&self, pool: &PoolContext) -> Result<Vec<ObservedGroup>, EdgeError>;
    /// Create (PUT) the group; returns once ARM accepted the request.
    async fn create_group(&self, pool: &PoolContext, req: CreateGroup) -> Result<(), EdgeError>;
    /// Delete the group; "already gone" is success.
    async fn delete_group(&self, pool: &PoolContext, name: &str) -> Result<(), EdgeError>;
    /// The last `tail` lines of the log of the runner container of the pool's group `name`, as
    /// ACI returns them (unredacted: the caller redacts before the text goes anywhere).
    async fn container_logs(&self, pool: &PoolContext, name: &str, tail: u32) -> Result<String, EdgeError>;
    /// Every container group carrying the controller's managed-by tag in the pool's subscription,
    /// in any resource group, each with the resource group it is in (read with the pool's Azure
    /// identity; needs read rights at subscription scope). Used by the orphan sweep only.
    async fn list_subscription_groups(&self, pool: &PoolContext) -> Result<Vec<SweptGroup>, EdgeError>;
    /// Delete the group `name` of `subscription`/`resource_group`, which need not be the pool's
    /// current ones, with the pool's Azure identity; "already gone" is success.
    async fn delete_group_in(
        &self,
        pool: &PoolContext,
        subscription: &str,
        resource_group: &str,
        name: &str,
    ) -> Result<(), EdgeError>;
    /// Remove the controller's tags from the group (orphan deletion policy).
    async fn release_group(&self, pool: &PoolContext, name: &str) -> Result<(), EdgeError>;
}

/// A fresh JIT registration.
#[derive(Clone, Debug)]
pub struct JitRegistration {
    pub runner_id: u64,
    pub encoded: SecretString,
}

/// GitHub side.
/// The JIT runner the planner asks for: its name, its labels and its runner group (`None`: the
/// scope's default group).
#[derive(Clone, Copy, Debug)]
pub struct JitRunner<'a> {
    pub name: &'a str,
    pub labels: &'a [String],
    pub runner_group: Option<&'a str>,
}

#[async_trait::async_trait]
pub trait RunnerRegistrations: Send + Sync {
    /// Runner registrations of the pool's scope (shared, cached list).
    async fn list_runners(&self, pool: &PoolContext) -> Result<Vec<ObservedRunner>, EdgeError>;
    /// The part of [`RunnerRegistrations::list_runners`] that concerns the pool's plan: runners with its
    /// runner-name shape ([`aci_runner_core::plan::names::is_pool_runner_name`]).
    async fn list_pool_runners(&self, pool: &PoolContext) -> Result<Vec<ObservedRunner>, EdgeError>;
    /// Register a JIT runner.
    async fn register_jit(
        &self,
        pool: &PoolContext,
        runner: JitRunner<'_>,
    ) -> Result<JitRegistration, EdgeError>;
    /// A registration token and the URL `config.sh` takes.
    async fn registration_token(&self, pool: &PoolContext) -> Result<(String, SecretString), EdgeError>;
    /// Whether a registration named `name` exists in the pool's scope, from a runner list read
    /// now (the shared cache is revalidated first), not the pass's possibly cached one.
    async fn is_registered_now(&self, pool: &PoolContext, name: &str) -> Result<bool, EdgeError>;
    /// Delete a registration; "already gone" is success, a busy runner is `Conflict`.
    async fn unregister(&self, pool: &PoolContext, runner_id: u64) -> Result<(), EdgeError>;
    /// When GitHub stops accepting runner `version` in the pool's scope (None: no date
    /// published), looked up at most every few hours per scope and version.
    async fn runner_version_deprecation(
        &self,
        pool: &PoolContext,
        version: &str,
    ) -> Result<Option<DateTime<Utc>>, EdgeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = GithubCredentials::Token { token: SecretString::from("ghp_supersecret") };
        let printed = format!("{c:?}");
        assert!(!printed.contains("supersecret"), "{printed}");
        assert!(printed.contains("[REDACTED]"), "{printed}");
    }
}
