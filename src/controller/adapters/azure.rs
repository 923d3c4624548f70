//! [`ContainerGroups`] through the Azure edge: one shared credential per identity, one client per identity,
//! and the tagged container-group list of a resource group shared by every pool in it for a
//! short interval (so N pools in one resource group cost one list, not N).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::azure::template::{TAG_CREATED, TAG_INSTALL_ID, TAG_POOL_NAME, TAG_POOL_NAMESPACE, TAG_POOL_UID};
use crate::azure::{
    self, AzureClient, AzureClientConfig, AzureError, AzureMetrics, CredentialRegistry, CredentialSpec,
    RateLimiter,
};
use crate::controller::ports::{AzureCredentials, ContainerGroups, CreateGroup, PoolContext, RunnerSecret};
use aci_runner_core::crd::Priority;
use aci_runner_core::plan::names::{group_concerns_pool, runner_name_prefix};
use aci_runner_core::plan::{
    ContainerState, EdgeError, EdgeErrorKind, GroupProvisioning, ObservedContainer, ObservedGroup, SweptGroup,
};

/// Map an Azure edge error to the planner's classification (messages carry no secrets).
pub fn edge_error(e: &AzureError) -> EdgeError {
    let kind = match e {
        AzureError::Throttled { retry_after, .. } => {
            EdgeErrorKind::Throttled { retry_after: Some(*retry_after) }
        }
        AzureError::Transient { .. } | AzureError::Unexpected(_) => EdgeErrorKind::Transient,
        AzureError::Credential { retryable: true, .. } => EdgeErrorKind::Transient,
        AzureError::Credential { retryable: false, .. } => EdgeErrorKind::Auth { permission: None },
        AzureError::QuotaExceeded { .. } => EdgeErrorKind::QuotaExceeded,
        AzureError::CapacityUnavailable { .. } => EdgeErrorKind::CapacityUnavailable,
        AzureError::InvalidImage { .. } => EdgeErrorKind::InvalidImage,
        AzureError::Auth { permission, .. } => EdgeErrorKind::Auth { permission: permission.clone() },
        AzureError::Conflict { .. } => EdgeErrorKind::Conflict,
        AzureError::NotFound { .. } => EdgeErrorKind::NotFound,
        AzureError::InvalidSpec { .. } | AzureError::ResponseTooLarge(_) => EdgeErrorKind::InvalidRequest,
    };
    EdgeError::new(kind, e.to_string())
}

fn provisioning(s: Option<&str>) -> GroupProvisioning {
    match s.map(str::to_ascii_lowercase).as_deref() {
        Some("pending") | Some("accepted") => GroupProvisioning::Pending,
        Some("creating") | Some("updating") | Some("repairing") => GroupProvisioning::Creating,
        Some("succeeded") => GroupProvisioning::Succeeded,
        Some("failed") | Some("canceled") | Some("unhealthy") => GroupProvisioning::Failed,
        Some("deleting") => GroupProvisioning::Deleting,
        Some(_) => GroupProvisioning::Unknown,
        None => GroupProvisioning::Pending,
    }
}

/// Reduce the edge's observation to the planner's.
pub fn observed(g: &azure::ArmGroup, cpu_mem: (f64, f64)) -> ObservedGroup {
    let container = g.container.as_ref().and_then(|c| {
        let state = match c.state.as_deref() {
            Some("Running") => ContainerState::Running,
            Some("Terminated") => ContainerState::Terminated { exit_code: c.exit_code },
            Some("Waiting") => ContainerState::Waiting { reason: c.detail_status.clone() },
            Some(_) => ContainerState::Waiting { reason: c.detail_status.clone() },
            None => return None,
        };
        Some(ObservedContainer {
            state,
            started_at: c.start_time,
            finished_at: c.finish_time,
            restart_count: c.restart_count,
        })
    });
    let created = g
        .tags
        .get(TAG_CREATED)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    ObservedGroup {
        name: g.name.clone(),
        pool_uid: g.tags.get(TAG_POOL_UID).cloned(),
        install_id: g.tags.get(TAG_INSTALL_ID).cloned(),
        pool_namespace: g.tags.get(TAG_POOL_NAMESPACE).cloned(),
        pool_name: g.tags.get(TAG_POOL_NAME).cloned(),
        location: g.location.clone(),
        provisioning: provisioning(g.provisioning_state.as_deref()),
        container,
        failure: None,
        created,
        priority: if g.priority.as_deref() == Some("Spot") { Priority::Spot } else { Priority::Regular },
        cpu: cpu_mem.0,
        memory_gb: cpu_mem.1,
    }
}

/// A cached group with the pool's resources (usage accounting).
fn with_resources(g: &ObservedGroup, pool: &PoolContext) -> ObservedGroup {
    ObservedGroup { cpu: pool.spec.runner.cpu, memory_gb: pool.spec.runner.memory_gb, ..g.clone() }
}

type ListKey = (String, String, String);
/// A resource group's list in the planner's form (resources unset: each pool's are filled in
/// on the way out), the only form kept: the full edge form of 10,000 groups is tens of MB.
type SharedList = Arc<Vec<ObservedGroup>>;

/// The Azure edge behind the [`ContainerGroups`] port.
pub struct AzureAdapter {
    registry: CredentialRegistry,
    controller_identity: Option<CredentialSpec>,
    cfg: AzureClientConfig,
    limiter: Arc<RateLimiter>,
    metrics: AzureMetrics,
    clients: Mutex<HashMap<String, AzureClient>>,
    /// (identity, subscription, resource group) → (fetched at, list).
    /// The last list per identity·subscription·resource group, shared (not copied) by the
    /// passes of every pool of that resource group.
    lists: tokio::sync::Mutex<HashMap<ListKey, (Instant, SharedList, u64)>>,
    list_ttl: Duration,
    /// Woken when a fresh list differs from the previous one (every pool of the resource group
    /// then reconciles at once instead of at its next requeue).
    changes: Option<tokio::sync::mpsc::Sender<()>>,
}

/// What matters for a reconcile in a group list (names and states), order-independent: the sum
/// of one hash per group. Equal lists give equal prints; a collision between different lists
/// would only delay the wake-up to the next requeue.
#[derive(Default)]
struct GroupPrint(u64);

impl GroupPrint {
    fn add(&mut self, g: &azure::ArmGroup) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&g.name, &g.provisioning_state, &g.state, g.container.as_ref().map(|c| &c.state)).hash(&mut h);
        self.0 = self.0.wrapping_add(h.finish());
    }
}

impl AzureAdapter {
    pub fn new(
        registry: CredentialRegistry,
        controller_identity: Option<CredentialSpec>,
        cfg: AzureClientConfig,
        limiter: Arc<RateLimiter>,
        metrics: AzureMetrics,
        list_ttl: Duration,
    ) -> Self {
        Self {
            registry,
            controller_identity,
            cfg,
            limiter,
            metrics,
            clients: Mutex::new(HashMap::new()),
            lists: tokio::sync::Mutex::new(HashMap::new()),
            list_ttl,
            changes: None,
        }
    }

    /// Signal `tx` whenever a refreshed list of a resource group differs from the previous one.
    pub fn with_change_signal(mut self, tx: tokio::sync::mpsc::Sender<()>) -> Self {
        self.changes = Some(tx);
        self
    }

    fn identity(&self, pool: &PoolContext) -> Result<(String, CredentialSpec), EdgeError> {
        match &pool.azure {
            AzureCredentials::Controller => {
                self.controller_identity.clone().map(|s| ("controller".to_string(), s)).ok_or_else(|| {
                    EdgeError::new(EdgeErrorKind::Auth { permission: None }, "no Azure identity configured")
                })
            }
            // The key includes a hash of the secret: two pools naming the same service principal
            // share a client only when they hold the same secret, so a pool with a wrong secret
            // never gets (or poisons) another pool's client, whatever namespace either is in.
            AzureCredentials::ServicePrincipal { tenant_id, client_id, client_secret } => Ok((
                format!("sp:{tenant_id}:{client_id}:{}", secret_fingerprint(client_secret.expose_secret())),
                CredentialSpec::ClientSecret {
                    tenant_id: tenant_id.clone(),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                },
            )),
        }
    }

    fn client(&self, pool: &PoolContext) -> Result<(String, AzureClient), EdgeError> {
        let (key, spec) = self.identity(pool)?;
        let mut clients = crate::sync::lock(&self.clients);
        let c = clients
            .entry(key.clone())
            .or_insert_with(|| {
                AzureClient::new(
                    self.registry.get(&spec),
                    self.cfg.clone(),
                    self.limiter.clone(),
                    self.metrics.clone(),
                )
            })
            .clone();
        Ok((key, c))
    }

    async fn invalidate(&self, identity: &str, pool: &PoolContext) {
        self.invalidate_at(identity, &sub(pool), &rg(pool)).await;
    }

    async fn invalidate_at(&self, identity: &str, subscription: &str, resource_group: &str) {
        let key = (identity.to_string(), subscription.to_lowercase(), resource_group.to_lowercase());
        // Mark stale but keep it: the next list is compared with it for the change signal.
        let mut lists = self.lists.lock().await;
        match (Instant::now().checked_sub(self.list_ttl + Duration::from_secs(1)), lists.get_mut(&key)) {
            (Some(stale), Some(entry)) => entry.0 = stale,
            _ => {
                lists.remove(&key);
            }
        }
    }
}

/// Short SHA-256 of a secret: tells credentials apart in cache keys without holding the value.
fn secret_fingerprint(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(secret.as_bytes())[..8])
}

fn sub(pool: &PoolContext) -> String {
    pool.spec.azure.subscription_id.to_lowercase()
}
fn rg(pool: &PoolContext) -> String {
    pool.spec.azure.resource_group.to_lowercase()
}

impl AzureAdapter {
    /// The resource group's list, from the shared cache or fetched (and shared).
    async fn cached_list(&self, pool: &PoolContext) -> Result<SharedList, EdgeError> {
        let (identity, client) = self.client(pool)?;
        let key = (identity, sub(pool), rg(pool));
        // Holding the lock while listing makes concurrent pools of one resource group wait
        // for the same list instead of sending their own.
        let mut lists = self.lists.lock().await;
        if let Some((_, l, _)) = lists.get(&key).filter(|(at, _, _)| at.elapsed() < self.list_ttl) {
            return Ok(Arc::clone(l));
        }
        // The stale list goes before the new one is read (only its print is compared), so that
        // two copies of a large list are never held at once.
        let previous = lists.remove(&key).map(|(_, _, print)| print);
        let mut print = GroupPrint::default();
        let l = client
            .list_groups_map(&pool.spec.azure.subscription_id, &pool.spec.azure.resource_group, |g| {
                print.add(&g);
                observed(&g, (0.0, 0.0))
            })
            .await
            .map_err(|e| edge_error(&e))?;
        let l = Arc::new(l);
        lists.insert(key, (Instant::now(), Arc::clone(&l), print.0));
        super::signal_if_changed(self.changes.as_ref(), previous, &print.0);
        Ok(l)
    }
}

#[async_trait::async_trait]
impl ContainerGroups for AzureAdapter {
    async fn list_groups(&self, pool: &PoolContext) -> Result<Vec<ObservedGroup>, EdgeError> {
        let groups = self.cached_list(pool).await?;
        Ok(groups.iter().map(|g| with_resources(g, pool)).collect())
    }

    async fn list_pool_groups(&self, pool: &PoolContext) -> Result<Vec<ObservedGroup>, EdgeError> {
        let groups = self.cached_list(pool).await?;
        let prefix = runner_name_prefix(&pool.meta.name);
        let concerns = |g: &ObservedGroup| group_concerns_pool(&pool.meta, &prefix, g);
        Ok(groups.iter().filter(|g| concerns(g)).map(|g| with_resources(g, pool)).collect())
    }

    async fn create_group(&self, pool: &PoolContext, req: CreateGroup) -> Result<(), EdgeError> {
        let (identity, client) = self.client(pool)?;
        let registration = match req.secret {
            RunnerSecret::Jit { encoded } => azure::RunnerBootstrap::Jit { encoded_config: encoded },
            RunnerSecret::Token { url, token, labels, runner_group, ephemeral } => {
                azure::RunnerBootstrap::Token { url, token, labels, group: runner_group, ephemeral }
            }
        };
        let input = azure::RunnerTemplateInput {
            name: req.name.clone(),
            location: req.location.clone(),
            priority: req.priority,
            registration,
            secure_env: pool.secure_env.clone(),
            registry_password: pool
                .registry_credentials
                .as_ref()
                .map(|(u, p)| azure::RegistryPassword { username: u.clone(), password: p.clone() }),
            created: req.created,
        };
        let meta = azure::GroupOwner {
            namespace: pool.meta.namespace.clone(),
            name: pool.meta.name.clone(),
            uid: pool.meta.uid.clone(),
            install_id: req.install_id.clone(),
            spec_hash: pool.spec_hash.clone(),
        };
        let group = azure::container_group(&pool.spec, &meta, &input);
        let r = client
            .create_group(
                &pool.spec.azure.subscription_id,
                &pool.spec.azure.resource_group,
                &req.name,
                &group,
            )
            .await;
        self.invalidate(&identity, pool).await;
        r.map(|_| ()).map_err(|e| edge_error(&e))
    }

    async fn delete_group(&self, pool: &PoolContext, name: &str) -> Result<(), EdgeError> {
        self.delete_group_in(pool, &pool.spec.azure.subscription_id, &pool.spec.azure.resource_group, name)
            .await
    }

    async fn container_logs(&self, pool: &PoolContext, name: &str, tail: u32) -> Result<String, EdgeError> {
        let (_, client) = self.client(pool)?;
        client
            .container_logs(
                &pool.spec.azure.subscription_id,
                &pool.spec.azure.resource_group,
                name,
                azure::template::CONTAINER_NAME,
                tail,
            )
            .await
            .map_err(|e| edge_error(&e))
    }

    async fn list_subscription_groups(&self, pool: &PoolContext) -> Result<Vec<SweptGroup>, EdgeError> {
        let (_, client) = self.client(pool)?;
        let res = (pool.spec.runner.cpu, pool.spec.runner.memory_gb);
        // Mapped page by page: the full edge form of a large subscription is never held.
        let groups = client
            .list_groups_in_subscription_map(&pool.spec.azure.subscription_id, |g| {
                let resource_group = g.resource_group().map(str::to_string);
                resource_group.map(|resource_group| SweptGroup { resource_group, group: observed(&g, res) })
            })
            .await
            .map_err(|e| edge_error(&e))?;
        Ok(groups.into_iter().flatten().collect())
    }

    async fn delete_group_in(
        &self,
        pool: &PoolContext,
        subscription: &str,
        resource_group: &str,
        name: &str,
    ) -> Result<(), EdgeError> {
        let (identity, client) = self.client(pool)?;
        let r = client.delete_group(subscription, resource_group, name).await;
        self.invalidate_at(&identity, subscription, resource_group).await;
        r.map_err(|e| edge_error(&e))
    }

    async fn release_group(&self, pool: &PoolContext, name: &str) -> Result<(), EdgeError> {
        let (identity, client) = self.client(pool)?;
        let r = client
            .release_group(
                &pool.spec.azure.subscription_id,
                &pool.spec.azure.resource_group,
                name,
                Utc::now(),
            )
            .await;
        self.invalidate(&identity, pool).await;
        r.map_err(|e| edge_error(&e))
    }
}
