//! Simulated GitHub: a GitHub App (generated RSA key pair) with org and repo installations,
//! installation tokens, the self-hosted runners API (org, repo and enterprise scope), workflow
//! runs and jobs, per-installation rate limits with ETags, `workflow_job` webhooks, and simulated
//! runner processes inside containers (it implements [`ContainerRuntime`]).
//!
//! All behaviour follows simulated time ([`SimClock`]); faults are drawn from a seeded RNG.
//! Inspection and control live under `/_sim/github/...` and as methods on [`GithubSimHandle`].
//! See `docs/simulator.md`.
mod http;
pub mod jit;
mod payloads;
mod state;
mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sim::SimHandle;
use crate::sim::clock::SimClock;
use crate::sim::runtime::{ContainerRuntime, ExitNotifier, StartedContainer};

pub use state::{
    CallRecord, DeliveryRecord, EnqueueJobs, EnvRecord, JobRecord, JobStatus, RateLimitRecord, RunnerRecord,
    ScopeKey,
};
pub use webhook::sign as sign_webhook;

/// Errors starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum GithubSimError {
    #[error("cannot bind the GitHub simulator listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot generate or load the GitHub App key: {0}")]
    Key(String),
    #[error("invalid simulator configuration: {0}")]
    Config(String),
}

/// An installation of the simulated App.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstallationSpec {
    pub id: i64,
    /// Org or user login the App is installed on.
    pub account: String,
    /// `Organization` or `User`.
    pub account_type: String,
    /// `None` = all repositories of the account; else `owner/name` entries.
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
    /// App permissions granted, e.g. `organization_self_hosted_runners: write`.
    pub permissions: BTreeMap<String, String>,
}

/// Probabilities (0..=1) of injected answers for one operation.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GhOpFaults {
    /// 500/502/503.
    pub server_error: f64,
    /// 403 secondary-rate-limit answer with `retry-after`.
    pub rate_limited: f64,
    /// An unexpected 409.
    pub conflict: f64,
    /// An unexpected 422.
    pub unprocessable: f64,
    /// A hostile answer, as a server a tenant points `apiUrl` at may give (see
    /// [`HostileAnswer`]); never a 2xx to a write, so nothing is claimed done that was not.
    pub hostile: f64,
}

/// The hostile answers of [`GhOpFaults::hostile`], drawn evenly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileAnswer {
    /// A read answered 200 with a body that is not JSON; a write, 502 with such a body.
    InvalidJson,
    /// A body of 9 MiB (above the client's 8 MiB cap): 200 to a read, 502 to a write.
    Oversized,
    /// 503 with `retry-after` and `x-ratelimit-reset` beyond any integer type and
    /// `x-ratelimit-remaining: -1`.
    AbsurdHeaders,
}

/// Faults, reproducible from `seed`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GithubFaults {
    pub seed: u64,
    /// Per operation (see [`OPERATIONS`]).
    pub ops: BTreeMap<String, GhOpFaults>,
    /// Probability that a webhook delivery is dropped (GitHub does not redeliver).
    pub webhook_drop_rate: f64,
    /// Probability that a runner process crashes (exit 1) before it registers.
    pub crash_before_registration: f64,
    /// Probability that a runner dies while running a job (job fails, container exits 1).
    pub runner_death_mid_job: f64,
    /// Seconds the simulated GitHub's clock is ahead (+) or behind (-) real time when it checks
    /// App JWTs.
    pub clock_skew_secs: i64,
}

/// Operation names used for faults and call counts.
pub const OPERATIONS: &[&str] = &[
    "access_token",
    "list_runners",
    "get_runner",
    "delete_runner",
    "jitconfig",
    "registration_token",
    "remove_token",
    "runner_groups",
    "create_runner_group",
    "runner_deprecation",
    "list_runs",
    "list_jobs",
    "rate_limit",
];

/// Where `workflow_job` webhooks go.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// Simulator configuration; every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GithubSimConfig {
    pub listen: SocketAddr,
    pub app_id: i64,
    pub client_id: String,
    pub app_slug: String,
    /// PEM (PKCS#1 or PKCS#8) of the App key; generated when absent.
    pub private_key_pem: Option<String>,
    pub installations: Vec<InstallationSpec>,
    /// Known repositories (`owner/name`).
    pub repositories: Vec<String>,
    pub enterprise: String,
    /// Personal access tokens accepted with full access (enterprise, org and repo scope).
    pub pats: Vec<String>,
    /// Runner groups of every org and of the enterprise besides `Default` (id 1).
    pub runner_groups: Vec<String>,
    pub installation_token_lifetime_secs: u64,
    pub registration_token_lifetime_secs: u64,
    /// Primary rate limit per installation / PAT per simulated hour.
    pub rate_limit: u64,
    /// Secondary limit: requests per installation / PAT per simulated minute.
    pub secondary_limit_per_minute: u64,
    /// Secondary limit on content-creating requests (POST/DELETE) per simulated minute
    /// (GitHub documents 80).
    pub secondary_writes_per_minute: u64,
    /// ... and per simulated hour (GitHub documents 500), counted in a fixed window that begins
    /// with the first such request.
    pub secondary_writes_per_hour: u64,
    /// Status of primary rate-limit answers: 403 (GitHub's usual) or 429.
    pub rate_limit_status: u16,
    /// JWT clock tolerance in seconds.
    pub jwt_leeway_secs: i64,
    /// Simulated time from container start to the runner being online (config + connect).
    pub runner_startup_ms: u64,
    /// Offline ephemeral runners are removed after this many simulated seconds (GitHub: 1 day).
    pub offline_ephemeral_ttl_secs: u64,
    /// Offline persistent runners are removed after this (GitHub: 14 days).
    pub offline_persistent_ttl_secs: u64,
    pub runner_version: String,
    /// Runner versions with a runtime end-of-life date (`GET …/runners/deprecations/{version}`;
    /// versions not listed answer 404, as when GitHub has no schedule for them).
    pub deprecated_runner_versions: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    /// Runners per page when `per_page` is absent.
    pub default_per_page: usize,
    pub webhook: Option<WebhookTarget>,
    pub faults: GithubFaults,
}

fn perms(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Default for GithubSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            app_id: 424242,
            client_id: "Iv23liSimulatedApp01".into(),
            app_slug: "aci-runners-sim".into(),
            private_key_pem: None,
            installations: vec![
                InstallationSpec {
                    id: 1001,
                    account: "octo-org".into(),
                    account_type: "Organization".into(),
                    repositories: None,
                    permissions: perms(&[
                        ("organization_self_hosted_runners", "write"),
                        ("administration", "write"),
                        ("actions", "read"),
                        ("metadata", "read"),
                    ]),
                },
                InstallationSpec {
                    id: 1002,
                    account: "octo-user".into(),
                    account_type: "User".into(),
                    repositories: Some(vec!["octo-user/hello-world".into()]),
                    permissions: perms(&[
                        ("administration", "write"),
                        ("actions", "read"),
                        ("metadata", "read"),
                    ]),
                },
            ],
            repositories: vec![
                "octo-org/octo-repo".into(),
                "octo-org/other-repo".into(),
                "octo-user/hello-world".into(),
                "octo-user/private-notes".into(),
            ],
            enterprise: "octo-enterprise".into(),
            pats: vec![format!("ghp_sim{}", uuid::Uuid::new_v4().simple())],
            runner_groups: vec!["aci".into()],
            installation_token_lifetime_secs: 3600,
            registration_token_lifetime_secs: 3600,
            rate_limit: 5000,
            secondary_limit_per_minute: 900,
            secondary_writes_per_minute: 80,
            secondary_writes_per_hour: 500,
            rate_limit_status: 403,
            jwt_leeway_secs: 60,
            runner_startup_ms: 3_000,
            offline_ephemeral_ttl_secs: 86_400,
            offline_persistent_ttl_secs: 14 * 86_400,
            runner_version: "2.329.0".into(),
            deprecated_runner_versions: BTreeMap::new(),
            default_per_page: 30,
            webhook: None,
            faults: GithubFaults { seed: 1, ..Default::default() },
        }
    }
}

/// The App's generated credentials (what `--app-credentials-out` writes).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppCredentials {
    pub api_url: String,
    pub app_id: i64,
    pub client_id: String,
    pub installations: Vec<InstallationSpec>,
    pub private_key_pem: String,
    pub webhook_secret: String,
    pub pats: Vec<String>,
    pub enterprise: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Entry point.
pub struct GithubSim;

impl GithubSim {
    /// Generate the App key (unless configured), bind the listener, start serving, the job /
    /// runner ticker and the webhook sender.
    pub async fn start(cfg: GithubSimConfig, clock: SimClock) -> Result<GithubSimHandle, GithubSimError> {
        let keys = state::AppKeys::load_or_generate(cfg.private_key_pem.as_deref()).await?;
        let bound = crate::sim::bind(cfg.listen)
            .await
            .map_err(|source| GithubSimError::Bind { addr: cfg.listen, source })?;
        let url = format!("http://{}", bound.1);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(state::Shared::new(cfg, clock, keys, url, tx));
        let app = http::router(shared.clone());
        let sender = webhook::sender(Arc::downgrade(&shared), rx);
        Ok(SimHandle::serve(
            "GitHub simulator",
            bound,
            app,
            shared,
            |s| s.tick(),
            |tasks| {
                tasks.spawn(sender);
            },
        ))
    }
}

/// A running GitHub simulator; its [`url`](SimHandle::url) is the REST base URL.
pub type GithubSimHandle = SimHandle<state::Shared>;

impl GithubSimHandle {
    pub fn clock(&self) -> SimClock {
        self.shared.clock.clone()
    }
    pub fn config(&self) -> GithubSimConfig {
        self.shared.cfg()
    }
    /// The App's credentials, installations, PATs and webhook secret.
    pub fn app_credentials(&self) -> AppCredentials {
        self.shared.app_credentials()
    }
    /// The runtime to hand to the ARM simulator.
    pub fn runtime(&self) -> Arc<dyn ContainerRuntime> {
        Arc::new(SimRunnerRuntime { shared: self.shared.clone() })
    }

    // ---- control ----
    pub fn enqueue_jobs(&self, req: EnqueueJobs) -> Result<Vec<JobRecord>, String> {
        self.shared.enqueue(req)
    }
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        self.shared.set_webhook(target)
    }
    pub fn set_faults(&self, faults: GithubFaults) {
        self.shared.set_faults(faults)
    }
    pub fn set_rate_limit(&self, per_hour: u64, secondary_per_minute: u64) {
        self.shared.set_rate_limit(per_hour, secondary_per_minute)
    }

    /// Benchmark setup: register a JIT runner as `POST …/actions/runners/generate-jitconfig`
    /// would (same validation and record), without counting it against any rate limit or in the
    /// call log. Returns the runner id and the encoded JIT config for its container.
    pub fn seed_jit_runner(
        &self,
        scope: &ScopeKey,
        name: &str,
        labels: &[String],
        runner_group_id: i64,
    ) -> Result<(i64, String), String> {
        let body = serde_json::json!({"name": name, "runner_group_id": runner_group_id, "labels": labels});
        let a = self.shared.generate_jitconfig(scope, &body);
        let b = a.body.unwrap_or_default();
        if a.status != 201 {
            return Err(format!("{}: {}", a.status, b.get("message").and_then(|m| m.as_str()).unwrap_or("")));
        }
        let id = b.pointer("/runner/id").and_then(serde_json::Value::as_i64).ok_or("no runner id")?;
        let enc = b.get("encoded_jit_config").and_then(serde_json::Value::as_str).ok_or("no JIT config")?;
        Ok((id, enc.to_string()))
    }

    // ---- inspection ----
    pub fn runners(&self) -> Vec<RunnerRecord> {
        self.shared.runners()
    }
    /// The JIT configs and registration tokens handed out (the last 1000), for leak checks.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.shared.issued_secrets()
    }
    pub fn jobs(&self) -> Vec<JobRecord> {
        self.shared.jobs()
    }
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.calls()
    }
    /// Calls per operation and HTTP status.
    pub fn call_counts(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.shared.call_counts()
    }
    /// 304 answers per operation (not counted against the rate limit).
    pub fn not_modified_counts(&self) -> BTreeMap<String, u64> {
        self.shared.not_modified_counts()
    }
    /// Rate-limit consumption per installation / PAT.
    pub fn rate_limits(&self) -> Vec<RateLimitRecord> {
        self.shared.rate_limits()
    }
    /// Installation tokens minted per installation id.
    pub fn tokens_minted(&self) -> BTreeMap<i64, u64> {
        self.shared.tokens_minted()
    }
    /// Env-var names (and secure flags) each runner container received.
    pub fn env_records(&self) -> Vec<EnvRecord> {
        self.shared.env_records()
    }
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.deliveries()
    }
}

/// The [`ContainerRuntime`] that runs simulated GitHub Actions runners.
pub struct SimRunnerRuntime {
    shared: Arc<state::Shared>,
}

impl ContainerRuntime for SimRunnerRuntime {
    fn start(&self, container: StartedContainer, exit: ExitNotifier) {
        self.shared.container_started(container, exit);
    }
    fn kill(&self, group_id: &str) {
        self.shared.container_killed(group_id);
    }
}
