//! The webhook receiver: `POST /webhooks/github`, answered 202 at once; `workflow_job`
//! deliveries become [`DemandSignal`]s.
//!
//! Defences, in the order a request meets them (docs/security.md, "Webhook endpoint"):
//! 1. the server (the controller's `serve_bounded`): a cap on open connections and a
//!    header-read timeout (an idle keep-alive connection is closed after it too);
//! 2. a body cap ([`WebhookLimits::max_body_bytes`]): a declared `Content-Length` above it is
//!    answered 413 before any byte of the body is read, a chunked body is cut off (413) once it
//!    passes the cap;
//! 3. a concurrency limit that sheds (503) instead of queueing, and a deadline on the whole
//!    request, body included (408);
//! 4. the HMAC-SHA256 `X-Hub-Signature-256` over the raw body, in constant time, with the
//!    secret chosen by the delivery's App headers ([`WebhookSecrets`]) — before any JSON parse;
//! 5. `X-GitHub-Delivery` deduplicated over a bounded window of recent ids;
//! 6. bounded parsing: oversized names and label lists make a delivery unreadable.
//!
//! Warnings about rejected deliveries are rate-limited ([`WarnLimiter`]); every result is
//! counted in `github_webhook_deliveries_total{result}`.
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;
use tower::ServiceBuilder;

use super::GithubMetrics;

pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// Header naming what a hook belongs to: `integration` for a GitHub App's webhook.
pub const TARGET_TYPE_HEADER: &str = "x-github-hook-installation-target-type";
/// Header with the id of what the hook belongs to: the App id for `integration`.
pub const TARGET_ID_HEADER: &str = "x-github-hook-installation-target-id";

/// Longest repository `owner/name` or organization login kept from a delivery (GitHub allows 39
/// characters for an owner and 100 for a repository name).
const MAX_NAME_BYTES: usize = 256;
/// Most `runs-on` labels kept from one job (GitHub's own limit on a runner's labels is far lower).
const MAX_LABELS: usize = 64;
/// Longest label kept.
const MAX_LABEL_BYTES: usize = 256;
/// Longest `X-GitHub-Delivery` id taken for deduplication (GitHub sends a 36-character GUID).
const MAX_DELIVERY_ID_BYTES: usize = 128;

/// A `workflow_job` delivery reduced to what scaling needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemandSignal {
    pub delivery_id: Option<String>,
    /// The App whose own secret verified the delivery; `None` for the shared secret.
    pub app: Option<u64>,
    pub job_id: u64,
    /// `queued`, `waiting`, `in_progress`, `completed` (or anything GitHub adds later).
    pub action: String,
    /// Distinct labels, in the delivery's order.
    pub labels: Vec<String>,
    pub runner_name: Option<String>,
    /// `owner/name`
    pub repository: Option<String>,
    pub organization: Option<String>,
}

/// The webhook secrets: one per GitHub App, chosen by the delivery's
/// `X-GitHub-Hook-Installation-Target-Type: integration` and `…-Target-ID: <app id>` headers,
/// and an optional shared secret for every other delivery (the single-secret configuration).
///
/// A delivery verified with App `N`'s own secret is attributed to `N` and feeds only pools
/// whose App is `N`; one verified with the shared secret feeds only pools whose App has no
/// secret of its own. So knowing one App's secret never forges demand for another App's pools.
/// A delivery that names an App with a secret of its own is checked against that secret only.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    shared: Option<SecretString>,
    apps: BTreeMap<u64, SecretString>,
}

impl std::fmt::Debug for WebhookSecrets {
    /// The App ids only, never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("shared", &self.shared.is_some())
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookSecrets {
    /// One secret for every delivery (one App, or Apps that trust each other).
    pub fn single(secret: SecretString) -> Self {
        Self { shared: Some(secret), apps: BTreeMap::new() }
    }

    /// A shared secret (optional) and a secret per App id.
    pub fn new(shared: Option<SecretString>, apps: BTreeMap<u64, SecretString>) -> Self {
        Self { shared, apps }
    }

    pub fn is_empty(&self) -> bool {
        self.shared.is_none() && self.apps.is_empty()
    }

    /// The Apps that have a secret of their own.
    pub fn app_ids(&self) -> BTreeSet<u64> {
        self.apps.keys().copied().collect()
    }

    /// The secret a delivery with these headers is checked against, and the App it is
    /// attributed to once verified.
    fn select(&self, headers: &HeaderMap) -> Option<(&SecretString, Option<u64>)> {
        let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
        let app = h(TARGET_TYPE_HEADER)
            .filter(|t| t.eq_ignore_ascii_case("integration"))
            .and(h(TARGET_ID_HEADER))
            .and_then(|id| id.parse::<u64>().ok());
        match app.and_then(|id| self.apps.get(&id).map(|s| (s, id))) {
            Some((secret, id)) => Some((secret, Some(id))),
            None => self.shared.as_ref().map(|s| (s, None)),
        }
    }
}

/// The receiver's bounds. The defaults ([`WebhookLimits::default`]) suit GitHub's deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Body cap. `workflow_job` deliveries are 8–14 KiB (octokit/webhooks' examples, steps and a
    /// deployment included); a job with hundreds of steps stays well under 100 KiB. 256 KiB
    /// leaves room for that and bounds what a request can make the controller buffer.
    pub max_body_bytes: usize,
    /// Requests handled at once; more are answered 503 at once. Each holds at most
    /// `max_body_bytes`, so the receiver's buffers stay under `max_body_bytes × max_concurrent`
    /// (16 MiB by default).
    pub max_concurrent: usize,
    /// Deadline of a whole request, body included (408 after it).
    pub request_timeout: Duration,
    /// Delivery ids remembered for deduplication.
    pub recent_deliveries: usize,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_concurrent: 64,
            request_timeout: Duration::from_secs(10),
            recent_deliveries: 4096,
        }
    }
}

/// At most one warning per interval; the next one says how many were left out. `tracing` has
/// no rate limiting of its own and none of the locked crates offers one for log lines, hence
/// these few lines.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimiter {
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(n)` when a warning may be logged now, `n` being the warnings left out since the
    /// last one; `None` when this one is to be left out.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut st = crate::sync::lock(&self.state);
        let due = st.0.is_none_or(|last| now.checked_duration_since(last).is_none_or(|d| d >= self.every));
        if due {
            let suppressed = st.1;
            *st = (Some(now), 0);
            Some(suppressed)
        } else {
            st.1 = st.1.saturating_add(1);
            None
        }
    }
}

/// The last `cap` delivery ids, per attribution: a redelivery (same `X-GitHub-Delivery`) is
/// recognised within that window. Only verified deliveries enter it, so unsigned traffic cannot
/// push real ids out.
#[derive(Debug)]
struct RecentDeliveries {
    cap: usize,
    order: VecDeque<(Option<u64>, String)>,
    seen: HashSet<(Option<u64>, String)>,
}

impl RecentDeliveries {
    fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), order: VecDeque::new(), seen: HashSet::new() }
    }

    /// Record the id; false when it was already there.
    fn insert(&mut self, key: (Option<u64>, String)) -> bool {
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn remove(&mut self, key: &(Option<u64>, String)) {
        if self.seen.remove(key) {
            self.order.retain(|k| k != key);
        }
    }
}

struct Ctx {
    secrets: WebhookSecrets,
    tx: mpsc::Sender<DemandSignal>,
    metrics: Option<GithubMetrics>,
    recent: Mutex<RecentDeliveries>,
    warn: WarnLimiter,
}

impl Ctx {
    fn count(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.webhook(result);
        }
    }

    /// A rate-limited warning about a rejected delivery (never its body).
    fn warn(&self, what: &'static str, delivery: Option<&str>) {
        if let Some(suppressed) = self.warn.admit(Instant::now()) {
            tracing::warn!(
                delivery = delivery.unwrap_or("-"),
                suppressed,
                "webhook delivery rejected: {what} (further rejections are logged at most every {:?})",
                self.warn.every
            );
        }
    }
}

/// Verify `X-Hub-Signature-256` (`sha256=<hex>`) over the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Parse a `workflow_job` payload leniently (unknown fields and statuses are fine); names and
/// label lists beyond the bounds above make it unreadable. Call only on a verified body.
pub fn parse_workflow_job(body: &[u8], delivery_id: Option<String>) -> Option<DemandSignal> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let job = v.get("workflow_job")?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let name = |v: Option<&Value>| -> Result<Option<String>, ()> {
        match s(v) {
            Some(n) if n.len() > MAX_NAME_BYTES => Err(()),
            n => Ok(n),
        }
    };
    let mut labels: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for l in job.get("labels").and_then(Value::as_array).into_iter().flatten() {
        let Some(l) = l.as_str() else { continue };
        if l.len() > MAX_LABEL_BYTES {
            return None;
        }
        if seen.insert(l.to_ascii_lowercase()) {
            labels.push(l.to_string());
        }
        if labels.len() > MAX_LABELS {
            return None;
        }
    }
    Some(DemandSignal {
        delivery_id,
        app: None,
        job_id: job.get("id").and_then(Value::as_u64)?,
        action: name(v.get("action")).ok()?.unwrap_or_default(),
        labels,
        runner_name: name(job.get("runner_name")).ok()?,
        repository: name(v.get("repository").and_then(|r| r.get("full_name"))).ok()?,
        organization: name(v.get("organization").and_then(|o| o.get("login"))).ok()?,
    })
}

/// The receiver with the default [`WebhookLimits`]. Mount it on the controller's webhook
/// listener (the controller serves it with a connection cap and a header-read timeout).
pub fn router(secrets: WebhookSecrets, tx: mpsc::Sender<DemandSignal>) -> Router {
    router_with(secrets, tx, None, WebhookLimits::default())
}

/// [`router`] that also counts deliveries by result.
pub fn router_with_metrics(
    secrets: WebhookSecrets,
    tx: mpsc::Sender<DemandSignal>,
    metrics: Option<GithubMetrics>,
) -> Router {
    router_with(secrets, tx, metrics, WebhookLimits::default())
}

/// [`router_with_metrics`] with these limits.
pub fn router_with(
    secrets: WebhookSecrets,
    tx: mpsc::Sender<DemandSignal>,
    metrics: Option<GithubMetrics>,
    limits: WebhookLimits,
) -> Router {
    let ctx = Arc::new(Ctx {
        secrets,
        tx,
        metrics: metrics.clone(),
        recent: Mutex::new(RecentDeliveries::new(limits.recent_deliveries)),
        warn: WarnLimiter::new(Duration::from_secs(10)),
    });
    // Outermost first: cap the body (413), shed beyond the concurrency limit (503), then the
    // request deadline (408); around them all, count what they answer.
    let layers = ServiceBuilder::new()
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            (StatusCode::SERVICE_UNAVAILABLE, "busy; deliver again later")
        }))
        .load_shed()
        .concurrency_limit(limits.max_concurrent.max(1))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(ctx)
        .layer(layers)
        .layer(axum::middleware::map_response_with_state(metrics, count_layer_answers))
}

/// Count the answers the layers give without reaching [`receive`].
async fn count_layer_answers(State(metrics): State<Option<GithubMetrics>>, r: Response) -> Response {
    if let Some(m) = &metrics {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => m.webhook("too_large"),
            StatusCode::SERVICE_UNAVAILABLE if r.extensions().get::<Counted>().is_none() => m.webhook("shed"),
            StatusCode::REQUEST_TIMEOUT => m.webhook("timeout"),
            _ => {}
        }
    }
    r
}

/// Marks an answer [`receive`] gave (and counted) itself.
#[derive(Clone, Copy)]
struct Counted;

async fn receive(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let delivery = h("x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= MAX_DELIVERY_ID_BYTES)
        .map(str::to_string);
    // The signature first: nothing of an unverified body is parsed or logged.
    let verified = ctx.secrets.select(&headers).and_then(|(secret, app)| {
        verify_signature(secret.expose_secret().as_bytes(), &body, h("x-hub-signature-256")).then_some(app)
    });
    let Some(app) = verified else {
        ctx.warn("bad or missing signature", delivery.as_deref());
        ctx.count("bad_signature");
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    };
    let key = delivery.clone().map(|d| (app, d));
    if let Some(k) = &key
        && !crate::sync::lock(&ctx.recent).insert(k.clone())
    {
        tracing::debug!(delivery = %k.1, "redelivered webhook ignored");
        ctx.count("duplicate");
        return StatusCode::ACCEPTED.into_response();
    }
    let forget = || {
        if let Some(k) = &key {
            crate::sync::lock(&ctx.recent).remove(k);
        }
    };
    if h("x-github-event") != Some("workflow_job") {
        ctx.count("ignored");
        return StatusCode::ACCEPTED.into_response();
    }
    let Some(sig) = parse_workflow_job(&body, delivery.clone()) else {
        ctx.warn("unreadable workflow_job payload", delivery.as_deref());
        ctx.count("unreadable");
        return StatusCode::ACCEPTED.into_response();
    };
    let sig = DemandSignal { app, ..sig };
    tracing::debug!(job_id = sig.job_id, action = %sig.action, ?app, "workflow_job delivery");
    match ctx.tx.try_send(sig) {
        Ok(()) => {
            ctx.count("accepted");
            StatusCode::ACCEPTED.into_response()
        }
        Err(_) => {
            // Not remembered: a redelivery of this id is taken.
            forget();
            ctx.warn("demand queue full", delivery.as_deref());
            ctx.count("dropped");
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, "busy; deliver again later").into_response();
            r.extensions_mut().insert(Counted);
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_vector_and_tampering() {
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature(b"It's a Secret to Everybody", b"Hello, World!", Some(sig)));
        assert!(!verify_signature(b"It's a Secret to Everybody", b"Hello, World?", Some(sig)));
        assert!(!verify_signature(b"It's a secret to everybody", b"Hello, World!", Some(sig)));
        assert!(!verify_signature(b"It's a Secret to Everybody", b"Hello, World!", None));
        assert!(!verify_signature(b"It's a Secret to Everybody", b"Hello, World!", Some("sha256=zz")));
    }

    fn headers(kind: &str, id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TARGET_TYPE_HEADER, kind.parse().unwrap());
        h.insert(TARGET_ID_HEADER, id.parse().unwrap());
        h
    }

    #[test]
    fn the_secret_is_chosen_by_the_app_headers() {
        let apps = [(7, SecretString::from("seven")), (8, SecretString::from("eight"))].into_iter().collect();
        let both = WebhookSecrets::new(Some(SecretString::from("shared")), apps);
        let pick =
            |s: &WebhookSecrets, h: &HeaderMap| s.select(h).map(|(k, a)| (k.expose_secret().to_string(), a));
        assert_eq!(pick(&both, &headers("integration", "7")), Some(("seven".into(), Some(7))));
        assert_eq!(pick(&both, &headers("Integration", " 8 ")), Some(("eight".into(), Some(8))));
        // Another App, an org hook, or no headers: the shared secret, attributed to no App.
        assert_eq!(pick(&both, &headers("integration", "9")), Some(("shared".into(), None)));
        assert_eq!(pick(&both, &headers("organization", "7")), Some(("shared".into(), None)));
        assert_eq!(pick(&both, &HeaderMap::new()), Some(("shared".into(), None)));
        let only_apps = WebhookSecrets::new(None, [(7, SecretString::from("seven"))].into_iter().collect());
        assert_eq!(pick(&only_apps, &headers("integration", "9")), None);
        assert!(!format!("{both:?}").contains("seven"));
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_leave_out() {
        let w = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.admit(t0), Some(0));
        for i in 1..100 {
            assert_eq!(w.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(w.admit(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(w.admit(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn recent_deliveries_are_bounded() {
        let mut r = RecentDeliveries::new(3);
        let k = |a: Option<u64>, s: &str| (a, s.to_string());
        assert!(r.insert(k(None, "a")));
        assert!(!r.insert(k(None, "a")));
        // Per attribution: App 1's ids do not shadow the shared secret's.
        assert!(r.insert(k(Some(1), "a")));
        assert!(r.insert(k(None, "b")));
        assert!(r.insert(k(None, "c")));
        assert_eq!((r.order.len(), r.seen.len()), (3, 3));
        // The oldest left the window.
        assert!(r.insert(k(None, "a")));
        r.remove(&k(None, "a"));
        assert!(r.insert(k(None, "a")));
    }

    #[test]
    fn oversized_names_and_label_lists_are_unreadable_and_labels_are_distinct() {
        let body = |labels: Vec<String>, org: String| {
            serde_json::to_vec(&serde_json::json!({
                "action": "queued", "workflow_job": {"id": 1, "labels": labels}, "organization": {"login": org}
            }))
            .unwrap()
        };
        let s = parse_workflow_job(&body(vec!["aci".into(), "ACI".into(), "x".into()], "o".into()), None)
            .unwrap();
        assert_eq!(s.labels, ["aci", "x"]);
        assert!(parse_workflow_job(&body(vec!["aci".into()], "o".repeat(300)), None).is_none());
        assert!(
            parse_workflow_job(&body((0..65).map(|i| i.to_string()).collect(), "o".into()), None).is_none()
        );
        // Repeating one label does not make a list long.
        let s = parse_workflow_job(&body(vec!["aci".into(); 10_000], "o".into()), None).unwrap();
        assert_eq!(s.labels, ["aci"]);
    }
}
