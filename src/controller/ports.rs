//! The controller's view of its two edges. The reconciler speaks only these traits; the Azure
//! and GitHub clients implement them (see `adapters::azure.rs`, `adapters::github.rs`), which keeps the
//! reconcile loop independent of HTTP details and lets errors arrive already classified.
use futures::future::BoxFuture;
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
}

/// Azure side.
pub trait ContainerGroups: Send + Sync {
    /// Every container group carrying the controller's managed-by tag in the pool's resource group.
    fn list_groups<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<ObservedGroup>, EdgeError>>;
    /// The part of [`ContainerGroups::list_groups`] that concerns the pool's plan
    /// ([`aci_runner_core::plan::names::group_concerns_pool`]): what a reconcile pass reads, so that a pass
    /// does not copy a resource group shared with many pools whole.
    fn list_pool_groups<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<ObservedGroup>, EdgeError>>;
    /// Create (PUT) the group; returns once ARM accepted the request.
    fn create_group<'a>(
        &'a self,
        pool: &'a PoolContext,
        req: CreateGroup,
    ) -> BoxFuture<'a, Result<(), EdgeError>>;
    /// Delete the group; "already gone" is success.
    fn delete_group<'a>(
        &'a self,
        pool: &'a PoolContext,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), EdgeError>>;
    /// Every container group carrying the controller's managed-by tag in the pool's subscription,
    /// in any resource group, each with the resource group it is in (read with the pool's Azure
    /// identity; needs read rights at subscription scope). Used by the orphan sweep only.
    fn list_subscription_groups<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<SweptGroup>, EdgeError>>;
    /// Delete the group `name` of `subscription`/`resource_group`, which need not be the pool's
    /// current ones, with the pool's Azure identity; "already gone" is success.
    fn delete_group_in<'a>(
        &'a self,
        pool: &'a PoolContext,
        subscription: &'a str,
        resource_group: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), EdgeError>>;
    /// Remove the controller's tags from the group (orphan deletion policy).
    fn release_group<'a>(
        &'a self,
        pool: &'a PoolContext,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), EdgeError>>;
}

/// A fresh JIT registration.
#[derive(Clone, Debug)]
pub struct JitRegistration {
    pub runner_id: u64,
    pub encoded: SecretString,
}

/// GitHub side.
pub trait RunnerRegistrations: Send + Sync {
    /// Runner registrations of the pool's scope (shared, cached list).
    fn list_runners<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<ObservedRunner>, EdgeError>>;
    /// The part of [`RunnerRegistrations::list_runners`] that concerns the pool's plan: runners with its
    /// runner-name shape ([`aci_runner_core::plan::names::is_pool_runner_name`]).
    fn list_pool_runners<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<Vec<ObservedRunner>, EdgeError>>;
    /// Register a JIT runner.
    fn register_jit<'a>(
        &'a self,
        pool: &'a PoolContext,
        name: &'a str,
        labels: &'a [String],
        runner_group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<JitRegistration, EdgeError>>;
    /// A registration token and the URL `config.sh` takes.
    fn registration_token<'a>(
        &'a self,
        pool: &'a PoolContext,
    ) -> BoxFuture<'a, Result<(String, SecretString), EdgeError>>;
    /// Delete a registration; "already gone" is success, a busy runner is `Conflict`.
    fn unregister<'a>(
        &'a self,
        pool: &'a PoolContext,
        runner_id: u64,
    ) -> BoxFuture<'a, Result<(), EdgeError>>;
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
