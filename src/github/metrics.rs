//! GitHub edge metrics: requests and latency per endpoint, rate-limit remaining per installation,
//! installation-token mints, webhook deliveries by result.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `installation:<id>` or `pat:<hash prefix>`; never a secret.
    pub principal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone)]
pub struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 14))
    }
}

/// Cheap to clone (every family is shared).
#[derive(Clone)]
pub struct GithubMetrics {
    pub requests: Family<EndpointLabels, Counter>,
    pub latency: Family<OpLabels, Histogram, LatencyHistogram>,
    pub rate_remaining: Family<AuthLabels, Gauge>,
    pub token_mints: Family<AuthLabels, Counter>,
    pub not_modified: Family<OpLabels, Counter>,
    pub webhook_deliveries: Family<ResultLabels, Counter>,
    /// Content-creating requests not sent because the pace was reached (retried later).
    pub paced: Family<OpLabels, Counter>,
}

impl Default for GithubMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(LatencyHistogram),
            rate_remaining: Family::default(),
            token_mints: Family::default(),
            not_modified: Family::default(),
            webhook_deliveries: Family::default(),
            paced: Family::default(),
        }
    }
}

impl GithubMetrics {
    /// Register under `github_*` in `registry` (the webhook receiver's requests too:
    /// `github_webhook_deliveries`, by result).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("github");
        r.register("requests", "GitHub API requests by endpoint and status", self.requests.clone());
        r.register("request_duration_seconds", "GitHub API latency by endpoint", self.latency.clone());
        r.register(
            "rate_limit_remaining",
            "x-ratelimit-remaining last seen per installation/token",
            self.rate_remaining.clone(),
        );
        r.register("installation_token_mints", "Installation tokens minted", self.token_mints.clone());
        r.register("not_modified", "Conditional requests answered 304", self.not_modified.clone());
        r.register(
            "webhook_deliveries",
            "Requests to the webhook receiver by result (accepted, bad_signature, duplicate, too_large, shed, timeout, ...)",
            self.webhook_deliveries.clone(),
        );
        r.register(
            "content_paced",
            "Content-creating requests held back by the client-side pace (GitHub's secondary limit)",
            self.paced.clone(),
        );
    }

    pub(crate) fn webhook(&self, result: &str) {
        self.webhook_deliveries.get_or_create(&ResultLabels { result: result.into() }).inc();
    }
}
