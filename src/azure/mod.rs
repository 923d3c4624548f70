//! The Azure edge: credentials, container groups through azure_mgmt_containerinstance, error
//! classification, quota-aware rate limiting and metrics. Long-running operations are never
//! awaited: a create returns once ARM accepts the PUT; the reconciler observes progress via
//! [`AzureClient::get_group`] / [`AzureClient::list_groups`].
//!
//! ```no_run
//! # async fn f(spec: &aci_runner_core::crd::RunnerPoolSpec,
//! #            pool: &aci_runner_controller::azure::GroupOwner,
//! #            runner: &aci_runner_controller::azure::RunnerTemplateInput) -> Result<(), Box<dyn std::error::Error>> {
//! use aci_runner_controller::azure::*;
//! let edge = AzureEdge::new(CloudConfig::from_env()?, RateLimitConfig::default(), std::time::Duration::from_secs(300));
//! let client = edge.client(&CredentialSpec::from_env(false)?);
//! let group = container_group(spec, pool, runner);
//! match client.create_group(&spec.azure.subscription_id, &spec.azure.resource_group, &runner.name, &group).await {
//!     Ok(accepted) => println!("accepted: {:?}", accepted.provisioning_state),
//!     Err(AzureError::CapacityUnavailable { location, .. }) => println!("try a fallback location instead of {location}"),
//!     Err(e) if e.is_retryable() => println!("retry after {:?}", e.retry_after()),
//!     Err(e) => return Err(e.into()),
//! }
//! let observed = client.list_groups(&spec.azure.subscription_id, &spec.azure.resource_group).await?;
//! # let _ = observed; Ok(()) }
//! ```
pub mod client;
pub mod credentials;
pub mod error;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod template;

pub use client::{
    API_VERSION, ArmContainer, ArmEvent, ArmGroup, AzureClient, AzureClientConfig, CRATE_API_VERSION,
    CreateAccepted,
};
pub use credentials::{CachedCredential, CloudConfig, CredentialRegistry, CredentialSpec};
pub use error::{ArmFailure, AzureError, classify};
pub use metrics::AzureMetrics;
pub use ratelimit::{BucketLimit, RateLimitConfig, RateLimiter, RequestKind, WindowLimit};
pub use template::{GroupOwner, RegistryPassword, RunnerBootstrap, RunnerTemplateInput, container_group};

/// Everything the controller needs once per process: the cloud, one credential registry, one rate
/// limiter and one set of metrics, shared by the clients of every pool.
pub struct AzureEdge {
    config: AzureClientConfig,
    credentials: CredentialRegistry,
    limiter: std::sync::Arc<RateLimiter>,
    metrics: AzureMetrics,
}

impl AzureEdge {
    pub fn new(cloud: CloudConfig, rate: RateLimitConfig, token_refresh_margin: std::time::Duration) -> Self {
        let metrics = AzureMetrics::new();
        Self {
            config: AzureClientConfig::from_cloud(&cloud),
            credentials: CredentialRegistry::new(cloud, token_refresh_margin),
            limiter: RateLimiter::new(rate, metrics.clone()),
            metrics,
        }
    }

    /// A client authenticating as `identity` (credentials and their token cache are shared by
    /// every caller using the same identity).
    pub fn client(&self, identity: &CredentialSpec) -> AzureClient {
        AzureClient::new(
            self.credentials.get(identity),
            self.config.clone(),
            self.limiter.clone(),
            self.metrics.clone(),
        )
    }

    pub fn metrics(&self) -> &AzureMetrics {
        &self.metrics
    }

    pub fn limiter(&self) -> &std::sync::Arc<RateLimiter> {
        &self.limiter
    }

    pub fn config(&self) -> &AzureClientConfig {
        &self.config
    }
}
