//! The Azure edge: credentials, container groups through azure_mgmt_containerinstance, error
//! classification, quota-aware rate limiting and metrics. Long-running operations are never
//! awaited: a create returns once ARM accepts the PUT; the reconciler observes progress via
//! [`AzureClient::get_group`] / [`AzureClient::list_groups`].
pub mod client;
pub mod credentials;
pub mod error;
pub mod metrics;
pub mod ratelimit;
pub mod template;

pub use client::{
    API_VERSION, AzureClient, AzureClientConfig, CRATE_API_VERSION, CreateAccepted, ObservedContainer,
    ObservedGroup,
};
pub use credentials::{CachedCredential, CloudConfig, CredentialRegistry, CredentialSpec};
pub use error::{ArmFailure, AzureError, classify};
pub use metrics::AzureMetrics;
pub use ratelimit::{BucketLimit, RateLimitConfig, RateLimiter, RequestKind, WindowLimit};
pub use template::{PoolMeta, RegistryPassword, RunnerRegistration, RunnerTemplateInput, container_group};
