//! Container groups through azure_mgmt_containerinstance 0.21: requests are built with the crate
//! and sent once with `.send()` (never the crate's awaited long-running loop, which repeats the
//! PUT every 30 s); progress is observed through GET/list by the reconciler.
//!
//! The crate hard-codes `api-version=2024-05-01-preview`, but keeps an `api-version` already
//! present in the endpoint URL; the client puts `?api-version=2023-05-01` there, so every request
//! (including `nextLink` pages, whose links carry the version ARM echoes) uses the stable version.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::{ClientOptions, Context, Request, RetryOptions, Url};
use azure_core::{Policy, PolicyResult};
use azure_mgmt_containerinstance::package_preview_2024_05::Client as AciClient;
use azure_mgmt_containerinstance::package_preview_2024_05::models::{
    ContainerGroup, ContainerGroupListResult,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::Instrument;

use super::credentials::CloudConfig;
use super::error::{ArmFailure, AzureError, from_core};
use super::metrics::AzureMetrics;
use super::ratelimit::{RateLimiter, RequestKind};
use super::template::{
    MANAGED_BY_VALUE, TAG_CREATED, TAG_MANAGED_BY, TAG_POOL_UID, TAG_RELEASED, TAG_SPEC_HASH,
};

/// The stable API version the controller pins.
pub const API_VERSION: &str = "2023-05-01";
/// Most pages of one container-group list the client follows (`nextLink`): far above any real
/// subscription (ACI allows thousands of groups, not millions), it stops a list that never ends.
pub const MAX_LIST_PAGES: usize = 10_000;
/// What azure_mgmt_containerinstance 0.21 (`package-preview-2024-05`) sends without a pin.
pub const CRATE_API_VERSION: &str = "2024-05-01-preview";

/// Where and how to reach ARM.
#[derive(Clone, Debug, PartialEq)]
pub struct AzureClientConfig {
    pub arm_endpoint: Url,
    pub scope: String,
    pub api_version: String,
    /// Upper bound for one HTTP exchange (token acquisition included).
    pub request_timeout: Duration,
    /// TLS trust of every exchange.
    pub tls: crate::egress::Tls,
}

impl AzureClientConfig {
    pub fn from_cloud(cloud: &CloudConfig) -> Self {
        Self {
            arm_endpoint: cloud.arm_endpoint.clone(),
            scope: cloud.arm_scope.clone(),
            api_version: API_VERSION.to_string(),
            request_timeout: super::http::REQUEST_TIMEOUT,
            tls: cloud.tls.clone(),
        }
    }
}

/// One container of an observed group.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmContainer {
    pub name: String,
    pub state: Option<String>,
    pub exit_code: Option<i32>,
    pub detail_status: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub finish_time: Option<DateTime<Utc>>,
    pub restart_count: i32,
}

/// A container group as ARM reports it, reduced to what the planner needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmGroup {
    pub name: String,
    pub id: String,
    pub location: String,
    pub tags: BTreeMap<String, String>,
    /// `properties.provisioningState` (Pending, Creating, Succeeded, Failed, Deleting, ...).
    pub provisioning_state: Option<String>,
    /// `properties.instanceView.state` (Pending, Running, Succeeded, Failed, Stopped).
    pub state: Option<String>,
    /// The first container (runner groups have one).
    pub container: Option<ArmContainer>,
    pub priority: Option<String>,
    pub restart_policy: Option<String>,
    /// Group events, then the first container's events (e.g. `Pulling`, `Started`, `Killing`).
    pub events: Vec<ArmEvent>,
}

/// One `instanceView` event.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmEvent {
    pub name: Option<String>,
    pub message: Option<String>,
    pub type_: Option<String>,
    pub count: Option<i32>,
    pub last_timestamp: Option<DateTime<Utc>>,
}

fn events_of(
    events: &[azure_mgmt_containerinstance::package_preview_2024_05::models::Event],
) -> Vec<ArmEvent> {
    events
        .iter()
        .map(|e| ArmEvent {
            name: e.name.clone(),
            message: e.message.clone(),
            type_: e.type_.clone(),
            count: e.count,
            last_timestamp: chrono_of(e.last_timestamp),
        })
        .collect()
}

impl ArmGroup {
    pub fn managed_by_controller(&self) -> bool {
        self.tags.get(TAG_MANAGED_BY).is_some_and(|v| v == MANAGED_BY_VALUE)
    }
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).map(String::as_str)
    }
    /// The pool uid this group belongs to (`aci-runners-pool-uid`).
    pub fn pool_uid(&self) -> Option<&str> {
        self.tag(TAG_POOL_UID)
    }
    /// The spec hash the group was created from (`aci-runners-spec-hash`).
    pub fn spec_hash(&self) -> Option<&str> {
        self.tag(TAG_SPEC_HASH)
    }
    /// When the controller created the group (`aci-runners-created`).
    pub fn created(&self) -> Option<DateTime<Utc>> {
        self.tag(TAG_CREATED).and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc())
    }
    /// The resource group the group is in, from its ARM id
    /// (`/subscriptions/{sub}/resourceGroups/{rg}/providers/...`); `None` when the id has none.
    pub fn resource_group(&self) -> Option<&str> {
        let mut parts = self.id.split('/');
        parts.by_ref().find(|p| p.eq_ignore_ascii_case("resourceGroups"))?;
        parts.next().filter(|rg| !rg.is_empty())
    }
}

fn chrono_of(t: Option<time::OffsetDateTime>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
}

fn json_str<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().and_then(|x| serde_json::to_value(x).ok()).and_then(|x| x.as_str().map(str::to_string))
}

/// Reduce the crate's model to [`ArmGroup`].
pub fn observe(cg: &ContainerGroup) -> ArmGroup {
    let p = &cg.container_group_properties.properties;
    let tags = cg
        .resource
        .tags
        .as_ref()
        .and_then(|t| t.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default();
    let container = p.containers.first().map(|c| {
        let iv = c.properties.instance_view.as_ref();
        let cur = iv.and_then(|i| i.current_state.as_ref());
        ArmContainer {
            name: c.name.clone(),
            state: cur.and_then(|s| s.state.clone()),
            exit_code: cur.and_then(|s| s.exit_code),
            detail_status: cur.and_then(|s| s.detail_status.clone()),
            start_time: chrono_of(cur.and_then(|s| s.start_time)),
            finish_time: chrono_of(cur.and_then(|s| s.finish_time)),
            restart_count: iv.and_then(|i| i.restart_count).unwrap_or(0),
        }
    });
    ArmGroup {
        name: cg.resource.name.clone().unwrap_or_default(),
        id: cg.resource.id.clone().unwrap_or_default(),
        location: cg.resource.location.clone().unwrap_or_default(),
        tags,
        provisioning_state: p.provisioning_state.clone(),
        state: p.instance_view.as_ref().and_then(|iv| iv.state.clone()),
        container,
        priority: json_str(&p.priority),
        restart_policy: json_str(&p.restart_policy),
        events: p
            .instance_view
            .iter()
            .flat_map(|iv| events_of(&iv.events))
            .chain(
                p.containers
                    .first()
                    .and_then(|c| c.properties.instance_view.as_ref())
                    .into_iter()
                    .flat_map(|iv| events_of(&iv.events)),
            )
            .collect(),
    }
}

/// What ARM said when it accepted a PUT.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateAccepted {
    /// 200 (updated) or 201 (created).
    pub status: u16,
    pub provisioning_state: Option<String>,
    /// `Azure-AsyncOperation` URL, if given.
    pub async_operation: Option<String>,
}

/// Sends the request itself and turns every non-success ARM answer into an error carrying the
/// parsed [`ArmFailure`] (status, code, message, `Retry-After`, correlation id); records ARM's
/// correlation id on the current tracing span.
///
/// It is the first per-call policy and does not call the rest of the pipeline: azure_core 0.21's
/// transport policy logs every request at DEBUG with `{request:#?}`, whose header redaction is
/// inverted (it prints the `Authorization` value) and which includes the body (`secureValue`s),
/// and its retry policy logs requests at TRACE. Skipping them keeps secrets out of every log line
/// at every level; retries are the reconciler's business anyway.
struct ArmAnswerPolicy {
    http: Arc<dyn azure_core::HttpClient>,
}

impl std::fmt::Debug for ArmAnswerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArmAnswerPolicy")
    }
}

fn header_of(headers: &azure_core::headers::Headers, name: &str) -> Option<String> {
    headers.iter().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str().to_string())
}

#[async_trait::async_trait]
impl Policy for ArmAnswerPolicy {
    async fn send(&self, _ctx: &Context, request: &mut Request, _next: &[Arc<dyn Policy>]) -> PolicyResult {
        request.insert_header("user-agent", concat!("aci-runner-controller/", env!("CARGO_PKG_VERSION")));
        let rsp = self.http.execute_request(request).await?;
        if let Some(id) = header_of(rsp.headers(), "x-ms-correlation-request-id") {
            tracing::Span::current().record("correlation_id", id.as_str());
        }
        if rsp.status().is_success() {
            return Ok(rsp);
        }
        let (status, headers, body) = rsp.deconstruct();
        let body = body.collect().await?;
        let failure = ArmFailure::from_parts(status as u16, |k| header_of(&headers, k), &body, Utc::now());
        Err(azure_core::Error::new(
            ErrorKind::HttpResponse { status, error_code: failure.code.clone() },
            failure,
        ))
    }
}

/// The Azure edge. Cheap to clone.
#[derive(Clone)]
pub struct AzureClient {
    aci: AciClient,
    limiter: Arc<RateLimiter>,
    metrics: AzureMetrics,
    cfg: AzureClientConfig,
}

fn status_class(r: &Result<u16, AzureError>) -> String {
    match r {
        Ok(s) => format!("{}xx", s / 100),
        Err(AzureError::Throttled { local: true, .. }) => "local_throttled".into(),
        Err(e) => match e {
            AzureError::Throttled { .. } => "4xx".into(),
            AzureError::Transient { status: Some(s), .. }
            | AzureError::Auth { status: s, .. }
            | AzureError::InvalidSpec { status: s, .. } => format!("{}xx", s / 100),
            AzureError::QuotaExceeded { .. }
            | AzureError::CapacityUnavailable { .. }
            | AzureError::InvalidImage { .. }
            | AzureError::Conflict { .. }
            | AzureError::NotFound { .. } => "4xx".into(),
            _ => "error".into(),
        },
    }
}

impl AzureClient {
    /// `limiter` and `metrics` are shared by every client of the process.
    pub fn new(
        credential: Arc<dyn TokenCredential>,
        cfg: AzureClientConfig,
        limiter: Arc<RateLimiter>,
        metrics: AzureMetrics,
    ) -> Self {
        let mut endpoint = cfg.arm_endpoint.clone();
        endpoint.query_pairs_mut().clear().append_pair("api-version", &cfg.api_version);
        let mut options = ClientOptions::default().retry(RetryOptions::none());
        options
            .per_call_policies_mut()
            .push(Arc::new(ArmAnswerPolicy { http: super::http::client(cfg.request_timeout, &cfg.tls) }));
        let aci = AciClient::new(endpoint, credential, vec![cfg.scope.clone()], options);
        Self { aci, limiter, metrics, cfg }
    }

    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Run one ARM exchange: rate limit, timeout, classification, metrics, 429 pauses.
    async fn exchange<T, F>(
        &self,
        op: &'static str,
        kind: RequestKind,
        sub: &str,
        location: &str,
        fut: F,
    ) -> Result<T, AzureError>
    where
        F: std::future::Future<Output = azure_core::Result<T>>,
    {
        let started = Instant::now();
        let result = match self.limiter.acquire(kind, sub, location).await {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(self.cfg.request_timeout, fut).await {
                Err(_) => Err(AzureError::Transient {
                    status: None,
                    code: None,
                    message: format!("{op} timed out after {:?}", self.cfg.request_timeout),
                    retry_after: None,
                }),
                Ok(Err(e)) => Err(from_core(&e, location)),
                Ok(Ok(v)) => Ok(v),
            },
        };
        if let Err(AzureError::Throttled { retry_after, code, local: false }) = &result {
            let create_rate = code.as_deref().is_some_and(|c| c.starts_with("ContainerGroupCreation"));
            self.limiter.pause(kind, sub, location, *retry_after, create_rate);
        }
        let class = status_class(&result.as_ref().map(|_| 200u16).map_err(Clone::clone));
        self.metrics.observe(op, &class, started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::info!(operation = op, class = e.class(), error = %e, "ARM request failed");
        }
        result
    }

    /// PUT the group; returns as soon as ARM accepts it (200/201), without waiting for
    /// provisioning.
    pub async fn create_group(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        group: &ContainerGroup,
    ) -> Result<CreateAccepted, AzureError> {
        let location = group.resource.location.clone().unwrap_or_default();
        let span = tracing::info_span!("azure.create_group", subscription = %sub, resource_group = %rg, group = %name, %location, correlation_id = tracing::field::Empty);
        let req = self.aci.container_groups_client().create_or_update(sub, rg, name, group.clone());
        let fut = async move {
            let rsp = req.send().await?;
            let raw = rsp.into_raw_response();
            let status = raw.status() as u16;
            let async_operation = header_of(raw.headers(), "azure-asyncoperation");
            let body = raw.into_body().collect().await?;
            let provisioning_state = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| {
                v.pointer("/properties/provisioningState").and_then(|s| s.as_str()).map(str::to_string)
            });
            Ok(CreateAccepted { status, provisioning_state, async_operation })
        };
        self.exchange("create", RequestKind::Create, sub, &location, fut).instrument(span).await
    }

    /// GET the group; `Ok(None)` when it does not exist.
    pub async fn get_group(&self, sub: &str, rg: &str, name: &str) -> Result<Option<ArmGroup>, AzureError> {
        let span = tracing::info_span!("azure.get_group", subscription = %sub, resource_group = %rg, group = %name, correlation_id = tracing::field::Empty);
        let req = self.aci.container_groups_client().get(sub, rg, name);
        let fut = async move {
            let rsp = req.send().await?;
            rsp.into_body().await
        };
        match self.exchange("get", RequestKind::Read, sub, "", fut).instrument(span).await {
            Ok(cg) => Ok(Some(observe(&cg))),
            // Only the group itself missing means "none"; a missing subscription or resource
            // group is an error the caller must see.
            Err(AzureError::NotFound { code, .. })
                if code.as_deref().is_none_or(|c| c.eq_ignore_ascii_case("ResourceNotFound")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every container group of the resource group that this controller manages (all pages).
    pub async fn list_groups(&self, sub: &str, rg: &str) -> Result<Vec<ArmGroup>, AzureError> {
        self.list_groups_map(sub, rg, |g| g).await
    }

    /// [`AzureClient::list_groups`], each group mapped by `f` as its page arrives: a caller that
    /// keeps less than the whole [`ArmGroup`] never holds the full form of a large list
    /// (10,000 groups are tens of MB in full form).
    pub async fn list_groups_map<T>(
        &self,
        sub: &str,
        rg: &str,
        f: impl FnMut(ArmGroup) -> T,
    ) -> Result<Vec<T>, AzureError> {
        let span = tracing::info_span!("azure.list_groups", subscription = %sub, resource_group = %rg, correlation_id = tracing::field::Empty);
        let stream = self.aci.container_groups_client().list_by_resource_group(sub, rg).into_stream();
        self.managed_pages(sub, stream, f).instrument(span).await
    }

    /// Every container group of the subscription that this controller manages, in every resource
    /// group (all pages); [`ArmGroup::resource_group`] tells where each one is. Needs read
    /// rights at subscription scope (ARM answers 403 to an identity with resource-group rights).
    pub async fn list_groups_in_subscription(&self, sub: &str) -> Result<Vec<ArmGroup>, AzureError> {
        self.list_groups_in_subscription_map(sub, |g| g).await
    }

    /// [`AzureClient::list_groups_in_subscription`], each group mapped by `f` as its page
    /// arrives (see [`AzureClient::list_groups_map`]).
    pub async fn list_groups_in_subscription_map<T>(
        &self,
        sub: &str,
        f: impl FnMut(ArmGroup) -> T,
    ) -> Result<Vec<T>, AzureError> {
        let span = tracing::info_span!("azure.list_groups_in_subscription", subscription = %sub, correlation_id = tracing::field::Empty);
        let stream = self.aci.container_groups_client().list(sub).into_stream();
        self.managed_pages(sub, stream, f).instrument(span).await
    }

    /// The controller's groups from every page of a list (each page one rate-limited exchange).
    async fn managed_pages<S, T>(
        &self,
        sub: &str,
        mut stream: S,
        mut f: impl FnMut(ArmGroup) -> T,
    ) -> Result<Vec<T>, AzureError>
    where
        S: futures::Stream<Item = azure_core::Result<ContainerGroupListResult>> + Unpin,
    {
        let mut out = Vec::new();
        let mut pages = 0usize;
        while let Some(list) = self
            .exchange("list", RequestKind::Read, sub, "", async { stream.next().await.transpose() })
            .await?
        {
            out.extend(list.value.iter().map(observe).filter(ArmGroup::managed_by_controller).map(&mut f));
            if list.next_link.as_deref().is_none_or(str::is_empty) {
                break; // last page: no request (and no rate-limit token) for the stream's end
            }
            pages += 1;
            if pages >= MAX_LIST_PAGES {
                return Err(AzureError::ResponseTooLarge(format!(
                    "the container-group list goes on after {MAX_LIST_PAGES} pages"
                )));
            }
        }
        out.shrink_to_fit();
        Ok(out)
    }

    /// The last `tail` lines of container `container`'s log in group `name` (ACI
    /// `Containers_ListLogs`, without timestamps). The answer is capped like every ARM answer
    /// (`http::MAX_BODY_BYTES`); ACI itself returns at most 4 MB. A missing group or container
    /// is `NotFound`.
    pub async fn container_logs(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        container: &str,
        tail: u32,
    ) -> Result<String, AzureError> {
        let span = tracing::info_span!("azure.container_logs", subscription = %sub, resource_group = %rg, group = %name, correlation_id = tracing::field::Empty);
        let tail = i32::try_from(tail).unwrap_or(i32::MAX);
        let req =
            self.aci.containers_client().list_logs(sub, rg, name, container).tail(tail).timestamps(false);
        let fut = async move { req.send().await?.into_body().await };
        let logs = self.exchange("logs", RequestKind::Read, sub, "", fut).instrument(span).await?;
        Ok(logs.content.unwrap_or_default())
    }

    /// DELETE the group. 200/202/204 and 404 all mean "going or gone".
    pub async fn delete_group(&self, sub: &str, rg: &str, name: &str) -> Result<(), AzureError> {
        let span = tracing::info_span!("azure.delete_group", subscription = %sub, resource_group = %rg, group = %name, correlation_id = tracing::field::Empty);
        let req = self.aci.container_groups_client().delete(sub, rg, name);
        let sent = async move { Ok(req.send().await?.into_raw_response().status()) };
        self.write_until_gone("delete", sub, span, sent).await
    }

    /// Send a write (DELETE, or the PATCH that releases a group) whose "not found" answer means
    /// the same as success: the group is going or gone.
    async fn write_until_gone<F>(
        &self,
        op: &'static str,
        sub: &str,
        span: tracing::Span,
        sent: F,
    ) -> Result<(), AzureError>
    where
        F: std::future::Future<Output = azure_core::Result<azure_core::StatusCode>>,
    {
        match self.exchange(op, RequestKind::Write, sub, "", sent).instrument(span).await {
            Ok(_) | Err(AzureError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl AzureClient {
    /// Hand the group over to its owner (orphan deletion policy): PATCH its tags without
    /// `aci-runners-managed-by`, so no controller lists, recycles or garbage-collects it again.
    /// The provenance tags (pool, runner, created) stay for the humans who find it, and
    /// `aci-runners-released` records when. A group that is already gone is success.
    pub async fn release_group(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AzureError> {
        let Some(current) = self.get_group(sub, rg, name).await? else {
            return Ok(());
        };
        let mut tags: serde_json::Map<String, serde_json::Value> = current
            .tags
            .into_iter()
            .filter(|(k, _)| k != TAG_MANAGED_BY)
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        tags.insert(TAG_RELEASED.to_string(), serde_json::Value::String(now.to_rfc3339()));
        let mut resource = azure_mgmt_containerinstance::package_preview_2024_05::models::Resource::new();
        resource.tags = Some(serde_json::Value::Object(tags));
        let span = tracing::info_span!("azure.release_group", subscription = %sub, resource_group = %rg, group = %name, correlation_id = tracing::field::Empty);
        let req = self.aci.container_groups_client().update(sub, rg, name, resource);
        let sent = async move { Ok(req.send().await?.into_raw_response().status()) };
        self.write_until_gone("update", sub, span, sent).await
    }
}
