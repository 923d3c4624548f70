//! Health, readiness and metrics endpoints, and the bounded HTTP/1 server the webhook receiver
//! runs on.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use super::metrics::Metrics;

/// Readiness: set once the controller has its caches (and, with leader election, whatever role it has).
#[derive(Default, Debug)]
pub struct Health {
    ready: AtomicBool,
    leader: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
    }
    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Relaxed);
    }
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, if s.health.is_leader() { "ok (leader)" } else { "ok (standby)" })
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, health })
}

/// Connection bounds of [`serve_bounded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections; the next one waits in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from when the server waits for
    /// them: a slow sender and an idle keep-alive connection are closed after it.
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self { max_connections: 256, header_read_timeout: Duration::from_secs(10) }
    }
}

/// Serve `app` over HTTP/1.1 on `listener` with these connection bounds. `axum::serve` sets no
/// header-read timeout and no connection cap, hence this accept loop over hyper's own server
/// (the timeout is hyper's; GitHub delivers webhooks over HTTP/1.1).
pub async fn serve_bounded(listener: tokio::net::TcpListener, app: Router, limits: ConnLimits) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        // The semaphore is never closed; should it be, no connection is served any more.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
