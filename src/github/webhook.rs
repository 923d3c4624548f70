//! The webhook receiver: `POST /webhooks/github`, `X-Hub-Signature-256` checked in constant time,
//! answered 202 at once; `workflow_job` deliveries become [`DemandSignal`]s.
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::GithubMetrics;

pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// A `workflow_job` delivery reduced to what scaling needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemandSignal {
    pub delivery_id: Option<String>,
    pub job_id: u64,
    /// `queued`, `waiting`, `in_progress`, `completed` (or anything GitHub adds later).
    pub action: String,
    pub labels: Vec<String>,
    pub runner_name: Option<String>,
    /// `owner/name`
    pub repository: Option<String>,
    pub organization: Option<String>,
}

struct Ctx {
    secret: SecretString,
    tx: mpsc::Sender<DemandSignal>,
    metrics: Option<GithubMetrics>,
}

/// Verify `X-Hub-Signature-256` (`sha256=<hex>`) over the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Parse a `workflow_job` payload leniently (unknown fields and statuses are fine).
pub fn parse_workflow_job(body: &[u8], delivery_id: Option<String>) -> Option<DemandSignal> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let job = v.get("workflow_job")?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    Some(DemandSignal {
        delivery_id,
        job_id: job.get("id").and_then(Value::as_u64)?,
        action: s(v.get("action")).unwrap_or_default(),
        labels: job
            .get("labels")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        runner_name: s(job.get("runner_name")),
        repository: s(v.get("repository").and_then(|r| r.get("full_name"))),
        organization: s(v.get("organization").and_then(|o| o.get("login"))),
    })
}

/// The receiver. Mount it on the controller's webhook listener.
pub fn router(secret: SecretString, tx: mpsc::Sender<DemandSignal>) -> Router {
    router_with_metrics(secret, tx, None)
}

/// [`router`] that also counts deliveries by result.
pub fn router_with_metrics(
    secret: SecretString,
    tx: mpsc::Sender<DemandSignal>,
    metrics: Option<GithubMetrics>,
) -> Router {
    Router::new().route(WEBHOOK_PATH, post(receive)).with_state(Arc::new(Ctx { secret, tx, metrics }))
}

async fn receive(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    let count = |r: &str| {
        if let Some(m) = &ctx.metrics {
            m.webhook(r);
        }
    };
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let delivery = h("x-github-delivery").map(str::to_string);
    if !verify_signature(ctx.secret.expose_secret().as_bytes(), &body, h("x-hub-signature-256")) {
        // Never log the body of an unauthenticated request.
        tracing::warn!(
            delivery = delivery.as_deref().unwrap_or("-"),
            "webhook with a bad signature rejected"
        );
        count("bad_signature");
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    match h("x-github-event") {
        Some("workflow_job") => match parse_workflow_job(&body, delivery.clone()) {
            Some(sig) => {
                tracing::debug!(job_id = sig.job_id, action = %sig.action, "workflow_job delivery");
                match ctx.tx.try_send(sig) {
                    Ok(()) => count("accepted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "demand channel full or closed; delivery dropped");
                        count("dropped");
                    }
                }
            }
            None => {
                tracing::warn!(
                    delivery = delivery.as_deref().unwrap_or("-"),
                    "unreadable workflow_job delivery"
                );
                count("unreadable");
            }
        },
        _ => count("ignored"),
    }
    StatusCode::ACCEPTED.into_response()
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
}
