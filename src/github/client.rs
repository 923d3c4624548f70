//! The hub (shared caches, rate-limit state, metrics) and per-credential clients.
//!
//! Transport is octocrab (no retry layer: POSTs are never replayed automatically); requests are
//! built with explicit relative paths and page numbers so that GHES base paths survive and `Link`
//! URLs are never followed. Runner lists use lenient own structs (octocrab's models require label
//! ids/types that GitHub does not always send).
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use http::{HeaderMap, Method, StatusCode};
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::Mutex as AsyncMutex;

use super::metrics::{AuthLabels, EndpointLabels, GithubMetrics, OpLabels};
use super::pace::{PaceConfig, Pacer};
use super::{Clock, Credentials, GithubError, Runner, RunnerStatus, Scope, auth, html_base};

/// Tuning of the hub.
#[derive(Clone)]
pub struct HubConfig {
    /// At most one runner-list refresh per scope per interval (all pools share the result).
    pub list_interval: Duration,
    /// Below this many remaining requests, lists refresh `slow_factor` times less often.
    pub low_remaining: u64,
    pub slow_factor: i32,
    /// Renew installation tokens this long before they expire.
    pub token_refresh_margin: Duration,
    /// Upper bound for one HTTP exchange, connecting and reading the whole answer included (also
    /// the connect timeout): a server that never finishes an answer cannot hold a reconcile.
    pub request_timeout: std::time::Duration,
    /// Largest answer body read; a longer one is dropped at this size (`ResponseTooLarge`).
    pub max_body_bytes: usize,
    /// http API URLs other than loopback are accepted (`--allow-insecure-github-http`).
    pub allow_insecure_http: bool,
    /// Clock used to interpret `expires_at`, `x-ratelimit-reset` and list intervals.
    pub clock: Clock,
    /// Pace of content-creating requests per installation / token (GitHub's secondary limit).
    pub content_pace: PaceConfig,
    /// TLS trust of every exchange (built-in roots unless `--ca-bundle`).
    pub tls: crate::egress::Tls,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            list_interval: Duration::seconds(10),
            low_remaining: 500,
            slow_factor: 4,
            token_refresh_margin: Duration::minutes(5),
            request_timeout: std::time::Duration::from_secs(30),
            max_body_bytes: MAX_BODY_BYTES,
            allow_insecure_http: false,
            clock: Arc::new(Utc::now),
            content_pace: PaceConfig::default(),
            tls: crate::egress::Tls::default(),
        }
    }
}

/// Default cap of one answer body: a page of 100 runners is about 150 KB.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Longest wait a server's `Retry-After` or `x-ratelimit-reset` can impose (GitHub's primary
/// limit resets within the hour): a larger value waits this long.
pub const MAX_RATE_WAIT: Duration = Duration::hours(1);
/// Most pages read of one paginated list (100 per page: 100,000 runners or runner groups).
pub const MAX_PAGES: usize = 1000;
/// Most answer bytes one runner-list refresh reads over all its pages (10,000 runners are
/// about 15 MB): a server that answers every page with a full-size body stops here.
pub const MAX_LIST_BYTES: usize = 64 << 20;
/// Most runners one page may hold: the client asks for 100.
const PER_PAGE: usize = 100;

/// `now` plus a server-given wait in seconds, clamped to [`MAX_RATE_WAIT`].
fn wait_until(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    let capped = Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX).min(MAX_RATE_WAIT.num_seconds()));
    now.checked_add_signed(capped).unwrap_or(now)
}

/// A server-given instant, no later than [`MAX_RATE_WAIT`] from `now`.
fn clamp_until(now: DateTime<Utc>, t: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_add_signed(MAX_RATE_WAIT).map_or(t, |cap| t.min(cap))
}

/// An `x-ratelimit-reset` epoch second as an instant within [`MAX_RATE_WAIT`] of `now` (one
/// beyond chrono's range is as far as allowed, or now when before it).
fn reset_at(now: DateTime<Utc>, epoch_secs: i64) -> DateTime<Utc> {
    match DateTime::<Utc>::from_timestamp(epoch_secs, 0) {
        Some(t) => clamp_until(now, t),
        None if epoch_secs > 0 => clamp_until(now, DateTime::<Utc>::MAX_UTC),
        None => now,
    }
}

/// A fresh JIT registration.
#[derive(Clone, Debug)]
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: SecretString,
}

/// A registration token and the URL `config.sh --url` takes.
#[derive(Clone, Debug)]
pub struct RegistrationToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub url: String,
}

/// Rate-limit state of one installation / token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub reset: Option<DateTime<Utc>>,
    /// Nothing is sent before this instant.
    pub blocked_until: Option<DateTime<Utc>>,
    /// Why the client polls less or not at all (for status conditions and logs).
    pub reason: Option<String>,
}

#[derive(Clone)]
struct CachedToken {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
struct ListCache {
    /// Per page: (ETag, number of runners); the runners themselves are `runners`, in page order
    /// (one copy of the list, however many pages: at 10,000 runners a second copy costs megabytes).
    pages: Vec<(Option<String>, usize)>,
    fetched_at: Option<DateTime<Utc>>,
    runners: Arc<Vec<Runner>>,
}

/// (base URL + principal, scope): pools using the same credentials on a scope share one list;
/// other credentials never see a list they could not read themselves.
type ListKey = (String, Scope);

struct HubInner {
    cfg: HubConfig,
    octos: Mutex<HashMap<String, Octocrab>>,
    tokens: Mutex<HashMap<String, Arc<AsyncMutex<Option<CachedToken>>>>>,
    lists: Mutex<HashMap<ListKey, Arc<AsyncMutex<ListCache>>>>,
    groups: Mutex<HashMap<(String, Scope, String), i64>>,
    rates: Mutex<HashMap<String, RateStatus>>,
    pacer: Pacer,
    metrics: GithubMetrics,
}

/// Shared by every pool of the controller.
#[derive(Clone)]
pub struct GithubHub {
    inner: Arc<HubInner>,
}

impl Default for GithubHub {
    fn default() -> Self {
        Self::new(HubConfig::default())
    }
}

impl GithubHub {
    pub fn new(cfg: HubConfig) -> Self {
        Self {
            inner: Arc::new(HubInner {
                pacer: Pacer::new(cfg.content_pace),
                cfg,
                octos: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                lists: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                rates: Mutex::new(HashMap::new()),
                metrics: GithubMetrics::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &GithubMetrics {
        &self.inner.metrics
    }

    /// The HTTP transport under octocrab: reqwest rather than octocrab's own hyper client, which
    /// has no proxy support. reqwest reads `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as the Azure edge
    /// does (see [`crate::egress`]); its errors reach [`GithubClient::execute`] as octocrab errors
    /// and bodies as the same boxed body, so the deadline, the body cap and the classification
    /// are unchanged. Redirects are not followed (GitHub's API answers none the client needs, and a
    /// followed one would carry the credentials elsewhere).
    ///
    /// reqwest gets the connect timeout only: the whole exchange is bounded by the one deadline in
    /// [`GithubClient::execute`], which names the failure ("no complete answer"). A second total
    /// timeout of the same length here would race it and, when it fires first, surface as an
    /// anonymous body error.
    fn http(&self) -> Result<reqwest013::Client, GithubError> {
        let cfg = &self.inner.cfg;
        let tls = cfg.tls.client_config().ok_or_else(|| {
            GithubError::InvalidRequest("no TLS configuration for the GitHub client".into())
        })?;
        reqwest013::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .redirect(reqwest013::redirect::Policy::none())
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| GithubError::InvalidRequest(format!("cannot build the GitHub HTTP client: {e}")))
    }

    /// A client for `base_url` (e.g. `https://api.github.com`, `https://ghe.example.com/api/v3`)
    /// with these credentials. Cheap; clients of the same installation share its token.
    /// An http URL other than loopback is refused (see [`super::check_api_url`]) before any
    /// request.
    pub fn client(&self, base_url: &str, creds: Credentials) -> Result<GithubClient, GithubError> {
        super::check_api_url(base_url, self.inner.cfg.allow_insecure_http)
            .map_err(|m| GithubError::InvalidRequest(format!("spec.github.apiUrl {m}")))?;
        let base = base_url.trim_end_matches('/').to_string();
        let octo = {
            let mut octos = lock(&self.inner.octos);
            match octos.get(&base) {
                Some(o) => o.clone(),
                None => {
                    let o = Octocrab::builder()
                        .base_uri(base.as_str())
                        .map_err(|e| GithubError::InvalidRequest(format!("bad GitHub base URL {base}: {e}")))?
                        .add_retry_config(RetryConfig::None)
                        .build_with_reqwest(self.http()?)
                        .map_err(|e| {
                            GithubError::InvalidRequest(format!("cannot build the GitHub client: {e}"))
                        })?;
                    octos.insert(base.clone(), o.clone());
                    o
                }
            }
        };
        let principal = match &creds {
            Credentials::App { installation_id, .. } => format!("installation:{installation_id}"),
            Credentials::Pat { token } => {
                format!("pat:{}", &hex::encode(sha2::Sha256::digest(token.expose_secret().as_bytes()))[..12])
            }
        };
        // Installation tokens, lists and rate state are shared only between clients with the
        // very same credentials: a pool with a wrong key or issuer for an installation must not
        // borrow the token another pool obtained with the right one.
        let credential = match &creds {
            Credentials::App { app_id, client_id, private_key_pem, .. } => {
                let mut h = sha2::Sha256::new();
                h.update(app_id.as_deref().unwrap_or("").as_bytes());
                h.update([0]);
                h.update(client_id.as_deref().unwrap_or("").as_bytes());
                h.update([0]);
                h.update(private_key_pem.expose_secret().as_bytes());
                hex::encode(h.finalize())[..12].to_string()
            }
            Credentials::Pat { .. } => String::new(),
        };
        let auth_key = format!("{base}|{principal}|{credential}");
        Ok(GithubClient { hub: self.inner.clone(), base, creds, principal, auth_key, octo })
    }
}

/// One set of credentials against one GitHub.
#[derive(Clone)]
pub struct GithubClient {
    hub: Arc<HubInner>,
    base: String,
    creds: Credentials,
    principal: String,
    auth_key: String,
    octo: Octocrab,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

#[derive(Deserialize)]
struct RawLabel {
    name: String,
}

#[derive(Deserialize)]
struct RawRunner {
    id: u64,
    name: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    busy: bool,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(default)]
    labels: Vec<RawLabel>,
    #[serde(default)]
    runner_group_id: Option<i64>,
}

impl From<RawRunner> for Runner {
    fn from(r: RawRunner) -> Self {
        let status = match r.status.as_str() {
            "online" => RunnerStatus::Online,
            "offline" => RunnerStatus::Offline,
            other => RunnerStatus::Other(other.to_string()),
        };
        Runner {
            id: r.id,
            name: r.name,
            os: r.os,
            status,
            busy: r.busy,
            ephemeral: r.ephemeral,
            labels: r.labels.into_iter().map(|l| l.name).collect(),
            runner_group_id: r.runner_group_id,
        }
    }
}

#[derive(Deserialize)]
struct RunnerPage {
    #[serde(default)]
    total_count: usize,
    #[serde(default)]
    runners: Vec<RawRunner>,
}

fn header_str<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
    h.get(k).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, k: &str) -> Option<u64> {
    header_str(h, k).and_then(|v| v.trim().parse().ok())
}

fn message_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

impl GithubClient {
    fn now(&self) -> DateTime<Utc> {
        (self.hub.cfg.clock)()
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Current rate-limit state of these credentials.
    pub fn rate_status(&self) -> RateStatus {
        let now = self.now();
        let mut s = lock(&self.hub.rates).get(&self.auth_key).cloned().unwrap_or_default();
        if s.blocked_until.is_some_and(|b| b <= now) {
            s.blocked_until = None;
        }
        if let Some(b) = s.blocked_until {
            s.reason = Some(format!("rate limited until {b}"));
        } else if s.remaining.is_some_and(|r| r < self.hub.cfg.low_remaining) {
            s.reason = Some(format!(
                "rate limit low ({} requests left until {}): polling {}x less often",
                s.remaining.unwrap_or(0),
                s.reset.map(|r| r.to_rfc3339()).unwrap_or_default(),
                self.hub.cfg.slow_factor
            ));
        } else {
            s.reason = None;
        }
        s
    }

    // ------------------------------------------------------------------ auth

    fn token_slot(&self) -> Option<(u64, Arc<AsyncMutex<Option<CachedToken>>>)> {
        let Credentials::App { installation_id, .. } = &self.creds else { return None };
        let slot = lock(&self.hub.tokens).entry(self.auth_key.clone()).or_default().clone();
        Some((*installation_id, slot))
    }

    /// The bearer token for a request: the PAT, or a cached / freshly minted installation token.
    async fn bearer(&self) -> Result<SecretString, GithubError> {
        let (app_id, client_id, pem) = match &self.creds {
            Credentials::Pat { token } => return Ok(token.clone()),
            Credentials::App { app_id, client_id, private_key_pem, .. } => {
                (app_id.clone(), client_id.clone(), private_key_pem.clone())
            }
        };
        let Some((installation_id, slot)) = self.token_slot() else {
            return Err(GithubError::InvalidRequest("no installation".into()));
        };
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref()
            && t.expires_at
                .checked_sub_signed(self.hub.cfg.token_refresh_margin)
                .is_some_and(|r| r > self.now())
        {
            return Ok(t.token.clone());
        }
        let issuer = client_id.or(app_id).ok_or_else(|| GithubError::Auth {
            message: "GitHub App credentials need an app id or a client id".into(),
            permission: None,
        })?;
        self.rate_gate()?;
        // Wall clock: GitHub checks JWT times against real time.
        let jwt = auth::mint_app_jwt(&issuer, pem.expose_secret(), Utc::now())?;
        let path = format!("/app/installations/{installation_id}/access_tokens");
        let resp = self.execute("access_token", Method::POST, &path, &jwt, None, None).await?;
        if Self::is_rate_limited(resp.status, &resp.headers, &resp.body) {
            return Err(self.classify("access_token", &resp));
        }
        match resp.status.as_u16() {
            201 | 200 => {}
            401 => {
                return Err(GithubError::Auth {
                    message: format!("GitHub rejected the App JWT: {}", message_of(&resp.body)),
                    permission: None,
                });
            }
            403 | 404 => {
                return Err(GithubError::Auth {
                    message: format!(
                        "installation {installation_id} is not accessible to this App: {}",
                        message_of(&resp.body)
                    ),
                    permission: None,
                });
            }
            _ => return Err(self.classify("access_token", &resp)),
        }
        let t = token_answer(&resp.body, "installation token")?;
        self.hub.metrics.token_mints.get_or_create(&AuthLabels { principal: self.principal.clone() }).inc();
        tracing::debug!(installation_id, expires_at = %t.expires_at, "minted installation token");
        let tok = CachedToken { token: SecretString::from(t.token), expires_at: t.expires_at };
        *guard = Some(tok.clone());
        Ok(tok.token)
    }

    /// Forget the installation token if it is still `failed` (GitHub answered 401 with it).
    async fn drop_token(&self, failed: &SecretString) {
        if let Some((_, slot)) = self.token_slot() {
            let mut g = slot.lock().await;
            if g.as_ref().is_some_and(|t| t.token.expose_secret() == failed.expose_secret()) {
                *g = None;
            }
        }
    }

    // ------------------------------------------------------------------ transport

    fn rate_gate(&self) -> Result<(), GithubError> {
        let now = self.now();
        if let Some(until) = lock(&self.hub.rates).get(&self.auth_key).and_then(|s| s.blocked_until)
            && until > now
        {
            return Err(GithubError::RateLimited { reset: until });
        }
        Ok(())
    }

    fn observe_rate(&self, status: StatusCode, h: &HeaderMap) {
        let now = self.now();
        let mut rates = lock(&self.hub.rates);
        let s = rates.entry(self.auth_key.clone()).or_default();
        if let Some(l) = header_u64(h, "x-ratelimit-limit") {
            s.limit = Some(l);
        }
        if let Some(r) = header_u64(h, "x-ratelimit-remaining") {
            s.remaining = Some(r);
            self.hub
                .metrics
                .rate_remaining
                .get_or_create(&AuthLabels { principal: self.principal.clone() })
                .set(i64::try_from(r).unwrap_or(i64::MAX));
        }
        let reset = header_str(h, "x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|t| reset_at(now, t));
        if reset.is_some() {
            s.reset = reset;
        }
        if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = header_u64(h, "retry-after").map(|s| wait_until(now, s));
            let exhausted = s.remaining == Some(0) && header_u64(h, "x-ratelimit-remaining") == Some(0);
            let until = match (retry_after, exhausted.then_some(reset).flatten()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(u) = until {
                s.blocked_until = Some(u);
            } else if status == StatusCode::TOO_MANY_REQUESTS {
                // GitHub: with no header, wait at least a minute.
                s.blocked_until = Some(wait_until(now, 60));
            }
        }
    }

    fn is_rate_limited(status: StatusCode, h: &HeaderMap, body: &str) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (header_u64(h, "x-ratelimit-remaining") == Some(0)
                    || h.contains_key("retry-after")
                    || body.contains("rate limit")))
    }

    async fn execute(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Resp, GithubError> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"));
        if let Some(e) = etag {
            b = b.header(http::header::IF_NONE_MATCH, e);
        }
        let req = self
            .octo
            .build_request(b, body)
            .map_err(|e| GithubError::InvalidRequest(format!("cannot build request for {op}: {e}")))?;
        let started = Instant::now();
        let deadline = self.hub.cfg.request_timeout;
        let exchange = async {
            let resp = self
                .octo
                .execute(req)
                .await
                .map_err(|e| (GithubError::Transient(format!("{op}: {e}")), "error"))?;
            let (parts, body) = resp.into_parts();
            let body =
                read_capped(body, self.hub.cfg.max_body_bytes).await.map_err(|e| (e.during(op), "error"))?;
            Ok((parts.status, parts.headers, body))
        };
        let res = match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err((
                GithubError::Transient(format!("{op}: no complete answer within {deadline:?}")),
                "timeout",
            )),
        };
        self.hub
            .metrics
            .latency
            .get_or_create(&OpLabels { endpoint: op.into() })
            .observe(started.elapsed().as_secs_f64());
        let (status, headers, body) = match res {
            Ok(r) => r,
            Err((e, class)) => {
                self.count(op, class);
                return Err(e);
            }
        };
        self.count(op, status.as_str());
        self.observe_rate(status, &headers);
        if status == StatusCode::NOT_MODIFIED {
            self.hub.metrics.not_modified.get_or_create(&OpLabels { endpoint: op.into() }).inc();
        }
        Ok(Resp { status, headers, body })
    }

    fn count(&self, op: &str, status: &str) {
        self.hub
            .metrics
            .requests
            .get_or_create(&EndpointLabels { endpoint: op.into(), status: status.into() })
            .inc();
    }

    /// Send one authenticated request. Idempotent requests (GET, DELETE) are sent once more after
    /// a 401 with a freshly minted installation token; POSTs never are.
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Resp, GithubError> {
        let idempotent = method != Method::POST;
        for attempt in 0..2 {
            self.rate_gate()?;
            let bearer = self.bearer().await?;
            if method != Method::GET {
                self.pace(op).await?;
            }
            let resp = self.execute(op, method.clone(), path, bearer.expose_secret(), body, etag).await?;
            if resp.status == StatusCode::UNAUTHORIZED && matches!(self.creds, Credentials::App { .. }) {
                self.drop_token(&bearer).await;
                if idempotent && attempt == 0 {
                    continue;
                }
            }
            return Ok(resp);
        }
        Err(GithubError::Auth {
            message: format!("{op}: GitHub keeps rejecting the installation token"),
            permission: None,
        })
    }

    /// Wait for the content-creation pace of this principal on this GitHub (briefly), or fail
    /// with `RateLimited` without sending anything.
    async fn pace(&self, op: &'static str) -> Result<(), GithubError> {
        let key = format!("{}|{}", self.base, self.principal);
        match self.hub.pacer.acquire(&key, &self.hub.cfg.clock).await {
            Ok(()) => Ok(()),
            Err(reset) => {
                self.hub.metrics.paced.get_or_create(&OpLabels { endpoint: op.into() }).inc();
                tracing::debug!(endpoint = op, %reset, "content-creation pace reached; not sending");
                Err(GithubError::RateLimited { reset })
            }
        }
    }

    /// Map a non-success answer to an error.
    /// GET `path` as `op` and read the 200 answer as `T`: any other status is classified, an
    /// unreadable body is `Transient` ("unreadable {what}: …").
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        what: &str,
    ) -> Result<T, GithubError> {
        let r = self.send(op, Method::GET, path, None, None).await?;
        if r.status != StatusCode::OK {
            return Err(self.classify(op, &r));
        }
        serde_json::from_str(&r.body).map_err(|e| GithubError::Transient(format!("unreadable {what}: {e}")))
    }

    fn classify(&self, op: &str, r: &Resp) -> GithubError {
        let msg = format!("{op}: {} {}", r.status.as_u16(), message_of(&r.body));
        if Self::is_rate_limited(r.status, &r.headers, &r.body) {
            let reset = lock(&self.hub.rates)
                .get(&self.auth_key)
                .and_then(|s| s.blocked_until)
                .unwrap_or_else(|| wait_until(self.now(), 60));
            return GithubError::RateLimited { reset };
        }
        match r.status.as_u16() {
            401 => GithubError::Auth { message: msg, permission: None },
            403 => {
                // GitHub names what an App lacks in `x-accepted-github-permissions`.
                let permission = header_str(&r.headers, "x-accepted-github-permissions").map(str::to_string);
                GithubError::Auth { message: msg, permission }
            }
            404 => GithubError::NotFound(msg),
            409 => GithubError::Conflict(msg),
            400 | 422 => GithubError::InvalidRequest(msg),
            _ => GithubError::Transient(msg),
        }
    }

    // ------------------------------------------------------------------ runners

    fn list_cache(&self, scope: &Scope) -> Arc<AsyncMutex<ListCache>> {
        lock(&self.hub.lists).entry((self.auth_key.clone(), scope.clone())).or_default().clone()
    }

    /// Drop the cached list so the next [`Self::list_runners`] asks GitHub (ETags still apply).
    pub async fn invalidate_runners(&self, scope: &Scope) {
        self.list_cache(scope).lock().await.fetched_at = None;
    }

    /// Every runner of the scope. At most one refresh per scope per interval (longer when the
    /// rate limit runs low); unchanged pages are revalidated with `If-None-Match` (304s are free).
    pub async fn list_runners(&self, scope: &Scope) -> Result<Arc<Vec<Runner>>, GithubError> {
        let cache = self.list_cache(scope);
        let mut c = cache.lock().await;
        let now = self.now();
        let mut interval = self.hub.cfg.list_interval;
        if self.rate_status().remaining.is_some_and(|r| r < self.hub.cfg.low_remaining) {
            interval = interval * self.hub.cfg.slow_factor;
        }
        if let Some(at) = c.fetched_at
            && at + interval > now
        {
            return Ok(c.runners.clone());
        }
        let mut pages: Vec<(Option<String>, usize)> = Vec::new();
        let mut all: Vec<Runner> = Vec::new();
        let mut total = None;
        let mut page = 1usize;
        let mut read_bytes = 0usize;
        loop {
            let cached = c.pages.get(page - 1).map(|(e, n)| {
                let offset: usize = c.pages[..page - 1].iter().map(|(_, n)| n).sum();
                (e.clone(), offset, *n)
            });
            let etag = cached.as_ref().and_then(|(e, _, _)| e.clone());
            let path = format!("{}/actions/runners?per_page=100&page={page}", scope.api_path());
            let r = self.send("list_runners", Method::GET, &path, None, etag.as_deref()).await?;
            read_bytes = read_bytes.saturating_add(r.body.len());
            if read_bytes > MAX_LIST_BYTES {
                return Err(GithubError::ResponseTooLarge(format!(
                    "the runner list of {scope} exceeds {MAX_LIST_BYTES} bytes after {page} pages"
                )));
            }
            let (etag, n, page_total) = match (r.status.as_u16(), cached) {
                (304, Some((e, offset, n))) => match c.runners.get(offset..offset + n) {
                    Some(rs) => {
                        all.extend(rs.iter().cloned());
                        (e, n, None)
                    }
                    None => {
                        return Err(GithubError::Transient("304 for a page not in the cached list".into()));
                    }
                },
                (304, None) => return Err(GithubError::Transient("304 for a page never fetched".into())),
                (200, _) => {
                    let p: RunnerPage = serde_json::from_str(&r.body)
                        .map_err(|e| GithubError::Transient(format!("unreadable runner list: {e}")))?;
                    let etag = header_str(&r.headers, "etag").map(str::to_string);
                    let n = p.runners.len();
                    if n > PER_PAGE {
                        return Err(GithubError::ResponseTooLarge(format!(
                            "page {page} of the runner list of {scope} holds {n} runners, {PER_PAGE} were asked for"
                        )));
                    }
                    all.extend(p.runners.into_iter().map(Runner::from));
                    (etag, n, Some(p.total_count))
                }
                _ => return Err(self.classify("list_runners", &r)),
            };
            if let Some(t) = page_total {
                total = Some(t);
            }
            pages.push((etag, n));
            let expected = total.unwrap_or_else(|| c.pages.iter().map(|(_, n)| n).sum());
            if n == 0 || all.len() >= expected || page >= MAX_PAGES {
                break;
            }
            page += 1;
        }
        c.pages = pages;
        c.runners = Arc::new(all);
        c.fetched_at = Some(now);
        Ok(c.runners.clone())
    }

    /// Look a runner up by exact name (one request, not cached).
    pub async fn find_runner_by_name(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<Runner>, GithubError> {
        let q: String =
            url::form_urlencoded::Serializer::new(String::new()).append_pair("name", name).finish();
        let path = format!("{}/actions/runners?{q}", scope.api_path());
        let p: RunnerPage = self.get_json("list_runners", &path, "runner list").await?;
        Ok(p.runners.into_iter().map(Runner::from).find(|x| x.name == name))
    }

    /// One runner by id; `None` when gone.
    pub async fn get_runner(&self, scope: &Scope, id: u64) -> Result<Option<Runner>, GithubError> {
        let path = format!("{}/actions/runners/{id}", scope.api_path());
        let r = self.send("get_runner", Method::GET, &path, None, None).await?;
        match r.status.as_u16() {
            200 => {
                let raw: RawRunner = serde_json::from_str(&r.body)
                    .map_err(|e| GithubError::Transient(format!("unreadable runner: {e}")))?;
                Ok(Some(raw.into()))
            }
            404 => Ok(None),
            _ => Err(self.classify("get_runner", &r)),
        }
    }

    /// Register a JIT runner. Never replayed: on 409 the existing runner is looked up by name and
    /// reported as `Conflict`; on a transport error the caller must list before trying again.
    pub async fn generate_jit_config(
        &self,
        scope: &Scope,
        name: &str,
        labels: &[String],
        runner_group_id: i64,
        work_folder: Option<&str>,
    ) -> Result<JitConfig, GithubError> {
        let mut body = json!({"name": name, "runner_group_id": runner_group_id, "labels": labels});
        if let (Some(w), Some(o)) = (work_folder, body.as_object_mut()) {
            o.insert("work_folder".into(), json!(w));
        }
        let path = format!("{}/actions/runners/generate-jitconfig", scope.api_path());
        let r = self.send("jitconfig", Method::POST, &path, Some(&body), None).await?;
        self.invalidate_runners(scope).await;
        match r.status.as_u16() {
            201 | 200 => {
                #[derive(Deserialize)]
                struct Jit {
                    runner: RawRunner,
                    encoded_jit_config: String,
                }
                let j: Jit = serde_json::from_str(&r.body)
                    .map_err(|e| GithubError::Transient(format!("unreadable jitconfig answer: {e}")))?;
                Ok(JitConfig { runner_id: j.runner.id, encoded: SecretString::from(j.encoded_jit_config) })
            }
            409 => {
                let existing = self.find_runner_by_name(scope, name).await.ok().flatten();
                let detail = match existing {
                    Some(x) => {
                        format!("runner {name} already exists (id {}, {:?}, busy {})", x.id, x.status, x.busy)
                    }
                    None => format!("runner {name} already exists: {}", message_of(&r.body)),
                };
                tracing::warn!(%scope, runner = name, "JIT registration conflict; not replaying");
                Err(GithubError::Conflict(detail))
            }
            _ => Err(self.classify("jitconfig", &r)),
        }
    }

    async fn runner_token(
        &self,
        scope: &Scope,
        kind: &'static str,
    ) -> Result<RegistrationToken, GithubError> {
        let (op, seg) = if kind == "remove" {
            ("remove_token", "remove-token")
        } else {
            ("registration_token", "registration-token")
        };
        let path = format!("{}/actions/runners/{seg}", scope.api_path());
        let r = self.send(op, Method::POST, &path, None, None).await?;
        if r.status.as_u16() != 201 && r.status.as_u16() != 200 {
            return Err(self.classify(op, &r));
        }
        let t = token_answer(&r.body, op)?;
        Ok(RegistrationToken {
            token: SecretString::from(t.token),
            expires_at: t.expires_at,
            url: format!("{}{}", html_base(&self.base), scope.html_path()),
        })
    }

    /// A registration token for `config.sh` (1 h) and the URL it takes.
    pub async fn registration_token(&self, scope: &Scope) -> Result<RegistrationToken, GithubError> {
        self.runner_token(scope, "registration").await
    }

    /// A remove token for `config.sh remove`.
    pub async fn remove_token(&self, scope: &Scope) -> Result<RegistrationToken, GithubError> {
        self.runner_token(scope, "remove").await
    }

    /// Delete a registration: 204 and 404 mean gone; 422 means busy.
    pub async fn delete_runner(&self, scope: &Scope, id: u64) -> Result<(), GithubError> {
        let path = format!("{}/actions/runners/{id}", scope.api_path());
        let r = self.send("delete_runner", Method::DELETE, &path, None, None).await?;
        let res = match r.status.as_u16() {
            204 | 200 | 404 => Ok(()),
            422 => Err(GithubError::Busy(format!("runner {id}: {}", message_of(&r.body)))),
            _ => Err(self.classify("delete_runner", &r)),
        };
        if res.is_ok() {
            self.invalidate_runners(scope).await;
        }
        res
    }

    /// Runner group name → id (cached). `Default` (or empty) is id 1 without a request; repo
    /// scopes only have the default group.
    pub async fn runner_group_id(&self, scope: &Scope, name: &str) -> Result<i64, GithubError> {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("default") {
            return Ok(1);
        }
        if matches!(scope, Scope::Repo { .. }) {
            return Err(GithubError::InvalidRequest(format!(
                "runner group {name:?}: repositories only have the Default runner group"
            )));
        }
        let key = (self.base.clone(), scope.clone(), name.to_ascii_lowercase());
        if let Some(id) = lock(&self.hub.groups).get(&key) {
            return Ok(*id);
        }
        let mut page = 1;
        loop {
            let path = format!("{}/actions/runner-groups?per_page=100&page={page}", scope.api_path());
            #[derive(Deserialize)]
            struct G {
                id: f64,
                name: String,
            }
            #[derive(Deserialize)]
            struct Groups {
                #[serde(default)]
                total_count: f64,
                #[serde(default)]
                runner_groups: Vec<G>,
            }
            let g: Groups = self.get_json("runner_groups", &path, "runner groups").await?;
            let n = g.runner_groups.len();
            {
                let mut groups = lock(&self.hub.groups);
                for x in &g.runner_groups {
                    groups
                        .insert((self.base.clone(), scope.clone(), x.name.to_ascii_lowercase()), x.id as i64);
                }
                if let Some(id) = groups.get(&key) {
                    return Ok(*id);
                }
            }
            if n == 0 || (page * PER_PAGE) as f64 >= g.total_count {
                return Err(GithubError::NotFound(format!("runner group {name:?} in {scope}")));
            }
            if page >= MAX_PAGES {
                return Err(GithubError::ResponseTooLarge(format!(
                    "runner group {name:?} not found in the first {MAX_PAGES} pages of {scope}"
                )));
            }
            page += 1;
        }
    }

    /// When GitHub stops supporting a runner version (`None` = no schedule published for it).
    /// Org and repo scope only (GitHub offers no enterprise variant).
    pub async fn runner_version_deprecation(
        &self,
        scope: &Scope,
        version: &str,
    ) -> Result<Option<DateTime<Utc>>, GithubError> {
        if matches!(scope, Scope::Enterprise(_)) {
            return Ok(None);
        }
        let path = format!("{}/actions/runners/deprecations/{}", scope.api_path(), super::enc(version));
        let r = self.send("runner_deprecation", Method::GET, &path, None, None).await?;
        match r.status.as_u16() {
            200 => {
                #[derive(Deserialize)]
                struct D {
                    #[serde(default)]
                    runtime_deprecates_at: Option<DateTime<Utc>>,
                }
                let d: D = serde_json::from_str(&r.body)
                    .map_err(|e| GithubError::Transient(format!("unreadable deprecation answer: {e}")))?;
                Ok(d.runtime_deprecates_at)
            }
            404 => Ok(None),
            _ => Err(self.classify("runner_deprecation", &r)),
        }
    }
}

/// A token answer (`POST /app/installations/{id}/access_tokens`, `.../registration-token`,
/// `.../remove-token`): the token and when it expires.
#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: DateTime<Utc>,
}

/// Read a token answer; an unreadable one is transient (GitHub answered, but not as documented).
fn token_answer(body: &str, what: &str) -> Result<TokenAnswer, GithubError> {
    serde_json::from_str(body).map_err(|e| GithubError::Transient(format!("unreadable {what} answer: {e}")))
}

impl GithubError {
    /// The same error with the operation it happened in named first.
    fn during(self, op: &str) -> Self {
        match self {
            GithubError::Transient(m) => GithubError::Transient(format!("{op}: {m}")),
            GithubError::ResponseTooLarge(m) => GithubError::ResponseTooLarge(format!("{op}: {m}")),
            other => other,
        }
    }
}

/// Read an answer body as text, at most `cap` bytes: http-body-util's `Limited` stops reading
/// (and drops the connection's remaining bytes unread) as soon as the body passes the cap, so a
/// huge answer costs at most `cap` bytes of memory.
async fn read_capped<B>(body: B, cap: usize) -> Result<String, GithubError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(body, cap).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(GithubError::ResponseTooLarge(format!("the answer exceeds {cap} bytes")));
        }
        Err(e) => return Err(GithubError::Transient(format!("reading the answer: {e}"))),
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| GithubError::Transient("the answer is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn client_at(now: DateTime<Utc>) -> GithubClient {
        let hub = GithubHub::new(HubConfig { clock: Arc::new(move || now), ..HubConfig::default() });
        hub.client("http://127.0.0.1:1", Credentials::Pat { token: SecretString::from("t") }).unwrap()
    }

    /// Absurd waits from a server clamp to an hour from now instead of overflowing the clock
    /// (`Retry-After: 99999999999999999` once panicked in `now + Duration::seconds(s as i64)`).
    #[tokio::test]
    async fn absurd_rate_limit_headers_wait_at_most_an_hour() {
        let now = t0();
        let cap = now + MAX_RATE_WAIT;
        for (status, h) in [
            (StatusCode::TOO_MANY_REQUESTS, headers(&[("retry-after", "99999999999999999")])),
            (StatusCode::FORBIDDEN, headers(&[("retry-after", "18446744073709551615")])),
            (
                StatusCode::FORBIDDEN,
                headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "9223372036854775807")]),
            ),
            (
                StatusCode::FORBIDDEN,
                headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "99999999999")]),
            ),
            (
                StatusCode::TOO_MANY_REQUESTS,
                headers(&[("retry-after", "1e308"), ("x-ratelimit-reset", "-9223372036854775808")]),
            ),
        ] {
            let c = client_at(now);
            c.observe_rate(status, &h);
            let s = c.rate_status();
            assert!(s.blocked_until.is_some_and(|b| b > now && b <= cap), "{h:?}: {s:?}");
            assert!(s.reset.is_none_or(|r| r <= cap), "{h:?}: {s:?}");
            let GithubError::RateLimited { reset } = c.rate_gate().unwrap_err() else { panic!() };
            assert!(reset <= cap);
        }
        // Sane values are kept as given.
        let c = client_at(now);
        c.observe_rate(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "30")]));
        assert_eq!(c.rate_status().blocked_until, Some(now + Duration::seconds(30)));
    }

    #[test]
    fn waits_near_the_end_of_time_do_not_overflow() {
        assert_eq!(wait_until(DateTime::<Utc>::MAX_UTC, u64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(clamp_until(DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC), DateTime::<Utc>::MIN_UTC);
        assert_eq!(wait_until(t0(), u64::MAX), t0() + MAX_RATE_WAIT);
        assert_eq!(reset_at(t0(), i64::MAX), t0() + MAX_RATE_WAIT);
        assert_eq!(reset_at(t0(), i64::MIN), t0());
        assert_eq!(reset_at(t0(), 1_700_000_060), t0() + Duration::seconds(60));
    }

    /// A token whose `expires_at` is the earliest date chrono knows is stale, not a panic.
    #[tokio::test]
    async fn a_token_expiring_at_the_start_of_time_is_renewed_without_panic() {
        let hub = GithubHub::new(HubConfig { clock: Arc::new(t0), ..HubConfig::default() });
        let creds = Credentials::App {
            app_id: Some("1".into()),
            client_id: None,
            installation_id: 7,
            private_key_pem: SecretString::from("not a pem"),
        };
        let c = hub.client("http://127.0.0.1:1", creds).unwrap();
        let (_, slot) = c.token_slot().unwrap();
        *slot.lock().await =
            Some(CachedToken { token: SecretString::from("old"), expires_at: DateTime::<Utc>::MIN_UTC });
        // The stale token is not reused: a new one is minted, which fails on the bad key.
        assert!(matches!(c.bearer().await, Err(GithubError::Auth { .. })));
    }

    #[test]
    fn token_answers_with_absurd_expiry_are_read_or_refused() {
        assert!(token_answer(r#"{"token":"x","expires_at":"+262142-12-31T23:59:59Z"}"#, "t").is_ok());
        assert!(matches!(
            token_answer(r#"{"token":"x","expires_at":"99999999999"}"#, "t"),
            Err(GithubError::Transient(_))
        ));
        assert!(matches!(token_answer("{not json", "t"), Err(GithubError::Transient(_))));
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_cap() {
        let small = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(read_capped(small, 16).await.unwrap(), "{\"a\":1}");
        // An endless body stops at the cap: the stream is never read to its end.
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let endless = http_body_util::StreamBody::new(futures::stream::repeat_with(move || {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))
        }));
        let e = read_capped(endless, 1 << 20).await.unwrap_err();
        assert!(matches!(&e, GithubError::ResponseTooLarge(m) if m.contains("1048576")), "{e:?}");
        assert!(!e.is_retryable());
        let binary = http_body_util::Full::new(bytes::Bytes::from_static(&[0xff, 0xfe]));
        assert!(matches!(read_capped(binary, 16).await, Err(GithubError::Transient(_))));
    }

    #[tokio::test]
    async fn http_api_urls_off_loopback_are_refused_unless_allowed() {
        let pat = || Credentials::Pat { token: SecretString::from("t") };
        let strict = GithubHub::default();
        assert!(
            matches!(strict.client("http://ghe.example.com/api/v3", pat()), Err(GithubError::InvalidRequest(m)) if m.contains("spec.github.apiUrl"))
        );
        assert!(strict.client("https://ghe.example.com/api/v3", pat()).is_ok());
        assert!(strict.client("http://127.0.0.1:9", pat()).is_ok());
        let dev = GithubHub::new(HubConfig { allow_insecure_http: true, ..HubConfig::default() });
        assert!(dev.client("http://ghe.example.com/api/v3", pat()).is_ok());
    }
}
