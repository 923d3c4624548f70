//! Simulated Azure Resource Manager for `Microsoft.ContainerInstance/containerGroups` (API
//! 2023-05-01, plus the `2024-05-01-preview` version azure_mgmt_containerinstance 0.21 sends),
//! with a simulated Entra ID token endpoint (client secret and federated client assertions) and a
//! managed-identity endpoint, all on one HTTP listener.
//!
//! Container groups move through ACI's states over *simulated* time ([`SimClock`]); when a
//! container starts, the attached [`ContainerRuntime`] runs it and reports its exit, and the
//! simulator applies the group's `restartPolicy`. Quotas, ARM throttling and faults are
//! configurable ([`ArmSimConfig`]) at start and at run time (Rust methods on [`ArmSimHandle`] or
//! `/_sim/arm/...` over HTTP). See `docs/simulator-azure.md`.
mod entra;
mod http;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sim::SimHandle;
use crate::sim::clock::SimClock;
use crate::sim::runtime::ContainerRuntime;

pub use entra::{FEDERATED_AUDIENCE, FederatedAssertionClaims};
pub use state::{CallRecord, ContainerSummary, EnvRecord, GroupSummary};

/// API versions the simulated ARM accepts for container groups.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["2023-05-01", "2024-05-01-preview"];

/// Errors starting or configuring the simulator.
#[derive(Debug, thiserror::Error)]
pub enum ArmSimError {
    #[error("cannot bind the ARM simulator listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("invalid simulator configuration: {0}")]
    Config(String),
}

/// A federated identity credential registered on the simulated app registration: a client
/// assertion JWT is accepted when its `iss`, `sub` and `aud` match and its HS256 signature verifies
/// with the simulator's federation signing key ([`ArmSimHandle::federated_assertion`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredential {
    /// Application (client) id this credential belongs to.
    pub client_id: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default = "default_federated_audience")]
    pub audience: String,
}

fn default_federated_audience() -> String {
    FEDERATED_AUDIENCE.to_string()
}

/// A token bucket: `capacity` requests, refilled at `refill_per_sec` per simulated second.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    pub capacity: f64,
    pub refill_per_sec: f64,
}

/// Quotas and throttling, per subscription·region (ARM buckets: per subscription).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Quotas {
    /// Container groups that may exist per subscription·region.
    pub container_groups: u32,
    /// Sum of container CPU requests per subscription·region.
    pub cores: f64,
    /// Container-group creates per 5 simulated minutes per subscription·region.
    pub creates_per_5min: u32,
    /// Container-group creates per simulated hour per subscription·region.
    pub creates_per_hour: u32,
    /// ARM read requests (GET) per subscription.
    pub reads: BucketSpec,
    /// ARM write requests (PUT/POST/DELETE) per subscription.
    pub writes: BucketSpec,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            container_groups: 100,
            cores: 100.0,
            creates_per_5min: 100,
            creates_per_hour: 300,
            reads: BucketSpec { capacity: 250.0, refill_per_sec: 25.0 },
            writes: BucketSpec { capacity: 200.0, refill_per_sec: 10.0 },
        }
    }
}

/// Random answers injected for one operation (probabilities 0..=1, drawn from the seeded RNG).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct OpFaults {
    /// 429 `TooManyRequests` with `Retry-After`.
    pub throttle: f64,
    /// 500 `InternalServerError`.
    pub internal_error: f64,
    /// 503 `ServiceUnavailable`.
    pub unavailable: f64,
    /// Simulated time every request of the operation takes before it is answered (real ARM PUTs
    /// take hundreds of milliseconds to seconds).
    pub latency_ms: u64,
}

/// A principal that lacks permission for an ARM action (answers 403 `AuthorizationFailed`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeniedAction {
    pub client_id: String,
    /// e.g. `Microsoft.ContainerInstance/containerGroups/write`.
    pub action: String,
}

/// Fault injection, reproducible from `seed`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultConfig {
    pub seed: u64,
    /// Per operation: `create`, `update`, `get`, `delete`, `list`, `listAll`, `stop`, `start`, `restart`,
    /// `operation`, `token`.
    pub ops: BTreeMap<String, OpFaults>,
    /// Per location: how many container groups the region can hold (beyond it: 409
    /// `ServiceUnavailable`). 0 = no capacity at all. Locations not listed are unlimited.
    pub capacity: BTreeMap<String, u32>,
    /// Images whose create answers 400 `InaccessibleImage`.
    pub inaccessible_images: BTreeSet<String>,
    /// Per location: extra provisioning time in simulated milliseconds (slow provisioning).
    pub slow_provisioning_ms: BTreeMap<String, u64>,
    /// Probability that a container crashes (exit code 1) right after it starts, before the
    /// runtime (the simulated runner) gets to run it.
    pub crash_before_registration: f64,
    pub denied_actions: Vec<DeniedAction>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            ops: BTreeMap::new(),
            capacity: BTreeMap::new(),
            inaccessible_images: BTreeSet::new(),
            slow_provisioning_ms: BTreeMap::new(),
            crash_before_registration: 0.0,
            denied_actions: Vec::new(),
        }
    }
}

/// How DELETE answers.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum DeleteMode {
    /// 200 with the group body; the group is gone at once (GET → 404).
    #[default]
    Sync,
    /// 202 with `Azure-AsyncOperation`; the group shows `Deleting` until `delete_delay_ms`.
    Async,
}

/// Simulator configuration. Every field has a default (`ArmSimConfig::default()`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ArmSimConfig {
    /// Listen address; default `127.0.0.1:0`.
    pub listen: SocketAddr,
    pub tenant_id: String,
    /// Pre-registered app registration (client credentials with a secret).
    pub client_id: String,
    pub client_secret: String,
    pub federated_credentials: Vec<FederatedCredential>,
    /// Client ids of user-assigned managed identities served by the managed-identity endpoint
    /// (a system-assigned identity is always available).
    pub managed_identities: Vec<String>,
    /// Access-token lifetime in simulated seconds.
    pub token_lifetime_secs: u64,
    /// Token audiences ARM accepts (besides the simulator's own URL).
    pub arm_audiences: Vec<String>,
    /// Locations ACI offers; creates elsewhere answer 400 `LocationNotAvailableForResourceType`.
    pub locations: Vec<String>,
    /// Known subscriptions; empty = any subscription id exists.
    pub subscriptions: Vec<String>,
    /// Container groups per list page (`nextLink` paging).
    pub page_size: usize,
    /// Simulated time from PUT to `Creating` (scheduling).
    pub provisioning_delay_ms: u64,
    /// Simulated image pull time; the container starts after it and the group is `Succeeded`.
    pub image_pull_delay_ms: u64,
    /// Simulated back-off before a container is restarted by its restart policy.
    pub restart_delay_ms: u64,
    pub delete_mode: DeleteMode,
    pub delete_delay_ms: u64,
    pub quotas: Quotas,
    pub faults: FaultConfig,
}

impl Default for ArmSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".to_string(),
            client_id: "0c4c7a5e-6d33-4a0a-9d37-0d1a36b3a0a1".to_string(),
            client_secret: format!("sim-secret-{}", uuid::Uuid::new_v4().simple()),
            federated_credentials: vec![FederatedCredential {
                client_id: "0c4c7a5e-6d33-4a0a-9d37-0d1a36b3a0a1".to_string(),
                issuer: "https://oidc.sim.local".to_string(),
                subject: "system:serviceaccount:aci-runners:aci-runner-controller".to_string(),
                audience: FEDERATED_AUDIENCE.to_string(),
            }],
            managed_identities: vec!["5b2d9a7c-1f3e-4c8a-9b6d-2e4f6a8c0d1e".to_string()],
            token_lifetime_secs: 3600,
            arm_audiences: vec![
                "https://management.azure.com".to_string(),
                "https://management.core.windows.net".to_string(),
                "https://management.usgovcloudapi.net".to_string(),
                "https://management.chinacloudapi.cn".to_string(),
            ],
            locations: ["westeurope", "northeurope", "eastus", "eastus2", "westus", "westus2"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            subscriptions: Vec::new(),
            page_size: 100,
            provisioning_delay_ms: 2_000,
            image_pull_delay_ms: 15_000,
            restart_delay_ms: 10_000,
            delete_mode: DeleteMode::Sync,
            delete_delay_ms: 5_000,
            quotas: Quotas::default(),
            faults: FaultConfig::default(),
        }
    }
}

/// Entry point.
pub struct ArmSim;

impl ArmSim {
    /// Bind the listener, start serving and start the lifecycle ticker.
    pub async fn start(
        cfg: ArmSimConfig,
        clock: SimClock,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<ArmSimHandle, ArmSimError> {
        if cfg.page_size == 0 {
            return Err(ArmSimError::Config("pageSize must be at least 1".into()));
        }
        let bound = crate::sim::bind(cfg.listen)
            .await
            .map_err(|source| ArmSimError::Bind { addr: cfg.listen, source })?;
        let url = format!("http://{}", bound.1);
        let shared = Arc::new(state::Shared::new(cfg, clock, runtime, url));
        let app = http::router(shared.clone());
        Ok(SimHandle::serve("ARM simulator", bound, app, shared, |s| s.tick(), |_| {}))
    }
}

/// A running ARM simulator; its [`url`](SimHandle::url) is the ARM endpoint and the Entra
/// authority host.
pub type ArmSimHandle = SimHandle<state::Shared>;

impl ArmSimHandle {
    pub fn tenant_id(&self) -> String {
        self.shared.cfg().tenant_id
    }
    pub fn client_id(&self) -> String {
        self.shared.cfg().client_id
    }
    pub fn client_secret(&self) -> String {
        self.shared.cfg().client_secret
    }
    /// Managed-identity endpoint (IMDS protocol: `GET ?api-version=..&resource=..`, `Metadata: true`).
    pub fn managed_identity_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.url())
    }
    pub fn clock(&self) -> SimClock {
        self.shared.clock.clone()
    }
    pub fn config(&self) -> ArmSimConfig {
        self.shared.cfg()
    }

    /// A signed client assertion for workload identity, as a Kubernetes projected service-account
    /// token would be: HS256 over the claims with the simulator's federation key.
    pub fn federated_assertion(&self, claims: &FederatedAssertionClaims) -> String {
        self.shared.entra.sign_assertion(claims)
    }
    /// Claims for the first configured federated credential, valid for `lifetime_secs` (sim).
    pub fn default_assertion_claims(&self, lifetime_secs: i64) -> Option<FederatedAssertionClaims> {
        let cfg = self.shared.cfg();
        let fc = cfg.federated_credentials.first()?;
        let now = self.shared.clock.now().timestamp();
        Some(FederatedAssertionClaims {
            iss: fc.issuer.clone(),
            sub: fc.subject.clone(),
            aud: fc.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + lifetime_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        })
    }
    /// The HS256 key federated assertions are signed with (to build custom assertions).
    pub fn federation_key(&self) -> Vec<u8> {
        self.shared.entra.federation_key()
    }
    /// Client assertions accepted so far (their `jti`), in order — lets tests see rotation.
    pub fn accepted_assertions(&self) -> Vec<String> {
        self.shared.entra.accepted_assertions()
    }
    /// Tokens issued so far by the token and managed-identity endpoints.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.entra.tokens_issued()
    }

    // ---- inspection ----
    pub fn groups(&self) -> Vec<GroupSummary> {
        self.shared.groups()
    }
    pub fn group(&self, name: &str) -> Option<GroupSummary> {
        self.shared.groups().into_iter().find(|g| g.name == name)
    }
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.calls()
    }
    /// Calls per `op` and HTTP status.
    pub fn call_counts(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.shared.call_counts()
    }
    /// 429 answers given so far (ARM buckets, create-rate windows and injected throttles).
    pub fn throttled_count(&self) -> u64 {
        self.shared.throttled_count()
    }
    /// Creates rejected because they went beyond a quota (group count, cores, create rate).
    pub fn quota_rejections(&self) -> u64 {
        self.shared.quota_rejections()
    }
    /// Accepted creates (new groups) so far.
    pub fn creates_accepted(&self) -> u64 {
        self.shared.creates_accepted()
    }
    /// Environment-variable names (and whether each was secure) of the latest group with this
    /// name, per container: `(container, name, secure)`.
    pub fn env_names(&self, group: &str) -> Vec<(String, String, bool)> {
        self.shared.env_names(group)
    }
    /// Every group's env record, in creation order.
    pub fn env_records(&self) -> Vec<EnvRecord> {
        self.shared.env_records()
    }

    // ---- control ----
    pub fn set_faults(&self, faults: FaultConfig) {
        self.shared.set_faults(faults)
    }
    pub fn set_quotas(&self, quotas: Quotas) {
        self.shared.set_quotas(quotas)
    }
    /// Benchmark setup: create a container group from a PUT body (validated like a PUT) without
    /// counting it against quotas, throttling or the call log. It goes through ACI's states and
    /// its container is started through the runtime like any other group.
    pub fn seed_group(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<(), String> {
        self.shared.seed_group(sub, rg, name, body)
    }
    /// Make a container of a group exit now with `code` (as if its process ended).
    pub fn exit_container(&self, group: &str, code: i32) -> bool {
        self.shared.exit_container_by_name(group, code)
    }
}
