//! What the demo, the benchmarks and the soak read: the simulator's `/_sim/...` inspection APIs
//! (over HTTP, so a simulator in another process works the same), the RunnerPools in the
//! Kubernetes API and the controller's `/metrics`.
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Deserialize;

use crate::sim::arm::FaultConfig;
use crate::sim::github::{EnqueueJobs, GithubFaults, WebhookTarget};
use aci_runner_controller::azure::template::{TAG_MANAGED_BY, TAG_POOL_NAME, TAG_POOL_NAMESPACE};
use aci_runner_core::crd::RunnerPool;

/// Errors talking to the simulator, the API server or the controller.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("simulator request {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("simulator request {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

/// A container group as `/_sim/arm/groups` reports it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub name: String,
    pub resource_group: String,
    pub provisioning_state: String,
    pub state: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Group {
    /// Created by a controller (carries the managed-by tag).
    pub fn managed(&self) -> bool {
        self.tags.get(TAG_MANAGED_BY).is_some_and(|v| v == "aci-runner-controller")
    }
    pub fn pool(&self) -> Option<(&str, &str)> {
        Some((self.tags.get(TAG_POOL_NAMESPACE)?.as_str(), self.tags.get(TAG_POOL_NAME)?.as_str()))
    }
}

/// One ARM call (`/_sim/arm/calls`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmCall {
    pub op: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub at: DateTime<Utc>,
}

/// `/_sim/arm/calls`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmCalls {
    pub calls: Vec<ArmCall>,
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    pub throttled: u64,
    pub quota_rejections: u64,
    pub creates_accepted: u64,
}

impl ArmCalls {
    /// Calls to ARM proper (the token endpoint excluded).
    pub fn total(&self) -> u64 {
        self.counts.iter().filter(|(op, _)| *op != "token").flat_map(|(_, by)| by.values()).sum()
    }
    pub fn count(&self, op: &str, ok_only: bool) -> u64 {
        self.counts
            .get(op)
            .map(|by| by.iter().filter(|(s, _)| !ok_only || s.starts_with('2')).map(|(_, n)| *n).sum())
            .unwrap_or(0)
    }
}

/// A runner registration (`/_sim/github/runners`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runner {
    pub id: i64,
    pub name: String,
    pub online: bool,
    pub busy: bool,
    #[serde(default)]
    pub container: Option<String>,
}

/// A workflow job (`/_sim/github/jobs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: i64,
    pub repo: String,
    pub labels: Vec<String>,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub runner_name: Option<String>,
}

/// `/_sim/github/calls`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GithubCalls {
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default)]
    pub not_modified: BTreeMap<String, u64>,
}

impl GithubCalls {
    pub fn total(&self) -> u64 {
        self.counts.values().flat_map(|by| by.values()).sum()
    }
    pub fn with_status(&self, status: &str) -> u64 {
        self.counts.values().filter_map(|by| by.get(status)).sum()
    }
    pub fn op(&self, op: &str) -> u64 {
        self.counts.get(op).map(|by| by.values().sum()).unwrap_or(0)
    }
}

/// One GitHub call (`/_sim/github/calls/log`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GithubCall {
    pub op: String,
    pub status: u16,
    pub principal: String,
    pub at: DateTime<Utc>,
}

/// `/_sim/github/rate-limits`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub principal: String,
    pub used: u64,
    pub refused: u64,
}

/// The simulator's endpoints as `aci-runner-devkit sim` prints them (the fields used here).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimEndpoints {
    pub arm_url: String,
    pub github_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

/// `name -> Type = side "path";`: a `pub async fn name(&self)` that GETs `/_sim/<side>/<path>`.
macro_rules! sim_getters {
    ($($name:ident -> $t:ty = $side:ident $path:literal;)*) => {
        $(
            #[doc = concat!("GET `/_sim/", stringify!($side), "/", $path, "`.")]
            pub async fn $name(&self) -> Result<$t, ObserveError> {
                self.$side($path).await
            }
        )*
    };
}

/// A client of the simulator's inspection and control APIs.
#[derive(Clone)]
pub struct SimApi {
    http: reqwest::Client,
    pub arm_url: String,
    pub github_url: String,
}

impl SimApi {
    pub fn new(arm_url: &str, github_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http,
            arm_url: arm_url.trim_end_matches('/').to_string(),
            github_url: github_url.trim_end_matches('/').to_string(),
        }
    }

    /// Send `req` to `url`; the answer if it is a success, else its status and body.
    async fn answer(url: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ObserveError> {
        let r = req.send().await.map_err(|source| ObserveError::Http { url: url.to_string(), source })?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(ObserveError::Status { url: url.to_string(), status: status.as_u16(), body });
        }
        Ok(r)
    }

    /// The JSON answer of `req` to `url`.
    async fn json<T: serde::de::DeserializeOwned>(
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ObserveError> {
        let r = Self::answer(&url, req).await?;
        r.json().await.map_err(|source| ObserveError::Http { url, source })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: String) -> Result<T, ObserveError> {
        let req = self.http.get(&url);
        Self::json(url, req).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: &impl serde::Serialize,
    ) -> Result<(), ObserveError> {
        Self::answer(&url, self.http.request(method, &url).json(body)).await.map(|_| ())
    }

    /// GET `/_sim/arm/<path>`.
    async fn arm<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ObserveError> {
        self.get(format!("{}/_sim/arm/{path}", self.arm_url)).await
    }

    /// GET `/_sim/github/<path>`.
    async fn github<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ObserveError> {
        self.get(format!("{}/_sim/github/{path}", self.github_url)).await
    }

    sim_getters! {
        groups -> Vec<Group> = arm "groups";
        arm_calls -> ArmCalls = arm "calls";
        runners -> Vec<Runner> = github "runners";
        jobs -> Vec<Job> = github "jobs";
        github_calls -> GithubCalls = github "calls";
        github_call_log -> Vec<GithubCall> = github "calls/log";
        rate_limits -> Vec<RateLimit> = github "rate-limits";
    }

    /// Point `workflow_job` webhooks at `url` (signed with `secret`).
    pub async fn set_webhook(&self, url: &str, secret: &str) -> Result<(), ObserveError> {
        let t = WebhookTarget { url: url.to_string(), secret: secret.to_string() };
        self.send(reqwest::Method::PUT, format!("{}/_sim/github/webhook", self.github_url), &Some(t)).await
    }
    /// Enqueue jobs; returns the jobs created.
    pub async fn enqueue(&self, req: &EnqueueJobs) -> Result<Vec<Job>, ObserveError> {
        let url = format!("{}/_sim/github/jobs", self.github_url);
        let post = self.http.post(&url).json(req);
        Self::json(url, post).await
    }
    pub async fn set_arm_faults(&self, f: &FaultConfig) -> Result<(), ObserveError> {
        self.send(reqwest::Method::PUT, format!("{}/_sim/arm/faults", self.arm_url), f).await
    }
    pub async fn set_github_faults(&self, f: &GithubFaults) -> Result<(), ObserveError> {
        self.send(reqwest::Method::PUT, format!("{}/_sim/github/faults", self.github_url), f).await
    }
}

/// Percentile (nearest rank) of sorted `v`; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The counters of a Prometheus text exposition that start with `prefix`, summed over the
/// series whose labels contain every `label=value` pair of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// GET a controller's `/metrics` (empty on failure: the controller may be restarting).
pub async fn controller_metrics(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A pool's row in the live view.
#[derive(Clone, Debug, Default)]
pub struct PoolRow {
    pub name: String,
    pub scope: String,
    pub desired: i32,
    pub provisioning: i32,
    pub idle: i32,
    pub busy: i32,
    pub terminating: i32,
    pub failed: i32,
    pub ready: String,
    pub stalled: Option<String>,
}

/// The RunnerPools of `ns`.
pub async fn pool_rows(client: &Client, ns: &str) -> Result<Vec<PoolRow>, ObserveError> {
    let pools = Api::<RunnerPool>::namespaced(client.clone(), ns).list(&ListParams::default()).await?;
    Ok(pools
        .items
        .into_iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let st = p.status.clone().unwrap_or_default();
            let cond = |t: &str| st.conditions.iter().find(|c| c.type_ == t).cloned();
            PoolRow {
                name,
                scope: st.scope.clone().unwrap_or_default(),
                desired: st.desired,
                provisioning: st.provisioning,
                idle: st.idle,
                busy: st.busy,
                terminating: st.terminating,
                failed: st.failed,
                ready: cond("Ready").map(|c| c.status).unwrap_or_else(|| "-".into()),
                stalled: cond("Stalled").filter(|c| c.status == "True").map(|c| c.reason),
            }
        })
        .collect())
}
