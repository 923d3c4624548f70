//! Prometheus metrics of the Azure edge: requests and latency per operation and status class,
//! rate-limit bucket levels, local throttles and 429 pauses.
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub operation: String,
    /// `2xx`, `4xx`, `5xx`, or `error` (no HTTP answer).
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    pub subscription: String,
    /// `reads`, `writes`, `creates:<location>:<window>`.
    pub bucket: String,
}

/// Cheap to clone; all clones update the same series.
#[derive(Clone)]
pub struct AzureMetrics {
    pub requests: Family<OpLabels, Counter>,
    pub latency: Family<OpLabels, Histogram>,
    pub bucket_level: Family<BucketLabels, Gauge<f64, AtomicU64>>,
    pub local_throttled: Family<BucketLabels, Counter>,
    pub pauses: Family<BucketLabels, Counter>,
}

impl Default for AzureMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AzureMetrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14))),
            bucket_level: Family::default(),
            local_throttled: Family::default(),
            pauses: Family::default(),
        }
    }

    /// Register every series under `azure_` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("azure");
        r.register("arm_requests", "ARM requests by operation and status class", self.requests.clone());
        r.register(
            "arm_request_duration_seconds",
            "ARM request latency by operation and status class",
            self.latency.clone(),
        );
        r.register(
            "ratelimit_bucket_level",
            "Requests left in each client-side rate-limit bucket",
            self.bucket_level.clone(),
        );
        r.register(
            "ratelimit_local_throttled",
            "Requests refused locally because a bucket was empty",
            self.local_throttled.clone(),
        );
        r.register("ratelimit_pauses", "Buckets paused by an Azure 429 Retry-After", self.pauses.clone());
    }

    pub fn observe(&self, operation: &str, status_class: &str, seconds: f64) {
        let l = OpLabels { operation: operation.to_string(), status_class: status_class.to_string() };
        self.requests.get_or_create(&l).inc();
        self.latency.get_or_create(&l).observe(seconds);
    }
}

/// Shared handle type used by the client and the rate limiter.
pub type SharedMetrics = Arc<AzureMetrics>;
